"""A real S3 server for tests: s3rver (npm, pinned in tests/package-lock.json, installed into
tests/node_modules by `make deps`), on 127.0.0.1 with an OS-assigned port and its default
account S3RVER/S3RVER.

What s3rver 3.7.1 does and does not check (read from its source; see docs/operations.md):
it answers multipart uploads, ranged GETs and ListObjectsV2 with continuation tokens, and
rejects an unknown access key id (403 InvalidAccessKeyId). It does NOT verify SigV4
signatures (a wrong secret with the right key id is accepted), does not check Content-MD5,
and answers NotImplemented to AbortMultipartUpload and ListMultipartUploads. Tests that
need those behaviours say so.
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
S3RVER = os.path.join(HERE, "..", "node_modules", "s3rver", "bin", "s3rver.js")
KEY_ID = "S3RVER"
SECRET = "S3RVER"


class S3Server:
    def __init__(self, bucket="jv-backups", root=None, port=0):
        if not os.path.exists(S3RVER):
            raise RuntimeError("s3rver is not installed: run `make deps` (npm ci in tests/)")
        self.bucket = bucket
        self.home = tempfile.mkdtemp(prefix="jv-s3-")
        self.root = root or os.path.join(self.home, "store")
        os.makedirs(self.root, exist_ok=True)
        self.port = port
        self.proc = None
        self.start()

    def start(self):
        self.log_path = os.path.join(self.home, "s3rver.log")
        mark = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        log = open(self.log_path, "ab")
        # s3rver's continuation tokens use a cipher OpenSSL 3 keeps in its legacy provider
        self.proc = subprocess.Popen(
            ["node", "--openssl-legacy-provider", S3RVER, "-d", self.root, "-a", "127.0.0.1",
             "-p", str(self.port), "--configure-bucket", self.bucket],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(mark)
                m = re.search(rb"listening on 127\.0\.0\.1:(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("s3rver did not start: " + self.log_tail())

    def log_tail(self):
        with open(self.log_path, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    def stored_parts(self):
        """(upload id, part number) of every part the server stored, in order, from its log."""
        with open(self.log_path, "rb") as f:
            text = f.read().decode(errors="replace")
        return re.findall(r"Stored part (\d+) of ([0-9a-f]+)", text)

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def restart(self):
        """Stop and start again on the same port (a store restarted under a client)."""
        self.stop()
        self.start()

    def close(self):
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    # What reached the server, read from its storage directory (not through the client).
    def object_path(self, key):
        return os.path.join(self.root, self.bucket, key + "._S3rver_object")

    def object_bytes(self, key):
        with open(self.object_path(key), "rb") as f:
            return f.read()

    def keys(self):
        out = []
        base = os.path.join(self.root, self.bucket)
        for d, _, files in os.walk(base):
            for f in files:
                if f.endswith("._S3rver_object"):
                    out.append(os.path.relpath(os.path.join(d, f), base)[:-len("._S3rver_object")])
        return sorted(out)

    def pending_uploads(self):
        """Multipart upload ids the server still holds (s3rver keeps each as a directory)."""
        d = os.path.join(self.root, self.bucket, "._S3rver_uploads")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []


def write_credentials(path, key_id=KEY_ID, secret=SECRET, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(f"{key_id}\n{secret}\n")
    os.chmod(path, mode)
    return path


def remote_config(path, name, server, credentials, **extra):
    """An agent settings file (for `jobvisor run --config`) with one remote."""
    lines = [f"remote.{name}.endpoint = {server.endpoint}",
             f"remote.{name}.bucket = {server.bucket}",
             f"remote.{name}.path_style = true",
             f"remote.{name}.credentials_file = {credentials}"]
    for k, v in extra.items():
        lines.append(f"remote.{name}.{k} = {v}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
