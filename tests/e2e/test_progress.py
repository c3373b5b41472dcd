"""Percent during the long steps of the built-in jobs, as `jobvisor run --json` shows it.

Issue 17: the `progress = {from =, to =}` option every built-in job passes was ignored, so
downloads, archiving, extraction and verification showed no percent at all (a backup jumped
2 % -> 92 %). Each test here runs a real built-in job on data big enough that its long step
lasts at least a second, and asserts several distinct percents strictly inside the step's
range. Downloads are slowed by the loopback server (a real rate limit, so they last seconds
on any machine); archive steps are CPU/disk bound, so their data set grows until the step
lasts >= 1 s on the machine running the test, and the assertion is made on that run."""
import math
import os
import shutil
import unittest
from datetime import datetime

from jv_run import JobvisorTestCase
from jobs_fixtures import FileServer, make_tar, sha256_bytes, write_file

MIN_STEP_S = 1.0
MIN_PERCENTS = 3
# 16 letters: 4 bits of entropy a byte, so zstd really has to work (random bytes it stores raw).
_LETTERS = bytes.maketrans(bytes(range(256)), bytes(b"abcdefghijklmnop"[i % 16] for i in range(256)))


def ts(ev):
    return datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()


def write_game_data(root, total, chunk=32 << 20):
    """`total` bytes of compressible, non-repeating data in files of up to `chunk` bytes."""
    os.makedirs(root, exist_ok=True)
    i = 0
    while total > 0:
        n = min(chunk, total)
        write_file(os.path.join(root, "world", "region%03d.mca" % i), os.urandom(n).translate(_LETTERS))
        total -= n
        i += 1


class Progress(JobvisorTestCase):
    def percents(self, r):
        return [(ts(e), e["percent"]) for e in r.events
                if e["kind"] in ("progress", "status") and e.get("percent") is not None]

    def inside(self, r, lo, hi):
        """The distinct percents strictly between lo and hi, and how long the step lasted: from
        the last event at or below lo (or the run's first event) to the first at or above hi."""
        pts = self.percents(r)
        start = max((t for t, p in pts if p <= lo), default=ts(r.events[0]))
        end = min((t for t, p in pts if p >= hi and t >= start), default=None)
        self.assertIsNotNone(end, f"no event at or above {hi}%: {pts}")
        return sorted({p for _, p in pts if lo < p < hi}), end - start

    def assert_step_reports(self, r, lo, hi):
        self.assertEqual(r.status, "COMPLETED", r)
        inner, secs = self.inside(r, lo, hi)
        self.assertGreaterEqual(secs, MIN_STEP_S, f"the step lasted only {secs:.2f}s")
        self.assertGreaterEqual(len(inner), MIN_PERCENTS,
                                f"{secs:.2f}s between {lo}% and {hi}% showed only {inner}: {self.percents(r)}")
        # What the user reads climbs: each percent inside the step is higher than the one before.
        seq = [p for _, p in self.percents(r) if lo < p < hi]
        self.assertEqual(seq, sorted(seq))
        return inner, secs

    def grow_until_long(self, prepare, run, lo, hi, start=96 << 20, limit=3 << 30):
        """Grow the data set until the step lasts MIN_STEP_S, then check that run. Each
        round doubles it, or more (up to x4) when the step was far too short, so a fast
        machine does not redo the whole job once per doubling."""
        size = start
        while True:
            prepare(size)
            r = run()
            self.assertEqual(r.status, "COMPLETED", r)
            _, secs = self.inside(r, lo, hi)
            print("%s: %.2f s between %s%% and %s%% with %d MiB" % (self.id(), secs, lo, hi, size >> 20))
            if secs >= MIN_STEP_S or size >= limit:
                return self.assert_step_reports(r, lo, hi)
            size = min(limit, size * min(4, max(2, math.ceil(1.2 * MIN_STEP_S / max(secs, 0.01)))))

    # ---- archive create, verify, extract ------------------------------------------------

    def fresh_instance(self, size):
        shutil.rmtree(self.instance_dir(), ignore_errors=True)
        write_game_data(os.path.join(self.instance_dir(), "data"), size)

    def test_backup_reports_percent_while_archiving(self):
        # backup_instance.lua: 2 % before, archive.create from 5 to 90, 92 % to commit.
        self.grow_until_long(self.fresh_instance,
                             lambda: self.run_job("BACKUP_INSTANCE", params={"backupId": "b1"}, timeout=600),
                             5, 90)

    def backed_up(self, size):
        self.fresh_instance(size)
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": "b1"}, timeout=600)
        self.assertEqual(r.status, "COMPLETED", r)

    def test_verify_reports_percent(self):
        # verify_backup.lua: 1 % before, archive.verify from 1 to 99.
        self.grow_until_long(self.backed_up,
                             lambda: self.run_job("VERIFY_BACKUP", params={"backupId": "b1"}, timeout=600),
                             1, 99)

    def test_restore_reports_percent_while_extracting(self):
        # restore_backup.lua: archive.extract (verifying against the manifest) from 1 to 85.
        self.grow_until_long(self.backed_up,
                             lambda: self.run_job("RESTORE_BACKUP", params={"backupId": "b1"}, timeout=600),
                             1, 85)

    # ---- downloads: a rate-limited loopback server ---------------------------------------

    def test_install_reports_percent_while_downloading(self):
        www = os.path.join(self.tmp, "www")
        tree = os.path.join(self.tmp, "tree")
        write_file(os.path.join(tree, "server"), "#!/bin/sh\nexit 0\n", 0o755)
        write_file(os.path.join(tree, "assets.pak"), os.urandom(3 << 20))
        os.makedirs(www)
        sha = make_tar(tree, os.path.join(www, "b1.tar.zst"))
        srv = FileServer(www, rate=1 << 20)  # ~3 s for the 3 MiB archive
        self.addCleanup(srv.close)
        r = self.run_job("INSTALL_SERVER", timeout=120, params={
            "source": {"url": srv.url("b1.tar.zst"), "sha256": sha}, "build": "b1",
            "instance": {"command": ["${build}/server"], "cwd": "data"}})
        # builds.lua: the download runs from 2 to 51.8 %, extraction from 51.8 to 84 %.
        inner, secs = self.assert_step_reports(r, 2, 51.8)
        self.assertGreaterEqual(secs, 2.0)

    def test_sync_mods_reports_percent_per_download(self):
        www = os.path.join(self.tmp, "www")
        os.makedirs(www)
        mods = []
        for name in ("alpha.jar", "beta.jar"):
            data = os.urandom(3 << 19)
            write_file(os.path.join(www, name), data)
            mods.append({"name": name, "sha256": sha256_bytes(data)})
        srv = FileServer(www, rate=1 << 20)  # 1.5 s a mod
        self.addCleanup(srv.close)
        for m in mods:
            m["url"] = srv.url(m["name"])
        os.makedirs(os.path.join(self.instance_dir(), "data"))
        r = self.run_job("SYNC_MODS", params={"mods": mods}, timeout=120)
        # sync_mods.lua: mod i of n downloads from 10 + 80 (i-1)/n to 10 + 80 i/n.
        self.assert_step_reports(r, 10, 50)
        self.assert_step_reports(r, 50, 90)


if __name__ == "__main__":
    unittest.main()
