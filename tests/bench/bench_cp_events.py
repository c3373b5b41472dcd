#!/usr/bin/env python3
"""bench_cp_events.py — run events stored per second by jobvisor-cp.

    tests/bench/bench_cp_events.py [BUILD_DIR] [--seconds 8] [--runs 8] [--batch 500]
        [--backends sqlite,postgresql,postgresql*2] [--durable] [--update FILE]

Isolates the events path (issue 14: >= 10,000 events/s on this 2-core
machine with PostgreSQL on the same host): one replica on SQLite, then
replicas on PostgreSQL (a server started here, tests/lib/pg_harness.py;
"postgresql*2" = two replicas on one database, client thread k posting to
replica k mod 2); --runs jobs are created and taken by hand, then one client
thread per run posts batches of --batch events (the agent's maximum is 1,000)
as fast as the answers come, for --seconds. Counts events acknowledged
(ackSeq; every one is then looked up in the database), the answers' p50/p99
latency, and the CPU of the replicas and of the PostgreSQL server (from
/proc/PID/stat; per event it varies much less with the machine's load than
the rate does). --durable runs
PostgreSQL with fsync and synchronous_commit on (the default server is the
tests' one, without WAL flushes). Prints a Markdown table, one row per
backend; --update replaces the block between the cp_events:latest markers
of FILE. Bounded: about (number of backends) x (--seconds + 5) s.
"""
import datetime
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(backend):
    """CPU of the PostgreSQL server (postmaster and all its processes), 0 for SQLite."""
    if backend != "postgresql":
        return 0.0
    import pg_harness
    return pg_harness.shared().cpu_seconds()


def body(a, first, n):
    evs = ",".join(
        '{"seq":%d,"kind":"progress","jobId":"%s","jobRunId":"%s","instanceId":"%s","status":"RUNNING",'
        '"percent":%d,"message":"step %d","timestamp":"2026-01-02T03:04:05.678Z"}'
        % (s, a["jobId"], a["jobRunId"], a["instanceId"], s % 100, s) for s in range(first, first + n))
    return ('{"events":[%s]}' % evs).encode()


def post(cp_harness, url, token, run_id, data):
    import urllib.request
    req = urllib.request.Request(url + "/v1/runs/%s/events" % run_id, data=data, method="POST",
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"})
    with cp_harness._OPENER.open(req, timeout=60) as r:
        return r.status


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def start_replicas(cp_harness, n):
    cps = [cp_harness.ControlPlane().start()]
    try:
        for _ in range(1, n):
            cps.append(cp_harness.ControlPlane(db=cps[0].db).start())
    except BaseException:
        for cp in cps:
            cp.close()
        raise
    return cps


def measure(backend, replicas, seconds, nruns, batch):
    os.environ["JV_CP_BACKEND"] = backend
    import cp_harness
    cps = start_replicas(cp_harness, replicas)
    cp = cps[0]
    try:
        agent = cp.agent("agent-1")
        for i in range(nruns):
            cp.create_job(agent="agent-1", instance="ev-%d" % i)
        runs = []
        while len(runs) < nruns:
            runs += agent.take(capacity=nruns - len(runs), running=[r["jobRunId"] for r in runs])
        acked = [0] * nruns
        latencies = [[] for _ in range(nruns)]
        stop = time.monotonic() + seconds

        def worker(k):
            seq, url = 1, cps[k % len(cps)].url
            while time.monotonic() < stop:
                t = time.monotonic()
                st = post(cp_harness, url, agent.token, runs[k]["jobRunId"], body(runs[k], seq, batch))
                latencies[k].append(time.monotonic() - t)
                if st != 200:
                    raise AssertionError("events POST answered %d" % st)
                seq += batch
                acked[k] += batch

        cpu0, db0, t0 = sum(cpu_seconds(c.proc.pid) for c in cps), server_cpu_seconds(backend), time.monotonic()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(nruns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.monotonic() - t0
        cpu = sum(cpu_seconds(c.proc.pid) for c in cps) - cpu0
        db = server_cpu_seconds(backend) - db0
        stored = int(cp.sql("SELECT count(*) FROM events")[0][0])
        if stored != sum(acked):
            raise AssertionError("%d events acknowledged, %d stored" % (sum(acked), stored))
        lat = [x for per in latencies for x in per]
        return {"rate": sum(acked) / secs, "cpu": 100.0 * cpu / secs, "per": 1e6 * cpu / max(sum(acked), 1),
                "db_per": 1e6 * db / max(sum(acked), 1),
                "p50": 1000 * percentile(lat, 0.5), "p99": 1000 * percentile(lat, 0.99)}
    finally:
        for c in reversed(cps):
            c.close()


def parse_args(args):
    o = {"build": "build", "seconds": 8, "runs": 8, "batch": 500, "update": None,
         "backends": ["sqlite", "postgresql"]}
    while args:
        a = args.pop(0)
        if a in ("--seconds", "--runs", "--batch"):
            o[a[2:]] = int(args.pop(0))
        elif a == "--update":
            o["update"] = args.pop(0)
        elif a == "--backends":
            o["backends"] = args.pop(0).split(",")
        elif a == "--durable":
            os.environ["JV_PG_DURABLE"] = "1"
        elif a.startswith("-"):
            sys.exit("bench_cp_events: unknown option %s" % a)
        else:
            o["build"] = a
    for b in o["backends"]:
        if b not in ("sqlite", "postgresql", "postgresql*2"):
            sys.exit("bench_cp_events: unknown backend %s (sqlite, postgresql, postgresql*2)" % b)
    return o


def main():
    o = parse_args(sys.argv[1:])
    os.environ.setdefault("JOBVISOR_CP_BIN", os.path.abspath(os.path.join(o["build"], "examples", "controlplane",
                                                                          "jobvisor-cp")))
    durable = os.environ.get("JV_PG_DURABLE") == "1"
    lines = ["| backend | client threads x events per request | events/s stored | request p50 / p99 ms"
             " | replica CPU | CPU ms per 1,000 events: replicas + PostgreSQL |", "| --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines), flush=True)
    for spec in o["backends"]:
        backend, _, n = spec.partition("*")
        r = measure(backend, int(n or 1), o["seconds"], o["runs"], o["batch"])
        name = "SQLite" if backend == "sqlite" else "PostgreSQL%s%s" % (
            " (durable commits)" if durable else "", ", %s replicas" % n if n else "")
        lines.append("| %s | %d x %d | %.0f | %.0f / %.0f | %.0f%% | %.0f + %s |" % (
            name, o["runs"], o["batch"], r["rate"], r["p50"], r["p99"], r["cpu"], r["per"],
            "%.0f" % r["db_per"] if backend == "postgresql" else "–"))
        print(lines[-1], flush=True)
    if o["update"]:
        text = open(o["update"]).read()
        begin, end = "<!-- cp_events:latest:begin -->", "<!-- cp_events:latest:end -->"
        i, j = text.index(begin) + len(begin), text.index(end)
        block = "\nLatest `make bench` run (%s, %d s per row):\n\n%s\n" % (
            datetime.date.today().isoformat(), o["seconds"], "\n".join(lines))
        with open(o["update"], "w") as f:
            f.write(text[:i] + block + text[j:])


if __name__ == "__main__":
    main()
