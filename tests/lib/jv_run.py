"""Helpers for tests that run the real `jobvisor` binary (jobvisor run / check)."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

JOBVISOR = os.environ.get("JOBVISOR_BIN", "jobvisor")


def tree_snapshot(root, skip=None):
    """Map of every path under root (except the `skip` subtree) to (type, size, mode, mtime)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if skip and (dirpath == skip or dirpath.startswith(skip + os.sep)):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if skip and (p == skip or p.startswith(skip + os.sep)):
                continue
            st = os.lstat(p)
            snap[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return snap


def processes_in_group(pgid):
    """Pids of live (non-zombie) processes whose process group is pgid."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        state, pgrp = rest[0], int(rest[2])
        if pgrp == pgid and state != "Z":
            found.append(int(d))
    return found


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def job_run_children(pid):
    """The agent's job-run children (`jobvisor __jobrun`), not its other helpers
    such as `jobvisor __jobtypes`; a child still between fork and exec is left out."""
    kids = []
    for c in children_of(pid):
        try:
            with open(f"/proc/{c}/cmdline", "rb") as f:
                if b"__jobrun" in f.read().split(b"\0"):
                    kids.append(c)
        except OSError:
            pass
    return kids


class RunResult:
    def __init__(self, code, stdout, stderr):
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        self.events = []
        self.result = None
        for line in stdout.splitlines():
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            if "seq" in obj:
                self.events.append(obj)
            else:
                self.result = obj

    @property
    def status(self):
        return self.result["status"] if self.result else None

    @property
    def error_message(self):
        err = (self.result or {}).get("error") or {}
        return err.get("message", "")

    def __repr__(self):
        return f"RunResult(code={self.code}, result={self.result}, stderr={self.stderr[-2000:]!r})"


class JobvisorTestCase(unittest.TestCase):
    """A temp dir with data/ and jobs/ per test."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="jv-test-")
        self.data = os.path.join(self.tmp, "data")
        self.jobs = os.path.join(self.tmp, "jobs")
        os.makedirs(self.jobs)

    def tearDown(self):
        self.stop_instances()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stop_instances(self):
        """Stop every game server a test started (its monitor outlives the test otherwise)."""
        root = os.path.join(self.data, "instances")
        for iid in (os.listdir(root) if os.path.isdir(root) else []):
            if os.path.exists(os.path.join(root, iid, ".jobvisor", "monitor.sock")):
                subprocess.run([JOBVISOR, "run", "STOP_INSTANCE", "--instance", iid, "--data-dir", self.data,
                                "--params", '{"force": true}'], capture_output=True, timeout=120)

    def script(self, text, name="job.lua"):
        path = os.path.join(self.jobs, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def instance_dir(self, instance="test1"):
        return os.path.join(self.data, "instances", instance)

    def cmd(self, what, instance="test1", params=None, extra=(), json_out=True):
        argv = [JOBVISOR, "run", what, "--instance", instance, "--data-dir", self.data,
                "--jobs-dir", self.jobs]
        if params is not None:
            argv += ["--params", params if isinstance(params, str) else json.dumps(params)]
        if json_out:
            argv.append("--json")
        argv += list(extra)
        return argv

    def run_job(self, what, instance="test1", params=None, extra=(), timeout=60, json_out=True):
        p = subprocess.run(self.cmd(what, instance, params, extra, json_out),
                           capture_output=True, text=True, timeout=timeout)
        return RunResult(p.returncode, p.stdout, p.stderr)

    def start_job(self, what, instance="test1", params=None, extra=(), preexec_fn=None):
        return subprocess.Popen(self.cmd(what, instance, params, extra), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)

    def finish(self, proc, timeout=60):
        out, err = proc.communicate(timeout=timeout)
        return RunResult(proc.returncode, out, err)

    def wait_child(self, proc, timeout=10):
        """The job-run child's pid (== its process group id)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            kids = children_of(proc.pid)
            if kids:
                return kids[0]
            time.sleep(0.02)
        self.fail("job-run child did not appear")

    def wait_file(self, path, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(path):
                return
            time.sleep(0.02)
        self.fail(f"{path} did not appear")
