"""Crash-trial scenarios for each built-in job (used by tests/fault/test_fault_*.py)."""
import json
import os
import shutil

from jobs_fault import Scenario, run_job
from jobs_fixtures import populate, read_json, tree_digest, write_file

INST = "inst1"


def inst_dir(data_dir):
    return os.path.join(data_dir, "instances", INST)


def complete_backups(inst):
    bdir = os.path.join(inst, "backups")
    out = []
    if os.path.isdir(bdir):
        for n in sorted(os.listdir(bdir)):
            if n.endswith(".json") and not n.startswith("."):
                try:
                    if read_json(os.path.join(bdir, n)).get("complete") is True:
                        out.append(n[:-5])
                except ValueError:
                    pass
    return out


def must(tc, r):
    tc.assertEqual(r.status, "COMPLETED", r)
    return r.result["output"]


def instance_digest(inst):
    """Everything in the instance except the job bookkeeping in .jobvisor."""
    d = tree_digest(inst) or {}
    return {k: v for k, v in d.items() if not k.startswith(".jobvisor")}


class BackupScenario(Scenario):
    job = "BACKUP_INSTANCE"
    params = {"exclude": ["*.log"]}

    def prepare(self, data_dir, tc):
        populate(os.path.join(inst_dir(data_dir), "data"), seed=11, files=60, big=6 << 20)
        must(tc, run_job(data_dir, self.job, INST, {"backupId": "base"}))

    def extra_violations(self, inst, final, result):
        n = len(complete_backups(inst))
        if final:
            # one new backup; two when the killed run had finished (run marker gone)
            # before the kill and the retry was therefore a new job
            if n not in (2, 3):
                return [f"{n} complete backups after the retry (want 2, or 3 if the first run finished)"]
            if result and result["backupId"] not in complete_backups(inst):
                return ["the retry's backupId has no complete manifest"]
        elif n not in (1, 2):
            return [f"{n} complete backups after the kill (want 1 or 2)"]
        return []


class VerifyScenario(Scenario):
    job = "VERIFY_BACKUP"
    params = {"backupId": "b1"}

    def prepare(self, data_dir, tc):
        populate(os.path.join(inst_dir(data_dir), "data"), seed=12, files=60, big=8 << 20)
        must(tc, run_job(data_dir, "BACKUP_INSTANCE", INST, {"backupId": "b1"}))
        self.before = instance_digest(inst_dir(data_dir))

    def extra_violations(self, inst, final, result):
        if instance_digest(inst) != self.before:
            return ["VERIFY_BACKUP changed the instance"]
        return []


class RestoreScenario(Scenario):
    job = "RESTORE_BACKUP"
    params = {"backupId": "b1"}

    def prepare(self, data_dir, tc):
        data = os.path.join(inst_dir(data_dir), "data")
        populate(data, seed=13, files=80, big=6 << 20)
        must(tc, run_job(data_dir, "BACKUP_INSTANCE", INST, {"backupId": "b1"}))
        shutil.rmtree(data)
        populate(data, seed=14, files=30)
        self.backups = instance_digest(os.path.join(inst_dir(data_dir), "backups"))

    def extra_violations(self, inst, final, result):
        if instance_digest(os.path.join(inst, "backups")) != self.backups:
            return ["RESTORE_BACKUP changed backups/"]
        return []


class PruneScenario(Scenario):
    job = "PRUNE_BACKUPS"
    params = {"keepLast": 2, "keepMonthly": 3}

    def prepare(self, data_dir, tc):
        inst = inst_dir(data_dir)
        populate(os.path.join(inst, "data"), seed=15, files=20, big=1 << 20)
        must(tc, run_job(data_dir, "BACKUP_INSTANCE", INST, {"backupId": "seed"}))
        bdir = os.path.join(inst, "backups")
        m = read_json(os.path.join(bdir, "seed.json"))
        days = ["2024-01-05", "2024-01-20", "2024-02-03", "2024-02-17", "2024-03-02", "2024-03-09",
                "2024-03-16", "2024-03-23", "2024-03-30", "2024-04-06"]
        for i, d in enumerate(days):
            bid = f"b{i:02d}"
            shutil.copy(os.path.join(bdir, "seed.tar.zst"), os.path.join(bdir, bid + ".tar.zst"))
            write_file(os.path.join(bdir, bid + ".json"),
                       json.dumps(dict(m, backupId=bid, createdAt=d + "T12:00:00Z")))
        os.remove(os.path.join(bdir, "seed.json"))
        os.remove(os.path.join(bdir, "seed.tar.zst"))
        # keepLast 2 -> b09, b08; keepMonthly 3 -> b09 (April), b08 (March), b03 (February)
        self.keep = ["b03", "b08", "b09"]
        self.all = [f"b{i:02d}" for i in range(len(days))]

    def extra_violations(self, inst, final, result):
        present = complete_backups(inst)
        v = []
        for k in self.keep:
            if k not in present:
                v.append(f"kept backup {k} was removed")
        if final:
            if present != self.keep:
                v.append(f"after the retry the backups are {present}, want {self.keep}")
            if result and sorted(result["kept"]) != self.keep:
                v.append(f"retry reports kept {result['kept']}")
        return v
