"""Crash-consistency trials for the built-in jobs (tests/fault/).

A trial: copy a prepared data dir, start the job with `jobvisor run`, SIGKILL the
job-run child's process group after a random delay spread over the job's measured
duration, check the invariants that must hold at any instant, run the same job again
(a retry: a new run that sees the killed run's markers), and check that the retry
COMPLETED and left the final state with nothing behind.

Invariants (issue 4):
  * data/ is exactly the old tree or exactly the new tree (path, type, size, mode,
    content of every entry);
  * `current` points to a complete build;
  * every backup that has a manifest verifies; no half-written file under a final name;
  * after the successful retry: no staging directory, no temp file, no partial download.

JV_TORTURE_KILLS sets the number of kills per job (default 10).
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tarfile
import io
import time

from jv_run import JOBVISOR, RunResult, children_of
from jobs_fixtures import leftovers, read_json, sha256_file, tree_digest

KILLS = int(os.environ.get("JV_TORTURE_KILLS", "10") or "10")


def run_cmd(data_dir, what, instance, params):
    return [JOBVISOR, "run", what, "--instance", instance, "--data-dir", data_dir,
            "--params", json.dumps(params), "--json"]


def run_job(data_dir, what, instance, params, timeout=120):
    p = subprocess.run(run_cmd(data_dir, what, instance, params), capture_output=True, text=True,
                       timeout=timeout)
    return RunResult(p.returncode, p.stdout, p.stderr)


def backup_violations(inst):
    """Every backup with a complete manifest verifies against its archive; every archive
    under its final name is a whole zstd stream with a readable tar inside."""
    out = []
    bdir = os.path.join(inst, "backups")
    if not os.path.isdir(bdir):
        return out
    names = sorted(os.listdir(bdir))
    for name in names:
        path = os.path.join(bdir, name)
        if name.endswith(".json") and not name.startswith("."):
            try:
                m = read_json(path)
            except (ValueError, OSError) as e:
                out.append(f"manifest {name} is not valid JSON: {e}")
                continue
            if m.get("complete") is not True:
                continue
            arch = os.path.join(bdir, name[:-5] + ".tar.zst")
            if not os.path.exists(arch):
                out.append(f"complete manifest {name} without its archive")
                continue
            if sha256_file(arch) != m.get("sha256") or os.path.getsize(arch) != m.get("bytes"):
                out.append(f"archive of {name} does not match its manifest digest/size")
                continue
            err = tar_matches_manifest(arch, m)
            if err:
                out.append(f"backup {name[:-5]}: {err}")
        elif name.endswith(".tar.zst") and not name.startswith("."):
            err = tar_readable(path)
            if err:
                out.append(f"half-written archive under a final name: {name}: {err}")
    return out


def _tar_of(path):
    p = subprocess.run(["zstd", "-q", "-d", "-c", path], capture_output=True, timeout=60)
    if p.returncode != 0:
        return None, "not a complete zstd stream: " + p.stderr.decode(errors="replace").strip()
    return p.stdout, None


def tar_readable(path):
    data, err = _tar_of(path)
    if err:
        return err
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for _ in tf:
                pass
    except tarfile.TarError as e:
        return f"bad tar: {e}"
    return None


_VERIFIED = set()  # (archive sha256, manifest digest) pairs already checked


def tar_matches_manifest(path, m):
    key = (sha256_file(path), json.dumps(m.get("files"), sort_keys=True))
    if key in _VERIFIED:
        return None
    err = _tar_matches_manifest(path, m)
    if err is None:
        _VERIFIED.add(key)
    return err


def _tar_matches_manifest(path, m):
    import hashlib
    data, err = _tar_of(path)
    if err:
        return err
    want = {f["path"]: f for f in m.get("files", [])}
    seen = set()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for ti in tf:
            name = ti.name[2:] if ti.name.startswith("./") else ti.name
            name = name.rstrip("/")
            f = want.get(name)
            if f is None:
                return f"archive entry '{name}' not in the manifest"
            seen.add(name)
            if ti.isfile():
                if f["type"] != "file" or f["size"] != ti.size:
                    return f"entry '{name}' differs from the manifest"
                h = hashlib.sha256(tf.extractfile(ti).read()).hexdigest()
                if h != f["sha256"]:
                    return f"entry '{name}' content differs from the manifest"
            elif ti.isdir() and f["type"] != "dir":
                return f"entry '{name}' type differs"
            elif ti.issym() and (f["type"] != "symlink" or f.get("target") != ti.linkname):
                return f"symlink '{name}' differs"
    missing = set(want) - seen
    if missing:
        return f"manifest entries missing from the archive: {sorted(missing)[:3]}"
    return None


def build_violations(inst, builds_expected):
    """current (and previous) point at complete builds; every build dir is complete."""
    out = []
    for link in ("current", "previous"):
        p = os.path.join(inst, link)
        if not os.path.lexists(p):
            continue
        if not os.path.islink(p):
            out.append(f"{link} is not a symlink")
            continue
        target = os.readlink(p)
        bid = target[len("builds/"):] if target.startswith("builds/") else None
        if bid is None or bid not in builds_expected:
            out.append(f"{link} points at '{target}', not a known build")
    bdir = os.path.join(inst, "builds")
    if os.path.isdir(bdir):
        for name in os.listdir(bdir):
            if name.startswith("."):
                continue  # a temp name is checked by the leftover scan after the retry
            want = builds_expected.get(name)
            got = tree_digest(os.path.join(bdir, name))
            if want is None:
                out.append(f"unexpected build dir builds/{name}")
            elif got != want:
                out.append(f"builds/{name} is not exactly the build (partial or mixed)")
    return out


def cache_leftovers(data_dir):
    cdir = os.path.join(data_dir, "cache")
    if not os.path.isdir(cdir):
        return []
    return [n for n in os.listdir(cdir) if n.startswith(".") or n.endswith(".part") or ".tmp" in n]


def violation_kind(v):
    """A violation message without the trial, time, pid and run-id details, for counting."""
    v = re.sub(r"^trial \d+ \(kill at \d+ ms\): ", "", v)
    v = re.sub(r"\.tmp\.\d+", ".tmp.PID", v)
    v = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "RUN", v)
    v = re.sub(r"\.(run\.[A-Z_]+|[a-z]+)\.json\.tmp\.PID", ".MARKER.json.tmp.PID", v)
    return v


class Scenario:
    """One job under test. Subclasses fill in prepare() and the expected states."""
    job = None
    instance = "inst1"
    params = {}
    builds = {}  # build id -> tree digest, for build_violations

    def prepare(self, data_dir, tc):
        """Create the starting state in data_dir (called once; trials copy it)."""
        raise NotImplementedError

    def data_states(self):
        """(old, new) digests of data/ (None = absent)."""
        return self.old_data, self.new_data

    def capture_new(self, inst):
        """Called after the uninterrupted calibration run."""
        self.new_data = tree_digest(os.path.join(inst, "data"))

    def extra_violations(self, inst, final, result):
        return []


class FaultRunner:
    def __init__(self, tc, scenario, kills=KILLS, seed=None):
        self.tc = tc
        self.s = scenario
        self.kills = kills
        self.rng = random.Random(seed if seed is not None else (hash(scenario.job) & 0xffff) + kills)
        self.root = os.path.join(tc.tmp, "fault")
        os.makedirs(self.root, exist_ok=True)

    def fresh(self, name):
        d = os.path.join(self.root, name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(self.template, d, symlinks=True)
        return d

    def calibrate(self):
        self.template = os.path.join(self.root, "template")
        os.makedirs(self.template)
        self.s.prepare(self.template, self.tc)
        inst = os.path.join(self.template, "instances", self.s.instance)
        self.s.old_data = tree_digest(os.path.join(inst, "data"))
        self.times = []
        for i in range(3):
            self.measure(capture=(i == 0))

    def measure(self, capture=False):
        """One uninterrupted run on a fresh copy: its duration from the child's birth to the
        run's end. The kill delays follow the fastest of the last three (load on a shared machine
        only ever slows a run down, and drifts during a long torture run)."""
        d = self.fresh("cal")
        proc = subprocess.Popen(run_cmd(d, self.s.job, self.s.instance, self.s.params),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        child, t0 = self.find_child(proc)
        out, err = proc.communicate(timeout=300)
        self.times.append(time.monotonic() - t0)
        r = RunResult(proc.returncode, out, err)
        self.tc.assertEqual(r.status, "COMPLETED", f"calibration run of {self.s.job}: {r!r}")
        if capture:
            self.s.capture_new(os.path.join(d, "instances", self.s.instance))
            self.calibration_output = r.result["output"]
        shutil.rmtree(d)
        self.duration = min(self.times[-3:])

    def check(self, data_dir, final, result=None):
        inst = os.path.join(data_dir, "instances", self.s.instance)
        v = []
        old, new = self.s.data_states()
        got = tree_digest(os.path.join(inst, "data"))
        if final:
            if got != new:
                v.append("data/ is not the new tree after the retry")
        elif got != old and got != new:
            v.append("data/ is neither exactly the old nor exactly the new tree")
        v += build_violations(inst, self.s.builds)
        v += backup_violations(inst)
        if final:
            left = leftovers(inst)
            if left:
                v.append(f"left behind after the retry: {left}")
            left = cache_leftovers(data_dir)
            if left:
                v.append(f"partial downloads left in cache/: {left}")
        v += self.s.extra_violations(inst, final, result)
        return v

    @staticmethod
    def find_child(proc):
        """The job-run child of a `jobvisor run` process (None if it ended first) and the
        monotonic time it was seen."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids = children_of(proc.pid)
            if kids:
                return kids[0], time.monotonic()
            if proc.poll() is not None:
                break
            time.sleep(0.001)
        return None, time.monotonic()

    def trial(self, i):
        d = self.fresh("trial")
        proc = subprocess.Popen(run_cmd(d, self.s.job, self.s.instance, self.s.params),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        child, _ = self.find_child(proc)
        # Two kills in three anywhere in the run; one in three in its last quarter,
        # where the commits, swaps and manifest writes happen.
        if i % 3 == 2:
            delay = self.rng.uniform(self.duration * 0.7, self.duration * 1.02)
        else:
            delay = self.rng.uniform(0, self.duration * 1.05)
        time.sleep(delay)
        killed = False
        if child is not None:
            try:
                os.killpg(child, signal.SIGKILL)
                killed = True
            except ProcessLookupError:
                pass
        out, err = proc.communicate(timeout=120)
        first = RunResult(proc.returncode, out, err)
        interrupted = killed and first.status != "COMPLETED"
        v = [f"after kill: {x}" for x in self.check(d, final=False)]
        r = run_job(d, self.s.job, self.s.instance, self.s.params)
        if r.status != "COMPLETED":
            v.append(f"retry did not complete: {r.status}: {r.error_message} {r.stderr[-1500:]}")
        else:
            v += [f"after retry: {x}" for x in self.check(d, final=True, result=r.result["output"])]
        if v:
            keep = os.path.join(self.root, f"violation{i}")
            shutil.rmtree(keep, ignore_errors=True)
            os.rename(d, keep)
        else:
            shutil.rmtree(d)
        return interrupted, delay, v

    def run(self):
        self.calibrate()
        trials = interrupted = 0
        violations = []
        for i in range(self.kills):
            if i and i % 10 == 0:
                self.measure()
            was_killed, delay, v = self.trial(i)
            trials += 1
            interrupted += was_killed
            for x in v:
                violations.append(f"trial {i} (kill at {delay * 1000:.0f} ms): {x}")
        kinds = {}
        for x in violations:
            k = violation_kind(x)
            kinds[k] = kinds.get(k, 0) + 1
        summary = (f"fault {self.s.job}: {trials} trials, {interrupted} killed mid-run, "
                   f"job takes ~{self.duration * 1000:.0f} ms, {len(violations)} violations")
        if kinds:
            summary += " (" + "; ".join(f"{n} x {k}" for k, n in sorted(kinds.items())) + ")"
        print(summary, flush=True)
        out_dir = os.environ.get("JV_BUILD_DIR")
        if out_dir and os.path.isdir(out_dir):
            with open(os.path.join(out_dir, "fault-summary.txt"), "a") as f:
                f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + summary + "\n")
        for x in violations[:20]:
            print("  " + x, flush=True)
        return trials, interrupted, violations
