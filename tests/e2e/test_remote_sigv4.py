"""Remote backups against a second real S3 server that verifies SigV4 signatures (moto's server
mode with IAM authentication, tests/lib/moto_server.py): s3rver only checks the access key id, so
these are the tests that a server recomputes every signature of a streamed multipart backup
(create, parts, complete, the manifest's PUT), a streamed verify and a restore, and refuses a
wrong secret. Not a listing: moto 5.2.1 verifies a query value holding %2F against its decoded
form, so boto3 itself is refused there (ListObjectsV2 with Prefix "a/"), and every listing of
ours has one ("<instanceId>/"); s3rver tests the listing, unsigned."""
import hashlib
import os
import shutil
import unittest

from jv_run import JobvisorTestCase
from jobs_fixtures import populate, tree_digest
from moto_server import AVAILABLE, MotoServer
from s3_server import remote_config, write_credentials


@unittest.skipUnless(AVAILABLE, "moto (with boto3 and flask) is not installed for this Python")
class SignedByTheServer(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.srv = MotoServer()
        self.addCleanup(self.srv.close)
        self.creds = write_credentials(os.path.join(self.tmp, "moto.cred"), self.srv.key_id,
                                       self.srv.secret)
        self.conf = remote_config(os.path.join(self.tmp, "agent.conf"), "offsite", self.srv,
                                  self.creds, prefix="jv", part_size="5M", parallel="2")
        self.inst = self.instance_dir()
        self.datadir = os.path.join(self.inst, "data")
        self.digest = populate(self.datadir, seed=17, big=12 << 20)

    def job(self, what, params):
        import subprocess
        from jv_run import RunResult
        p = subprocess.run(self.cmd(what, params=params) + ["--config", self.conf],
                           capture_output=True, text=True, timeout=300)
        return RunResult(p.returncode, p.stdout, p.stderr)

    def test_every_request_of_backup_verify_restore_is_signed_right(self):
        r = self.job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "m1"})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(len(self.logs(r)), 3)  # 3 parts, each signed and accepted
        obj = self.srv.object_bytes("jv/test1/m1.tar.zst")
        self.assertEqual(hashlib.sha256(obj).hexdigest(), r.result["output"]["sha256"])
        self.assertEqual(self.srv.pending_uploads(), [])
        v = self.job("VERIFY_BACKUP", {"remote": "offsite", "backupId": "m1"})
        self.assertEqual(v.status, "COMPLETED", v)
        shutil.rmtree(self.datadir)
        rr = self.job("RESTORE_BACKUP", {"remote": "offsite", "backupId": "m1"})
        self.assertEqual(rr.status, "COMPLETED", rr)
        self.assertEqual(tree_digest(self.datadir), self.digest)
        self.assertEqual(self.srv.keys(), ["jv/test1/m1.json", "jv/test1/m1.tar.zst"])

    def test_a_wrong_secret_is_refused_by_the_signature_check(self):
        write_credentials(self.creds, self.srv.key_id, "not-the-secret-0123456789")
        r = self.job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "w1"})
        self.assertEqual(r.status, "FAILED", r)
        err = r.result["error"]
        self.assertFalse(err.get("retryable"), err)
        self.assertIn("remote 'offsite'", err["message"])
        self.assertIn("SignatureDoesNotMatch", err["message"])
        self.assertNotIn("not-the-secret-0123456789", r.stdout + r.stderr)
        self.assertEqual(self.srv.keys(), [])

    @staticmethod
    def logs(r):
        return [e["message"] for e in r.events if e["kind"] == "log"
                and "acknowledged by remote 'offsite'" in e["message"]]


if __name__ == "__main__":
    unittest.main()
