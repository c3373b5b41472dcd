#!/usr/bin/env python3
"""Remote backups against a local S3 server (s3rver on 127.0.0.1), issue 13.

usage: bench_remote.py JOBVISOR_BIN [--mb N] [--update DOC]

Rows, on one generated game world (region files about half incompressible, plus small
text files):
  * BACKUP_INSTANCE with "remote" (the archive streamed: parts uploaded while it is
    compressed, no local copy) against, in the same run, a local BACKUP_INSTANCE followed by
    `rclone copyto` of its archive to the same bucket (Debian's rclone, S3 backend);
  * the upload: jobvisor's archiving-and-upload phase (overlapped; from its "backing up to"
    event to the last part's acknowledgement) against `rclone copyto` of the same archive
    alone (a lower bound of jobvisor's upload throughput);
  * RESTORE_BACKUP with "remote" (download, SHA-256 check, extraction, swap) against a local
    RESTORE_BACKUP plus `rclone copyto` of the archive back from the bucket.
--update replaces the text between <!-- bench_remote:begin --> and <!-- bench_remote:end -->.
"""
import argparse
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
from s3_server import KEY_ID, SECRET, S3Server, remote_config, write_credentials  # noqa: E402


def make_world(root, mb):
    rng = random.Random(5)
    words = [b"chunk", b"entity", b"tile", b"biome", b"minecraft:stone", b"air", b"{\"x\":", b"}"]
    os.makedirs(os.path.join(root, "world", "region"), exist_ok=True)
    os.makedirs(os.path.join(root, "config"), exist_ok=True)
    left, i = mb << 20, 0
    while left > 0:
        n = min(5 << 20, left)
        half = n // 2
        text = b" ".join(rng.choice(words) for _ in range(half // 6 + 1))[:n - half]
        with open(os.path.join(root, "world", "region", f"r.{i}.mca"), "wb") as f:
            f.write(os.urandom(half) + text)
        left -= n
        i += 1
    for j in range(500):
        with open(os.path.join(root, "config", f"c{j}.json"), "w") as f:
            f.write(json.dumps({"k": j, "v": "x" * rng.randint(10, 2000)}))


def ts(e):
    return datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()


class Bench:
    def __init__(self, jv, mb):
        self.jv = jv
        self.tmp = tempfile.mkdtemp(prefix="jv-bench-remote-")
        self.s3 = S3Server(bucket="bench")
        creds = write_credentials(os.path.join(self.tmp, "cred"))
        self.conf = remote_config(os.path.join(self.tmp, "agent.conf"), "s3", self.s3, creds)
        self.data = os.path.join(self.tmp, "data")
        self.inst = os.path.join(self.data, "instances", "w1")
        make_world(os.path.join(self.inst, "data"), mb)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.rclone_env = dict(env, RCLONE_CONFIG_B_TYPE="s3", RCLONE_CONFIG_B_PROVIDER="Other",
                               RCLONE_CONFIG_B_ACCESS_KEY_ID=KEY_ID,
                               RCLONE_CONFIG_B_SECRET_ACCESS_KEY=SECRET,
                               RCLONE_CONFIG_B_ENDPOINT=self.s3.endpoint,
                               RCLONE_CONFIG_B_FORCE_PATH_STYLE="true", RCLONE_CONFIG="/dev/null")

    def close(self):
        self.s3.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def job(self, what, params):
        argv = [self.jv, "run", what, "--instance", "w1", "--data-dir", self.data, "--params",
                json.dumps(params), "--json", "--config", self.conf]
        t0 = time.monotonic()
        p = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        wall = time.monotonic() - t0
        events, result = [], None
        for line in p.stdout.splitlines():
            o = json.loads(line)
            if "seq" in o:
                events.append(o)
            else:
                result = o
        if not result or result["status"] != "COMPLETED":
            raise SystemExit(f"{what} failed: {result} {p.stderr[-2000:]}")
        return wall, events, result["output"]

    def rclone(self, src, dst):
        t0 = time.monotonic()
        p = subprocess.run(["rclone", "copyto", "--s3-upload-cutoff", "16M", "--s3-chunk-size", "16M",
                            src, dst], env=self.rclone_env, timeout=3600, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"rclone copyto {src} {dst} failed: {p.stderr[-2000:]}")
        return time.monotonic() - t0

    def run(self):
        rows = []
        subprocess.run(["sync"])
        t_remote, ev, out = self.job("BACKUP_INSTANCE", {"remote": "s3", "backupId": "r1"})
        size = out["bytes"]
        # archiving and upload overlap: from "backing up to ..." to the last acknowledged part
        start = min(ts(e) for e in ev if (e.get("message") or "").startswith("backing up to "))
        end = max(ts(e) for e in ev if e["kind"] == "log"
                  and "acknowledged by remote" in (e.get("message") or ""))
        t_upload = end - start
        t_local, _, lout = self.job("BACKUP_INSTANCE", {"backupId": "l1"})
        archive = os.path.join(self.inst, "backups", "l1.tar.zst")
        t_rc = self.rclone(archive, "b:bench/rclone/l1.tar.zst")
        mib = size / (1 << 20)
        rows.append(("BACKUP_INSTANCE with remote vs local backup + `rclone copyto`",
                     f"{t_remote:.2f} s", f"{t_local:.2f} s + {t_rc:.2f} s = {t_local + t_rc:.2f} s",
                     f"{t_remote / (t_local + t_rc):.2f}x", "<= 0.8x"))
        rows.append((f"upload of the {mib:.0f} MiB archive (jobvisor: archiving + upload, overlapped)",
                     f"{t_upload:.2f} s ({mib / t_upload:.0f} MiB/s)",
                     f"`rclone copyto`: {t_rc:.2f} s ({mib / t_rc:.0f} MiB/s)",
                     f"{(mib / t_upload) / (mib / t_rc):.2f}x throughput", ">= 0.9x"))
        shutil.rmtree(os.path.join(self.inst, "data"))
        t_restore, _, _ = self.job("RESTORE_BACKUP", {"remote": "s3", "backupId": "r1"})
        shutil.rmtree(os.path.join(self.inst, "data"))
        dl = os.path.join(self.tmp, "dl.tar.zst")
        t_rcdown = self.rclone("b:bench/rclone/l1.tar.zst", dl)
        os.remove(dl)
        t_lrestore, _, _ = self.job("RESTORE_BACKUP", {"backupId": "l1"})
        rows.append(("RESTORE_BACKUP with remote vs `rclone copyto` down + local restore",
                     f"{t_restore:.2f} s", f"{t_rcdown:.2f} s + {t_lrestore:.2f} s = "
                     f"{t_rcdown + t_lrestore:.2f} s", f"{t_restore / (t_rcdown + t_lrestore):.2f}x", ""))
        return size, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jobvisor")
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--update")
    a = ap.parse_args()
    b = Bench(os.path.abspath(a.jobvisor), a.mb)
    try:
        size, rows = b.run()
    finally:
        b.close()
    lines = [f"World: {a.mb} MiB (region files half incompressible, 500 small JSON files); archive "
             f"{size / (1 << 20):.0f} MiB; s3rver 3.7.1 on 127.0.0.1 (Node.js, one thread), "
             f"part size 16 MiB both sides, one run each.", "",
             "| operation | jobvisor | peer | ratio | target |", "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if a.update:
        doc = open(a.update).read()
        beg, end = "<!-- bench_remote:begin -->", "<!-- bench_remote:end -->"
        i, j = doc.index(beg) + len(beg), doc.index(end)
        open(a.update, "w").write(doc[:i] + "\n" + text + "\n" + doc[j:])


if __name__ == "__main__":
    main()
