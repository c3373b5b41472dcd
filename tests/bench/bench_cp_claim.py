#!/usr/bin/env python3
"""bench_cp_claim.py — the PostgreSQL claim statement against queue depth.

    tests/bench/bench_cp_claim.py [--source store_pg_dispatch.c] [--depths 0,2000,20000]
        [--shapes wide,deep,mixed,deep+wide] [--explain] [PATH/jobvisor-cp]

One PostgreSQL server (tests/lib/pg_harness.py); per depth and queue shape a
fresh database migrated by the given jobvisor-cp (default build/), filled
with COPY: `depth` QUEUED jobs with their runs for agent-1, spread as
  - wide: each job for its own instance;
  - deep: all jobs for one instance (only the first is assignable);
  - mixed: over 50 instances,
  - deep+wide: the first half for one instance, the second each for its own
    (the claim's fallback to one probe per instance),
beside 5,000 finished jobs of agent-1 and 5,000 jobs of 20 other agents.
The claim statement (PGS_SQL_CLAIM, read from store_pg_dispatch.c, or the
--source given: another version's, with that version's jobvisor-cp) is then
prepared and executed for capacity 4 inside a transaction that is rolled
back, 7 times with a custom plan and 7 with a generic one; prints the median
execution time in ms (EXPLAIN ANALYZE's), and with --explain the plans
(ANALYZE, BUFFERS) of the deepest run. Bounded: well under a minute at the
default depths. Not run by ctest.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import pg_harness  # noqa: E402

NOW = 1_800_000_000_000


def claim_sql(src):
    """PGS_SQL_CLAIM's text: src (a store_pg_dispatch.c) through the C preprocessor, its string literals joined."""
    out = subprocess.run(["cc", "-E", "-P", "-I", os.path.join(ROOT, "include"), "-I",
                          os.path.join(ROOT, "examples", "controlplane"), "-I", "/usr/include/postgresql", src],
                         stdout=subprocess.PIPE, check=True).stdout.decode()
    body = re.search(r"const char PGS_SQL_CLAIM\[\] =(.*?);\n", out, re.S).group(1)
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body))


def migrate(srv, binary, db):
    """Run jobvisor-cp on db until it listens (it migrates first), then stop it."""
    with tempfile.TemporaryDirectory(prefix="jvclaim-") as d:
        for name, text in (("admin", "x" * 40 + "\n"), ("agents", "agent-1 " + "y" * 40 + "\n")):
            fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, text.encode())
            os.close(fd)
        p = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--db", db, "--admin-token-file",
                              os.path.join(d, "admin"), "--agents-file", os.path.join(d, "agents")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = p.stdout.readline().decode()
        p.terminate()
        p.wait(20)
        if "listening" not in line:
            raise AssertionError("jobvisor-cp did not start: " + p.stderr.read().decode()[-2000:])


def fill(srv, dbname, shape, depth):
    jobs, runs = [], []

    def add(agent, inst, status):
        k = len(jobs)
        jobs.append(("j%06d" % k, "BACKUP_INSTANCE", agent, inst, "{}", status, 1, NOW - 100000 + k, NOW))
        runs.append(("r%06d" % k, "j%06d" % k, 1, agent, "COMPLETED" if status == "COMPLETED" else "QUEUED",
                     NOW - 100000 + k))
    for i in range(5000):  # history: finished jobs of agent-1, queued ones of 20 other agents
        add("agent-1", "old%03d" % (i % 50), "COMPLETED")
        add("b%02d" % (i % 20), "o%04d" % i, "QUEUED" if i % 2 else "COMPLETED")
    for i in range(depth):
        inst = {"wide": "w%06d" % i, "deep": "deep", "mixed": "m%02d" % (i % 50),
                "deep+wide": "deep" if i < depth // 2 else "w%06d" % i}[shape]
        add("agent-1", inst, "QUEUED")
        if i % 10 == 0:
            add("b%02d" % (i % 20), "o%04d" % i, "QUEUED")
    srv.copy_rows(dbname, "jobs", ("job_id", "type", "agent_id", "instance_id", "params", "status",
                                   "max_attempts", "created_at", "updated_at"), jobs)
    srv.copy_rows(dbname, "job_runs", ("run_id", "job_id", "attempt", "agent_id", "status", "created_at"), runs)
    srv.psql(dbname, "VACUUM ANALYZE")


def timed(srv, dbname, sql, mode, explain, reps=7):
    args = "'agent-1', %d, %d, %d, 4, 4" % (NOW, NOW + 30000, NOW + 60000)
    script = ["SET plan_cache_mode = %s;" % mode, "PREPARE c(text, bigint, bigint, bigint, bigint, bigint) AS "
              + sql + ";"]
    for _ in range(reps):
        script += ["BEGIN;", "EXPLAIN (ANALYZE, BUFFERS) EXECUTE c(%s);" % args, "ROLLBACK;"]
    out = srv.psql(dbname, "\n".join(script))
    ms = [float(x) for x in re.findall(r"Execution Time: ([0-9.]+) ms", out)]
    plan = out.split("Execution Time")[-2] if explain else ""
    return statistics.median(ms[1:] or ms), plan


def main():
    src = os.path.join(ROOT, "examples", "controlplane", "store_pg_dispatch.c")
    depths, shapes, explain = [0, 2000, 20000], ["wide", "deep", "mixed", "deep+wide"], False
    binary = os.path.join(ROOT, "build", "examples", "controlplane", "jobvisor-cp")
    args = sys.argv[1:]
    while args:
        a = args.pop(0)
        if a == "--depths":
            depths = [int(x) for x in args.pop(0).split(",")]
        elif a == "--shapes":
            shapes = args.pop(0).split(",")
        elif a == "--source":
            src = args.pop(0)
        elif a == "--explain":
            explain = True
        else:
            binary = os.path.abspath(a)
    sql = claim_sql(src)
    srv = pg_harness.PgServer().start()
    try:
        print("| shape | queued runs of the agent | custom plan ms | generic plan ms |")
        print("| --- | --- | --- | --- |")
        plans = []
        for shape in shapes:
            for depth in depths:
                url = srv.new_database("claim")
                dbname = url.rsplit("/", 1)[1]
                migrate(srv, binary, url)
                fill(srv, dbname, shape, depth)
                custom, p1 = timed(srv, dbname, sql, "force_custom_plan", explain and depth == max(depths))
                generic, p2 = timed(srv, dbname, sql, "force_generic_plan", explain and depth == max(depths))
                print("| %s | %d | %.2f | %.2f |" % (shape, depth, custom, generic), flush=True)
                if p1:
                    plans.append("--- %s %d custom\n%s\n--- generic\n%s" % (shape, depth, p1, p2))
                srv.psql("postgres", 'DROP DATABASE "%s"' % dbname)
        for p in plans:
            print(p)
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
