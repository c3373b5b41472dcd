"""End-to-end: the `archive` module through `jobvisor run` — hostile archives fail the run
with a clear message, leave no partial output and change nothing outside the instance;
a backup round trip (create, verify, extract with manifest, swap) works; cancel removes
partial output."""
import json
import os
import signal
import subprocess
import tarfile
import time
import unittest

from fsapi_e2e import (FsapiCase, write_tar, write_zip, write_zstd_bomb, tar_bytes,
                       zstd_compress)

EXTRACT = '''
local dst = fs.staging() .. "/out"
local opts = args.opts or {}
if args.manifest_file then opts.manifest = json.decode(fs.read(args.manifest_file)) end
local r, err = archive.extract(args.file, dst, opts)
if not r then job.fail(err) end
return r
'''


class HostileArchives(FsapiCase):
    def setUp(self):
        super().setUp()
        os.makedirs(self.ipath("incoming"))

    def extract_fails(self, name, *needles, opts=None):
        res = self.run_lua(EXTRACT, {"file": "incoming/" + name, "opts": opts or {}})
        self.assertFailedWith(res, *needles)
        # No partial output: the staging area holds no extracted files.
        for dirpath, dirnames, filenames in os.walk(self.ipath(".jobvisor/staging")):
            self.assertEqual(filenames, [], f"partial output left in {dirpath}")
            self.assertNotIn("out", dirnames)
        return res

    def test_dotdot_entry(self):
        write_tar(self.ipath("incoming/a.tar"), [("file", "ok.txt", "fine"),
                                                  ("file", "../../../../../outside/evil.txt", "x")])
        self.extract_fails("a.tar", "contains '..'")
        self.assertFalse(os.path.exists(os.path.join(self.outside, "evil.txt")))

    def test_absolute_entry(self):
        target = os.path.join(self.outside, "abs.txt")
        write_tar(self.ipath("incoming/a.tar.gz"), [("file", target, "x")], compress="gzip")
        self.extract_fails("a.tar.gz", "absolute path")
        self.assertFalse(os.path.exists(target))

    def test_symlink_entry_then_file_through_it(self):
        write_tar(self.ipath("incoming/a.tar.zst"),
                  [("dir", "sub", None), ("symlink", "link", "sub"), ("file", "link/f.txt", "x")],
                  compress="zstd")
        self.extract_fails("a.tar.zst", "'link/f.txt' passes through a symlink")

    def test_symlink_outside_then_write_through_it(self):
        write_tar(self.ipath("incoming/a.tar.zst"),
                  [("symlink", "evil", self.outside), ("file", "evil/pwned.txt", "x")],
                  compress="zstd")
        self.extract_fails("a.tar.zst", "symlink 'evil' points outside")
        write_tar(self.ipath("incoming/b.tar"),
                  [("symlink", "evil", "../../../../../../outside"), ("file", "evil/pwned.txt", "x")])
        self.extract_fails("b.tar", "symlink 'evil' points outside")
        self.assertFalse(os.path.exists(os.path.join(self.outside, "pwned.txt")))

    def test_hardlink_to_outside(self):
        write_tar(self.ipath("incoming/a.tar"),
                  [("hardlink", "h", os.path.join(self.outside, "secret.txt"))])
        self.extract_fails("a.tar", "absolute path")
        write_tar(self.ipath("incoming/b.tar"), [("hardlink", "h", "../../../../outside/secret.txt")])
        self.extract_fails("b.tar", "contains '..'")
        self.assertEqual(os.stat(os.path.join(self.outside, "secret.txt")).st_nlink, 1)

    def test_device_and_fifo(self):
        write_tar(self.ipath("incoming/a.tar"), [("chardev", "null", None)])
        self.extract_fails("a.tar", "entry 'null' is a character device: refused")
        write_tar(self.ipath("incoming/b.tar"), [("fifo", "pipe", None)])
        self.extract_fails("b.tar", "entry 'pipe' is a FIFO: refused")

    def test_zip_with_dotdot_names(self):
        write_zip(self.ipath("incoming/mod.zip"), [("mod/ok.txt", "fine"),
                                                    ("../../../../outside/zipslip.txt", "x")])
        self.extract_fails("mod.zip", "contains '..'")
        self.assertFalse(os.path.exists(os.path.join(self.outside, "zipslip.txt")))

    def test_zstd_bomb_stops_early(self):
        write_zstd_bomb(self.ipath("incoming/bomb.tar.zst"), 256 << 20)
        self.assertLess(os.path.getsize(self.ipath("incoming/bomb.tar.zst")), 1 << 20)
        t0 = time.monotonic()
        self.extract_fails("bomb.tar.zst", "size cap", "decompression bomb",
                           opts={"max_bytes": 16 << 20})
        self.assertLess(time.monotonic() - t0, 30)

    def test_truncated_archive(self):
        data = zstd_compress(tar_bytes([("file", f"f{i}.bin", os.urandom(300000)) for i in range(6)]))
        with open(self.ipath("incoming/t.tar.zst"), "wb") as f:
            f.write(data[: len(data) // 2])
        self.extract_fails("t.tar.zst", "damaged or truncated")

    def test_not_an_archive(self):
        with open(self.ipath("incoming/x.tar"), "w") as f:
            f.write("just some text\n" * 100)
        self.extract_fails("x.tar", "cannot extract 'incoming/x.tar'")


class BackupRoundTrip(FsapiCase):
    def setUp(self):
        super().setUp()
        os.makedirs(self.ipath("data/world/region"))
        for i in range(4):
            with open(self.ipath(f"data/world/region/r.{i}.mca"), "wb") as f:
                f.write(os.urandom(200000) + bytes(300000))
        for i in range(30):
            with open(self.ipath(f"data/world/p{i}.dat"), "w") as f:
                f.write(f"player {i}\n" * i)
        os.makedirs(self.ipath("data/logs"))
        with open(self.ipath("data/logs/latest.log"), "w") as f:
            f.write("log\n")
        os.symlink("world/region", self.ipath("data/regions"))
        os.symlink(self.outside, self.ipath("data/escape"))

    BACKUP = '''
        local m, info = archive.create("data", "backups/b1.tar.zst",
                                       {exclude = {"logs"}, progress = {0, 50}})
        if not m then job.fail(info) end
        fs.write("backups/b1.json", json.encode(m))
        return { files = info.files, skipped = info.skipped, sha = m.sha256, bytes = m.bytes, n = #m.files }
    '''

    def test_backup_verify_restore(self):
        out = self.assertCompleted(self.run_lua(self.BACKUP))
        self.assertEqual(out["files"], 34)
        self.assertEqual(out["skipped"], ["escape"])
        with open(self.ipath("backups/b1.json")) as f:
            manifest = json.load(f)
        self.assertEqual(manifest["format"], 1)
        self.assertEqual(manifest["bytes"], os.path.getsize(self.ipath("backups/b1.tar.zst")))
        paths = {f["path"]: f for f in manifest["files"]}
        self.assertNotIn("logs", paths)
        self.assertEqual(paths["regions"], {"path": "regions", "type": "symlink",
                                            "target": "world/region", "mode": paths["regions"]["mode"]})
        self.assertEqual(paths["world/p3.dat"]["size"], len("player 3\n" * 3))
        # Standard tools read the archive.
        listing = subprocess.run(f"zstd -dc '{self.ipath('backups/b1.tar.zst')}' | tar -tf -",
                                 shell=True, capture_output=True, text=True, check=True).stdout
        self.assertIn("world/region/r.0.mca", listing)
        # Verify, then restore into staging with the manifest and swap it in.
        res = self.run_lua('''
            local m = json.decode(fs.read("backups/b1.json"))
            assert(archive.verify("backups/b1.tar.zst", m, {progress = {0, 30}}))
            fs.write("data/world/p1.dat", "changed after the backup")
            local st = fs.staging()
            local r, err = archive.extract("backups/b1.tar.zst", st .. "/data",
                                           {manifest = m, progress = {30, 90}})
            if not r then job.fail(err) end
            assert(fs.swap(st .. "/data", "data"))
            return r
        ''')
        out = self.assertCompleted(res)
        self.assertEqual(out["files"], 34)
        with open(self.ipath("data/world/p1.dat")) as f:
            self.assertEqual(f.read(), "player 1\n")
        self.assertEqual(os.readlink(self.ipath("data/regions")), "world/region")
        percents = [e["percent"] for e in res.events if e.get("kind") == "progress" and e.get("percent") is not None]
        self.assertTrue(percents and max(percents) >= 90, percents)

    def test_verify_names_the_first_bad_entry(self):
        self.assertCompleted(self.run_lua(self.BACKUP))
        with open(self.ipath("backups/b1.json")) as f:
            manifest = json.load(f)
        for f in manifest["files"]:
            if f["path"] == "world/p7.dat":
                f["sha256"] = "0" * 64
        with open(self.ipath("backups/bad.json"), "w") as f:
            json.dump(manifest, f)
        res = self.run_lua('''
            local ok, err = archive.verify("backups/b1.tar.zst", json.decode(fs.read("backups/bad.json")))
            if not ok then job.fail(err) end
        ''')
        self.assertFailedWith(res, "entry 'world/p7.dat' has sha256")
        # Restoring with that manifest fails too and leaves nothing.
        res = self.run_lua(EXTRACT, {"file": "backups/b1.tar.zst", "manifest_file": "backups/bad.json"})
        self.assertFailedWith(res, "world/p7.dat")
        # A damaged archive byte fails verification.
        with open(self.ipath("backups/b1.tar.zst"), "r+b") as f:
            f.seek(-10, 2)
            b = f.read(1)
            f.seek(-10, 2)
            f.write(bytes([b[0] ^ 0xFF]))
        res = self.run_lua('''
            local ok, err = archive.verify("backups/b1.tar.zst", json.decode(fs.read("backups/b1.json")))
            if not ok then job.fail(err) end
        ''')
        self.assertFailedWith(res, "failed verification")

    def test_list(self):
        self.assertCompleted(self.run_lua(self.BACKUP))
        out = self.assertCompleted(self.run_lua('return { l = archive.list("backups/b1.tar.zst") }'))
        types = {e["path"]: e["type"] for e in out["l"]}
        self.assertEqual(types["world"], "dir")
        self.assertEqual(types["regions"], "symlink")
        self.assertEqual(types["world/region/r.0.mca"], "file")


class Cancel(FsapiCase):
    def test_cancel_during_create_removes_the_temp_archive(self):
        os.makedirs(self.ipath("data"))
        for i in range(8):
            with open(self.ipath(f"data/big{i}.bin"), "wb") as f:
                f.write(os.urandom(32 << 20))
        path = self.script('''return { type = "FSAPI_TEST", params = {}, run = function(job)
            archive.create("data", "backups/c.tar.zst", {level = 19, threads = 1, progress = {0, 100}})
        end }''')
        before = self.outside_snapshot()
        proc = self.start_job(path)
        # Wait until the archive is being written, then cancel like Ctrl-C.
        deadline = time.time() + 60
        for line in proc.stdout:
            if '"kind":"progress"' in line.replace(" ", "") or time.time() > deadline:
                break
        os.kill(proc.pid, signal.SIGTERM)
        res = self.finish(proc)
        self.assertEqual(res.code, 3, res)
        self.assertEqual(self.outside_snapshot(), before)
        left = os.listdir(self.ipath("backups")) if os.path.isdir(self.ipath("backups")) else []
        self.assertEqual(left, [], "cancelled create left output behind")


if __name__ == "__main__":
    unittest.main()
