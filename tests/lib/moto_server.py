"""A second real S3 server for tests: moto's server mode (the `moto` Python package of the test
machine, with flask), on 127.0.0.1 with an OS-chosen free port, with its IAM authentication on.

Unlike s3rver, it verifies every request's SigV4 signature against the secret of an IAM access
key (a wrong secret is refused with 403 SignatureDoesNotMatch), so the signing of multipart
requests (uploadId and partNumber in the canonical query), ranged GETs and listings is checked
by a server. What it does not check either: Content-MD5 and x-amz-content-sha256 against the
body (read from its source; see docs/operations.md).

Authentication starts after the first INITIAL_NO_AUTH_ACTION_COUNT requests: the four that
create the IAM user, its access key, its policy and the bucket.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

try:
    import boto3  # noqa: F401 (moto needs it too)
    import moto  # noqa: F401
    import flask  # noqa: F401
    AVAILABLE = True
except ImportError:
    AVAILABLE = False

SETUP_ACTIONS = 4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    def __init__(self, bucket="jv-backups"):
        import boto3
        self.bucket = bucket
        self.home = tempfile.mkdtemp(prefix="jv-moto-")
        self.port = free_port()
        self.log_path = os.path.join(self.home, "moto.log")
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_ACTIONS))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto did not start: " + open(self.log_path).read()[-2000:])
                time.sleep(0.1)
        # urlopen of /moto-api/ is not an action: the four below are the unauthenticated ones
        kw = dict(endpoint_url=self.endpoint, region_name="us-east-1")
        iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **kw)
        iam.create_user(UserName="jobvisor")
        k = iam.create_access_key(UserName="jobvisor")["AccessKey"]
        iam.put_user_policy(UserName="jobvisor", PolicyName="backups", PolicyDocument=(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*",'
            '"Resource":"*"}]}'))
        self.key_id, self.secret = k["AccessKeyId"], k["SecretAccessKey"]
        self.s3 = boto3.client("s3", aws_access_key_id=self.key_id,
                               aws_secret_access_key=self.secret, **kw)
        self.s3.create_bucket(Bucket=bucket)

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def object_bytes(self, key):
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self):
        r = self.s3.list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"] for o in r.get("Contents", []))

    def pending_uploads(self):
        r = self.s3.list_multipart_uploads(Bucket=self.bucket)
        return [u["UploadId"] for u in r.get("Uploads", [])]

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)
