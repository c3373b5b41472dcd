#!/usr/bin/env python3
"""Resident memory of an idle `jobvisor agent` connected to the real jobvisor-cp, side by side
with `sleep` started at the same moment (docs/performance.md, issue 12's "idle agent RSS" row).

usage: bench_agent_rss.py BUILD_DIR [--wait S] [--update DOC]

Starts BUILD_DIR/examples/controlplane/jobvisor-cp on 127.0.0.1, one agent polling it every
3 s (short polls) and `sleep`, waits --wait seconds (default 30), then reads VmRSS, RssFile,
RssAnon (/proc/PID/status) and PSS (smaps_rollup) of both, and the agent's resident memory per
mapped file (smaps). --update replaces the text between <!-- bench_agent_rss:begin --> and
<!-- bench_agent_rss:end -->.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "lib")]
from agent_harness import agent_env  # noqa: E402
from benchdoc import replace_block  # noqa: E402
from cp_harness import AGENT_TOKENS, ControlPlane  # noqa: E402

TOP = 12


def kib_fields(path):
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                out[parts[0][:-1]] = int(parts[1])
    return out


def memory(pid):
    st = kib_fields(f"/proc/{pid}/status")
    ro = kib_fields(f"/proc/{pid}/smaps_rollup")
    return {k: st.get(k, 0) / 1024 for k in ("VmRSS", "RssFile", "RssAnon")} | {"Pss": ro.get("Pss", 0) / 1024}


def per_file(pid):
    """Resident KiB per mapped file ([anon] for the rest), largest first."""
    agg, cur = {}, "[anon]"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                cur = parts[5] if len(parts) > 5 else "[anon]"
            elif parts and parts[0] == "Rss:":
                agg[cur] = agg.get(cur, 0) + int(parts[1])
    return sorted(agg.items(), key=lambda kv: -kv[1])


def measure(build, wait):
    os.environ["JOBVISOR_CP_BIN"] = os.path.join(build, "examples", "controlplane", "jobvisor-cp")
    jv = os.path.join(build, "jobvisor")
    root = tempfile.mkdtemp(prefix="jv-bench-rss-")
    os.makedirs(os.path.join(root, "cp"))
    cp = ControlPlane(tmpdir=os.path.join(root, "cp"))
    agent = sleeper = None
    try:
        cp.start()
        token = os.path.join(root, "token")
        fd = os.open(token, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (AGENT_TOKENS[cp.default_agent] + "\n").encode())
        os.close(fd)
        for d in ("data", "jobs"):
            os.makedirs(os.path.join(root, d))
        env = agent_env(cp.url, token, os.path.join(root, "data"), os.path.join(root, "jobs"),
                        agent_id=cp.default_agent, POLL_INTERVAL="3", POLL_JITTER="0", LOG_LEVEL="info")
        log = open(os.path.join(root, "agent.log"), "w")
        agent = subprocess.Popen([jv, "agent"], env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=log)
        sleeper = subprocess.Popen(["sleep", str(int(wait) + 60)])
        time.sleep(wait)
        if agent.poll() is not None:
            raise SystemExit("the agent exited:\n" + open(os.path.join(root, "agent.log")).read()[-2000:])
        return memory(agent.pid), memory(sleeper.pid), per_file(agent.pid)
    finally:
        for p in (agent, sleeper):
            if p and p.poll() is None:
                p.terminate()
                p.wait(20)
        cp.stop(check=False)
        shutil.rmtree(root, ignore_errors=True)


def table(agent, sleep, files, wait):
    out = [f"Measured {time.strftime('%Y-%m-%d')}: idle `jobvisor agent` polling the real `jobvisor-cp` (loopback, plain HTTP, 3 s short "
           f"polls), measured after {wait:.0f} s, beside `sleep` started at the same moment.", "",
           "| process | VmRSS | file pages | anon pages | PSS |", "| --- | --- | --- | --- | --- |"]
    for name, m in (("`jobvisor agent`, idle", agent), ("`sleep`", sleep)):
        out.append(f"| {name} | {m['VmRSS']:.2f} MiB | {m['RssFile']:.2f} MiB | {m['RssAnon']:.2f} MiB | "
                   f"{m['Pss']:.2f} MiB |")
    libs = [f for f, _ in files if ".so" in f]
    out += ["", f"The agent maps {len(libs)} shared libraries; its resident memory by mapping "
            f"(largest {TOP}):", "", "| mapping | resident |", "| --- | --- |"]
    for name, kib in files[:TOP]:
        out.append(f"| `{os.path.basename(name) if name.startswith('/') else name}` | {kib / 1024:.2f} MiB |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--wait", type=float, default=30)
    ap.add_argument("--update")
    a = ap.parse_args()
    agent, sleep, files = measure(os.path.abspath(a.build), a.wait)
    text = table(agent, sleep, files, a.wait)
    print(text)
    if a.update:
        replace_block(a.update, "bench_agent_rss", text, "Idle agent memory")


if __name__ == "__main__":
    main()
