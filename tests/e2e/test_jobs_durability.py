"""Every job that publishes files makes them durable before the rename that publishes them.

Each built-in job that publishes (BACKUP_INSTANCE, RESTORE_BACKUP, INSTALL_SERVER,
UPDATE_SERVER, ACTIVATE_BUILD, SYNC_MODS) runs under strace; the trace is replayed by
tests/lib/strace_durability.py, which asserts from the system calls themselves that every
file and directory entry of a published tree was made durable (a syncfs, or an fsync of
each file and directory) before the rename that published it, and that the renames
themselves were made durable (fsync of the parent) before the job ended. A restore of a
world with many files must use one syncfs rather than an fsync per file.
"""
import os
import shutil
import unittest

from jv_run import JobvisorTestCase, RunResult
from jobs_fault import run_cmd
import jobs_scenarios as js
from strace_durability import check_trace, traced_run


class Durability(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        if not shutil.which("strace"):
            self.fail("strace is not installed (make deps installs it)")

    def traced(self, scenario, expect_published):
        """Prepare the scenario, run its job under strace, check the trace; returns the check."""
        d = os.path.join(self.tmp, "d")
        scenario.prepare(d, self)
        inst = js.inst_dir(d)
        trace = os.path.join(self.tmp, "trace")
        p = traced_run(run_cmd(d, scenario.job, scenario.instance, scenario.params), trace)
        if "PTRACE" in p.stderr and p.returncode != 0:
            self.fail(f"strace cannot trace here: {p.stderr[-500:]}")
        r = RunResult(p.returncode, p.stdout, p.stderr)
        self.assertEqual(r.status, "COMPLETED", r)
        t = check_trace(trace, inst)
        self.assertEqual(t.violations, [], f"{scenario.job}: published before durable")
        published = sorted({os.path.relpath(dst, os.path.realpath(inst)) for _, dst, _, _ in t.publishes})
        for name in expect_published:
            self.assertIn(name, published, f"{scenario.job} did not publish '{name}'")
        return t

    def test_backup_publishes_archive_and_manifest_durably(self):
        s = js.BackupScenario()  # prepare() makes backup "base" untraced
        s.params = dict(s.params, backupId="b2")
        self.traced(s, ["backups/b2.tar.zst", "backups/b2.json"])

    def test_restore_publishes_the_world_with_one_syncfs(self):
        s = js.RestoreScenario()
        t = self.traced(s, ["data"])
        self.assertGreaterEqual(t.syncfs, 1, "restore published data/ without a syncfs")
        # 80 files restored: durability must not cost one fsync per file
        self.assertLess(t.fsyncs, 40, f"{t.fsyncs} fsyncs for a restore of 80 files")

    def test_restore_into_missing_data_dir_commits_durably(self):
        s = js.RestoreScenario()
        prepare = s.prepare

        def without_data(d, tc):
            prepare(d, tc)
            shutil.rmtree(os.path.join(js.inst_dir(d), "data"))
        s.prepare = without_data
        self.traced(s, ["data"])

    def test_install_publishes_build_spec_and_current_durably(self):
        self.traced(js.InstallScenario(), ["builds/b1", "current", "instance.json"])

    def test_update_publishes_build_and_links_durably(self):
        self.traced(js.UpdateScenario(), ["builds/b2", "current", "previous"])

    def test_activate_publishes_links_durably(self):
        self.traced(js.ActivateScenario(), ["current", "previous"])

    def test_sync_mods_publishes_mods_durably(self):
        self.traced(js.SyncModsScenario(), ["data/mods"])

    def test_sync_mods_into_missing_target_commits_durably(self):
        s = js.SyncModsScenario()
        prepare = s.prepare

        def fresh_target(d, tc):
            prepare(d, tc)
            s.params = dict(s.params, target="newmods")
        s.prepare = fresh_target
        self.traced(s, ["data/newmods"])

    def replay(self, lines):
        trace = os.path.join(self.tmp, "synthetic.trace")
        with open(trace, "w") as f:
            f.write("\n".join("100   " + x for x in lines) + "\n")
        return check_trace(trace, "/i")

    STAGE = [
        'mkdirat(3</i/.jobvisor/staging/r>, "t", 0755) = 0',
        'openat(4</i/.jobvisor/staging/r/t>, "a", O_WRONLY|O_CREAT|O_EXCL, 0600) = 5</i/.jobvisor/staging/r/t/a>',
        'write(5</i/.jobvisor/staging/r/t/a>, "hello", 5) = 5',
    ]
    PUBLISH = 'renameat2(6</i/.jobvisor/staging/r>, "t", 7</i>, "data", RENAME_EXCHANGE) = 0'

    def test_checker_reports_a_tree_published_before_its_files_are_durable(self):
        t = self.replay(self.STAGE + [self.PUBLISH, 'fsync(7</i>) = 0'])
        at_publish = [v for v in t.violations if v.startswith("trace line 4:")]
        self.assertEqual(len(at_publish), 2, t.violations)
        self.assertIn("'data' before its entry change of '/i/.jobvisor/staging/r/t/a' (openat O_CREAT",
                      at_publish[0])
        self.assertIn("'data' before its data change of '/i/.jobvisor/staging/r/t/a' (write",
                      at_publish[1])

    def test_checker_reports_a_file_fsynced_but_its_directory_entry_not(self):
        t = self.replay(self.STAGE + ['fsync(5</i/.jobvisor/staging/r/t/a>) = 0', self.PUBLISH,
                                      'fsync(7</i>) = 0'])
        at_publish = [v for v in t.violations if v.startswith("trace line 5:")]
        self.assertEqual(len(at_publish), 1, t.violations)
        self.assertIn("entry change of '/i/.jobvisor/staging/r/t/a'", at_publish[0])

    def test_checker_accepts_fsync_of_each_file_and_directory(self):
        t = self.replay(self.STAGE + ['fsync(5</i/.jobvisor/staging/r/t/a>) = 0',
                                      'fsync(4</i/.jobvisor/staging/r/t>) = 0', self.PUBLISH,
                                      'fsync(7</i>) = 0'])
        self.assertEqual(t.violations, [])

    def test_checker_accepts_syncfs_and_requires_the_parent_fsync(self):
        t = self.replay(self.STAGE + ['syncfs(4</i/.jobvisor/staging/r/t>) = 0', self.PUBLISH,
                                      'fsync(7</i>) = 0'])
        self.assertEqual(t.violations, [])
        self.assertEqual(len(t.publishes), 1)
        t = self.replay(self.STAGE + ['syncfs(4</i/.jobvisor/staging/r/t>) = 0', self.PUBLISH])
        self.assertEqual(len(t.violations), 1, t.violations)
        self.assertIn("at the end of the job: entry change of '/i/data'", t.violations[0])

    def test_checker_follows_renames_inside_staging_and_failed_calls(self):
        t = self.replay(self.STAGE + [
            'renameat(4</i/.jobvisor/staging/r/t>, "a", 4</i/.jobvisor/staging/r/t>, "b") = 0',
            'fsync(5</i/.jobvisor/staging/r/t/a>) = -1 EIO (Input/output error)',
            'syncfs(4</i/.jobvisor/staging/r/t> <unfinished ...>',
            '<... syncfs resumed>) = -1 EIO (Input/output error)',
            self.PUBLISH, 'fsync(7</i>) = 0'])
        # the failed fsync and syncfs made nothing durable; the write follows the file to t/b
        self.assertIn("trace line 8: '.jobvisor/staging/r/t' published as 'data' before its data "
                      "change of '/i/.jobvisor/staging/r/t/b' (write, trace line 3) reached the disk",
                      t.violations)
        self.assertFalse([v for v in t.violations if "data change of '/i/.jobvisor/staging/r/t/a'" in v])


if __name__ == "__main__":
    unittest.main()
