"""A FIFO (or other non-regular file) where jobvisor expects a file it reads (issue 19.8).

Opening a FIFO for reading blocks until a writer appears, so a FIFO planted at
instance.json used to hold START_INSTANCE until its timeout. Every file the agent, the
job-run child and `jobvisor status` read is opened non-blocking and checked for its type
first: each case below must end at once with a clear error naming the file."""
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

from jv_run import JOBVISOR, RunResult

LIMIT = 20  # seconds: far below any job timeout, far above a normal run on a loaded machine


class NonRegularFiles(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="jv-fifo-")
        self.data = os.path.join(self.tmp, "data")
        self.inst = os.path.join(self.data, "instances", "i1")
        os.makedirs(os.path.join(self.inst, "data"))
        with open(os.path.join(self.inst, "data", "world.dat"), "w") as f:
            f.write("x")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_job(self, what, params=None, extra=()):
        argv = [JOBVISOR, "run", what, "--instance", "i1", "--data-dir", self.data, "--json"]
        if params is not None:
            argv += ["--params", params if isinstance(params, str) else json.dumps(params)]
        argv += list(extra)
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=LIMIT)
        except subprocess.TimeoutExpired:
            self.fail(f"{what} hung on a FIFO for {LIMIT} s")
        return RunResult(p.returncode, p.stdout, p.stderr), time.monotonic() - t0

    def test_fifo_at_instance_json_fails_start_at_once(self):
        os.mkfifo(os.path.join(self.inst, "instance.json"))
        r, _ = self.run_job("START_INSTANCE")
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("instance.json", r.error_message)
        self.assertIn("not a regular file", r.error_message)

    def test_fifo_at_a_marker_does_not_hang_the_job(self):
        mdir = os.path.join(self.inst, ".jobvisor", "markers")
        os.makedirs(mdir)
        os.mkfifo(os.path.join(mdir, "backup.json"))
        r, _ = self.run_job("BACKUP_INSTANCE", {"backupId": "b1"})
        # an unreadable marker is no marker: the backup is made and the FIFO replaced
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertFalse(os.path.exists(os.path.join(mdir, "backup.json")))

    def test_fifo_as_run_marker_does_not_hang(self):
        mdir = os.path.join(self.inst, ".jobvisor", "markers")
        os.makedirs(mdir)
        os.mkfifo(os.path.join(mdir, "run.VERIFY_BACKUP.json"))
        r, _ = self.run_job("VERIFY_BACKUP", {"backupId": "b1"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("backup 'b1' does not exist", r.error_message)

    def test_fifo_at_state_json_status_and_stop(self):
        jdir = os.path.join(self.inst, ".jobvisor")
        os.makedirs(jdir)
        os.mkfifo(os.path.join(jdir, "state.json"))
        with open(os.path.join(self.inst, "instance.json"), "w") as f:
            json.dump({"command": ["/bin/true"]}, f)
        try:
            p = subprocess.run([JOBVISOR, "status", "--data-dir", self.data, "--json"],
                               capture_output=True, text=True, timeout=LIMIT)
        except subprocess.TimeoutExpired:
            self.fail("jobvisor status hung on a FIFO at state.json")
        self.assertIn(p.returncode, (0, 1), p.stderr)
        r, _ = self.run_job("STOP_INSTANCE")
        self.assertIn(r.status, ("COMPLETED", "FAILED"), r)

    def test_fifo_as_script_and_params_file(self):
        script = os.path.join(self.tmp, "job.lua")
        os.mkfifo(script)
        r, _ = self.run_job(script)
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("not a regular file", r.error_message)
        fifo = os.path.join(self.tmp, "params.json")
        os.mkfifo(fifo)
        r, _ = self.run_job("VERIFY_BACKUP", "@" + fifo)
        self.assertEqual(r.code, 2, r)
        self.assertIn("not a regular file", r.stderr)

    def test_fifo_in_the_download_cache_is_not_used(self):
        """A FIFO named like a cached digest is skipped: the job does not block on it."""
        cache = os.path.join(self.data, "cache")
        os.makedirs(cache)
        sha = "a" * 64
        os.mkfifo(os.path.join(cache, sha))
        r, _ = self.run_job("SYNC_MODS", {"mods": [{"name": "m.jar", "url": "http://127.0.0.1:9/m.jar",
                                                    "sha256": sha}]})
        self.assertEqual(r.status, "FAILED", r)


if __name__ == "__main__":
    unittest.main()
