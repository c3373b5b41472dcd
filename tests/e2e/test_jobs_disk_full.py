"""Disk full during downloads, installs and restores (issue 19.5).

Each test puts the instance on a small tmpfs (root mounts it, as tests/e2e/test_jobs_backup.py
does) and checks what the user sees: a retryable FAILED saying the disk is full (never "corrupt"),
and the space given back to the host so a game server next to the job can still save."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from jobs_fixtures import FileServer, make_tar, populate, tree_digest, write_file
from jv_run import JOBVISOR, RunResult

MIB = 1 << 20
SPEC = {"command": ["${build}/server"], "cwd": "data", "restart": {"policy": "never"}}


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskFullBase(unittest.TestCase):
    SIZE_MIB = 64

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="jv-full-")
        self.mnt = os.path.join(self.tmp, "small")
        os.makedirs(self.mnt)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.SIZE_MIB}m", "tmpfs", self.mnt],
                           capture_output=True, text=True)
        if p.returncode != 0:
            self.skipTest(f"cannot mount a small tmpfs (needs root): {p.stderr.strip()}")
        self.addCleanup(subprocess.run, ["umount", self.mnt], capture_output=True)
        self.data = os.path.join(self.mnt, "data")
        self.inst = os.path.join(self.data, "instances", "i1")
        os.makedirs(self.inst)
        www = os.path.join(self.tmp, "www")
        os.makedirs(www)
        self.www = www
        self.srv = FileServer(www)
        self.addCleanup(self.srv.close)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_job(self, what, params):
        p = subprocess.run([JOBVISOR, "run", what, "--instance", "i1", "--data-dir", self.data,
                            "--params", json.dumps(params), "--json"],
                           capture_output=True, text=True, timeout=120)
        return RunResult(p.returncode, p.stdout, p.stderr)

    def build_archive(self, name, payload_mib):
        tree = os.path.join(self.tmp, "tree-" + name)
        write_file(os.path.join(tree, "server"), "#!/bin/sh\nexit 0\n", 0o755)
        write_file(os.path.join(tree, "payload.bin"), os.urandom(payload_mib * MIB))
        sha = make_tar(tree, os.path.join(self.www, name + ".tar.zst"))
        return {"url": self.srv.url(name + ".tar.zst"), "sha256": sha}

    def parts(self):
        return [os.path.join(d, f) for d, _, fs in os.walk(self.inst) for f in fs if f.endswith(".part")]


class DownloadDiskFull(DiskFullBase):
    SIZE_MIB = 64

    def test_download_larger_than_the_disk_gives_the_space_back(self):
        src = self.build_archive("huge", 80)  # more than the whole file system
        r = self.run_job("INSTALL_SERVER", {"source": src, "build": "b1", "instance": SPEC})
        self.assertEqual(r.status, "FAILED", r)
        self.assertTrue(r.result["error"]["retryable"], r)
        self.assertIn("space", r.error_message)
        self.assertNotIn("corrupt", r.error_message)
        self.assertEqual(self.parts(), [], "the partial download still holds the disk")
        # the host has its space back (a game server's save would fit)
        self.assertGreater(free_bytes(self.mnt), 60 * MIB)
        self.assertFalse(os.path.exists(os.path.join(self.inst, "current")))

    def test_download_never_eats_into_the_reserve(self):
        """Smaller than the disk, but bigger than what is free above the 128 MiB reserve on a
        160 MiB file system: refused before the file system fills."""
        subprocess.run(["mount", "-o", "remount,size=160m", self.mnt], check=True)
        src = self.build_archive("mid", 40)
        r = self.run_job("INSTALL_SERVER", {"source": src, "build": "b1", "instance": SPEC})
        self.assertEqual(r.status, "FAILED", r)
        self.assertTrue(r.result["error"]["retryable"], r)
        self.assertIn("not enough free space for the download", r.error_message)
        self.assertIn("kept in reserve", r.error_message)
        self.assertEqual(self.parts(), [])
        self.assertGreater(free_bytes(self.mnt), 150 * MIB)


    def test_kernel_enospc_releases_the_part_and_says_enospc(self):
        """Without the reserve guard the write itself hits ENOSPC: same outcome, same code."""
        blob = os.urandom(80 * MIB)
        write_file(os.path.join(self.www, "blob.bin"), blob)
        import hashlib
        script = os.path.join(self.tmp, "dl.lua")
        with open(script, "w") as f:
            f.write('''return {
  type = "DL_TEST",
  params = { url = "string", sha256 = "string" },
  run = function(job)
    local r, err, code = http.download(job.params.url, "incoming/blob.bin",
      { sha256 = job.params.sha256, reserve_bytes = 0, retries = 0 })
    return { ok = r ~= nil, err = err, code = code }
  end,
}''')
        p = subprocess.run([JOBVISOR, "run", script, "--instance", "i1", "--data-dir", self.data,
                            "--params", json.dumps({"url": self.srv.url("blob.bin"),
                                                    "sha256": hashlib.sha256(blob).hexdigest()}),
                            "--json"], capture_output=True, text=True, timeout=120)
        r = RunResult(p.returncode, p.stdout, p.stderr)
        self.assertEqual(r.status, "COMPLETED", r)
        out = r.result["output"]
        self.assertFalse(out["ok"])
        self.assertEqual(out["code"], "ENOSPC", out)
        self.assertIn("No space left on device", out["err"])
        self.assertEqual(self.parts(), [])
        self.assertGreater(free_bytes(self.mnt), 60 * MIB)


class ExtractDiskFull(DiskFullBase):
    SIZE_MIB = 160

    def test_install_free_space_refusal_is_retryable(self):
        # 20 MiB download fits above the 128 MiB reserve; its 20 MiB extraction beside it does not
        src = self.build_archive("b", 20)
        r = self.run_job("INSTALL_SERVER", {"source": src, "build": "b1", "instance": SPEC})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("not enough free space", r.error_message)
        self.assertTrue(r.result["error"]["retryable"], r)
        self.assertFalse(os.path.exists(os.path.join(self.inst, "builds", "b1")))
        self.assertFalse(os.path.exists(os.path.join(self.inst, "current")))
        # once space is there, the retry of the same install works
        subprocess.run(["mount", "-o", "remount,size=400m", self.mnt], check=True)
        r = self.run_job("INSTALL_SERVER", {"source": src, "build": "b1", "instance": SPEC})
        self.assertEqual(r.status, "COMPLETED", r)


class RestoreDiskFull(DiskFullBase):
    SIZE_MIB = 400

    def test_restore_without_space_is_disk_full_not_corrupt(self):
        data = os.path.join(self.inst, "data")
        populate(data, seed=3, files=10, big=30 * MIB)
        r = self.run_job("BACKUP_INSTANCE", {"backupId": "b1"})
        self.assertEqual(r.status, "COMPLETED", r)
        before = tree_digest(data)
        # shrink what is free: the restore needs ~31 MiB above the 128 MiB reserve
        used = 400 * MIB - free_bytes(self.mnt)
        subprocess.run(["mount", "-o", f"remount,size={(used + 140 * MIB) // MIB}m", self.mnt],
                       check=True)
        r = self.run_job("RESTORE_BACKUP", {"backupId": "b1"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertNotIn("corrupt", r.error_message)
        self.assertIn("not enough disk space to restore backup 'b1'", r.error_message)
        self.assertIn("data/ was not touched", r.error_message)
        self.assertTrue(r.result["error"]["retryable"], r)
        self.assertEqual(tree_digest(data), before)
        # the backup itself is good
        v = self.run_job("VERIFY_BACKUP", {"backupId": "b1"})
        self.assertEqual(v.status, "COMPLETED", v)


if __name__ == "__main__":
    unittest.main()
