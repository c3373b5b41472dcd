"""Fixtures for the built-in job tests: a loopback HTTP file server, real archives
(tar.zst via the zstd CLI, tar.gz, zip), instance trees and exact tree digests."""
import functools
import hashlib
import http.server
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
import threading
import time
import zipfile


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def tree_digest(root):
    """Every path under root -> (type, size, permission bits, sha256 or link target).

    Exact: two trees with equal digests have the same paths, types, sizes, modes and
    contents. A missing root gives None."""
    if not os.path.lexists(root):
        return None
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", 0, 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", 0, mode, "")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_size, mode, sha256_file(p))
            else:
                out[rel] = ("other", 0, mode, "")
    return out


def write_file(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(path, mode)


def populate(root, seed=1, files=40, max_size=64 * 1024, big=0):
    """A game-data-like tree: nested dirs, small and mid-size files, an executable, a
    symlink inside the tree, an empty dir. `big` adds one file of that many bytes."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    dirs = ["", "world", "world/region", "world/playerdata", "config", "plugins/x", "logs"]
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i in range(files):
        d = rng.choice(dirs)
        size = rng.choice([0, 1, 100, 4096, rng.randint(1, max_size)])
        write_file(os.path.join(root, d, f"f{seed}_{i}.dat"), rng.randbytes(size),
                   rng.choice([0o644, 0o600, 0o640]))
    write_file(os.path.join(root, "server.properties"), f"seed={seed}\nmotd=hello\n")
    write_file(os.path.join(root, "start.sh"), "#!/bin/sh\nexit 0\n", 0o755)
    os.makedirs(os.path.join(root, "empty"), exist_ok=True)
    link = os.path.join(root, "latest.log")
    if not os.path.lexists(link):
        os.symlink("logs/f%d_0.dat" % seed if os.path.exists(os.path.join(root, "logs", "f%d_0.dat" % seed))
                   else "server.properties", link)
    if big:
        write_file(os.path.join(root, "world", "big.mca"), rng.randbytes(big))
    return tree_digest(root)


def make_tar(src_dir, out_path, compression="zst", prefix=""):
    """Archive src_dir's contents (entries under `prefix`) as tar, tar.gz or tar.zst."""
    buf = io.BytesIO()
    mode = "w:gz" if compression == "gz" else "w"
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(os.listdir(src_dir)):
            tf.add(os.path.join(src_dir, name), arcname=os.path.join(prefix, name) if prefix else name)
    data = buf.getvalue()
    if compression == "zst":
        data = subprocess.run(["zstd", "-q", "-c", "-3"], input=data, capture_output=True,
                              check=True).stdout
    with open(out_path, "wb") as f:
        f.write(data)
    return sha256_file(out_path)


def make_zip(src_dir, out_path):
    with zipfile.ZipFile(out_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(src_dir):
            for name in sorted(dirnames):
                p = os.path.join(dirpath, name)
                zf.write(p, os.path.relpath(p, src_dir))
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                zf.write(p, os.path.relpath(p, src_dir))
    return sha256_file(out_path)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        self.server.ranges.append(self.headers.get("Range"))
        try:
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                self.send_range(int(rng[6:-1]))
            else:
                super().do_GET()
        except (ConnectionError, BrokenPipeError):
            pass  # the client was killed mid-download (crash trials)

    def send_range(self, start):
        path = self.translate_path(self.path)
        size = os.path.getsize(path)
        if start >= size:
            self.send_error(416)
            return
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            self.copyfile(f, self.wfile)

    def copyfile(self, source, outputfile):
        rate = self.server.rate
        if not rate:
            return super().copyfile(source, outputfile)
        chunk = max(1024, rate // 20)
        while True:
            buf = source.read(chunk)
            if not buf:
                return
            outputfile.write(buf)
            time.sleep(len(buf) / rate)


class FileServer:
    """python http.server serving a directory on 127.0.0.1 with an OS-assigned port.
    `requests` lists the paths asked for."""

    def __init__(self, directory, rate=0):
        self.directory = directory
        handler = functools.partial(_QuietHandler, directory=directory)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.requests = []
        self.httpd.ranges = []
        self.httpd.rate = rate  # bytes per second, 0 = unthrottled
        self.requests = self.httpd.requests
        self.ranges = self.httpd.ranges
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def read_json(path):
    with open(path) as f:
        return json.load(f)


def leftovers(instance_dir):
    """Temp files and staging directories anywhere under an instance: names made by
    the durable-write / archive / swap / link helpers (.X.tmp.PID, .X.swap.PID,
    .X.lnk.PID) and entries under .jobvisor/staging."""
    found = []
    for dirpath, dirnames, filenames in os.walk(instance_dir):
        for name in dirnames + filenames:
            if name.startswith(".") and any(t in name for t in (".tmp.", ".swap.", ".lnk.")):
                found.append(os.path.relpath(os.path.join(dirpath, name), instance_dir))
    staging = os.path.join(instance_dir, ".jobvisor", "staging")
    if os.path.isdir(staging):
        found += [os.path.join(".jobvisor/staging", n) for n in os.listdir(staging)]
    return sorted(found)


def copytree(src, dst):
    shutil.copytree(src, dst, symlinks=True)
