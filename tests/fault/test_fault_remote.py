"""Crash consistency of remote backups: SIGKILL at random instants during BACKUP_INSTANCE with
"remote" (archiving and multipart upload) and during RESTORE_BACKUP with "remote" (ranged
download), against a real S3 server (s3rver), then a retry of the same job.

After every retry: the run COMPLETED; the object at the server is byte-identical to a clean
backup of the same data; no part reached the server more than once per upload id except the one
in flight at the kill, and none the marker recorded as acknowledged; no multipart upload is left at the server; no
marker, staging directory or partial download is left on the host. JV_TORTURE_KILLS sets the
number of kills per test (default 10; `make torture` runs 200).
"""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from jv_run import JOBVISOR, RunResult, children_of
from jobs_fixtures import leftovers, populate, tree_digest
from s3_server import S3Server, remote_config, write_credentials

KILLS = int(os.environ.get("JV_TORTURE_KILLS", "10") or "10")
INST = "f1"


class RemoteFault(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="jv-fault-remote-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.s3 = S3Server()
        self.addCleanup(self.s3.close)
        creds = write_credentials(os.path.join(self.tmp, "cred"))
        self.conf = remote_config(os.path.join(self.tmp, "agent.conf"), "offsite", self.s3, creds,
                                  part_size="5M")
        self.data = os.path.join(self.tmp, "data")
        self.inst = os.path.join(self.data, "instances", INST)
        self.digest = populate(os.path.join(self.inst, "data"), seed=21, big=17 << 20)
        self.rng = random.Random(int(os.environ.get("JV_FAULT_SEED", "0")) or None)

    def argv(self, what, params, job_id):
        return [JOBVISOR, "run", what, "--instance", INST, "--data-dir", self.data,
                "--params", json.dumps(params), "--json", "--config", self.conf, "--job-id", job_id]

    def run_job(self, what, params, job_id):
        p = subprocess.run(self.argv(what, params, job_id), capture_output=True, text=True,
                           timeout=300)
        return RunResult(p.returncode, p.stdout, p.stderr)

    def timed(self, what, params, job_id):
        t0 = time.monotonic()
        r = self.run_job(what, params, job_id)
        self.assertEqual(r.status, "COMPLETED", r)
        return r, time.monotonic() - t0

    def kill_after(self, what, params, job_id, delay):
        """Start the job, SIGKILL the job-run child's process group delay seconds after the
        child appeared. True if it was still running then (the kill interrupted it)."""
        p = subprocess.Popen(self.argv(what, params, job_id), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        child = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and p.poll() is None:
            kids = children_of(p.pid)
            if kids:
                child = kids[0]
                break
            time.sleep(0.001)
        time.sleep(delay)
        alive = child is not None and p.poll() is None
        if child is not None:
            try:
                os.killpg(child, signal.SIGKILL)
            except ProcessLookupError:
                alive = False
        p.wait(60)
        return alive

    @staticmethod
    def recorded_parts(marker):
        try:
            with open(marker) as f:
                m = json.load(f)
        except (OSError, ValueError):
            return set()
        return {(str(p["n"]), m["uploadId"]) for p in m.get("parts", [])}

    @staticmethod
    def summary(line):
        print(line, flush=True)
        out_dir = os.environ.get("JV_BUILD_DIR")
        if out_dir and os.path.isdir(out_dir):
            with open(os.path.join(out_dir, "fault-summary.txt"), "a") as f:
                f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + line + "\n")

    def markers(self):
        d = os.path.join(self.inst, ".jobvisor", "markers")
        return sorted(n for n in os.listdir(d) if not n.startswith("run.")) if os.path.isdir(d) else []

    def test_kill_during_remote_backup_then_retry(self):
        ref, t = self.timed("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "ref"}, "ref-job")
        want = ref.result["output"]["sha256"]
        interrupted = mid_upload = 0
        known, orphans = set(), set()
        for i in range(KILLS):
            bid, job = f"b{i}", f"job-b{i}"
            before = len(self.s3.stored_parts())
            marker = os.path.join(self.inst, ".jobvisor", "markers", "remote-upload.json")
            if self.kill_after("BACKUP_INSTANCE", {"remote": "offsite", "backupId": bid}, job,
                               self.rng.uniform(0, t * 1.1)):
                interrupted += 1
                mid_upload += os.path.exists(marker)
            recorded = self.recorded_parts(marker)
            try:
                with open(marker) as f:
                    known.add(json.load(f).get("uploadId"))
            except (OSError, ValueError):
                pass
            time.sleep(0.2)  # a request the server was still storing at the kill
            stored_before_retry = len(self.s3.stored_parts())
            r = self.run_job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": bid}, job)
            self.assertEqual(r.status, "COMPLETED", (i, r))
            obj = self.s3.object_bytes(f"{INST}/{bid}.tar.zst")
            self.assertEqual(hashlib.sha256(obj).hexdigest(), want, i)
            self.assertEqual(json.loads(self.s3.object_bytes(f"{INST}/{bid}.json"))["sha256"], want)
            # no part the marker recorded as acknowledged reached the server again
            again = set(self.s3.stored_parts()[stored_before_retry:]) & recorded
            self.assertEqual(again, set(), (i, recorded, self.s3.stored_parts()[before:]))
            # An upload id the killed run created but never recorded (killed between the
            # store's answer to CreateMultipartUpload and the marker write) is unknown to
            # every later run; s3rver can neither list nor abort multipart uploads, so it
            # stays: allowed only if no part was ever sent to it (docs/jobs.md).
            for up in self.s3.pending_uploads():
                if up in known:
                    self.fail(f"trial {i}: upload {up} that a marker recorded is left at the server")
                if any(u == up for _, u in self.s3.stored_parts()):
                    self.fail(f"trial {i}: unrecorded upload {up} has parts")
                if up not in orphans:
                    orphans.add(up)
            self.assertEqual(self.markers(), [], i)
            self.assertEqual(leftovers(self.inst), [], i)
        self.summary(f"fault BACKUP_INSTANCE+remote: {KILLS} kills, {interrupted} killed mid-run, "
                     f"{mid_upload} during the upload, {len(orphans)} empty upload ids created in "
                     f"the create-to-marker window, 0 violations")
        self.assertGreater(interrupted, 0)
        if KILLS >= 10:
            self.assertGreater(mid_upload, 0)

    def test_kill_during_remote_restore_then_retry(self):
        self.timed("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "r1"}, "mk")
        data = os.path.join(self.inst, "data")
        shutil.rmtree(data)
        _, t = self.timed("RESTORE_BACKUP", {"remote": "offsite", "backupId": "r1"}, "ref-restore")
        self.assertEqual(tree_digest(data), self.digest)
        part = os.path.join(self.inst, "backups", ".r1.tar.zst.part")
        interrupted = mid_download = 0
        for i in range(KILLS):
            shutil.rmtree(data)
            os.makedirs(data)
            job = f"job-r{i}"
            if self.kill_after("RESTORE_BACKUP", {"remote": "offsite", "backupId": "r1"}, job,
                               self.rng.uniform(0, t * 1.1)):
                interrupted += 1
                mid_download += os.path.exists(part)
            # data/ is the old (empty) tree or the whole restored one, never a mix
            self.assertIn(tree_digest(data), ({}, self.digest), i)
            r = self.run_job("RESTORE_BACKUP", {"remote": "offsite", "backupId": "r1"}, job)
            self.assertEqual(r.status, "COMPLETED", (i, r))
            self.assertEqual(tree_digest(data), self.digest, i)
            self.assertEqual(self.markers(), [], i)
            self.assertEqual(os.listdir(os.path.join(self.inst, "backups")), [], i)
            self.assertEqual(leftovers(self.inst), [], i)
        self.summary(f"fault RESTORE_BACKUP+remote: {KILLS} kills, {interrupted} killed mid-run, "
                     f"{mid_download} during the download, 0 violations")
        self.assertGreater(interrupted, 0)


if __name__ == "__main__":
    unittest.main()
