"""Shared part of tests/fault/test_fault_remote_*.py: crash consistency of remote backups: SIGKILL at random instants during BACKUP_INSTANCE with
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
    """setUp and helpers; the tests are in tests/fault/test_fault_remote_*.py."""
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

