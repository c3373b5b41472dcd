"""Crash consistency of RESTORE_BACKUP with remote: SIGKILL at random instants, then a retry (tests/lib/remote_fault.py).
(One module per job so each stays within ctest's per-test timeout at 200 kills.)"""
import json
import os
import shutil
import time
import unittest
import hashlib

from jobs_fixtures import leftovers, tree_digest
from remote_fault import INST, KILLS, RemoteFault


class Fault(RemoteFault):
    def test_kill_during_remote_restore_then_retry(self):
        self.timed("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "r1"}, "mk")
        data = os.path.join(self.inst, "data")
        shutil.rmtree(data)
        _, t = self.timed("RESTORE_BACKUP", {"remote": "offsite", "backupId": "r1"}, "ref-restore")
        self.assertEqual(tree_digest(data), self.digest)
        part = os.path.join(self.inst, "backups", ".r1.tar.zst.part")
        interrupted = mid_download = 0
        for i in range(KILLS):
            shutil.rmtree(data)
            os.makedirs(data)
            job = f"job-r{i}"
            if self.kill_after("RESTORE_BACKUP", {"remote": "offsite", "backupId": "r1"}, job,
                               self.rng.uniform(0, t * 1.1)):
                interrupted += 1
                mid_download += os.path.exists(part)
            # data/ is the old (empty) tree or the whole restored one, never a mix
            self.assertIn(tree_digest(data), ({}, self.digest), i)
            r = self.run_job("RESTORE_BACKUP", {"remote": "offsite", "backupId": "r1"}, job)
            self.assertEqual(r.status, "COMPLETED", (i, r))
            self.assertEqual(tree_digest(data), self.digest, i)
            self.assertEqual(self.markers(), [], i)
            self.assertEqual(os.listdir(os.path.join(self.inst, "backups")), [], i)
            self.assertEqual(leftovers(self.inst), [], i)
        self.summary(f"fault RESTORE_BACKUP+remote: {KILLS} kills, {interrupted} killed mid-run, "
                     f"{mid_download} during the download, 0 violations")
        self.assertGreater(interrupted, 0)


if __name__ == "__main__":
    unittest.main()
