#!/usr/bin/env bash
# bench_monitor.sh — cost of instance monitors, measured with real processes.
#
#   1. resident memory of one monitor (VmRSS, and what it really costs: private
#      pages and PSS, since most of VmRSS is libc's shared, clean page cache)
#   2. start-to-ready: `jobvisor monitor` launching the demo server until the
#      monitor reports RUNNING, against running the demo server directly and
#      reading its ready line from a pipe (same binary, same arguments)
#   3. 100 idle supervised instances: CPU time of all 100 monitors over a window
#
# usage: tests/bench/bench_monitor.sh [BUILD_DIR] [--update docs/performance.md]
# Use a build without sanitizers (ASan inflates memory and start-up several-fold).
# Prints a Markdown block; --update replaces the block between the
# bench_monitor markers in the given file.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
UPDATE=""
if [ "${2:-}" = "--update" ]; then UPDATE=${3:?file to update}; fi
BUILD=$(cd "$BUILD" && pwd)
JV="$BUILD/jobvisor"
MON="$BUILD/jobvisor-monitor"
DEMO="$BUILD/examples/demo-server/demo-server"
[ -x "$JV" ] && [ -x "$MON" ] && [ -x "$DEMO" ] || {
  echo "build $BUILD first (jobvisor, jobvisor-monitor and demo-server)" >&2; exit 2; }
N_IDLE=${JV_BENCH_IDLE:-100}
RUNS=${JV_BENCH_RUNS:-30}
WINDOW=${JV_BENCH_WINDOW:-20}

OUT=$(python3 - "$JV" "$MON" "$DEMO" "$N_IDLE" "$RUNS" "$WINDOW" <<'EOF'
import json, os, select, shutil, socket, statistics, subprocess, sys, tempfile, time

JV, MON, DEMO = sys.argv[1], sys.argv[2], sys.argv[3]
N_IDLE, RUNS, WINDOW = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
SLIM, FULL = [MON], [JV, "monitor"]
TICK = os.sysconf("SC_CLK_TCK")
root = tempfile.mkdtemp(prefix="jv-bench-mon-")
DEMO_ARGS = ["--port", "0", "--ready-delay-ms", "0", "--autosave-ms", "0"]
monitors = []

def make(iid):
    d = os.path.join(root, "instances", iid)
    os.makedirs(os.path.join(d, "builds", "b1"))
    os.makedirs(os.path.join(d, "data"))
    shutil.copy2(DEMO, os.path.join(d, "builds", "b1", "server"))
    os.symlink("builds/b1", os.path.join(d, "current"))
    with open(os.path.join(d, "instance.json"), "w") as f:
        json.dump({"command": ["${build}/server"] + DEMO_ARGS,
                   "stop": {"command": "stop", "timeoutSeconds": 10},
                   "ready": {"logPattern": "Done \\(", "timeoutSeconds": 30}}, f)
    return d

def launch(d, argv=SLIM):
    r, w = os.pipe()
    p = subprocess.Popen(argv + ["--instance-dir", d, "--status-fd", str(w)],
                         pass_fds=(w,), start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    monitors.append((p, d))
    return p, r

def request(d, req, until=None, timeout=30):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(os.path.join(d, ".jobvisor", "monitor.sock"))
    s.sendall((json.dumps(req) + "\n").encode())
    buf = b""
    try:
        while True:
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            m = json.loads(line)
            if until is None or until(m):
                return m
    finally:
        s.close()

def running(m):
    st = m.get("status") or {}
    return st.get("state") in ("RUNNING", "CRASHED", "STOPPED")

def start_to_ready(d, argv=SLIM):
    t0 = time.perf_counter()
    p, r = launch(d, argv)
    select.select([r], [], [], 30)
    line = os.read(r, 200).decode()
    os.close(r)
    assert line.startswith("ok"), line
    m = request(d, {"op": "subscribe"}, until=running)
    t = time.perf_counter() - t0
    assert m["status"]["state"] == "RUNNING", m
    request(d, {"op": "stop"}, until=lambda m: m.get("done"))
    p.wait(30)
    return t * 1000

def direct_to_ready(cwd):
    t0 = time.perf_counter()
    p = subprocess.Popen([DEMO] + DEMO_ARGS, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if "Done (" in line:
            break
    t = time.perf_counter() - t0
    p.stdin.write("stop\n")
    p.stdin.flush()
    p.wait(30)
    return t * 1000

def mem(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for l in f:
            k, _, v = l.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0])
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for l in f:
            k, _, v = l.partition(":")
            if k in ("Pss", "Private_Clean", "Private_Dirty"):
                out[k] = int(v.split()[0])
    out["Private"] = out["Private_Clean"] + out["Private_Dirty"]
    return out

def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])

def ctx_switches(pid):
    with open("/proc/%d/status" % pid) as f:
        return sum(int(l.split()[1]) for l in f if "ctxt_switches" in l)

def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])

load0 = loadavg()
try:
    # 2. start-to-ready, interleaved so drift hits both sides alike.
    d = make("ready")
    direct_dir = os.path.join(root, "direct")
    os.makedirs(direct_dir)
    direct_to_ready(direct_dir), start_to_ready(d), start_to_ready(d, FULL)  # warm caches
    direct, supervised, full = [], [], []
    for _ in range(RUNS):
        direct.append(direct_to_ready(direct_dir))
        supervised.append(start_to_ready(d))
        full.append(start_to_ready(d, FULL))
    dm, sm, fm = statistics.median(direct), statistics.median(supervised), statistics.median(full)

    # One monitor run as `jobvisor monitor`, for comparison.
    p, r = launch(d, FULL)
    select.select([r], [], [], 30)
    os.read(r, 200)
    os.close(r)
    request(d, {"op": "subscribe"}, until=running)
    time.sleep(1)
    full_mem = mem(p.pid)
    request(d, {"op": "stop"}, until=lambda m: m.get("done"))
    p.wait(30)

    # 1 and 3. N idle instances, all started, then measured.
    dirs = [make("idle%03d" % i) for i in range(N_IDLE)]
    procs = []
    for dd in dirs:
        p, r = launch(dd)
        procs.append((p, r, dd))
    for p, r, dd in procs:
        select.select([r], [], [], 60)
        os.read(r, 200)
        os.close(r)
    for p, r, dd in procs:
        request(dd, {"op": "subscribe"}, until=running)
    time.sleep(2)
    mems = [mem(p.pid) for p, _, _ in procs]
    pids = [p.pid for p, _, _ in procs]
    c0, s0, t0 = sum(cpu_ticks(p) for p in pids), sum(ctx_switches(p) for p in pids), time.monotonic()
    time.sleep(WINDOW)
    c1, s1, t1 = sum(cpu_ticks(p) for p in pids), sum(ctx_switches(p) for p in pids), time.monotonic()
    cpu_pct = (c1 - c0) / TICK / (t1 - t0) * 100
    wakeups = (s1 - s0) / (t1 - t0)

    def avg(k):
        return statistics.mean(m[k] for m in mems) / 1024
    print("| measure | result | target |")
    print("| --- | --- | --- |")
    print("| `jobvisor-monitor` VmRSS (mean of %d) | %.2f MiB (of which shared, clean file pages: %.2f MiB) | |"
          % (N_IDLE, avg("VmRSS"), avg("RssFile")))
    print("| `jobvisor-monitor` private memory (anon + private file pages) | %.2f MiB | under 1 MiB |" % avg("Private"))
    print("| `jobvisor-monitor` PSS (its fair share of shared pages) | %.2f MiB | under 1 MiB |" % avg("Pss"))
    print("| for comparison, `jobvisor monitor`: VmRSS, private, PSS | %.2f, %.2f, %.2f MiB | |"
          % (full_mem["VmRSS"] / 1024, full_mem["Private"] / 1024, full_mem["Pss"] / 1024))
    print("| start to ready, demo server run directly (median of %d) | %.1f ms | |" % (RUNS, dm))
    print("| start to ready, under `jobvisor-monitor` (median of %d) | %.1f ms | |" % (RUNS, sm))
    print("| monitor overhead on start to ready | %.1f ms | under 20 ms |" % (sm - dm))
    print("| for comparison, under `jobvisor monitor` (median of %d) | %.1f ms | |" % (RUNS, fm))
    print("| %d idle supervised instances: CPU of all monitors over %.0f s | %.3f %% of one core | under 1 %% |"
          % (N_IDLE, t1 - t0, cpu_pct))
    print("| %d idle monitors: context switches per second, all together | %.1f | |" % (N_IDLE, wakeups))
    print("\nHost load average (1 min) at the start and the end of the run: %.1f, %.1f (%d cores)."
          % (load0, loadavg(), os.cpu_count()))
finally:
    for p, dd in monitors:
        if p.poll() is None:
            try:
                request(dd, {"op": "kill"}, until=lambda m: m.get("done"), timeout=20)
            except OSError:
                pass
    for p, dd in monitors:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(root, ignore_errors=True)
EOF
)
echo "$OUT"
if [ -n "$UPDATE" ]; then
  python3 - "$UPDATE" "$OUT" <<'EOF'
import sys
path, table = sys.argv[1], sys.argv[2]
text = open(path).read()
begin, end = "<!-- bench_monitor:begin -->", "<!-- bench_monitor:end -->"
i, j = text.index(begin) + len(begin), text.index(end)
open(path, "w").write(text[:i] + "\n" + table + "\n" + text[j:])
EOF
fi
