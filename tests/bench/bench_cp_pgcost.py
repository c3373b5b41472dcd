#!/usr/bin/env python3
"""bench_cp_pgcost.py — PostgreSQL's CPU per poll and per job creation, build against build.

    tests/bench/bench_cp_pgcost.py [--rounds 3] [--fleet SECONDS] LABEL=PATH/jobvisor-cp[?URL-PARAMS] ...

(URL-PARAMS: appended to the database URL of that build's runs, e.g.
options=-c%20plan_cache_mode%3Dforce_custom_plan.)

One PostgreSQL server (tests/lib/pg_harness.py) for the whole run; for each
round and each build in turn (alternating, so both see the same machine), a
fresh database and one replica on it, then, with 4 client threads:
  - creates: 400 jobs, each for a new instance of one of 8 agents (all queued);
  - busy polls: those 8 agents take 4 runs each, then poll 800 times listing
    them (lease renewal; capacity full, so the claim picks nothing);
  - idle polls: 8 other agents poll 800 times with nothing to do.
For each phase: the CPU the PostgreSQL server used (the postmaster and all
its processes, from /proc) and the replica's, per request, in µs.
--fleet S adds one cp_load run per build and round (500 agents, 3 s
interval, 100 jobs/s, S seconds, PostgreSQL x1) with the server's CPU over
the whole run per poll answered. Prints Markdown tables and the load average.
Not run by ctest.
"""
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import pg_harness  # noqa: E402

THREADS = 4
CREATES = 400
POLLS = 800
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """CPU seconds (user + system) pid has used."""
    with open("/proc/%d/stat" % pid) as f:
        f = f.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def in_threads(items, fn):
    """fn(item) for every item, over THREADS threads; raises the first failure."""
    errors = []
    chunks = [items[i::THREADS] for i in range(THREADS)]

    def run(chunk):
        try:
            for it in chunk:
                fn(it)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    ts = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def measure(srv, cp, n, work):
    s0, r0, t0 = srv.cpu_seconds(), proc_cpu(cp.proc.pid), time.monotonic()
    work()
    s1, r1, t1 = srv.cpu_seconds(), proc_cpu(cp.proc.pid), time.monotonic()
    return {"server_us": 1e6 * (s1 - s0) / n, "replica_us": 1e6 * (r1 - r0) / n, "rate": n / (t1 - t0)}


def phases(srv, binary, query):
    os.environ["JOBVISOR_CP_BIN"] = binary
    from cp_harness import ControlPlane  # noqa: E402 - needs the environment above
    cp = ControlPlane(db=srv.new_database("cost") + query)
    cp.start()
    try:
        busy = [cp.agent("a%02d" % k) for k in range(1, 9)]
        idle = [cp.agent("a%02d" % k) for k in range(11, 19)]
        out = {}
        out["creates"] = measure(srv, cp, CREATES, lambda: in_threads(
            list(range(CREATES)), lambda i: cp.create_job(busy[i % 8].id, "i%03d" % i)))
        held = {a.id: [j["jobRunId"] for j in a.take(capacity=4)] for a in busy}
        for a in busy:
            assert len(held[a.id]) == 4, held
        out["busy polls"] = measure(srv, cp, POLLS, lambda: in_threads(
            list(range(POLLS)), lambda i: check(busy[i % 8].poll(capacity=4, running=held[busy[i % 8].id]))))
        out["idle polls"] = measure(srv, cp, POLLS, lambda: in_threads(
            list(range(POLLS)), lambda i: check(idle[i % 8].poll(capacity=4))))
        return out
    finally:
        cp.close()


def check(r):
    if r.status != 200 or r.json["jobs"] or r.json.get("cancel"):
        raise AssertionError("unexpected poll answer: %r" % r)


def fleet(srv, binary, seconds):
    load = os.path.join(os.path.dirname(binary), "cp_load")
    if not os.access(load, os.X_OK):
        load = os.path.join(HERE, "..", "..", "build", "examples", "controlplane", "cp_load")
    db = srv.new_database("fleet")
    s0 = srv.cpu_seconds()
    r = subprocess.run([load, "--cp", binary, "--agents", "500", "--interval", "3", "--jobs-per-sec", "100",
                        "--duration", str(seconds), "--db", db], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=seconds + 120)
    s1 = srv.cpu_seconds()
    rows = [x for x in r.stdout.decode().splitlines() if x.startswith("| ") and "---" not in x]
    if r.returncode != 0 or len(rows) < 2:
        raise AssertionError("cp_load failed: %s" % r.stderr.decode()[-2000:])
    return rows[0], rows[-1], s1 - s0


def main():
    rounds, fleet_s, builds = 3, 0, []
    args = sys.argv[1:]
    while args:
        a = args.pop(0)
        if a == "--rounds":
            rounds = int(args.pop(0))
        elif a == "--fleet":
            fleet_s = int(args.pop(0))
        elif "=" in a:
            label, path = a.split("=", 1)
            path, query = (path.split("?", 1) + [""])[:2]
            builds.append((label, os.path.abspath(path), "?" + query if query else ""))
        else:
            sys.exit("usage: bench_cp_pgcost.py [--rounds N] [--fleet S] LABEL=PATH/jobvisor-cp ...")
    if not builds:
        sys.exit("bench_cp_pgcost: give at least one LABEL=PATH/jobvisor-cp")
    os.environ["JV_CP_BACKEND"] = "postgresql"
    srv = pg_harness.PgServer().start()
    print("| round | build | phase | PostgreSQL CPU µs per request | replica CPU µs per request"
          " | requests/s | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    fleet_rows = []
    try:
        for rnd in range(1, rounds + 1):
            for label, binary, query in builds:
                for phase, m in phases(srv, binary, query).items():
                    print("| %d | %s | %s | %.0f | %.0f | %.0f | %.1f |" % (
                        rnd, label, phase, m["server_us"], m["replica_us"], m["rate"], os.getloadavg()[0]),
                        flush=True)
                if fleet_s:
                    header, row, used = fleet(srv, binary, fleet_s)
                    fleet_rows.append((rnd, label, row, used, os.getloadavg()[0]))
                    print("fleet %d %s: %s server CPU %.1f s load %.1f" % (rnd, label, row, used,
                                                                           os.getloadavg()[0]), flush=True)
    finally:
        srv.stop()
    if fleet_rows:
        print("\n" + header)
        for rnd, label, row, used, la in fleet_rows:
            print("%s (round %d %s: PostgreSQL %.1f CPU s over the run, load %.1f)" % (row, rnd, label, used, la))


if __name__ == "__main__":
    main()
