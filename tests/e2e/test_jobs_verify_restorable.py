"""VERIFY_BACKUP applies every rule RESTORE_BACKUP applies (issue 19.7).

Crafted archive/manifest pairs that agree with each other (so digests, sizes and types all
match) but hold something a restore refuses: a symlink leading out of data/, an absolute
symlink, an entry reached through a symlink, an entry below a file. "Verified" must mean
"restorable": VERIFY fails on each, naming the entry, exactly when RESTORE does."""
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import unittest

from jv_run import JOBVISOR, RunResult


def sha(data):
    return hashlib.sha256(data).hexdigest()


class Backup:
    """A backup made entry by entry: tar.zst + a manifest that describes it exactly."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.files = []

    def dir(self, path):
        ti = tarfile.TarInfo(path)
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        self.tf.addfile(ti)
        self.files.append({"path": path, "type": "dir", "mode": 0o755})

    def file(self, path, data=b"x"):
        ti = tarfile.TarInfo(path)
        ti.size, ti.mode = len(data), 0o644
        self.tf.addfile(ti, io.BytesIO(data))
        self.files.append({"path": path, "type": "file", "mode": 0o644, "size": len(data),
                           "sha256": sha(data)})

    def symlink(self, path, target):
        ti = tarfile.TarInfo(path)
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
        self.tf.addfile(ti)
        self.files.append({"path": path, "type": "symlink", "mode": 0o777, "target": target})

    def write(self, inst, bid):
        self.tf.close()
        data = subprocess.run(["zstd", "-q", "-c"], input=self.buf.getvalue(), capture_output=True,
                              check=True).stdout
        bdir = os.path.join(inst, "backups")
        os.makedirs(bdir, exist_ok=True)
        with open(os.path.join(bdir, bid + ".tar.zst"), "wb") as f:
            f.write(data)
        m = {"format": 1, "backupId": bid, "instanceId": "i1", "createdAt": "2024-01-01T00:00:00Z",
             "build": None, "exclude": [], "sha256": sha(data), "bytes": len(data),
             "files": self.files, "complete": True}
        with open(os.path.join(bdir, bid + ".json"), "w") as f:
            json.dump(m, f)


class VerifyMeansRestorable(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="jv-verify-")
        self.data = os.path.join(self.tmp, "data")
        self.inst = os.path.join(self.data, "instances", "i1")
        os.makedirs(os.path.join(self.inst, "data"))
        with open(os.path.join(self.inst, "data", "live.dat"), "w") as f:
            f.write("live")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_job(self, what, params):
        p = subprocess.run([JOBVISOR, "run", what, "--instance", "i1", "--data-dir", self.data,
                            "--params", json.dumps(params), "--json"],
                           capture_output=True, text=True, timeout=60)
        return RunResult(p.returncode, p.stdout, p.stderr)

    def both(self, bid):
        v = self.run_job("VERIFY_BACKUP", {"backupId": bid})
        r = self.run_job("RESTORE_BACKUP", {"backupId": bid})
        return v, r

    def assert_refused(self, b, bid, needle):
        b.write(self.inst, bid)
        v, r = self.both(bid)
        self.assertEqual(r.status, "FAILED", r)
        self.assertEqual(v.status, "FAILED", f"VERIFY passed a backup RESTORE refuses: {r.error_message}")
        self.assertIn(f"backup '{bid}' is corrupt", v.error_message)
        self.assertIn(needle, v.error_message)
        self.assertIn(needle, r.error_message)
        with open(os.path.join(self.inst, "data", "live.dat")) as f:
            self.assertEqual(f.read(), "live")

    def test_symlink_leading_out_of_data(self):
        b = Backup()
        b.dir("world")
        b.symlink("world/escape", "../../../../etc")
        self.assert_refused(b, "out", "symlink 'world/escape' points outside")

    def test_absolute_symlink(self):
        b = Backup()
        b.symlink("passwd", "/etc/passwd")
        self.assert_refused(b, "abs", "symlink 'passwd' points outside")

    def test_entry_through_a_symlink(self):
        b = Backup()
        b.dir("sub")
        b.symlink("lnk", "sub")
        b.file("lnk/planted", b"through the link")
        self.assert_refused(b, "through", "entry 'lnk/planted' passes through a symlink")

    def test_entry_below_a_file(self):
        b = Backup()
        b.file("plain", b"a file")
        b.file("plain/child", b"below it")
        self.assert_refused(b, "below", "entry 'plain/child' lies below something that is not a directory")

    def test_a_clean_crafted_backup_verifies_and_restores(self):
        """Positive control: the same builder with symlinks that stay inside."""
        b = Backup()
        b.dir("sub")
        b.file("sub/a", b"hello")
        b.symlink("lnk", "sub")
        b.symlink("sub/up", "../sub/a")
        b.write(self.inst, "good")
        v, r = self.both("good")
        self.assertEqual(v.status, "COMPLETED", v)
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(os.readlink(os.path.join(self.inst, "data", "lnk")), "sub")


if __name__ == "__main__":
    unittest.main()
