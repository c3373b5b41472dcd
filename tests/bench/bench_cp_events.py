#!/usr/bin/env python3
"""bench_cp_events.py — run events stored per second by one jobvisor-cp replica.

    tests/bench/bench_cp_events.py [BUILD_DIR] [--seconds 8] [--runs 8] [--batch 500] [--update FILE]

Isolates the events path (issue 14: >= 10,000 events/s on this 2-core
machine with PostgreSQL on the same host): one replica on SQLite, then one on
PostgreSQL (a server started here, tests/lib/pg_harness.py); --runs jobs are
created and taken by hand, then one client thread per run posts batches of
--batch events (the agent's maximum is 1,000) as fast as the answers come,
for --seconds. Counts events acknowledged (ackSeq) and the replica's CPU
(from /proc/PID/stat). Prints a Markdown table, one row per backend;
--update replaces the block between the cp_events:latest markers of FILE. Bounded: about
2 x (--seconds + 5) s.
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


def measure(backend, seconds, nruns, batch):
    os.environ["JV_CP_BACKEND"] = backend
    import cp_harness
    cp = cp_harness.ControlPlane().start()
    try:
        agent = cp.agent("agent-1")
        for i in range(nruns):
            cp.create_job(agent="agent-1", instance="ev-%d" % i)
        runs = []
        while len(runs) < nruns:
            runs += agent.take(capacity=nruns - len(runs), running=[r["jobRunId"] for r in runs])
        acked = [0] * nruns
        stop = time.monotonic() + seconds

        def worker(k):
            seq = 1
            while time.monotonic() < stop:
                st = post(cp_harness, cp.url, agent.token, runs[k]["jobRunId"], body(runs[k], seq, batch))
                if st != 200:
                    raise AssertionError("events POST answered %d" % st)
                seq += batch
                acked[k] += batch

        cpu0, t0 = cpu_seconds(cp.proc.pid), time.monotonic()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(nruns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.monotonic() - t0
        cpu = cpu_seconds(cp.proc.pid) - cpu0
        stored = int(cp.sql("SELECT count(*) FROM events")[0][0])
        if stored != sum(acked):
            raise AssertionError("%d events acknowledged, %d stored" % (sum(acked), stored))
        return sum(acked) / secs, 100.0 * cpu / secs, 1e6 * cpu / max(sum(acked), 1)
    finally:
        cp.close()


def main():
    args = sys.argv[1:]
    build, seconds, nruns, batch, update = "build", 8, 8, 500, None
    while args:
        a = args.pop(0)
        if a == "--seconds":
            seconds = int(args.pop(0))
        elif a == "--runs":
            nruns = int(args.pop(0))
        elif a == "--update":
            update = args.pop(0)
        elif a == "--batch":
            batch = int(args.pop(0))
        elif a.startswith("-"):
            sys.exit("bench_cp_events: unknown option %s" % a)
        else:
            build = a
    os.environ.setdefault("JOBVISOR_CP_BIN", os.path.abspath(os.path.join(build, "examples", "controlplane",
                                                                          "jobvisor-cp")))
    lines = ["| backend | client threads x events per request | events/s stored | replica CPU"
             " | CPU ms per 1,000 events |", "| --- | --- | --- | --- | --- |"]
    print("\n".join(lines), flush=True)
    for backend in ("sqlite", "postgresql"):
        rate, cpu, per = measure(backend, seconds, nruns, batch)
        lines.append("| %s | %d x %d | %.0f | %.0f%% | %.0f |" % (
            "SQLite" if backend == "sqlite" else "PostgreSQL", nruns, batch, rate, cpu, per))
        print(lines[-1], flush=True)
    if update:
        text = open(update).read()
        begin, end = "<!-- cp_events:latest:begin -->", "<!-- cp_events:latest:end -->"
        i, j = text.index(begin) + len(begin), text.index(end)
        block = "\nLatest `make bench` run (%s, %d s per row):\n\n%s\n" % (
            datetime.date.today().isoformat(), seconds, "\n".join(lines))
        with open(update, "w") as f:
            f.write(text[:i] + block + text[j:])


if __name__ == "__main__":
    main()
