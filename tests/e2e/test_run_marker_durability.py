"""What a job run itself puts on disk: the run marker and the completion record (strace).

The run marker (`.jobvisor/markers/run.<TYPE>.json`) is written when the run starts and removed
when it completes. It lives in the page cache until durability matters (docs/jobs.md, "The run
marker"): a kill -9 leaves the page cache alone, so the next run still sees it as
`job.previous`; it is fsynced before the run's first `job.mark` (a later run adopts those
markers through `job.previous`) and when a run fails, never for progress (step and percent go
to `run.<TYPE>.progress`, page cache only). So a no-op run with a fresh job id makes no fsync at all, and every guarantee that depends on the
marker is checked here from the system calls themselves (tests/lib/strace_durability.py).
"""
import json
import os
import re
import shutil
import signal
import time

from jv_run import JobvisorTestCase, RunResult
from strace_durability import TraceCheck, check_trace, traced_run

SYNCS = ("fsync(", "fdatasync(", "syncfs(", "sync(")
# 16 letters: 4 bits of entropy a byte, so zstd has real work to do (as tests/e2e/test_progress.py).
_LETTERS = bytes.maketrans(bytes(range(256)), bytes(b"abcdefghijklmnop"[i % 16] for i in range(256)))


def write_world(root, total, chunk=16 << 20):
    os.makedirs(os.path.join(root, "world"), exist_ok=True)
    for i in range((total + chunk - 1) // chunk):
        with open(os.path.join(root, "world", "r.%d.mca" % i), "wb") as f:
            f.write(os.urandom(min(chunk, total - i * chunk)).translate(_LETTERS))


class MarkerCheck(TraceCheck):
    """Also records, at each rename that creates a job.mark marker, what of the run marker
    was still only in the page cache."""

    def __init__(self, root, run_marker):
        super().__init__(root)
        self.run_marker = os.path.join(self.root, ".jobvisor", "markers", run_marker)
        self.at_mark = []  # (marker path, [pending changes of the run marker])

    def rename(self, src, dst, flags, line):
        markers = os.path.join(self.jv, "markers")
        if (self.mine(dst) and os.path.dirname(dst) == markers and dst != self.run_marker
                and not os.path.basename(dst).startswith(".")):
            self.at_mark.append((dst, self.run_marker_pending()))
        super().rename(src, dst, flags, line)

    def run_marker_pending(self):
        return [m for m in self.pending if m.path == self.run_marker]


def traced_check(trace, root, run_marker):
    return check_trace(trace, root, lambda r: MarkerCheck(r, run_marker))


class RunMarkerDurability(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        if not shutil.which("strace"):
            self.fail("strace is not installed (make deps installs it)")
        self.trace = os.path.join(self.tmp, "trace")

    def traced(self, what, extra=()):
        os.makedirs(self.instance_dir(), exist_ok=True)
        p = traced_run(self.cmd(what, extra=extra), self.trace, timeout=120)
        if "PTRACE" in p.stderr and p.returncode != 0:
            self.fail(f"strace cannot trace here: {p.stderr[-500:]}")
        return RunResult(p.returncode, p.stdout, p.stderr)

    def syscalls(self, needle):
        with open(self.trace, errors="replace") as f:
            return [line.rstrip() for line in f if needle in line]

    def test_a_noop_run_with_a_fresh_job_id_syncs_nothing(self):
        path = self.script('return { type = "NOOP", run = function(job) end }')
        r = self.traced(path)
        self.assertEqual(r.status, "COMPLETED", r)
        with open(self.trace, errors="replace") as f:
            lines = f.read().splitlines()
        syncs = [line for line in lines if any(s in line.split(None, 1)[-1][:10] for s in SYNCS)]
        self.assertEqual(syncs, [], "a no-op run reached for the disk")
        # the run marker was there while the script ran, and is gone: renamed out of markers/
        # to .jobvisor/run-marker.spare, whose inode the next run's marker reuses
        self.assertTrue(any('"run.NOOP.json"' in line and "rename" in line for line in lines), lines)
        self.assertTrue(any(re.search(r'renameat2?\(\d+<[^>]*/markers>, "run\.NOOP\.json", '
                                      r'\d+<[^>]*/\.jobvisor>, "run-marker\.spare"', line)
                            for line in lines), lines)
        # no completion record for a job id no retry can carry
        self.assertEqual([line for line in lines if "completed/" in line and "O_CREAT" in line], [])
        self.assertEqual(os.listdir(os.path.join(self.instance_dir(), ".jobvisor", "markers")), [])

    def test_a_second_noop_run_makes_no_file_and_frees_none(self):
        # A create on ext4 under other I/O took 0.7-1.3 ms, most of a no-op run: the run
        # marker reuses one inode from run to run (lua/api_job.c, RUN_MARKER_SPARE).
        path = self.script('return { type = "NOOP", run = function(job) end }')
        self.assertEqual(self.run_job(path).status, "COMPLETED")
        r = self.traced(path)
        self.assertEqual(r.status, "COMPLETED", r)
        with open(self.trace, errors="replace") as f:
            lines = f.read().splitlines()
        creates = [line for line in lines if "O_CREAT" in line and ("run." in line or "spare" in line)]
        self.assertEqual(creates, [])
        self.assertEqual([line for line in lines if "unlink" in line and "run.NOOP" in line], [])
        self.assertEqual(os.listdir(os.path.join(self.instance_dir(), ".jobvisor", "markers")), [])

    def test_a_spare_that_is_not_one_plain_file_is_not_written_through(self):
        # a hard link at the spare's name must not let a marker write land in another file
        path = self.script('return { type = "NOOP", run = function(job) end }')
        self.assertEqual(self.run_job(path).status, "COMPLETED")
        jv = os.path.join(self.instance_dir(), ".jobvisor")
        victim = os.path.join(self.instance_dir(), "victim.txt")
        with open(victim, "w") as f:
            f.write("keep me")
        os.unlink(os.path.join(jv, "run-marker.spare"))
        os.link(victim, os.path.join(jv, "run-marker.spare"))
        r = self.run_job(self.script(
            'return { type = "SEE", run = function(job) return { prev = job.previous ~= nil } end }',
            name="see.lua"))
        self.assertEqual(r.status, "COMPLETED", r)
        with open(victim) as f:
            self.assertEqual(f.read(), "keep me")
        self.assertEqual(os.listdir(os.path.join(jv, "markers")), [])

    def test_the_run_marker_is_on_disk_before_the_first_job_mark(self):
        path = self.script("""return { type = "MARKS", run = function(job)
  job.mark("plan", { step = 1 })
  job.mark("plan", { step = 2 })
  job.unmark("plan")
end }""")
        r = self.traced(path)
        self.assertEqual(r.status, "COMPLETED", r)
        mc = traced_check(self.trace, self.instance_dir(), "run.MARKS.json")
        self.assertEqual(len(mc.at_mark), 2, mc.at_mark)
        for dst, pending in mc.at_mark:
            self.assertEqual(pending, [], f"'{dst}' written while the run marker was not on disk")
        # a marker that was on disk is removed durably too: no stale run.MARKS.json after a power cut
        self.assertEqual(mc.run_marker_pending(), [], "the run marker's removal never reached the disk")

    def test_a_failed_run_leaves_its_marker_on_disk(self):
        path = self.script('return { type = "BOOM", run = function(job) error("boom") end }')
        r = self.traced(path)
        self.assertEqual(r.status, "FAILED", r)
        mc = traced_check(self.trace, self.instance_dir(), "run.BOOM.json")
        self.assertTrue(os.path.exists(mc.run_marker))
        self.assertEqual(mc.run_marker_pending(), [], "the failed run's marker is only in the page cache")
        r2 = self.run_job(self.script("""return { type = "BOOM", run = function(job)
  return { previous = job.previous and job.previous.runId }
end }""", name="boom2.lua"))
        self.assertEqual(r2.result["output"]["previous"], r.events[0]["jobRunId"], r2)

    def test_a_named_job_id_gets_a_durable_completion_record(self):
        path = self.script('return { type = "NOOP", run = function(job) return { n = 1 } end }')
        r = self.traced(path, extra=("--job-id", "job-7"))
        self.assertEqual(r.status, "COMPLETED", r)
        tc = check_trace(self.trace, self.instance_dir())
        record = os.path.join(os.path.realpath(self.instance_dir()), ".jobvisor", "completed", "job-7.json")
        self.assertTrue(os.path.exists(record))
        self.assertEqual([m for m in tc.pending if m.path == record], [],
                         "the completion record is not on disk")
        self.assertGreaterEqual(tc.fsyncs, 2, tc.fsyncs)

    def test_a_kill_9_right_after_start_leaves_the_marker_for_the_next_run(self):
        # The marker is only in the page cache here (the script never reaches a second,
        # a progress report or a job.mark): a kill -9 of the run must not lose it.
        path = self.script("""return { type = "SPIN", run = function(job)
  if job.previous then return { previous = job.previous.runId } end
  while true do end
end }""")
        p = self.start_job(path)
        child = self.wait_child(p)
        self.wait_file(os.path.join(self.instance_dir(), ".jobvisor", "markers", "run.SPIN.json"))
        started = time.monotonic()
        os.killpg(child, signal.SIGKILL)
        r1 = self.finish(p)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(r1.code, 1, r1)
        r2 = self.run_job(path)
        self.assertEqual(r2.status, "COMPLETED", r2)
        self.assertEqual(r2.result["output"]["previous"], r1.events[0]["jobRunId"], r2)

    def test_a_long_backup_fsyncs_its_run_marker_once_and_its_progress_never(self):
        # Issue 12: every progress report used to rewrite the run marker durably (at most once a
        # second, two fsyncs each, on the job's own thread). Now the marker reaches the disk
        # once, before the backup's first job.mark, however long the run; progress goes to
        # run.BACKUP_INSTANCE.progress without an fsync, and still reaches the user.
        write_world(os.path.join(self.instance_dir(), "data"), 192 << 20)
        started = time.monotonic()
        r = self.traced("BACKUP_INSTANCE", extra=("--params", '{"backupId": "b1"}'))
        secs = time.monotonic() - started
        self.assertEqual(r.status, "COMPLETED", r)
        marker_syncs = [line for line in self.syncs() if "run.BACKUP_INSTANCE.json" in line]
        progress_syncs = [line for line in self.syncs() if "run.BACKUP_INSTANCE.progress" in line]
        self.assertEqual(len(marker_syncs), 1, f"{secs:.1f} s run: {marker_syncs}")
        self.assertEqual(progress_syncs, [])
        progress_writes = [line for line in self.syncscalls("rename")
                           if '"run.BACKUP_INSTANCE.progress"' in line]
        self.assertGreaterEqual(len(progress_writes), 2, f"{secs:.1f} s run wrote no progress file")
        percents = {e["percent"] for e in r.events if e.get("percent") is not None}
        self.assertGreaterEqual(len({p for p in percents if 5 < p < 90}), 3, sorted(percents))
        markers = os.listdir(os.path.join(self.instance_dir(), ".jobvisor", "markers"))
        self.assertEqual(markers, [], "a completed run left its marker or progress file")

    def syncs(self):
        with open(self.trace, errors="replace") as f:
            return [line for line in f if any(line.split(None, 1)[-1].startswith(s) for s in SYNCS)]

    def syncscalls(self, name):
        with open(self.trace, errors="replace") as f:
            return [line for line in f if line.split(None, 1)[-1].startswith(name)]

    def test_a_kill_9_mid_backup_tells_the_next_run_how_far_it_got(self):
        write_world(os.path.join(self.instance_dir(), "data"), 384 << 20)
        p = self.start_job("BACKUP_INSTANCE", params={"backupId": "b1"})
        child = self.wait_child(p)
        progress = os.path.join(self.instance_dir(), ".jobvisor", "markers", "run.BACKUP_INSTANCE.progress")
        deadline, seen = time.monotonic() + 60, None
        while time.monotonic() < deadline and p.poll() is None:
            try:
                with open(progress) as f:
                    seen = json.load(f).get("percent")
            except (OSError, ValueError):
                seen = None
            if seen is not None and seen > 5:
                break
            time.sleep(0.05)
        self.assertIsNotNone(seen, "the backup wrote no progress file while archiving")
        os.killpg(child, signal.SIGKILL)
        r1 = self.finish(p)
        self.assertEqual(r1.code, 1, r1)
        r2 = self.run_job("BACKUP_INSTANCE", params={"backupId": "b1"}, timeout=300)
        self.assertEqual(r2.status, "COMPLETED", r2)
        warn = [e["message"] for e in r2.events if e["kind"] == "log" and "did not finish" in e["message"]]
        self.assertEqual(len(warn), 1, r2.events[:5])
        self.assertIn(r1.events[0]["jobRunId"], warn[0])
        m = re.search(r" at (\d+)%$", warn[0])
        self.assertIsNotNone(m, warn[0])
        self.assertGreaterEqual(int(m.group(1)), int(seen), warn[0])
