"""BACKUP_INSTANCE, VERIFY_BACKUP and RESTORE_BACKUP end to end through `jobvisor run`."""
import json
import os
import re
import shutil
import signal
import subprocess
import time
import unittest

from instance_helpers import live_status
from jv_run import JobvisorTestCase
from jobs_fault import tar_matches_manifest
from jobs_fixtures import leftovers, populate, read_json, sha256_file, tree_digest, write_file


class BackupBase(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.inst = self.instance_dir()
        self.datadir = os.path.join(self.inst, "data")
        self.digest = populate(self.datadir, seed=7)

    def backup(self, **params):
        r = self.run_job("BACKUP_INSTANCE", params=params)
        self.assertEqual(r.status, "COMPLETED", r)
        return r.result["output"]

    def manifest(self, bid):
        return read_json(os.path.join(self.inst, "backups", bid + ".json"))

    def archive(self, bid):
        return os.path.join(self.inst, "backups", bid + ".tar.zst")

    def assert_clean(self):
        self.assertEqual(leftovers(self.inst), [])
        self.assertEqual(os.listdir(os.path.join(self.inst, ".jobvisor", "markers")), [])


class Backup(BackupBase):
    def test_backup_with_generated_id(self):
        out = self.backup()
        bid = out["backupId"]
        self.assertRegex(bid, r"^\d{8}T\d{6}Z(-\d+)?$")
        m = self.manifest(bid)
        self.assertIs(m["complete"], True)
        self.assertEqual(m["backupId"], bid)
        self.assertEqual(m["instanceId"], "test1")
        self.assertRegex(m["createdAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertIsNone(m["build"])
        self.assertEqual(m["format"], 1)
        self.assertEqual(out["sha256"], sha256_file(self.archive(bid)))
        self.assertEqual(out["sha256"], m["sha256"])
        self.assertEqual(out["bytes"], os.path.getsize(self.archive(bid)))
        files = {k: v for k, v in self.digest.items() if v[0] == "file"}
        self.assertEqual(out["files"], len(files))
        self.assertEqual(out["entries"], len(self.digest))
        # the manifest describes data/ exactly
        by_path = {f["path"]: f for f in m["files"]}
        self.assertEqual(set(by_path), set(self.digest))
        for path, (typ, size, mode, content) in self.digest.items():
            f = by_path[path]
            self.assertEqual(f["type"], typ, path)
            if typ == "file":
                self.assertEqual((f["size"], f["sha256"], f["mode"]), (size, content, mode), path)
            elif typ == "symlink":
                self.assertEqual(f["target"], content)
        self.assertIsNone(tar_matches_manifest(self.archive(bid), m))
        self.assertEqual(tree_digest(self.datadir), self.digest)  # data/ untouched
        self.assert_clean()

    def test_backup_records_the_active_build(self):
        os.makedirs(os.path.join(self.inst, "builds", "b42"))
        os.symlink("builds/b42", os.path.join(self.inst, "current"))
        out = self.backup(backupId="withbuild")
        self.assertEqual(self.manifest(out["backupId"])["build"], "b42")

    def test_explicit_id_and_duplicate_is_refused(self):
        out = self.backup(backupId="nightly-1.a_b")
        self.assertEqual(out["backupId"], "nightly-1.a_b")
        before = tree_digest(os.path.join(self.inst, "backups"))
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": "nightly-1.a_b"})
        self.assertEqual(r.status, "FAILED")
        self.assertEqual(r.error_message, "backup 'nightly-1.a_b' already exists")
        self.assertEqual(tree_digest(os.path.join(self.inst, "backups")), before)

    def test_generated_ids_are_distinct(self):
        ids = {self.backup()["backupId"] for _ in range(3)}
        self.assertEqual(len(ids), 3)
        for bid in ids:
            self.assertIs(self.manifest(bid)["complete"], True)

    def test_exclude_patterns(self):
        write_file(os.path.join(self.datadir, "logs", "x.log"), "log")
        write_file(os.path.join(self.datadir, "world", "cache", "c.tmp"), "tmp")
        out = self.backup(backupId="ex", exclude=["*.log", "world/cache", "f7_1*"])
        paths = {f["path"] for f in self.manifest("ex")["files"]}
        self.assertNotIn("logs/x.log", paths)
        self.assertFalse([p for p in paths if p.startswith("world/cache")])
        self.assertFalse([p for p in paths if os.path.basename(p).startswith("f7_1")])
        self.assertIn("server.properties", paths)
        self.assertEqual(self.manifest("ex")["exclude"], ["*.log", "world/cache", "f7_1*"])
        self.assertIsNone(tar_matches_manifest(self.archive("ex"), self.manifest("ex")))
        self.assertEqual(out["entries"], len(paths))

    def test_invalid_backup_ids_are_refused_before_touching_disk(self):
        for bad in ["../escape", "", ".hidden", "a/b", "x" * 65, "-dash", "sp ace", "tab\tx", "new\nline"]:
            r = self.run_job("BACKUP_INSTANCE", params={"backupId": bad})
            self.assertEqual(r.status, "FAILED", bad)
            self.assertIn("invalid backupId", r.error_message)
            self.assertIn("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", r.error_message)
            self.assertFalse(os.path.exists(os.path.join(self.inst, "backups")), bad)
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": 12})
        self.assertEqual(r.status, "FAILED")
        self.assertIn("parameter 'backupId' must be string", r.error_message)

    def test_bad_exclude_and_quiesce_are_refused(self):
        cases = [
            ({"exclude": [1]}, "exclude[1] must be a string"),
            ({"exclude": [""]}, "invalid exclude[1]"),
            ({"quiesce": {"before": ["save-off\nstop"]}}, "invalid quiesce.before[1]"),
            ({"quiesce": {"after": [""]}}, "invalid quiesce.after[1]"),
            ({"quiesce": {"during": ["x"]}}, "only 'before' and 'after'"),
            ({"quiesce": {"before": "save-off"}}, "quiesce.before must be an array of strings"),
        ]
        for params, want in cases:
            r = self.run_job("BACKUP_INSTANCE", params=params)
            self.assertEqual(r.status, "FAILED", params)
            self.assertIn(want, r.error_message, params)
            self.assertFalse(os.path.exists(os.path.join(self.inst, "backups")))

    def test_quiesce_lines_are_skipped_when_the_server_is_stopped(self):
        r = self.run_job("BACKUP_INSTANCE", params={
            "backupId": "q", "quiesce": {"before": ["save-off", "save-all flush"], "after": ["save-on"]}})
        self.assertEqual(r.status, "COMPLETED", r)
        logs = [e["message"] for e in r.events if e["kind"] == "log"]
        self.assertTrue(any("not running: no quiesce lines sent" in m for m in logs), logs)

    def test_instance_without_data_dir_fails_clearly(self):
        shutil.rmtree(self.datadir)
        r = self.run_job("BACKUP_INSTANCE")
        self.assertEqual(r.status, "FAILED")
        self.assertEqual(r.error_message, "instance 'test1' has no data/ directory to back up")

    def test_a_symlinked_data_dir_is_refused(self):
        os.rename(self.datadir, os.path.join(self.inst, "real-data"))
        os.symlink("real-data", self.datadir)
        r = self.run_job("BACKUP_INSTANCE")
        self.assertEqual(r.status, "FAILED")
        self.assertIn("data/ of instance 'test1' is a symlink (to 'real-data')", r.error_message)
        self.assertFalse(os.path.exists(os.path.join(self.inst, "backups")))

    def test_leftover_of_an_interrupted_backup_is_replaced(self):
        write_file(self.archive("again"), b"half an archive")
        write_file(os.path.join(self.inst, "backups", ".again.json.tmp.4242"), b"{\"comp")
        out = self.backup(backupId="again")
        self.assertIsNone(tar_matches_manifest(self.archive("again"), self.manifest("again")))
        self.assertEqual(out["sha256"], sha256_file(self.archive("again")))
        self.assert_clean()

    def test_progress_is_reported(self):
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": "p"})
        pct = [e["percent"] for e in r.events if e["kind"] == "progress" and e["percent"] is not None]
        self.assertTrue(pct, r.events)
        self.assertEqual(pct, sorted(pct))

    def test_cancel_leaves_no_partial_backup(self):
        write_file(os.path.join(self.datadir, "world", "huge.bin"), os.urandom(160 << 20))
        p = self.start_job("BACKUP_INSTANCE", params={"backupId": "cancelled"})
        self.wait_child(p)
        time.sleep(0.4)
        p.send_signal(signal.SIGTERM)
        r = self.finish(p, timeout=60)
        if r.status == "COMPLETED":
            self.skipTest("the backup finished before the cancel arrived")
        self.assertEqual(r.status, "CANCELLED", r)
        self.assertFalse(os.path.exists(self.archive("cancelled")))
        self.assertFalse(os.path.exists(os.path.join(self.inst, "backups", "cancelled.json")))
        staging = os.path.join(self.inst, ".jobvisor", "staging")
        self.assertEqual([f for _, _, fs in os.walk(staging) for f in fs], [])


class DiskFull(BackupBase):
    """BACKUP on a 2 MiB tmpfs: fails cleanly, leaves no partial backup."""

    def setUp(self):
        super().setUp()
        self.mnt = os.path.join(self.tmp, "small")
        os.makedirs(self.mnt)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", self.mnt],
                           capture_output=True, text=True)
        if p.returncode != 0:
            os.rmdir(self.mnt)
            self.skipTest(f"cannot mount a small tmpfs (needs root): {p.stderr.strip()}")

    def tearDown(self):
        subprocess.run(["umount", self.mnt], capture_output=True)
        super().tearDown()

    def test_disk_full_fails_cleanly(self):
        # the instance lives on the small filesystem: 1.3 MiB of incompressible data
        # fits, a second copy of it inside an archive does not
        self.data = self.mnt
        inst = self.instance_dir()
        datadir = os.path.join(inst, "data")
        os.makedirs(datadir)
        write_file(os.path.join(datadir, "world.bin"), os.urandom(1300 * 1024))
        write_file(os.path.join(datadir, "small.txt"), "hello")
        before = tree_digest(datadir)
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": "full"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("No space left on device", r.error_message)
        self.assertTrue(r.result["error"]["retryable"])
        self.assertEqual(tree_digest(datadir), before)
        backups = os.path.join(inst, "backups")
        self.assertEqual(os.listdir(backups) if os.path.isdir(backups) else [], [])
        staging = os.path.join(inst, ".jobvisor", "staging")
        self.assertEqual([f for _, _, fs in os.walk(staging) for f in fs], [])
        st = os.statvfs(self.mnt)
        self.assertGreater(st.f_bavail * st.f_frsize, 600 * 1024)  # the partial archive is gone


class Verify(BackupBase):
    def setUp(self):
        super().setUp()
        self.backup(backupId="b1")

    def test_verify_ok(self):
        r = self.run_job("VERIFY_BACKUP", params={"backupId": "b1"})
        self.assertEqual(r.status, "COMPLETED", r)
        m = self.manifest("b1")
        self.assertEqual(r.result["output"], {"backupId": "b1", "files": sum(
            1 for f in m["files"] if f["type"] == "file"), "entries": len(m["files"]), "bytes": m["bytes"]})

    def test_one_flipped_byte_fails_verify(self):
        path = self.archive("b1")
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x01]))
        r = self.run_job("VERIFY_BACKUP", params={"backupId": "b1"})
        self.assertEqual(r.status, "FAILED")
        self.assertTrue(r.error_message.startswith("backup 'b1' is corrupt: "), r.error_message)

    def test_first_bad_entry_is_named(self):
        m = self.manifest("b1")
        victim = next(f for f in m["files"] if f["type"] == "file" and f["size"] > 0)
        victim["sha256"] = "0" * 64
        write_file(os.path.join(self.inst, "backups", "b1.json"), json.dumps(m))
        r = self.run_job("VERIFY_BACKUP", params={"backupId": "b1"})
        self.assertEqual(r.status, "FAILED")
        self.assertIn("backup 'b1' is corrupt", r.error_message)
        self.assertIn(victim["path"], r.error_message)

    def test_missing_and_incomplete_backups(self):
        r = self.run_job("VERIFY_BACKUP", params={"backupId": "nope"})
        self.assertEqual(r.error_message, "backup 'nope' does not exist")
        shutil.copy(self.archive("b1"), self.archive("orphan"))
        r = self.run_job("VERIFY_BACKUP", params={"backupId": "orphan"})
        self.assertIn("backup 'orphan' is incomplete: its archive has no manifest", r.error_message)
        m = self.manifest("b1")
        m["complete"] = False
        write_file(os.path.join(self.inst, "backups", "orphan.json"), json.dumps(m))
        r = self.run_job("VERIFY_BACKUP", params={"backupId": "orphan"})
        self.assertIn("backup 'orphan' is incomplete: its manifest is not marked complete", r.error_message)
        write_file(os.path.join(self.inst, "backups", "orphan.json"), "{not json")
        r = self.run_job("VERIFY_BACKUP", params={"backupId": "orphan"})
        self.assertIn("backup 'orphan' has an unreadable manifest", r.error_message)
        os.remove(self.archive("b1"))
        r = self.run_job("VERIFY_BACKUP", params={"backupId": "b1"})
        self.assertIn("backup 'b1' is damaged: its archive 'backups/b1.tar.zst' is missing", r.error_message)

    def test_params(self):
        r = self.run_job("VERIFY_BACKUP", params={})
        self.assertIn("missing required parameter 'backupId'", r.error_message)
        r = self.run_job("VERIFY_BACKUP", params={"backupId": "../b1"})
        self.assertIn("invalid backupId '../b1'", r.error_message)


class Restore(BackupBase):
    def setUp(self):
        super().setUp()
        self.backup(backupId="b1")

    def mutate(self):
        os.remove(os.path.join(self.datadir, "server.properties"))
        write_file(os.path.join(self.datadir, "new-file.txt"), "added after the backup")
        write_file(os.path.join(self.datadir, "start.sh"), "#!/bin/sh\necho changed\n", 0o700)
        shutil.rmtree(os.path.join(self.datadir, "world", "region"))
        os.chmod(os.path.join(self.datadir, "config"), 0o700)
        self.assertNotEqual(tree_digest(self.datadir), self.digest)

    def test_restore_brings_back_the_exact_tree(self):
        self.mutate()
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b1"})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(r.result["output"]["backupId"], "b1")
        self.assertEqual(r.result["output"]["files"], sum(1 for v in self.digest.values() if v[0] == "file"))
        self.assertEqual(tree_digest(self.datadir), self.digest)
        self.assert_clean()

    def test_restore_without_data_dir_creates_it(self):
        shutil.rmtree(self.datadir)
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b1"})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(tree_digest(self.datadir), self.digest)

    def test_corrupt_backup_never_touches_data(self):
        self.mutate()
        current = tree_digest(self.datadir)
        path = self.archive("b1")
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) - 40)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x80]))
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b1"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("backup 'b1' is corrupt or unreadable", r.error_message)
        self.assertIn("data/ was not touched", r.error_message)
        self.assertEqual(tree_digest(self.datadir), current)
        staging = os.path.join(self.inst, ".jobvisor", "staging")
        self.assertEqual([f for _, _, fs in os.walk(staging) for f in fs], [])

    def test_manifest_mismatch_never_touches_data(self):
        self.mutate()
        current = tree_digest(self.datadir)
        m = self.manifest("b1")
        victim = next(f for f in m["files"] if f["type"] == "file" and f["size"] > 0)
        victim["sha256"] = "f" * 64
        write_file(os.path.join(self.inst, "backups", "b1.json"), json.dumps(m))
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b1"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn(victim["path"], r.error_message)
        self.assertEqual(tree_digest(self.datadir), current)

    def test_a_data_path_that_is_not_a_directory_is_refused(self):
        os.rename(self.datadir, os.path.join(self.inst, "real-data"))
        os.symlink("real-data", self.datadir)
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b1"})
        self.assertEqual(r.status, "FAILED")
        self.assertIn("data/ of instance 'test1' is a symlink, not a directory", r.error_message)
        self.assertEqual(os.readlink(self.datadir), "real-data")

    def test_missing_backup_and_bad_params(self):
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "nope"})
        self.assertEqual(r.error_message, "backup 'nope' does not exist")
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "a/../b1"})
        self.assertIn("invalid backupId", r.error_message)
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b1", "restart": "yes"})
        self.assertIn("parameter 'restart' must be boolean", r.error_message)
        self.assertEqual(tree_digest(self.datadir), self.digest)

    def test_restart_flag_on_a_stopped_instance(self):
        self.mutate()
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b1", "restart": True})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(tree_digest(self.datadir), self.digest)


DEMO = os.environ.get("JV_DEMO_SERVER_BIN", "")


@unittest.skipUnless(DEMO, "needs JV_DEMO_SERVER_BIN (the demo game server)")
class WithServer(BackupBase):
    """Backups and restores of a running demo game server."""

    def setUp(self):
        super().setUp()
        build = os.path.join(self.inst, "builds", "b1")
        os.makedirs(build)
        shutil.copy2(DEMO, os.path.join(build, "server"))
        os.symlink("builds/b1", os.path.join(self.inst, "current"))
        spec = {"command": ["${build}/server", "--port", "0", "--ready-delay-ms", "100",
                            "--autosave-ms", "600000"],
                "cwd": "data", "stop": {"command": "stop", "timeoutSeconds": 10},
                "ready": {"logPattern": "Done \\(", "timeoutSeconds": 15},
                "restart": {"policy": "never"}}
        write_file(os.path.join(self.inst, "instance.json"), json.dumps(spec))
        self.addCleanup(self.stop_server)
        r = self.run_job("START_INSTANCE")
        self.assertEqual(r.status, "COMPLETED", r)
        self.pid = r.result["output"]["pid"]

    def stop_server(self):
        if os.path.exists(os.path.join(self.inst, ".jobvisor", "monitor.sock")):
            self.run_job("STOP_INSTANCE", params={"force": True}, timeout=60)

    def console(self):
        with open(os.path.join(self.inst, "logs", "console.log"), errors="replace") as f:
            return f.read()

    def state(self):
        return live_status(self.inst)

    def test_quiesce_lines_around_the_archive(self):
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": "live", "quiesce": {
            "before": ["save-off", "save-all"], "after": ["save-on"],
            "waitLog": "Saved the game \\(save-all", "timeoutSeconds": 20}})
        self.assertEqual(r.status, "COMPLETED", r)
        con = self.console()
        off = con.index("Automatic saving is now disabled")
        saved = con.index("Saved the game (save-all")
        on = con.index("Automatic saving is now enabled")
        self.assertLess(off, saved)
        self.assertLess(saved, on)
        paths = {f["path"] for f in self.manifest("live")["files"]}
        self.assertIn("world/level.dat", paths)  # what save-all wrote is in the backup
        self.assertIsNone(tar_matches_manifest(self.archive("live"), self.manifest("live")))

    def test_quiesce_after_lines_are_sent_even_when_the_wait_fails(self):
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": "nowait", "quiesce": {
            "before": ["save-off"], "after": ["save-on"], "waitLog": "never printed",
            "timeoutSeconds": 1}})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("the server did not confirm the quiesce (never printed)", r.error_message)
        time.sleep(0.3)
        self.assertIn("Automatic saving is now enabled", self.console())
        self.assertFalse(os.path.exists(self.archive("nowait")))

    def test_restore_of_a_running_server_needs_restart(self):
        self.backup(backupId="b1")
        write_file(os.path.join(self.datadir, "server.properties"), "changed")
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b1"})
        self.assertEqual(r.status, "FAILED")
        self.assertIn("instance 'test1' is running: stop it first, or run the restore with restart = true",
                      r.error_message)
        with open(os.path.join(self.datadir, "server.properties")) as f:
            self.assertEqual(f.read(), "changed")
        self.assertEqual(self.state()["state"], "RUNNING")

    def test_restore_with_restart_stops_swaps_and_starts(self):
        self.backup(backupId="b1")
        wanted = tree_digest(self.datadir)
        write_file(os.path.join(self.datadir, "server.properties"), "changed")
        write_file(os.path.join(self.datadir, "extra.txt"), "gone after the restore")
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b1", "restart": True}, timeout=120)
        self.assertEqual(r.status, "COMPLETED", r)
        st = self.state()
        self.assertEqual(st["state"], "RUNNING")
        self.assertNotEqual(st["pid"], self.pid)
        got = tree_digest(self.datadir)
        # the restarted server rewrites its world files; everything else is the backup
        strip = lambda d: {k: v for k, v in d.items() if not k.startswith("world/") and k != "world"}
        self.assertEqual(strip(got), strip(wanted))
        self.assertNotIn("extra.txt", got)
        self.assert_clean()


if __name__ == "__main__":
    unittest.main()
