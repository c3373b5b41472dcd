"""BACKUP_INSTANCE / RESTORE_BACKUP with "remote" against a real S3 server (s3rver on 127.0.0.1),
through `jobvisor run --config`."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

from jv_run import JOBVISOR, JobvisorTestCase, RunResult
from jobs_fixtures import populate, sha256_file, tree_digest
from s3_server import S3Server, remote_config, write_credentials
from tcp_proxy import TcpProxy

KILLS = int(os.environ.get("JV_REMOTE_KILLS", "3"))


class RemoteBackupBase(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.s3 = S3Server()
        self.addCleanup(self.s3.close)
        self.creds = write_credentials(os.path.join(self.tmp, "offsite.cred"))
        self.conf = remote_config(os.path.join(self.tmp, "agent.conf"), "offsite", self.s3,
                                  self.creds, prefix="jv", part_size="5M")
        self.inst = self.instance_dir()
        self.datadir = os.path.join(self.inst, "data")
        # ~13 MiB that does not compress: three 5 MiB parts
        self.digest = populate(self.datadir, seed=11, big=13 * 1024 * 1024)

    def argv(self, what, params, job_id=None):
        a = self.cmd(what, params=params) + ["--config", self.conf]
        if job_id:
            a += ["--job-id", job_id]
        return a

    def job(self, what, params, job_id=None, timeout=180):
        p = subprocess.run(self.argv(what, params, job_id), capture_output=True, text=True,
                           timeout=timeout)
        return RunResult(p.returncode, p.stdout, p.stderr)

    def key(self, bid, ext):
        return f"jv/test1/{bid}.{ext}"


class RemoteBackup(RemoteBackupBase):
    def test_backup_delete_data_restore_from_remote_is_byte_identical(self):
        r = self.job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "b1"})
        self.assertEqual(r.status, "COMPLETED", r)
        out = r.result["output"]
        self.assertEqual(out["remote"], "offsite")
        self.assertEqual(out["object"], "test1/b1.tar.zst")
        self.assertEqual(self.s3.keys(), [self.key("b1", "json"), self.key("b1", "tar.zst")])
        archive = self.s3.object_bytes(self.key("b1", "tar.zst"))
        self.assertEqual(hashlib.sha256(archive).hexdigest(), out["sha256"])
        self.assertEqual(len(archive), out["bytes"])
        m = json.loads(self.s3.object_bytes(self.key("b1", "json")))
        self.assertIs(m["complete"], True)
        self.assertEqual(m["sha256"], out["sha256"])
        # keepLocal defaults to false: nothing of the backup was written on this host (the
        # archive is streamed to the remote)
        backups = os.path.join(self.inst, "backups")
        self.assertEqual(os.listdir(backups) if os.path.exists(backups) else [], [])
        self.assertEqual(os.listdir(os.path.join(self.inst, ".jobvisor", "markers")), [])
        self.assertEqual(self.s3.pending_uploads(), [])
        # progress went through the upload
        shutil.rmtree(self.datadir)
        r = self.job("RESTORE_BACKUP", {"remote": "offsite", "backupId": "b1"})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(tree_digest(self.datadir), self.digest)
        self.assertEqual(os.listdir(os.path.join(self.inst, "backups")), [])

    def test_bandwidth_limit_paces_the_upload_and_progress_shows_the_parts(self):
        with open(self.conf, "a") as f:
            f.write("remote.offsite.bandwidth_limit = 6M\nremote.offsite.parallel = 1\n")
        t0 = time.monotonic()
        r = self.job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "bw"})
        took = time.monotonic() - t0
        self.assertEqual(r.status, "COMPLETED", r)
        # ~13 MiB at 6 MiB/s: at least 2 s of sending (libcurl's cap is an average per request)
        self.assertGreaterEqual(took, r.result["output"]["bytes"] / (6 << 20) * 0.9, took)
        # each part is reported as the store acknowledges it (one connection: in order)
        up = [e["message"] for e in r.events if e["kind"] == "log"
              and "acknowledged by remote 'offsite'" in e.get("message", "")]
        self.assertEqual([m.split(" (")[0] for m in up], ["part 1", "part 2", "part 3"], up)
        self.assertIn("part 1 (5242880 bytes) acknowledged", up[0])

    def test_keep_local_keeps_the_local_backup(self):
        r = self.job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "b2", "keepLocal": True})
        self.assertEqual(r.status, "COMPLETED", r)
        local = os.path.join(self.inst, "backups", "b2.tar.zst")
        self.assertEqual(sha256_file(local), r.result["output"]["sha256"])
        with open(local, "rb") as f:
            self.assertEqual(self.s3.object_bytes(self.key("b2", "tar.zst")), f.read())

    def test_wrong_credentials_fail_cleanly_not_retryable(self):
        write_credentials(self.creds, key_id="WRONGKEY", secret="very-secret-value-42")
        r = self.job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "b3"})
        self.assertEqual(r.status, "FAILED", r)
        err = r.result["error"]
        self.assertFalse(err.get("retryable"), err)
        self.assertIn("remote 'offsite'", err["message"])
        self.assertIn("403 InvalidAccessKeyId", err["message"])
        self.assertNotIn("very-secret-value-42", r.stdout + r.stderr)
        self.assertEqual(self.s3.keys(), [])

    def test_unknown_remote_fails_before_anything_is_written(self):
        r = self.job("BACKUP_INSTANCE", {"remote": "elsewhere"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("remote 'elsewhere' is not configured on this agent", r.error_message)
        self.assertFalse(os.path.exists(os.path.join(self.inst, "backups")) and
                         os.listdir(os.path.join(self.inst, "backups")))

    def test_restore_detects_a_tampered_remote_archive(self):
        r = self.job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "b4"})
        self.assertEqual(r.status, "COMPLETED", r)
        path = self.s3.object_path(self.key("b4", "tar.zst"))
        with open(path, "r+b") as f:
            f.seek(1000)
            b = f.read(1)
            f.seek(1000)
            f.write(bytes([b[0] ^ 0xFF]))
        before = tree_digest(self.datadir)
        r = self.job("RESTORE_BACKUP", {"remote": "offsite", "backupId": "b4"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("backup 'b4' on remote 'offsite' is corrupt", r.error_message)
        self.assertEqual(tree_digest(self.datadir), before)


class RemoteBackupKill(RemoteBackupBase):
    def acked_parts(self):
        marker = os.path.join(self.inst, ".jobvisor", "markers", "remote-upload.json")
        try:
            with open(marker) as f:
                return len(json.load(f).get("parts", []))
        except (OSError, ValueError):
            return -1

    def recorded_parts(self):
        """(part number, upload id) pairs the marker records as acknowledged."""
        marker = os.path.join(self.inst, ".jobvisor", "markers", "remote-upload.json")
        try:
            with open(marker) as f:
                m = json.load(f)
        except (OSError, ValueError):
            return set()
        return {(str(p["n"]), m["uploadId"]) for p in m.get("parts", [])}

    def test_kill_during_upload_then_retry_completes_identically(self):
        # the reference: a clean backup of the same data
        ref = self.job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "ref"})
        self.assertEqual(ref.status, "COMPLETED", ref)
        resumed = 0
        for trial in range(KILLS):
            bid = f"k{trial}"
            job_id = f"job-kill-{trial}"
            want = trial % 3  # kill after 0, 1 or 2 of the 3 parts were acknowledged
            before = len(self.s3.stored_parts())
            p = subprocess.Popen(self.argv("BACKUP_INSTANCE", {"remote": "offsite", "backupId": bid},
                                           job_id), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
            child = self.wait_child(p, timeout=30)
            deadline = time.time() + 120
            while self.acked_parts() < want and time.time() < deadline and p.poll() is None:
                time.sleep(0.002)
            self.assertIsNone(p.poll(), "the backup finished before it could be killed")
            os.killpg(child, signal.SIGKILL)
            p.kill()
            p.communicate()
            acked = self.acked_parts()
            recorded = self.recorded_parts()
            stored_before_retry = len(self.s3.stored_parts())
            r = self.job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": bid}, job_id=job_id)
            self.assertEqual(r.status, "COMPLETED", r)
            if acked > 0:
                self.assertIn(f"resuming the upload of 'test1/{bid}.tar.zst' to remote 'offsite': "
                              f"{acked} parts acknowledged", r.stdout + r.stderr)
                resumed += 1
            obj = self.s3.object_bytes(self.key(bid, "tar.zst"))
            # the same data gives the same archive: byte-identical to the clean backup
            self.assertEqual(hashlib.sha256(obj).hexdigest(), ref.result["output"]["sha256"])
            self.assertEqual(r.result["output"]["sha256"], ref.result["output"]["sha256"])
            # what reached the server during the retry: no part the marker recorded as
            # acknowledged (parts in flight at the kill may be sent again)
            again = set(self.s3.stored_parts()[stored_before_retry:]) & recorded
            self.assertEqual(again, set(), (recorded, self.s3.stored_parts()[before:]))
            self.assertEqual(self.s3.pending_uploads(), [])
            self.assertEqual(os.listdir(os.path.join(self.inst, ".jobvisor", "markers")), [])
        if KILLS >= 2:
            self.assertGreaterEqual(resumed, 1)


class RemoteRestoreResume(RemoteBackupBase):
    def test_resumed_restore_fetches_only_the_missing_bytes(self):
        r = self.job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "rr"})
        self.assertEqual(r.status, "COMPLETED", r)
        size = r.result["output"]["bytes"]
        obj = "/" + self.s3.bucket + "/" + self.key("rr", "tar.zst")
        # the restore goes through a counting proxy that serves 4 MiB/s: ~3 s for the archive
        proxy = TcpProxy(self.s3.port, down_rate=4 << 20)
        self.addCleanup(proxy.close)

        class Via:
            endpoint = proxy.endpoint
            bucket = self.s3.bucket
        remote_config(self.conf, "offsite", Via, self.creds, prefix="jv", part_size="5M")
        shutil.rmtree(self.datadir)
        part = os.path.join(self.inst, "backups", ".rr.tar.zst.part")
        params = {"remote": "offsite", "backupId": "rr"}
        p = subprocess.Popen(self.argv("RESTORE_BACKUP", params, "job-rr"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
        child = self.wait_child(p, timeout=30)
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            try:
                if os.path.getsize(part) > 5 << 20:
                    break
            except OSError:
                pass
            time.sleep(0.002)
        self.assertIsNone(p.poll(), "the restore finished before it could be killed")
        os.killpg(child, signal.SIGKILL)
        p.kill()
        p.communicate()
        had = os.path.getsize(part)
        self.assertTrue(5 << 20 < had < size, (had, size))
        first = [q for q in proxy.requests if q.method == "GET" and q.path.startswith(obj)]
        self.assertEqual(len(first), 1, proxy.requests)
        self.assertEqual(first[0].range_start, 0, first)
        n = len(proxy.requests)

        r = self.job("RESTORE_BACKUP", params, job_id="job-rr")
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(tree_digest(self.datadir), self.digest)
        self.assertIn(f"resuming the download of backup 'rr' at byte {had} of {size}",
                      r.stdout + r.stderr)
        # at the wire: the retry asked for the archive from the byte the part file had on
        again = [q for q in proxy.requests[n:] if q.method == "GET" and q.path.startswith(obj)]
        self.assertEqual([q.range_start for q in again], [had], proxy.requests[n:])
        # and the two runs together were served about one archive, not two: the first run's
        # bytes past `had` are only what was in flight at the kill (socket buffers)
        served = sum(q.served for q in first + again)
        self.assertGreaterEqual(served, size)
        self.assertLess(served, size + (1 << 20), (served, size, had))
        self.assertLess(again[0].served, size - had + 4096, (again, size, had))
        self.assertEqual(os.listdir(os.path.join(self.inst, "backups")), [])


class RemoteVerifyPrune(RemoteBackupBase):
    def backup(self, bid):
        r = self.job("BACKUP_INSTANCE", {"remote": "offsite", "backupId": bid})
        self.assertEqual(r.status, "COMPLETED", r)
        return r.result["output"]

    def test_verify_streams_and_detects_a_tampered_object(self):
        out = self.backup("v1")
        r = self.job("VERIFY_BACKUP", {"remote": "offsite", "backupId": "v1"})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(r.result["output"]["bytes"], out["bytes"])
        self.assertEqual(r.result["output"]["files"], out["files"])
        # nothing written on this host: no backups/ content, no staging left
        backups = os.path.join(self.inst, "backups")
        self.assertEqual(os.listdir(backups) if os.path.exists(backups) else [], [])
        # flip one byte inside the object at the server
        path = self.s3.object_path(self.key("v1", "tar.zst"))
        with open(path, "r+b") as f:
            f.seek(out["bytes"] // 2)
            b = f.read(1)
            f.seek(out["bytes"] // 2)
            f.write(bytes([b[0] ^ 0x01]))
        r = self.job("VERIFY_BACKUP", {"remote": "offsite", "backupId": "v1"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("backup 'v1' on remote 'offsite' is corrupt", r.error_message)
        self.assertFalse(r.result["error"].get("retryable"))

    def test_verify_of_a_missing_backup_names_it(self):
        r = self.job("VERIFY_BACKUP", {"remote": "offsite", "backupId": "nope"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("backup 'nope' does not exist on remote 'offsite'", r.error_message)

    def test_prune_keeps_the_newest_and_deletes_archive_with_manifest(self):
        for bid in ("p1", "p2", "p3", "p4"):
            self.backup(bid)
            time.sleep(1.1)  # createdAt has one-second resolution
        r = self.job("PRUNE_BACKUPS", {"remote": "offsite", "keepLast": 2, "dryRun": True})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(sorted(r.result["output"]["removed"]), ["p1", "p2"])
        self.assertEqual(len(self.s3.keys()), 8)
        r = self.job("PRUNE_BACKUPS", {"remote": "offsite", "keepLast": 2})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(sorted(r.result["output"]["kept"]), ["p3", "p4"])
        self.assertEqual(self.s3.keys(), [self.key("p3", "json"), self.key("p3", "tar.zst"),
                                          self.key("p4", "json"), self.key("p4", "tar.zst")])
        # the kept ones are still whole
        r = self.job("VERIFY_BACKUP", {"remote": "offsite", "backupId": "p3"})
        self.assertEqual(r.status, "COMPLETED", r)

    def test_prune_removes_a_manifest_whose_archive_is_gone(self):
        for bid in ("q1", "q2"):
            self.backup(bid)
            time.sleep(1.1)
        os.remove(self.s3.object_path(self.key("q1", "tar.zst")))
        r = self.job("PRUNE_BACKUPS", {"remote": "offsite", "keepLast": 5})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(r.result["output"]["leftovers"], ["q1.json"])
        self.assertEqual(self.s3.keys(), [self.key("q2", "json"), self.key("q2", "tar.zst")])


class RemoteNetworkFaults(RemoteBackupBase):
    def test_server_restarted_mid_upload_the_run_retries_and_completes(self):
        p = subprocess.Popen(self.argv("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "n1"}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        marker = os.path.join(self.inst, ".jobvisor", "markers", "remote-upload.json")
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            try:
                with open(marker) as f:
                    if len(json.load(f).get("parts", [])) >= 1:
                        break
            except (OSError, ValueError):
                pass
            time.sleep(0.002)
        self.assertIsNone(p.poll(), "the backup finished before the server could be restarted")
        self.s3.stop()
        time.sleep(1.5)  # the client sees refused connections and backs off
        self.s3.start()
        out, err = p.communicate(timeout=180)
        r = RunResult(p.returncode, out, err)
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(hashlib.sha256(self.s3.object_bytes(self.key("n1", "tar.zst"))).hexdigest(),
                         r.result["output"]["sha256"])

    def test_a_connection_that_stalls_30s_is_cut_and_the_upload_completes(self):
        proxy = TcpProxy(self.s3.port)
        self.addCleanup(proxy.close)

        class Via:
            endpoint = proxy.endpoint
            bucket = self.s3.bucket
        remote_config(self.conf, "offsite", Via, self.creds, prefix="jv", part_size="5M",
                      bandwidth_limit="8M")
        p = subprocess.Popen(self.argv("BACKUP_INSTANCE", {"remote": "offsite", "backupId": "s1"}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        marker = os.path.join(self.inst, ".jobvisor", "markers", "remote-upload.json")
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            try:
                with open(marker) as f:
                    if len(json.load(f).get("parts", [])) >= 1:
                        break
            except (OSError, ValueError):
                pass
            time.sleep(0.002)
        self.assertIsNone(p.poll(), "the backup finished before the stall could be set up")
        t0 = time.monotonic()
        # the connection in use keeps working (curl reuses it); break it so the next part
        # needs a new connection, which stalls
        proxy.stall_next(1)
        for c in list(proxy.conns):
            try:
                c.shutdown(2)
            except OSError:
                pass
        out, err = p.communicate(timeout=240)
        took = time.monotonic() - t0
        r = RunResult(p.returncode, out, err)
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(proxy.stalled, 1)
        # the stalled request was cut after 30 s without a byte, then retried
        self.assertGreaterEqual(took, 30, took)
        self.assertEqual(hashlib.sha256(self.s3.object_bytes(self.key("s1", "tar.zst"))).hexdigest(),
                         r.result["output"]["sha256"])
