"""BACKUP_INSTANCE with "remote" streams the archive (issue 13): parts go to the store while
the archive is still being compressed, nothing of the archive is written on this host, a
retry after kill -9 makes the archive again and sends only the parts the store had not
acknowledged, and a part changed in transit is caught by its MD5. Against a real S3 server
(s3rver on 127.0.0.1), through `jobvisor run --config`."""
import hashlib
import json
import os
import signal
import subprocess
import threading
import time

from jv_run import JobvisorTestCase, RunResult
from jobs_fixtures import populate
from s3_server import S3Server, remote_config, write_credentials
from tcp_proxy import TcpProxy

PART = 5 << 20
PARALLEL = 2


class StreamBase(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.s3 = S3Server()
        self.addCleanup(self.s3.close)
        self.creds = write_credentials(os.path.join(self.tmp, "offsite.cred"))
        self.inst = self.instance_dir()
        self.datadir = os.path.join(self.inst, "data")
        # ~40 MiB that does not compress: 8 parts, far more than the parallel + 1 in memory
        populate(self.datadir, seed=13, big=40 << 20)
        self.configure(self.s3)

    def configure(self, via, **extra):
        self.conf = remote_config(os.path.join(self.tmp, "agent.conf"), "offsite", via, self.creds,
                                  prefix="jv", part_size="5M", parallel=str(PARALLEL), **extra)

    def argv(self, params, job_id=None):
        a = self.cmd("BACKUP_INSTANCE", params=params) + ["--config", self.conf]
        return a + (["--job-id", job_id] if job_id else [])

    def run_job(self, what, params, job_id=None):
        a = self.cmd(what, params=params) + ["--config", self.conf]
        a += ["--job-id", job_id] if job_id else []
        p = subprocess.run(a, capture_output=True, text=True, timeout=300)
        return RunResult(p.returncode, p.stdout, p.stderr)

    def key(self, bid):
        return f"jv/test1/{bid}.tar.zst"

    def marker(self):
        try:
            with open(os.path.join(self.inst, ".jobvisor", "markers", "remote-upload.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    @staticmethod
    def logs(r, needle):
        return [e["message"] for e in r.events if e["kind"] == "log" and needle in e["message"]]


class Streamed(StreamBase):
    def local_bytes(self):
        """Bytes of every file of the instance outside data/ (backups/, staging, markers)."""
        total = 0
        for d, dirs, files in os.walk(self.inst):
            if d == self.inst and "data" in dirs:
                dirs.remove("data")
            for f in files:
                try:
                    total += os.lstat(os.path.join(d, f)).st_size
                except OSError:
                    pass
        return total

    def test_parts_are_sent_while_the_archive_is_compressed_with_no_local_copy(self):
        # ~100 MiB, more than zstd's own input buffers (a few jobs of 8 MiB with threads) plus
        # the parallel + 1 parts in memory; 32 MiB/s for the remote: the upload takes ~3 s,
        # the compression alone far less
        with open(os.path.join(self.datadir, "world", "big2.mca"), "wb") as f:
            for _ in range(64):
                f.write(os.urandom(1 << 20))
        self.configure(self.s3, bandwidth_limit="32M")
        p = subprocess.Popen(self.argv({"remote": "offsite", "backupId": "s1"}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = [0]

        def sample():
            while p.poll() is None:
                peak[0] = max(peak[0], self.local_bytes())
                time.sleep(0.005)
        t = threading.Thread(target=sample)
        t.start()
        out, err = p.communicate(timeout=240)
        t.join()
        r = RunResult(p.returncode, out, err)
        self.assertEqual(r.status, "COMPLETED", r)
        size = r.result["output"]["bytes"]
        self.assertGreater(size, 19 * PART)
        obj = self.s3.object_bytes(self.key("s1"))
        self.assertEqual(hashlib.sha256(obj).hexdigest(), r.result["output"]["sha256"])
        # The archive was compressed while its first parts were on their way: after part 1
        # was acknowledged, the job still reported the archiving of data/ below 100 %.
        seqs = [(e["seq"], e) for e in r.events]
        first_ack = min(s for s, e in seqs if e["kind"] == "log"
                        and "acknowledged by remote 'offsite'" in e["message"])
        later = [e["message"] for s, e in seqs if s > first_ack and e["kind"] == "progress"
                 and e["message"].startswith("archiving ") and e["message"] != "archiving 100%"]
        self.assertTrue(later, [e for _, e in seqs])
        # No local copy of the archive: the host never held more than a part's worth of
        # bytes outside data/ (markers only), while the archive is 20 parts.
        self.assertLess(peak[0], PART, peak[0])
        print(f"\nstreamed {size} bytes in {size // PART + 1} parts; peak local bytes outside "
              f"data/: {peak[0]}; archiving progress after the first ack: {later[:3]}")
        self.assertEqual(self.s3.pending_uploads(), [])

    def test_keep_local_writes_the_local_copy_as_well(self):
        r = self.run_job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "s2", "keepLocal": True})
        self.assertEqual(r.status, "COMPLETED", r)
        with open(os.path.join(self.inst, "backups", "s2.tar.zst"), "rb") as f:
            self.assertEqual(f.read(), self.s3.object_bytes(self.key("s2")))
        self.assertTrue(os.path.exists(os.path.join(self.inst, "backups", "s2.json")))


class StreamedResume(StreamBase):
    def start_and_kill(self, bid, job_id, acked):
        """Start the backup (16 MiB/s) and SIGKILL it once `acked` parts are in the marker."""
        self.configure(self.s3, bandwidth_limit="16M")
        p = subprocess.Popen(self.argv({"remote": "offsite", "backupId": bid}, job_id),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        child = self.wait_child(p, timeout=30)
        deadline = time.time() + 120
        while len(self.marker().get("parts", [])) < acked and time.time() < deadline \
                and p.poll() is None:
            time.sleep(0.002)
        self.assertIsNone(p.poll(), "the backup finished before it could be killed")
        os.killpg(child, signal.SIGKILL)
        p.kill()
        p.communicate()
        time.sleep(0.3)  # a part the server was still storing at the kill
        self.configure(self.s3)
        return self.marker()

    def test_kill_mid_stream_then_retry_sends_no_acknowledged_part_again(self):
        m = self.start_and_kill("k1", "job-k1", 2)
        recorded = {(str(p["n"]), m["uploadId"]) for p in m["parts"]}
        self.assertGreaterEqual(len(recorded), 2)
        stored_before = len(self.s3.stored_parts())
        r = self.run_job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "k1"}, "job-k1")
        self.assertEqual(r.status, "COMPLETED", r)
        # the retry made the archive again; the parts the marker holds matched and stayed
        again = self.logs(r, "already on remote 'offsite'")
        self.assertEqual(len(again), len(recorded), again)
        sent_by_retry = self.s3.stored_parts()[stored_before:]
        self.assertEqual(set(sent_by_retry) & recorded, set(), sent_by_retry)
        nparts = r.result["output"]["bytes"] // PART + 1
        self.assertEqual(len(sent_by_retry), nparts - len(recorded), sent_by_retry)
        # byte-identical to a fresh archive of the same world
        fresh = self.run_job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "fresh"})
        self.assertEqual(fresh.status, "COMPLETED", fresh)
        self.assertEqual(self.s3.object_bytes(self.key("k1")), self.s3.object_bytes(self.key("fresh")))
        self.assertEqual(r.result["output"]["sha256"], fresh.result["output"]["sha256"])
        v = self.run_job("VERIFY_BACKUP", {"remote": "offsite", "backupId": "k1"})
        self.assertEqual(v.status, "COMPLETED", v)
        self.assertEqual(self.s3.pending_uploads(), [])
        self.assertEqual(os.listdir(os.path.join(self.inst, ".jobvisor", "markers")), [])

    def test_a_world_changed_since_the_kill_starts_a_new_upload(self):
        m = self.start_and_kill("c1", "job-c1", 1)
        old = m["uploadId"]
        # the server saved the world meanwhile: every timestamp moved
        for d, dirs, files in os.walk(self.datadir):
            for n in dirs + files:
                os.utime(os.path.join(d, n), (time.time() + 10, time.time() + 10),
                         follow_symlinks=False)
        os.utime(self.datadir, (time.time() + 10, time.time() + 10))
        r = self.run_job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "c1"}, "job-c1")
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertTrue(self.logs(r, "differs from the part an earlier run uploaded (the data "
                                     "changed since): starting a new upload"), r)
        self.assertEqual(hashlib.sha256(self.s3.object_bytes(self.key("c1"))).hexdigest(),
                         r.result["output"]["sha256"])
        v = self.run_job("VERIFY_BACKUP", {"remote": "offsite", "backupId": "c1"})
        self.assertEqual(v.status, "COMPLETED", v)
        # s3rver answers NotImplemented to AbortMultipartUpload: the old upload stays there
        # (a real store gives it back); the job said it tried
        self.assertTrue(self.logs(r, "cannot abort an earlier multipart upload"), r)
        self.assertEqual(self.s3.pending_uploads(), [old])


class StreamedIntegrity(StreamBase):
    def test_a_part_changed_in_transit_is_caught_by_its_md5_and_sent_again(self):
        proxy = TcpProxy(self.s3.port)
        self.addCleanup(proxy.close)

        class Via:
            endpoint = proxy.endpoint
            bucket = self.s3.bucket
        self.configure(Via)
        proxy.corrupt_next(1)
        r = self.run_job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "i1"})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(proxy.corrupts, 0)
        # s3rver stored what it got and answered its MD5 as the ETag; the client saw that it
        # is not the MD5 of what it sent and sent the part again
        puts = [q.path.split("partNumber=")[1].split("&")[0] for q in proxy.requests
                if q.method == "PUT" and "partNumber=" in q.path]
        nparts = r.result["output"]["bytes"] // PART + 1
        self.assertEqual(len(puts), nparts + 1, puts)
        self.assertEqual(hashlib.sha256(self.s3.object_bytes(self.key("i1"))).hexdigest(),
                         r.result["output"]["sha256"])
        # every part carried its Content-MD5 (for stores that check it themselves)
        self.assertTrue(all("content-md5" in q.headers for q in proxy.requests
                            if q.method == "PUT"), [q.headers for q in proxy.requests])

    def test_an_sse_kms_bucket_whose_etags_are_no_md5_is_not_refused(self):
        # S3 with SSE-KMS answers ETags that are not the MD5 of the body and says so in
        # x-amz-server-side-encryption; the store checked Content-MD5 itself
        proxy = TcpProxy(self.s3.port)
        self.addCleanup(proxy.close)

        class Via:
            endpoint = proxy.endpoint
            bucket = self.s3.bucket
        self.configure(Via)
        proxy.answer_as_sse_kms()
        r = self.run_job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "k1"})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertGreaterEqual(proxy.sse_rewritten, 1, "the manifest PUT was answered as SSE-KMS")
        manifest_puts = [q for q in proxy.requests if q.method == "PUT" and "partNumber=" not in q.path]
        self.assertEqual(len(manifest_puts), proxy.sse_rewritten, "each whole-object PUT went once")
        v = self.run_job("VERIFY_BACKUP", {"remote": "offsite", "backupId": "k1"})
        self.assertEqual(v.status, "COMPLETED", v)


if __name__ == "__main__":
    import unittest
    unittest.main()
