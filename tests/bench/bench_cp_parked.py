#!/usr/bin/env python3
"""bench_cp_parked.py — one jobvisor-cp replica at connection scale (issue 14).

    bench_cp_parked.py BUILD/examples/controlplane/jobvisor-cp [--polls 10000] [--ws 200]
                       [--probes 300] [--wakes 50] [--threads 64] [--fresh]
                       [--label NAME] [--update docs/scaling.md]

Starts a fresh jobvisor-cp (SQLite, temp dir, OS-assigned port on 127.0.0.1,
--ws-clients WS + 2), opens WS WebSocket clients (admin stream, reading every
message and answering pings), then POLLS agents that long-poll like real ones
(waitSeconds 25 = --max-wait; a new poll as soon as an answer arrives) from a
separate asyncio process. Once the control plane reports them parked
(jobvisor_long_polls_parked) it measures, from this process with blocking
sockets:

  - VmRSS of jobvisor-cp: at start, with the WebSocket clients, with the polls
    parked -> RSS per WebSocket client and per parked poll;
  - PROBES new polls (waitSeconds 0, one at a time, 20 per second) from agents
    that are not parked: p50/p99/max latency, connect to last byte;
  - WAKES jobs created for random parked agents: job POST start to the
    parked poll's answer carrying it;
  - the control plane's CPU time over the measurement.

The first WebSocket client takes a snapshot and the others resume from its
hello (as reconnecting pages do); with --fresh every client takes a snapshot.
Loopback only; bounded (at most about five minutes); raises RLIMIT_NOFILE to
the hard limit and stops everything it started. Prints one Markdown table
row; --update puts it into FILE's bench_cp_parked table, replacing the row of
the same --label (default: the binary's path). Not run by ctest."""
import argparse
import asyncio
import base64
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

ADMIN = "bench-admin-token-0123456789abcdef"
WAIT = 25


def token(i):
    return "b%05d-token-0123456789abcdef" % i


def agent(i):
    return "b%05d" % i


def poll_bytes(i, wait):
    body = json.dumps({"capacity": 1, "waitSeconds": wait, "running": []}).encode()
    return (b"POST /v1/agents/%s/poll HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (agent(i).encode(), token(i).encode(), len(body)) + body)


# ---- the load process: parked pollers and WebSocket clients (asyncio) ----

async def poller(port, i, stop, out):
    while not stop.is_set():
        try:
            # Agents are hosts of their own: 200 source addresses (127.0.0.2...),
            # so the front's per-address limits see what they would in a fleet.
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.%d.%d" % (
                1 + i // 50 % 4, 2 + i % 50), 0))
            w.write(poll_bytes(i, WAIT))
            data = await r.read()
            w.close()
        except OSError:
            await asyncio.sleep(1)
            continue
        if b'"jobs":[{' in data:
            out.write("job %s %.6f\n" % (agent(i), time.monotonic()))
            out.flush()
            # Done: this agent neither acknowledges the run nor lists it as running, so
            # the control plane would offer it again on every poll at once. Polling on
            # spun hundreds of polls a second per woken agent and delayed the later wakes
            # past the end of the run (the missing counts of earlier runs).
            return


async def ws_frame(r):
    b0, b1 = await r.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await r.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await r.readexactly(8), "big")
    return b0 & 0x0F, await r.readexactly(n)


async def ws_connect(port, query=""):
    """An admin stream; returns (reader, writer, hello)."""
    key = base64.b64encode(os.urandom(16)).decode()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(("GET /v1/ws?token=%s%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
             % (ADMIN, query, key)).encode())
    head = await r.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise SystemExit("WebSocket refused: %r" % head[:200])
    while True:
        op, payload = await ws_frame(r)
        if op == 0x1:
            return r, w, json.loads(payload)


async def ws_reader(r, w, stop):
    """Take every byte the server sends (unparsed: parsing 200 streams in
    Python would make this process the bottleneck) and send an unsolicited
    pong every 10 s, which keeps civetweb's read timeout from closing us."""
    mask = b"\x00\x00\x00\x00"
    last = time.monotonic()
    while not stop.is_set():
        try:
            data = await asyncio.wait_for(r.read(1 << 20), 10)
        except asyncio.TimeoutError:
            data = b"."
        if not data:
            return
        if time.monotonic() - last >= 10:
            w.write(bytes([0x8A, 0x80]) + mask)
            last = time.monotonic()


async def load_main(port, polls, ws, seconds, fresh):
    stop = asyncio.Event()
    # The first client gets a snapshot (every agent: O(agents) store reads
    # under the lock); the others resume from its hello like reconnecting
    # clients, replaying from the ring.
    conns = []
    t = time.monotonic()
    if ws:
        r, w, hello = await ws_connect(port)
        conns = [(r, w)]
        query = "" if fresh else "&since=%d&epoch=%s" % (hello["seq"], hello["epoch"])
        conns += await asyncio.gather(*[ws_connect(port, query) for _ in range(ws - 1)])
    print("ws-first %.3f" % (time.monotonic() - t), flush=True)
    clients = [asyncio.ensure_future(ws_reader(c[0], c[1], stop)) for c in conns]
    print("ws-open", flush=True)
    tasks = []
    for i in range(polls):  # 250 new agents a second
        tasks.append(asyncio.ensure_future(poller(port, i, stop, sys.stdout)))
        if i % 25 == 24:
            await asyncio.sleep(0.1)
    print("polls-open", flush=True)
    await asyncio.sleep(seconds)
    stop.set()
    for t in tasks + clients:
        t.cancel()


# ---- the measuring process ----

def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request(port, raw, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(raw)
    data = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        data += c
    s.close()
    return data


def admin(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else b""
    raw = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
           "Content-Length: %d\r\nConnection: close\r\n\r\n" % (method, path, ADMIN, len(data))).encode() + data
    return request(port, raw)


def stream_seq(port):
    """The stream's newest seq, from the hello of a short-lived WebSocket client."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /v1/ws?token=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (ADMIN, key)).encode())
    f = s.makefile("rb")
    status = f.readline()
    assert b" 101 " in status, status
    while f.readline() not in (b"\r\n", b""):
        pass
    while True:
        b0, b1 = f.read(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(f.read(2), "big")
        elif n == 127:
            n = int.from_bytes(f.read(8), "big")
        payload = f.read(n)
        if b0 & 0x0F == 0x1:
            s.close()
            return json.loads(payload)["seq"]


def parked(port):
    m = re.search(rb"^jobvisor_long_polls_parked (\d+)$", admin(port, "GET", "/metrics"), re.M)
    return int(m.group(1)) if m else -1


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]


def start_cp(cp_bin, d, nagents, args):
    def secret(path, text):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    secret(d + "/admin", ADMIN + "\n")
    secret(d + "/agents", "".join("%s %s\n" % (agent(i), token(i)) for i in range(nagents)))
    proc = subprocess.Popen([cp_bin, "--listen", "127.0.0.1:0", "--db", d + "/cp.sqlite", "--admin-token-file",
                             d + "/admin", "--agents-file", d + "/agents", "--max-wait", str(WAIT),
                             "--log-level", "warn"] + args,
                            stdout=subprocess.PIPE, stderr=open(d + "/cp.stderr", "wb"))
    line = proc.stdout.readline().decode()
    if "listening on http://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit("jobvisor-cp did not start: %r" % line)
    return proc, int(line.rsplit(":", 1)[1])


def measure(a, port, pid, load):
    res = {"ws_first": float(load.stdout.readline().split()[1])}
    ws_out = load.stdout.readline().strip()
    assert ws_out == "ws-open", ws_out
    time.sleep(1)
    res["rss_ws"] = rss_kib(pid)
    assert load.stdout.readline().strip() == "polls-open"
    deadline = time.monotonic() + 60
    while parked(port) < a.polls * 0.97 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    res["parked"] = parked(port)
    res["rss_parked"] = rss_kib(pid)
    seq0 = stream_seq(port)
    cpu0, t0 = cpu_s(pid), time.monotonic()
    lat = []
    for k in range(a.probes):  # new polls from agents that are not parked
        t = time.monotonic()
        ans = request(port, poll_bytes(a.polls + k % 100, 0))
        lat.append(time.monotonic() - t)
        assert b" 200 " in ans.split(b"\r\n", 1)[0], ans[:200]
        time.sleep(max(0, 0.05 - (time.monotonic() - t)))
    res["parked_during"] = parked(port)
    created = {}
    for who in random.sample(range(a.polls), a.wakes):
        created[agent(who)] = time.monotonic()
        admin(port, "POST", "/v1/jobs", {"type": "BACKUP_INSTANCE", "agentId": agent(who),
                                         "instanceId": "mc", "params": {}, "maxAttempts": 1})
        time.sleep(0.05)
    time.sleep(1)
    res["cpu"] = (cpu_s(pid) - cpu0) / (time.monotonic() - t0)
    res["msgs"] = (stream_seq(port) - seq0) / (time.monotonic() - t0)
    res["lat"] = lat
    res["created"] = created
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cp")
    ap.add_argument("--polls", type=int, default=10000)
    ap.add_argument("--ws", type=int, default=200)
    ap.add_argument("--probes", type=int, default=300)
    ap.add_argument("--wakes", type=int, default=50)
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--fresh", action="store_true", help="every WebSocket client takes a snapshot")
    ap.add_argument("--label", help="the table row's name (default: the binary)")
    ap.add_argument("--update", metavar="FILE", help="put the row into FILE's bench_cp_parked table")
    ap.add_argument("--load", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.load:
        asyncio.run(load_main(a.load, a.polls, a.ws, 240, a.fresh))
        return
    with tempfile.TemporaryDirectory(prefix="jvbench-parked-") as d:
        proc, port = start_cp(a.cp, d, a.polls + 100,
                              ["--threads", str(a.threads), "--ws-clients", str(a.ws + 2)])
        load = None
        try:
            time.sleep(1)
            rss0 = rss_kib(proc.pid)
            load = subprocess.Popen([sys.executable, __file__, a.cp, "--polls", str(a.polls), "--ws", str(a.ws),
                                     "--load", str(port)] + (["--fresh"] if a.fresh else []),
                                    stdout=subprocess.PIPE, text=True)
            try:
                res = measure(a, port, proc.pid, load)
            except Exception:
                print("jobvisor-cp %s; its stderr ends:\n%s" % (
                    "alive" if proc.poll() is None else "exited %s" % proc.returncode,
                    open(d + "/cp.stderr", errors="replace").read()[-3000:]), file=sys.stderr)
                raise
            load.kill()  # the pollers' "job" lines are in its pipe already
            out, _ = load.communicate(timeout=30)
        finally:
            if load and load.poll() is None:
                load.kill()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        got = {}
        for line in out.splitlines():
            if line.startswith("job "):
                _, who, t = line.split()
                got.setdefault(who, float(t))
        wakes = [got[w] - t for w, t in res["created"].items() if w in got]
        lat = res["lat"]
        per_poll = (res["rss_parked"] - res["rss_ws"]) * 1024 / max(1, res["parked"])
        per_ws = (res["rss_ws"] - rss0) * 1024 / max(1, a.ws)  # 0 clients: 0
        print("WebSocket clients connected (%s) in %.2f s" % ("all with a snapshot" if a.fresh else
                                                              "one snapshot, the rest resume", res["ws_first"]))
        row = ("| %s | %d (%d during probes) | %d%s | %.1f / %.1f / %.1f | %.0f B | %.1f KiB | %.1f / %.1f / %.1f | "
               "%s | %.0f%% | %.0f (%.0f frames/s) |") % (
            a.label or a.cp, res["parked"], res["parked_during"], a.ws, " fresh" if a.fresh else "", rss0 / 1024,
            res["rss_ws"] / 1024, res["rss_parked"] / 1024, per_poll, per_ws / 1024, pct(lat, 0.5) * 1e3,
            pct(lat, 0.99) * 1e3, max(lat) * 1e3,
            "%.0f / %.0f, %d of %d" % (pct(wakes, 0.5) * 1e3, max(wakes) * 1e3, len(wakes), a.wakes)
            if wakes else "none delivered", res["cpu"] * 100, res["msgs"], res["msgs"] * a.ws)
        print(HEADER + row)
        if a.update:
            update(a.update, a.label or a.cp, row)


HEADER = ("| server | parked polls | WebSocket clients | RSS start / +WS / +polls (MiB) | RSS per parked poll | "
          "RSS per WS client | new poll p50 / p99 / max (ms) | wake p50 / max (ms), delivered | cp CPU | "
          "stream messages/s |\n"
          "|---|---|---|---|---|---|---|---|---|---|\n")


def update(path, label, row):
    """Replace (or add) the row named label between the bench_cp_parked markers."""
    text = open(path).read()
    b, e = "<!-- bench_cp_parked:begin -->\n", "<!-- bench_cp_parked:end -->"
    i, j = text.index(b) + len(b), text.index(e)
    rows = [r for r in text[i:j].splitlines() if r.startswith("| ") and not r.startswith("| server ")
            and r.split("|")[1].strip() != label and not r.startswith("|---")]
    open(path, "w").write(text[:i] + HEADER + "\n".join(rows + [row]) + "\n" + text[j:])


if __name__ == "__main__":
    main()
