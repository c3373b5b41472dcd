#!/usr/bin/env python3
"""bench_cp_tls.py — what TLS on jobvisor-cp's accept front costs (issue 14).

    bench_cp_tls.py BUILD/examples/controlplane/jobvisor-cp [--requests 1000] [--parked 2000]

Makes a throwaway CA and an ECDSA P-256 and an RSA-2048 server certificate
(tests/lib/tls_pki.py, the `openssl` command) in a temp dir, then for each of
plain HTTP, TLS with a full handshake per request and TLS resuming the session
(TLS 1.3 ticket) starts a fresh jobvisor-cp (SQLite, 127.0.0.1, OS-assigned
port) and sends REQUESTS authenticated `GET /v1/jobs?limit=1`, one after
another, each on a new connection ("Connection: close"); then, for plain
HTTP and TLS, as a kept-alive client would: on one connection, opening a new
one only when the control plane closes it (one without keep-alive closes
after every answer, so the same client measures both). Reported: the control
plane's CPU time per request (utime + stime from /proc, all its threads) and
the client's wall time per request. Then PARKED long polls are parked over
plain HTTP and over TLS: the control plane's RSS growth per parked poll.

The client is this Python process on the same machine, so wall times include
its own TLS work; the CPU column is the control plane's alone. Loopback only,
bounded (a minute or two), stops what it starts. Not run by ctest."""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tls_pki import OPENSSL, Pki, read_answer  # noqa: E402

ADMIN = "admin-token-0123456789abcdef"


def secret(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class Cp:
    def __init__(self, binary, tmp, agents, tls=None):
        db = os.path.join(tmp, "cp-%d.sqlite" % time.monotonic_ns())
        args = [binary, "--listen", "127.0.0.1:0", "--db", db, "--admin-token-file", os.path.join(tmp, "admin"),
                "--agents-file", agents, "--max-wait", "120"]
        if tls:
            args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        self.err = open(os.path.join(tmp, "cp.stderr"), "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.err, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        if "listening on" not in line:
            raise SystemExit("jobvisor-cp did not start: %r" % line)
        self.port = int(line.rsplit(":", 1)[1])

    def cpu_s(self):
        f = open("/proc/%d/stat" % self.proc.pid).read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/%d/status" % self.proc.pid).read()).group(1))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.proc.stdout.close()
        self.err.close()


def connect(port, ctx, session=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    return ctx.wrap_socket(s, server_hostname="127.0.0.1", session=session) if ctx else s


def request(port, ctx, raw, session=None):
    """(status, the TLS session to resume next, whether this one was resumed)."""
    with connect(port, ctx, session) as s:
        s.sendall(raw)
        data = read_answer(s)
        return int(data.split(b" ", 2)[1]), (s.session if ctx else None), (s.session_reused if ctx else False)


def requests_row(binary, tmp, agents, label, tls, ctx, resume, n):
    cp = Cp(binary, tmp, agents, tls)
    raw = (b"GET /v1/jobs?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
           b"Connection: close\r\n\r\n" % ADMIN.encode())
    try:
        session = None
        for _ in range(20):  # warm-up, and a session to resume
            status, session, _ = request(cp.port, ctx, raw)
        reused = 0
        cpu0, t0 = cp.cpu_s(), time.monotonic()
        for _ in range(n):
            status, fresh, was = request(cp.port, ctx, raw, session if resume else None)
            if status != 200:
                raise SystemExit("%s: answered %d" % (label, status))
            reused += was
            if resume and fresh is not None:
                session = fresh
        wall, cpu = time.monotonic() - t0, cp.cpu_s() - cpu0
    finally:
        cp.stop()
    print("| %s | %d | %d | %.2f | %.2f |" % (label, n, reused, cpu * 1000 / n, wall * 1000 / n), flush=True)


def kept_row(binary, tmp, agents, label, tls, ctx, n):
    """n requests as a keep-alive client sends them, and the connections that took."""
    cp = Cp(binary, tmp, agents, tls)
    raw = b"GET /v1/jobs?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n\r\n" % ADMIN.encode()
    s, conns = None, 0
    try:
        for i in range(n + 20):  # the first 20 warm up
            if i == 20:
                cpu0, t0, conns = cp.cpu_s(), time.monotonic(), int(s is not None)
            if s is None:
                s, conns = connect(cp.port, ctx), conns + 1
            s.sendall(raw)
            data = read_answer(s)
            if int(data.split(b" ", 2)[1]) != 200:
                raise SystemExit("%s: answered %r" % (label, data[:100]))
            if b"\r\nConnection: keep-alive\r\n" not in data.split(b"\r\n\r\n", 1)[0]:
                s.close()
                s = None
        wall, cpu = time.monotonic() - t0, cp.cpu_s() - cpu0
    finally:
        if s:
            s.close()
        cp.stop()
    print("| %s | %d | %d | %.3f | %.3f |" % (label, n, conns, cpu * 1000 / n, wall * 1000 / n), flush=True)


def parked_row(binary, tmp, agents, label, tls, ctx, n):
    cp = Cp(binary, tmp, agents, tls)
    socks = []
    try:
        for _ in range(20):
            request(cp.port, ctx, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        time.sleep(0.5)
        before = cp.rss_kib()
        body = json.dumps({"capacity": 1, "waitSeconds": 120, "running": []}).encode()
        for i in range(n):
            a = b"p%05d" % i
            s = connect(cp.port, ctx)
            s.sendall(b"POST /v1/agents/%s/poll HTTP/1.1\r\nAuthorization: Bearer %s-token-0123456789abcdef\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (a, a, len(body), body))
            socks.append(s)
        metrics = b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer %s\r\n\r\n" % ADMIN.encode()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with connect(cp.port, ctx) as s:
                s.sendall(metrics)
                text = read_answer(s)
            if int(re.search(rb"jobvisor_long_polls_parked (\d+)", text).group(1)) >= n:
                break
            time.sleep(0.2)
        time.sleep(1)
        grown = cp.rss_kib() - before
    finally:
        for s in socks:
            s.close()
        cp.stop()
    print("| %s | %d | %d | %.1f |" % (label, n, grown, grown / n), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--parked", type=int, default=2000, help="0: skip the parked long polls")
    a = ap.parse_args()
    if not OPENSSL:
        raise SystemExit("needs the openssl command")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="jv-bench-tls-")
    try:
        pki = Pki(tmp)
        ec, rsa = pki.server("ecdsa"), pki.server("rsa", rsa=True)
        ctx = pki.context()
        secret(os.path.join(tmp, "admin"), ADMIN + "\n")
        agents = os.path.join(tmp, "agents")
        secret(agents, "".join("p%05d p%05d-token-0123456789abcdef\n" % (i, i) for i in range(max(a.parked, 1))))
        print("| connection | requests | resumed | cp CPU ms / request | client wall ms / request |")
        print("|---|---|---|---|---|")
        for label, tls, c, resume in (("plain HTTP", None, None, False),
                                      ("TLS 1.3, ECDSA P-256, full handshake", ec, ctx, False),
                                      ("TLS 1.3, ECDSA P-256, resumed (ticket)", ec, ctx, True),
                                      ("TLS 1.3, RSA-2048, full handshake", rsa, ctx, False),
                                      ("TLS 1.3, RSA-2048, resumed (ticket)", rsa, ctx, True)):
            requests_row(a.binary, tmp, agents, label, tls, c, resume, a.requests)
        print()
        print("| kept-alive client | requests | connections | cp CPU ms / request | client wall ms / request |")
        print("|---|---|---|---|---|")
        for label, tls in (("plain HTTP", None), ("TLS 1.3, ECDSA P-256", ec), ("TLS 1.3, RSA-2048", rsa)):
            kept_row(a.binary, tmp, agents, label, tls, ctx if tls else None, a.requests)
        if not a.parked:
            return
        print()
        print("| parked long polls | count | cp RSS growth (KiB) | KiB per parked poll |")
        print("|---|---|---|---|")
        parked_row(a.binary, tmp, agents, "plain HTTP", None, None, a.parked)
        parked_row(a.binary, tmp, agents, "TLS (ECDSA P-256)", ec, ctx, a.parked)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
