#!/usr/bin/env python3
"""bench_cp_fleet.py — jobvisor-cp at fleet scale: SQLite, PostgreSQL x1, PostgreSQL x2.

    tests/bench/bench_cp_fleet.py [BUILD_DIR] [--update docs/scaling.md] [--agents 500,2000,5000]

Runs the load generator (tests/bench/cp_load.c) against one replica on SQLite
and one and two replicas on one PostgreSQL database (a server started here
from Debian's postgresql package, tests/lib/pg_harness.py, on this host, a
fresh database per run), for each agent count at a 3 s poll interval and
100 jobs/s of 20 events each (events/s at saturation: bench_cp_events.py).
Each run lasts JV_BENCH_FLEET_DURATION seconds (default 20) plus at most
5 s of drain and the replicas' start and stop (a row takes about 30 s); a
row that takes longer than duration + 60 s fails the benchmark, so the whole
of it is bounded: agent counts x 3 rows (9 with the defaults, about 5
minutes). cp_load spreads the agents over loopback source addresses (one per
50 agents) like the hosts of a fleet; the soft RLIMIT_NOFILE is raised to
the hard limit here, for cp_load, the replicas and PostgreSQL. Run it under
`nice` on a shared machine. Prints one Markdown table, with the PostgreSQL
server's CPU over the whole row (start, warm-up and drain included: an upper
bound) and the host's load average at the start of the row added; --update
replaces the block between the cp_fleet:latest markers of the given file.
"""
import datetime
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import pg_harness  # noqa: E402


def parse_args(argv):
    build, update, agents = "build", None, "500,2000,5000"
    rest = list(argv)
    while rest:
        a = rest.pop(0)
        if a == "--update":
            update = rest.pop(0)
        elif a == "--agents":
            agents = rest.pop(0)
        elif a.startswith("-"):
            sys.exit("bench_cp_fleet: unknown option %s" % a)
        else:
            build = a
    return os.path.abspath(build), update, [int(n) for n in agents.split(",")]


def cp_load(load, cp, db, replicas, agents, extra, duration):
    cmd = [load, "--cp", cp, "--agents", str(agents), "--interval", "3", "--jobs-per-sec", "100",
           "--duration", str(duration), "--replicas", str(replicas)] + extra
    if db:
        cmd += ["--db", db]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=duration + 60)
    rows = [line for line in out.stdout.decode().splitlines() if line.startswith("| ") and "---" not in line]
    if out.returncode != 0 or len(rows) < 2:
        sys.exit("bench_cp_fleet: %s failed (%d): %s" % (" ".join(cmd), out.returncode, out.stderr.decode()[-2000:]))
    sys.stderr.write(out.stderr.decode())
    return rows[0], rows[-1]


def pg_cpu_seconds(srv):
    """CPU of the PostgreSQL server: the postmaster's own and its reaped children's
    (the replicas' backends end with the row, so they are all counted)."""
    with open("/proc/%d/stat" % srv.proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main():
    build, update, counts = parse_args(sys.argv[1:])
    cp = os.path.join(build, "examples", "controlplane", "jobvisor-cp")
    load = os.path.join(build, "examples", "controlplane", "cp_load")
    if not (os.access(cp, os.X_OK) and os.access(load, os.X_OK)):
        sys.exit("bench_cp_fleet: build %s first (jobvisor-cp and cp_load)" % build)
    if not pg_harness.pg_bindir():
        sys.exit("bench_cp_fleet: PostgreSQL binaries not found (install Debian's postgresql: make deps)")
    duration = int(os.environ.get("JV_BENCH_FLEET_DURATION", "20"))
    raise_nofile()
    started = datetime.datetime.now(datetime.timezone.utc)
    srv = pg_harness.PgServer().start()
    header, rows = None, []
    try:
        for agents in counts:
            for replicas, pg in ((1, False), (1, True), (2, True)):
                db = srv.new_database("bench") if pg else None
                load1 = os.getloadavg()[0]
                cpu0, t0 = pg_cpu_seconds(srv), time.monotonic()
                header, row = cp_load(load, cp, db, replicas, agents, [], duration)
                pg_cpu = 100.0 * (pg_cpu_seconds(srv) - cpu0) / (time.monotonic() - t0)
                header += " PostgreSQL CPU, whole row | load average |"
                row += " %s | %.1f |" % ("%.0f%%" % pg_cpu if pg else "–", load1)
                print(row, flush=True)
                rows.append(row)
    finally:
        srv.stop()
    sep = "| " + " | ".join("---" for _ in header.strip("|").split("|")) + " |"
    table = "\n".join([header, sep] + rows)
    if update:
        text = open(update).read()
        begin, end = "<!-- cp_fleet:latest:begin -->", "<!-- cp_fleet:latest:end -->"
        i, j = text.index(begin) + len(begin), text.index(end)
        ended = datetime.datetime.now(datetime.timezone.utc)
        block = "\nLatest `make bench` run (%s - %s UTC, %d s per row):\n\n%s\n" % (
            started.strftime("%Y-%m-%d %H:%M"), ended.strftime("%H:%M"), duration, table)
        with open(update, "w") as f:
            f.write(text[:i] + block + text[j:])


if __name__ == "__main__":
    main()
