#!/usr/bin/env python3
"""bench_instances.py — what instance reporting costs and how fast consoles are.

    python3 tests/bench/bench_instances.py BUILD_DIR [N_IDLE]

Runs the real jobvisor-cp, agent, monitors and demo servers on 127.0.0.1:
  1. console round trip over a WebSocket watching the console, 200 commands:
     POST .../console -> the server's answer line in console.log (the command
     reached stdin, was read and answered: an upper bound of command -> stdin)
     and -> the answer line on the WebSocket (printed line -> viewer is the
     difference, approximately);
  2. N_IDLE (default 100) idle instances: the agent's CPU over 60 s with
     stats_interval 0 and 5 s.
Prints a Markdown block. Use a build without sanitizers."""
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import shutil
import time
import unittest

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
N_IDLE = int(sys.argv[2]) if len(sys.argv) > 2 else 100
SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [os.path.join(SRC, "tests", "lib"), os.path.join(SRC, "tests", "e2e")]
os.environ["JOBVISOR_BIN"] = os.path.join(BUILD, "jobvisor")
os.environ["JV_DEMO_SERVER_BIN"] = os.path.join(BUILD, "examples", "demo-server", "demo-server")
os.environ["JOBVISOR_CP_BIN"] = os.path.join(BUILD, "examples", "controlplane", "jobvisor-cp")

from agent_harness import agent_env  # noqa: E402
from cp_harness import ADMIN_TOKEN, http  # noqa: E402
from cp_ws import WebSocket  # noqa: E402
from instance_helpers import Instance, default_spec  # noqa: E402
from test_instance_report import FixedPortCP  # noqa: E402

TOKEN = "agent-1-token-0123456789abcdef"


class _T(unittest.TestCase):
    def runTest(self):
        pass


def cpu_s(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main():
    root = tempfile.mkdtemp(prefix="jv-bench-inst-")
    t = _T()
    data = os.path.join(root, "data")
    os.makedirs(data)
    tok = os.path.join(root, "token")
    with open(tok, "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(tok, 0o600)
    os.makedirs(os.path.join(root, "cp"))
    cp = FixedPortCP(TOKEN, os.path.join(root, "cp")).start()
    insts, agents = [], []
    spec = default_spec()
    spec["command"] = ["${build}/server", "--port", "0", "--ready-delay-ms", "0", "--autosave-ms", "600000"]

    def agent(**kw):
        env = agent_env(cp.url, tok, data, root, LOG_LEVEL="warn", POLL_INTERVAL="3", POLL_WAIT="25",
                        POLL_JITTER="0", **kw)
        a = subprocess.Popen([os.environ["JOBVISOR_BIN"], "agent"], env=env, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(root, "agent.log"), "a"))
        agents.append(a)
        return a

    try:
        first = Instance(t, iid="i000", data_dir=data, spec=spec)
        first.start()
        insts.append(first)
        first.wait_state("RUNNING")
        a = agent()
        ws = WebSocket(cp.url.replace("http://", "ws://") + "/v1/ws",
                       headers={"Authorization": "Bearer " + ADMIN_TOKEN})
        ws.recv_json()
        ws.recv_json()
        ws.send_json({"op": "console.watch", "agentId": "agent-1", "instanceId": "i000", "since": 0})
        log = os.path.join(first.logs, "console.log")
        to_stdin, to_ws = [], []
        time.sleep(2)
        for i in range(200):
            word = "bench-%d-%d" % (i, time.monotonic_ns())
            t0 = time.monotonic()
            r = http(cp.url + "/v1/agents/agent-1/instances/i000/console", "POST", {"line": "say " + word},
                     ADMIN_TOKEN)
            assert r.status == 202, r
            got_log = got_ws = None
            while got_ws is None or got_log is None:
                if got_log is None:
                    with open(log, errors="replace") as f:
                        f.seek(max(0, os.path.getsize(log) - 65536))
                        if word in f.read():
                            got_log = time.monotonic() - t0
                # Read a frame only when bytes are there (a timeout inside a
                # frame would lose its start).
                if got_ws is None and (ws._buf or select.select([ws.sock], [], [], 0.002)[0]):
                    m = ws.recv_json(timeout=5)
                    if m.get("type") == "console" and any(word in l["line"] for l in m.get("lines", [])):
                        got_ws = time.monotonic() - t0
                elif got_ws is not None:
                    time.sleep(0.002)
                if time.monotonic() - t0 > 10:
                    raise SystemExit("no answer for %s" % word)
            to_stdin.append(got_log)
            to_ws.append(got_ws)
        ws.close()
        a.terminate()
        a.wait(30)
        for i in range(1, N_IDLE):
            inst = Instance(t, iid="i%03d" % i, data_dir=data, spec=spec)
            inst.start()
            insts.append(inst)
        for inst in insts:
            inst.wait_state("RUNNING", timeout=120)
        cost = {}
        for interval in ("0", "5"):
            a = agent(STATS_INTERVAL=interval)
            time.sleep(10)
            c0, t0 = cpu_s(a.pid), time.monotonic()
            time.sleep(60)
            cost[interval] = 100 * (cpu_s(a.pid) - c0) / (time.monotonic() - t0)
            a.terminate()
            a.wait(30)
        ms = lambda v: "%.0f ms" % (v * 1000)  # noqa: E731
        print("| measure | p50 | p99 |\n| --- | --- | --- |")
        print("| console command POST -> answer in console.log (reached stdin) | %s | %s |"
              % (ms(statistics.median(to_stdin)), ms(pct(to_stdin, 99))))
        print("| console command POST -> answer line on the WebSocket | %s | %s |"
              % (ms(statistics.median(to_ws)), ms(pct(to_ws, 99))))
        print("\n%d idle instances: agent CPU %.3f %% of one core with stats off, %.3f %% with stats every 5 s."
              % (N_IDLE, cost["0"], cost["5"]))
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
                a.wait()
        for inst in insts:
            try:
                inst.call({"op": "kill"}, timeout=15)
            except Exception:
                pass
        for inst in insts:
            for p in inst.monitors:
                p.wait(30)
        cp.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
