"""Remote settings and the `remote` Lua module against a real S3 server (s3rver on 127.0.0.1),
through `jobvisor run --config`."""
import hashlib
import json
import os
import subprocess

from jv_run import JOBVISOR, JobvisorTestCase
from s3_server import S3Server, remote_config, write_credentials


class RemoteBase(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.s3 = S3Server()
        self.addCleanup(self.s3.close)
        self.creds = write_credentials(os.path.join(self.tmp, "offsite.cred"))
        self.conf = remote_config(os.path.join(self.tmp, "agent.conf"), "offsite", self.s3,
                                  self.creds, prefix="/hosting/eu/")
        os.makedirs(self.instance_dir(), exist_ok=True)

    def run_script(self, body, params=None, conf=None, env=None):
        self.script('return { type = "T", params = { x = "string?" }, run = function(job)\n'
                    + body + '\nend }', name="t.lua")
        argv = self.cmd("T", params=params or {}) + ["--config", conf or self.conf]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, **(env or {})))
        from jv_run import RunResult
        return RunResult(p.returncode, p.stdout, p.stderr)


class RemoteSettings(RemoteBase):
    def test_credentials_file_readable_by_group_is_refused(self):
        os.chmod(self.creds, 0o640)
        r = self.run_script('return {}')
        self.assertEqual(r.code, 2, r)
        self.assertIn("remote 'offsite': credentials file", r.stderr)
        self.assertIn("chmod 600", r.stderr)
        self.assertNotIn("S3RVER\nS3RVER", r.stderr)

    def test_missing_bucket_and_unknown_key_are_refused(self):
        with open(self.conf, "a") as f:
            f.write("remote.offsite.buckets = x\n")
        r = self.run_script('return {}')
        self.assertEqual(r.code, 2, r)
        self.assertIn("unknown setting 'remote.offsite.buckets'", r.stderr)
        conf2 = os.path.join(self.tmp, "two.conf")
        with open(conf2, "w") as f:
            f.write(f"remote.b.endpoint = {self.s3.endpoint}\nremote.b.credentials_file = {self.creds}\n")
        r = self.run_script('return {}', conf=conf2)
        self.assertEqual(r.code, 2, r)
        self.assertIn("'remote.b.bucket' is required", r.stderr)

    def test_part_size_below_s3_minimum_is_refused(self):
        with open(self.conf, "a") as f:
            f.write("remote.offsite.part_size = 1M\n")
        r = self.run_script('return {}')
        self.assertEqual(r.code, 2, r)
        self.assertIn("'remote.offsite.part_size' = '1M' is not a size from 5M to 5G", r.stderr)

    def test_environment_defines_a_remote(self):
        empty = os.path.join(self.tmp, "empty.conf")
        open(empty, "w").close()
        env = {"JOBVISOR_REMOTE_COLD_STORE_ENDPOINT": self.s3.endpoint,
               "JOBVISOR_REMOTE_COLD_STORE_BUCKET": self.s3.bucket,
               "JOBVISOR_REMOTE_COLD_STORE_PATH_STYLE": "yes",
               "JOBVISOR_REMOTE_COLD_STORE_PART_SIZE": "8M",
               "JOBVISOR_REMOTE_COLD_STORE_CREDENTIALS_FILE": self.creds}
        r = self.run_script('local i = assert(remote.info("cold_store"))\n'
                            'assert(remote.put("cold_store", "x/y", "hi"))\n'
                            'return { part = i.part_size, bucket = i.bucket, region = i.region }',
                            conf=empty, env=env)
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(r.result["output"], {"part": 8 << 20, "bucket": self.s3.bucket,
                                              "region": "us-east-1"})
        self.assertEqual(self.s3.object_bytes("x/y"), b"hi")

    def test_unknown_remote_is_a_clear_failure(self):
        r = self.run_script('local ok, err, cls = remote.put("nope", "a", "b")\n'
                            'return { ok = ok or false, err = err, cls = cls }')
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(r.result["output"]["cls"], "permanent")
        self.assertIn("remote 'nope' is not configured on this agent", r.result["output"]["err"])

    def test_unknown_option_raises(self):
        r = self.run_script('remote.get("offsite", "a", { max = 5 })')
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("remote.get: unknown option 'max'", r.error_message)


class RemoteObjects(RemoteBase):
    def test_put_get_head_list_delete_under_the_prefix(self):
        r = self.run_script('''
          assert(remote.put("offsite", "i1/a.json", '{"a":1}'))
          assert(remote.put("offsite", "i1/b.json", "bb"))
          assert(remote.put("offsite", "i2/c.json", "c"))
          local got = assert(remote.get("offsite", "i1/a.json"))
          local h = assert(remote.head("offsite", "i1/b.json"))
          local l = assert(remote.list("offsite", "i1/"))
          local names = {}
          for _, o in ipairs(l) do names[#names + 1] = o.name .. ":" .. o.size end
          local _, err, cls = remote.get("offsite", "i1/none.json")
          assert(remote.delete("offsite", "i1/a.json"))
          local after = assert(remote.list("offsite", "i1/"))
          return { got = got, size = h.size, etag = h.etag, names = names, cls = cls, err = err,
                   after = #after }
        ''')
        self.assertEqual(r.status, "COMPLETED", r)
        out = r.result["output"]
        self.assertEqual(out["got"], '{"a":1}')
        self.assertEqual(out["size"], 2)
        self.assertEqual(out["etag"], hashlib.md5(b"bb").hexdigest())
        self.assertEqual(out["names"], ["i1/a.json:7", "i1/b.json:2"])
        self.assertEqual(out["cls"], "not_found")
        self.assertIn("remote 'offsite': cannot download 'hosting/eu/i1/none.json': HTTP 404 NoSuchKey",
                      out["err"])
        self.assertEqual(out["after"], 1)
        # the objects really are under the prefix at the server
        self.assertEqual(self.s3.keys(), ["hosting/eu/i1/b.json", "hosting/eu/i2/c.json"])

    def test_listing_follows_continuation_tokens(self):
        # s3rver pages at 1000 keys: 1005 objects need two pages
        r = self.run_script('''
          for i = 1, 1005 do assert(remote.put("offsite", string.format("many/%04d", i), "x")) end
          local l = assert(remote.list("offsite", "many/"))
          return { n = #l, first = l[1].name, last = l[#l].name }
        ''')
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(r.result["output"], {"n": 1005, "first": "many/0001", "last": "many/1005"})

    def test_multipart_upload_and_ranged_resumed_download(self):
        blob = os.urandom(11 * 1024 * 1024 + 123)
        with open(os.path.join(self.instance_dir(), "blob"), "wb") as f:
            f.write(blob)
        # a partial download already on disk: the download continues after it
        with open(os.path.join(self.instance_dir(), "back"), "wb") as f:
            f.write(blob[:777])
        r = self.run_script('''
          local id = assert(remote.mpu_create("offsite", "big/blob"))
          local size = fs.stat("blob").size
          local ps = 5 * 1024 * 1024
          local parts, off, n = {}, 0, 1
          while off < size do
            local len = math.min(ps, size - off)
            local etag = assert(remote.mpu_part("offsite", "big/blob", id, n, "blob",
              { offset = off, length = len }))
            parts[#parts + 1] = { n = n, etag = etag }
            off, n = off + len, n + 1
          end
          assert(remote.mpu_complete("offsite", "big/blob", id, parts))
          local got = assert(remote.download("offsite", "big/blob", "back"))
          return { parts = #parts, got = got }
        ''')
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(r.result["output"], {"parts": 3, "got": len(blob)})
        self.assertEqual(self.s3.object_bytes("hosting/eu/big/blob"), blob)
        with open(os.path.join(self.instance_dir(), "back"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(blob).hexdigest())
        self.assertEqual(self.s3.pending_uploads(), [])

    def test_unknown_access_key_fails_permanently_without_the_secret(self):
        # s3rver checks the key id only (it does not verify SigV4 signatures)
        write_credentials(self.creds, key_id="NOTAKEY", secret="sup3r-s3cret-value")
        r = self.run_script('local ok, err, cls = remote.put("offsite", "a", "b")\n'
                            'log.info(tostring(err))\n'
                            'return { ok = ok or false, err = err, cls = cls }')
        self.assertEqual(r.status, "COMPLETED", r)
        out = r.result["output"]
        self.assertEqual(out["cls"], "permanent")
        self.assertIn("remote 'offsite': cannot upload 'hosting/eu/a': HTTP 403 InvalidAccessKeyId",
                      out["err"])
        self.assertNotIn("sup3r-s3cret-value", r.stdout + r.stderr)

    def test_unreachable_endpoint_is_transient_after_retries(self):
        self.s3.stop()
        r = self.run_script('local ok, err, cls = remote.put("offsite", "a", "b")\n'
                            'return { err = err, cls = cls }')
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(r.result["output"]["cls"], "transient")
        self.assertIn("remote 'offsite': cannot upload 'hosting/eu/a'", r.result["output"]["err"])
