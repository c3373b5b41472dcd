"""Crash consistency of BACKUP_INSTANCE with remote: SIGKILL at random instants, then a retry (tests/lib/remote_fault.py).
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
    def test_kill_during_remote_backup_then_retry(self):
        ref, t = self.timed("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "ref"}, "ref-job")
        want = ref.result["output"]["sha256"]
        interrupted = mid_upload = 0
        known, orphans = set(), set()
        for i in range(KILLS):
            bid, job = f"b{i}", f"job-b{i}"
            before = len(self.s3.stored_parts())
            marker = os.path.join(self.inst, ".jobvisor", "markers", "remote-upload.json")
            if self.kill_after("BACKUP_INSTANCE", {"remote": "offsite", "backupId": bid}, job,
                               self.rng.uniform(0, t * 1.1)):
                interrupted += 1
                mid_upload += os.path.exists(marker)
            recorded = self.recorded_parts(marker)
            try:
                with open(marker) as f:
                    known.add(json.load(f).get("uploadId"))
            except (OSError, ValueError):
                pass
            time.sleep(0.2)  # a request the server was still storing at the kill
            stored_before_retry = len(self.s3.stored_parts())
            r = self.run_job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": bid}, job)
            self.assertEqual(r.status, "COMPLETED", (i, r))
            obj = self.s3.object_bytes(f"{INST}/{bid}.tar.zst")
            self.assertEqual(hashlib.sha256(obj).hexdigest(), want, i)
            self.assertEqual(json.loads(self.s3.object_bytes(f"{INST}/{bid}.json"))["sha256"], want)
            # no part the marker recorded as acknowledged reached the server again
            again = set(self.s3.stored_parts()[stored_before_retry:]) & recorded
            self.assertEqual(again, set(), (i, recorded, self.s3.stored_parts()[before:]))
            # An upload id the killed run created but never recorded (killed between the
            # store's answer to CreateMultipartUpload and the marker write) is unknown to
            # every later run; s3rver can neither list nor abort multipart uploads, so it
            # stays: allowed only if no part was ever sent to it (docs/jobs.md).
            for up in self.s3.pending_uploads():
                if up in known:
                    self.fail(f"trial {i}: upload {up} that a marker recorded is left at the server")
                if any(u == up for _, u in self.s3.stored_parts()):
                    self.fail(f"trial {i}: unrecorded upload {up} has parts")
                if up not in orphans:
                    orphans.add(up)
            self.assertEqual(self.markers(), [], i)
            self.assertEqual(leftovers(self.inst), [], i)
        self.summary(f"fault BACKUP_INSTANCE+remote: {KILLS} kills, {interrupted} killed mid-run, "
                     f"{mid_upload} during the upload, {len(orphans)} empty upload ids created in "
                     f"the create-to-marker window, 0 violations")
        self.assertGreater(interrupted, 0)
        if KILLS >= 10:
            self.assertGreater(mid_upload, 0)


if __name__ == "__main__":
    unittest.main()
