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


# --- builds and mods: served by a loopback HTTP server for the whole test ---

from jobs_fixtures import FileServer, make_tar, sha256_bytes  # noqa: E402

SPEC = {"command": ["${build}/server", "--port", "0"], "cwd": "data", "restart": {"policy": "never"}}


def serve_builds(tc, tags, big=4 << 20):
    """Build trees and tar.zst archives for tags; returns (server, {tag: source}, {tag: digest})."""
    www = os.path.join(tc.tmp, "www")
    os.makedirs(www, exist_ok=True)
    srv = FileServer(www)
    tc.addCleanup(srv.close)
    sources, digests = {}, {}
    for i, tag in enumerate(tags):
        tree = os.path.join(tc.tmp, "trees", tag)
        write_file(os.path.join(tree, "server"), "#!/bin/sh\necho %s\n" % tag, 0o755)
        write_file(os.path.join(tree, "lib", "engine.bin"), os.urandom(big))
        for j in range(30):
            write_file(os.path.join(tree, "assets", f"a{j}.dat"), os.urandom(2000 + j), 0o644)
        write_file(os.path.join(tree, "VERSION"), tag)
        digests[tag] = tree_digest(tree)
        name = tag + ".tar.zst"
        sha = make_tar(tree, os.path.join(www, name))
        sources[tag] = {"url": srv.url(name), "sha256": sha}
    return srv, sources, digests


def link_of(inst, name):
    p = os.path.join(inst, name)
    return os.readlink(p) if os.path.islink(p) else None


class InstallScenario(Scenario):
    job = "INSTALL_SERVER"

    def prepare(self, data_dir, tc):
        os.makedirs(inst_dir(data_dir))
        _, src, self.builds = serve_builds(tc, ["b1"])
        self.params = {"source": src["b1"], "build": "b1", "instance": SPEC}

    def extra_violations(self, inst, final, result):
        v = []
        spec = os.path.join(inst, "instance.json")
        if os.path.exists(spec):
            try:
                if read_json(spec) != SPEC:
                    v.append("instance.json differs from the spec")
            except ValueError:
                v.append("instance.json is not valid JSON (half-written)")
        if final:
            if link_of(inst, "current") != "builds/b1":
                v.append("current does not point at builds/b1 after the retry")
            if not os.path.exists(spec):
                v.append("no instance.json after the retry")
        return v


class UpdateScenario(Scenario):
    job = "UPDATE_SERVER"

    def prepare(self, data_dir, tc):
        inst = inst_dir(data_dir)
        _, src, self.builds = serve_builds(tc, ["b1", "b2"])
        must(tc, run_job(data_dir, "INSTALL_SERVER", INST, {"source": src["b1"], "build": "b1",
                                                            "instance": SPEC}))
        populate(os.path.join(inst, "data"), seed=21, files=20)
        self.params = {"source": src["b2"], "build": "b2", "activate": True}

    def extra_violations(self, inst, final, result):
        if final:
            got = (link_of(inst, "current"), link_of(inst, "previous"))
            if got != ("builds/b2", "builds/b1"):
                return [f"after the retry (current, previous) = {got}"]
            if result and not result.get("activated"):
                return ["the retry did not report activated"]
        return []


class ActivateScenario(UpdateScenario):
    job = "ACTIVATE_BUILD"

    def prepare(self, data_dir, tc):
        super().prepare(data_dir, tc)
        src = self.params["source"]
        must(tc, run_job(data_dir, "UPDATE_SERVER", INST, {"source": src, "build": "b2"}))
        self.params = {"build": "b2"}

    def extra_violations(self, inst, final, result):
        if final:
            got = (link_of(inst, "current"), link_of(inst, "previous"))
            if got != ("builds/b2", "builds/b1"):
                return [f"after the retry (current, previous) = {got}"]
        return []


class SyncModsScenario(Scenario):
    job = "SYNC_MODS"

    def prepare(self, data_dir, tc):
        data = os.path.join(inst_dir(data_dir), "data")
        www = os.path.join(tc.tmp, "mods-www")
        os.makedirs(www)
        srv = FileServer(www)
        tc.addCleanup(srv.close)
        mods = []
        for name, size in (("alpha.jar", 300000), ("beta.jar", 50000), ("gamma.jar", 3 << 20),
                           ("delta.jar", 1 << 20)):
            blob = os.urandom(size)
            write_file(os.path.join(www, name), blob)
            mods.append({"name": name, "url": srv.url(name), "sha256": sha256_bytes(blob)})
            if name == "beta.jar":
                write_file(os.path.join(data, "mods", name), blob)  # unchanged
        write_file(os.path.join(data, "mods", "alpha.jar"), b"old alpha")  # updated
        write_file(os.path.join(data, "mods", "handmade.jar"), os.urandom(200000), 0o600)  # kept
        for j in range(20):
            write_file(os.path.join(data, "mods", "config", f"c{j}.toml"), f"x={j}\n")
        os.symlink("c0.toml", os.path.join(data, "mods", "config", "main.toml"))
        populate(os.path.join(data, "world"), seed=22, files=10)
        self.params = {"mods": mods}
