"""Helpers for the end-to-end tests of the fs, archive and http modules.

FsapiCase runs Lua job scripts through the real `jobvisor run ... --json` and,
around every run, snapshots everything under the test's temp dir except the
instance directory (and the shared download cache, which is outside by design
and checked separately), failing the test if anything there changed. The temp
dir holds an `outside/` directory with a secret file that hostile paths,
symlinks and archives aim at.
"""
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile

from jv_run import JobvisorTestCase, tree_snapshot

HERE = os.path.dirname(os.path.abspath(__file__))


def content_snapshot(root, skips):
    """tree_snapshot plus a digest of every regular file's content."""
    snap = {}
    for path, meta in tree_snapshot(root).items():
        if any(path == s or path.startswith(s + os.sep) for s in skips):
            continue
        digest = None
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        elif os.path.isdir(path) and not os.path.islink(path):
            # A directory's mtime and size follow its entries, which are listed
            # themselves (and the data dir legitimately gains cache/).
            meta = (meta[0],)
        snap[path] = (meta, digest)
    return snap


class FsapiCase(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.inst = self.instance_dir()
        os.makedirs(self.inst)
        self.outside = os.path.join(self.tmp, "outside")
        os.makedirs(self.outside)
        with open(os.path.join(self.outside, "secret.txt"), "w") as f:
            f.write("do not touch\n")
        self.cache = os.path.join(self.data, "cache")

    def ipath(self, rel):
        return os.path.join(self.inst, rel)

    def outside_snapshot(self):
        return content_snapshot(self.tmp, [self.inst, self.cache])

    def run_lua(self, body, args=None, timeout=120, extra=()):
        """Run `body` as the run(job) function; job.params.args = args.
        Asserts that nothing outside the instance directory changed."""
        text = ("return { type = \"FSAPI_TEST\", params = { args = \"any?\" },\n"
                "run = function(job)\nlocal args = job.params.args or {}\n"
                + body + "\nend }\n")
        path = self.script(text)
        before = self.outside_snapshot()
        res = self.run_job(path, params={"args": args} if args is not None else None,
                           timeout=timeout, extra=extra)
        after = self.outside_snapshot()
        self.assertEqual(before, after, "something outside the instance directory changed")
        return res

    def assertFailedWith(self, res, *needles):
        self.assertEqual(res.status, "FAILED", res)
        self.assertEqual(res.code, 1, res)
        for n in needles:
            self.assertIn(n, res.error_message, res)

    def assertCompleted(self, res):
        self.assertEqual(res.status, "COMPLETED", res)
        self.assertEqual(res.code, 0, res)
        return res.result["output"]


# ---- archives built with the standard library (tar) and the zstd tool --------

def tar_bytes(entries, fmt=tarfile.PAX_FORMAT):
    """entries: list of (kind, name, data_or_target). kind: file dir symlink hardlink
    chardev fifo. Returns the uncompressed tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for kind, name, extra in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            info.mode = 0o644
            data = None
            if kind == "file":
                data = extra if isinstance(extra, bytes) else extra.encode()
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = extra
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = extra
            elif kind == "chardev":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def zstd_compress(data):
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, capture_output=True,
                          check=True).stdout


def write_tar(path, entries, compress=None):
    data = tar_bytes(entries)
    if compress == "zstd":
        data = zstd_compress(data)
    elif compress == "gzip":
        import gzip
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)


def write_zip(path, entries):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries:
            z.writestr(name, data)


def write_zstd_bomb(path, size):
    """A tar.zst with one file of `size` zero bytes (tiny compressed)."""
    with open(path, "wb") as out:
        proc = subprocess.Popen(["zstd", "-q", "-c", "-1"], stdin=subprocess.PIPE, stdout=out)
        with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as t:
            info = tarfile.TarInfo("bomb.bin")
            info.size = size
            with open("/dev/zero", "rb") as zero:
                t.addfile(info, zero)
        proc.stdin.close()
        assert proc.wait() == 0


class HttpServer:
    """tests/lib/fsapi_httpd.py on 127.0.0.1 with an OS-assigned port."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fsapi_httpd.py"), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"test server said {line!r}")
        self.port = int(line.split()[1])

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path):
        import urllib.request
        with urllib.request.urlopen(self.url("/count" + path), timeout=10) as r:
            return int(r.read())

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def pattern(size, start=0):
    """The test server's generated content: byte i is i % 251."""
    period = bytes(range(251))
    reps = (start + size) // 251 + 2
    return (period * reps)[start:start + size]


def pattern_sha(size):
    return hashlib.sha256(pattern(size)).hexdigest()
