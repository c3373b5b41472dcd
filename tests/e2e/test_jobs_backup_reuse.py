"""BACKUP_INSTANCE reuses the per-file digests of the newest backup for files that did not change
(same size, inode, mtime and ctime), and the manifest stays fully verifiable."""
import os
import re
import time
import unittest

from jv_run import JobvisorTestCase
from jobs_fixtures import populate, read_json, sha256_file


class DigestReuse(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.inst = self.instance_dir()
        self.datadir = os.path.join(self.inst, "data")
        populate(self.datadir, seed=41, files=30)
        # Files changed within the last 2 s may still change within the same timestamp
        # tick: their digests are never reused. Let the world age past that window.
        time.sleep(2.2)

    def backup(self, bid):
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": bid})
        self.assertEqual(r.status, "COMPLETED", r)
        m = re.search(r"(\d+) of (\d+) file digests reused from backup '([^']+)'", r.stderr)
        return read_json(os.path.join(self.inst, "backups", bid + ".json")), m

    def verify(self, bid):
        r = self.run_job("VERIFY_BACKUP", params={"backupId": bid})
        self.assertEqual(r.status, "COMPLETED", r)

    def files(self, m):
        return {f["path"]: f for f in m["files"] if f["type"] == "file"}

    def test_second_backup_reuses_every_digest_and_verifies(self):
        m1, reused = self.backup("b1")
        self.assertIsNone(reused)  # nothing to reuse from
        f1 = self.files(m1)
        for path, f in f1.items():
            self.assertRegex(f["stat"], r"^\d+:\d+\.\d{9}:\d+\.\d{9}$", path)
            self.assertEqual(f["sha256"], sha256_file(os.path.join(self.datadir, path)))
        m2, reused = self.backup("b2")
        self.assertIsNotNone(reused, "the second backup reused no digest")
        self.assertEqual((int(reused.group(1)), int(reused.group(2)), reused.group(3)),
                         (len(f1), len(f1), "b1"))
        self.assertEqual({p: f["sha256"] for p, f in self.files(m2).items()},
                         {p: f["sha256"] for p, f in f1.items()})
        self.verify("b2")

    def test_a_file_rewritten_with_the_same_size_and_mtime_is_hashed_again(self):
        m1, _ = self.backup("b1")
        f1 = self.files(m1)
        victim = sorted(p for p, f in f1.items() if f["size"] > 0)[0]
        path = os.path.join(self.datadir, victim)
        st = os.stat(path)
        with open(path, "r+b") as f:  # same size, different bytes
            data = f.read()
            f.seek(0)
            f.write(bytes(b ^ 0xFF for b in data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: only ctime tells
        self.assertEqual(os.stat(path).st_mtime_ns, st.st_mtime_ns)
        self.assertNotEqual(os.stat(path).st_ctime_ns, st.st_ctime_ns)
        m2, reused = self.backup("b2")
        self.assertEqual(int(reused.group(1)), len(f1) - 1)
        f2 = self.files(m2)
        self.assertEqual(f2[victim]["sha256"], sha256_file(path))
        self.assertNotEqual(f2[victim]["sha256"], f1[victim]["sha256"])
        # the changed file was just written: no stat recorded, so b3 hashes it again too
        self.assertNotIn("stat", f2[victim])
        self.verify("b2")
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b2"})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(sha256_file(path), f2[victim]["sha256"])

    def test_a_replaced_file_with_the_same_name_and_size_is_hashed_again(self):
        m1, _ = self.backup("b1")
        f1 = self.files(m1)
        victim = sorted(p for p, f in f1.items() if f["size"] > 0)[-1]
        path = os.path.join(self.datadir, victim)
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read()
        os.remove(path)
        with open(path + ".new", "wb") as f:
            f.write(bytes(reversed(data)))
        os.rename(path + ".new", path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        m2, _ = self.backup("b2")
        self.assertEqual(self.files(m2)[victim]["sha256"], sha256_file(path))
        self.verify("b2")

    def test_a_damaged_newest_manifest_costs_only_the_hashing(self):
        m1, _ = self.backup("b1")
        path = os.path.join(self.inst, "backups", "b1.json")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": "b2"})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertIn("file digests not reused from backup 'b1'", r.stderr)
        self.assertIn("is not JSON", r.stderr)
        m2 = read_json(os.path.join(self.inst, "backups", "b2.json"))
        self.assertEqual({p: f["sha256"] for p, f in self.files(m2).items()},
                         {p: f["sha256"] for p, f in self.files(m1).items()})
        self.verify("b2")

    def test_a_manifest_with_a_malformed_stat_is_refused_as_reuse_source(self):
        m1, _ = self.backup("b1")
        self.script("""
return { type = "REUSE_BAD", run = function(job)
  local m = { format = 1, files = { { path = "x", type = "file", size = 1, mode = 420,
    sha256 = string.rep("a", 64), stat = "12:3.4:5.6" } } }
  local ok, err = pcall(archive.create, "data", "backups/x.tar.zst", { reuse = m })
  if ok then job.fail("a malformed stat was accepted") end
  return { err = tostring(err) }
end }""", "reuse_bad.lua")
        r = self.run_job(os.path.join(self.jobs, "reuse_bad.lua"))
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertIn("bad 'stat'", r.result["output"]["err"])


if __name__ == "__main__":
    unittest.main()
