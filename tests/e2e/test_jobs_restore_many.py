"""RESTORE_BACKUP of a world of thousands of small files: their digests are packed many to a
hash block and checked in batches; every file must come back exact, and a corrupt one must
still be named."""
import os
import unittest

from jv_run import JobvisorTestCase
from jobs_fixtures import read_json, tree_digest, write_file


class RestoreMany(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.inst = self.instance_dir()
        self.datadir = os.path.join(self.inst, "data")
        for d in range(6):
            for k in range(500):  # 3,000 files of 1..300 bytes: over 255 per 1 MiB block
                write_file(os.path.join(self.datadir, f"p{d}", f"{k:04d}.json"),
                           (f"{d}:{k};" * 40)[: 1 + (k * 37 + d) % 300])
        self.want = tree_digest(self.datadir)
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": "b1"})
        self.assertEqual(r.status, "COMPLETED", r)

    def test_every_small_file_comes_back_exact(self):
        for d in range(6):  # the world moves on
            write_file(os.path.join(self.datadir, f"p{d}", "0000.json"), "changed")
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b1"})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(r.result["output"]["files"], 3000)
        self.assertEqual(tree_digest(self.datadir), self.want)

    def test_a_wrong_digest_in_a_late_batch_is_named_and_data_is_untouched(self):
        mpath = os.path.join(self.inst, "backups", "b1.json")
        m = read_json(mpath)
        victim = [f for f in m["files"] if f["type"] == "file"][2700]
        victim["sha256"] = "0" * 64
        with open(mpath, "w") as f:
            import json
            json.dump(m, f)
        before = tree_digest(self.datadir)
        r = self.run_job("RESTORE_BACKUP", params={"backupId": "b1"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn(f"entry '{victim['path']}' has sha256", r.error_message)
        self.assertEqual(tree_digest(self.datadir), before)


if __name__ == "__main__":
    unittest.main()
