"""End-to-end: the `fs` module through `jobvisor run` — hostile paths are refused with a
clear message and nothing outside the instance directory changes; the staging /
commit / swap / link_swap workflow works and leaves no staging behind."""
import os
import signal
import time
import unittest

from fsapi_e2e import FsapiCase


class FsPaths(FsapiCase):
    def setUp(self):
        super().setUp()
        os.makedirs(self.ipath("data"))
        # A symlink planted in the instance that points at a directory outside.
        os.symlink(self.outside, self.ipath("data/evil"))
        os.symlink("../../../../outside", self.ipath("data/evil_rel"))

    def test_absolute_path_is_refused(self):
        res = self.run_lua(f'fs.write("{self.outside}/pwned.txt", "x")')
        self.assertFailedWith(res, "absolute paths are not allowed")
        self.assertFalse(os.path.exists(os.path.join(self.outside, "pwned.txt")))

    def test_dotdot_is_refused(self):
        res = self.run_lua('return { s = fs.read("../../../outside/secret.txt") }')
        self.assertFailedWith(res, "'..' is not allowed")
        self.assertNotIn("do not touch", res.stdout)

    def test_writes_through_a_planted_symlink_are_refused(self):
        for call in ('fs.write("data/evil/pwned.txt", "x")',
                     'fs.write("data/evil_rel/pwned.txt", "x")',
                     'fs.mkdir("data/evil/newdir")',
                     'fs.remove("data/evil/secret.txt")',
                     'fs.commit(fs.staging(), "data/evil/x")',
                     'http.download("http://127.0.0.1:9/x", "data/evil/x", {sha256 = string.rep("0", 64)})',
                     'archive.create("data", "data/evil/b.tar.zst")'):
            with self.subTest(call=call):
                res = self.run_lua(call)
                self.assertFailedWith(res, "leads outside the instance directory")

    def test_reads_through_a_planted_symlink_are_refused(self):
        for call in ('fs.read("data/evil/secret.txt")', 'fs.list("data/evil")',
                     'fs.sha256("data/evil_rel/secret.txt")', 'archive.create("data/evil", "b.tar.zst")'):
            with self.subTest(call=call):
                res = self.run_lua(call)
                self.assertFailedWith(res, "leads outside the instance directory")
                self.assertNotIn("do not touch", res.stdout)

    def test_remove_tree_removes_the_link_not_the_target(self):
        res = self.run_lua('local ok, e = pcall(fs.remove_tree, "data/evil/secret.txt")\n'
                           'assert(not ok and e:find("symlink"), e)\n'
                           'return { removed = fs.remove_tree("data/evil") }')
        out = self.assertCompleted(res)
        self.assertTrue(out["removed"])
        self.assertFalse(os.path.lexists(self.ipath("data/evil")))
        self.assertTrue(os.path.exists(os.path.join(self.outside, "secret.txt")))

    def test_root_and_jobvisor_dir_are_protected(self):
        res = self.run_lua('fs.remove_tree(".")')
        self.assertFailedWith(res, "refusing to act on the instance directory itself")
        res = self.run_lua('fs.write(".jobvisor/state.json", "{}")')
        self.assertFailedWith(res, ".jobvisor/ belongs to jobvisor")
        res = self.run_lua('fs.remove_tree(".jobvisor")')
        self.assertFailedWith(res, ".jobvisor/ belongs to jobvisor")
        self.assertTrue(os.path.isdir(self.ipath(".jobvisor")))

    def test_misuse_raises_with_the_argument(self):
        res = self.run_lua('fs.write("a.txt", {})')
        self.assertFailedWith(res, "bad argument #2 to 'write'")
        res = self.run_lua('fs.mkdir("a", {parent = true})')
        self.assertFailedWith(res, "unknown option 'parent'")


class FsWorkflow(FsapiCase):
    def test_stage_commit_swap_and_link_swap(self):
        os.makedirs(self.ipath("data/world"))
        with open(self.ipath("data/world/level.dat"), "w") as f:
            f.write("old world")
        res = self.run_lua('''
            local st = fs.staging()
            assert(st:find("^%.jobvisor/staging/"), st)
            fs.mkdir(st .. "/world")
            fs.write(st .. "/world/level.dat", "new world", {mode = 384})
            -- build 1 and 2, activate 2 atomically
            local b1, b2 = fs.staging(), fs.staging()
            fs.write(b1 .. "/server", "v1")
            fs.write(b2 .. "/server", "v2")
            assert(fs.commit(b1, "builds/1"))
            assert(fs.commit(b2, "builds/2"))
            assert(fs.link_swap("current", "builds/1"))
            assert(fs.link_swap("current", "builds/2"))
            -- swap the new world in; the old one ends up in staging, then goes
            assert(fs.swap(st, "data"))
            local old = fs.read(st .. "/world/level.dat")
            fs.remove_tree(st)
            local s = fs.stat("current")
            return { old = old, new = fs.read("data/world/level.dat"), link = s.target,
                     server = fs.read("current/server"), mode = fs.stat("data/world/level.dat").mode,
                     listing = fs.list("builds") }
        ''')
        out = self.assertCompleted(res)
        self.assertEqual(out["old"], "old world")
        self.assertEqual(out["new"], "new world")
        self.assertEqual(out["link"], "builds/2")
        self.assertEqual(out["server"], "v2")
        self.assertEqual(out["mode"], 0o600)
        self.assertEqual([e["name"] for e in out["listing"]], ["1", "2"])
        self.assertEqual(os.readlink(self.ipath("current")), "builds/2")
        # A successful run leaves no staging directory behind.
        self.assertEqual(os.listdir(self.ipath(".jobvisor/staging")), [])

    def test_failed_run_staging_is_listed_and_cleaned_by_a_later_run(self):
        res = self.run_lua('local st = fs.staging(); fs.write(st .. "/half", "x"); error("boom")')
        self.assertFailedWith(res, "boom")
        left = os.listdir(self.ipath(".jobvisor/staging"))
        self.assertEqual(len(left), 1)
        res = self.run_lua('local runs = fs.stale_staging(); return { runs = runs, cleaned = fs.clean_staging() }')
        out = self.assertCompleted(res)
        self.assertEqual(out["runs"], left)
        self.assertEqual(out["cleaned"], 1)
        self.assertEqual(os.listdir(self.ipath(".jobvisor/staging")), [])

    def test_expected_failures_return_nil_and_message(self):
        res = self.run_lua('''
            local a, ea = fs.read("missing.txt")
            local b, eb = fs.link_swap("current", "builds/none")
            fs.mkdir("full/dir"); fs.write("full/dir/f", "x")
            local c, ec = fs.remove("full")
            local d, ed = fs.commit(fs.staging(), "full")
            return { a = a == nil, ea = ea, eb = eb, ec = ec, ed = ed, ex = fs.exists("missing.txt"),
                     free = select(1, fs.free_space()) > 0 }
        ''')
        out = self.assertCompleted(res)
        self.assertEqual(out["ea"], "cannot read 'missing.txt': No such file or directory")
        self.assertIn("does not exist", out["eb"])
        self.assertIn("not empty", out["ec"])
        self.assertIn("not empty", out["ed"])
        self.assertFalse(out["ex"])
        self.assertTrue(out["free"])


class CancelCleanup(FsapiCase):
    def test_remove_tree_still_cleans_up_after_a_cancel(self):
        path = self.script('''return { type = "FSAPI_TEST", params = {}, run = function(job)
            local st = fs.staging()
            for i = 1, 50 do fs.write(st .. "/f" .. i, string.rep("x", 1000)) end
            log.info("staged")
            local ok, err = pcall(job.sleep, 60)      -- raises the cancellation error
            assert(job.cancelled())
            assert(fs.remove_tree(st), "cleanup must run while cancel is pending")
            log.info("cleaned")
            error(err, 0)
        end }''')
        proc = self.start_job(path)
        deadline = time.time() + 30
        for line in proc.stdout:
            if "staged" in line or time.time() > deadline:
                break
        os.kill(proc.pid, signal.SIGTERM)
        res = self.finish(proc)
        self.assertEqual(res.code, 3, res)
        self.assertIn("cleaned", res.stdout + res.stderr)
        staging = self.ipath(".jobvisor/staging")
        self.assertEqual([f for _, _, fs in os.walk(staging) for f in fs], [])


if __name__ == "__main__":
    unittest.main()
