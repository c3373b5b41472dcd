#!/usr/bin/env python3
"""bench_cp_counters.py — what the run counters' trigger costs a PostgreSQL write.

    tests/bench/bench_cp_counters.py [BUILD_DIR] [--seconds 8] [--rounds 3] [--clients 8]

A durable PostgreSQL server (fsync and synchronous_commit on, tests/lib/pg_harness.py), a
database migrated by BUILD_DIR's jobvisor-cp, 2,000 runs. pgbench, --clients connections:
each transaction moves one random run RUNNING -> QUEUED -> RUNNING, the second step being what
a claim does to job_runs (the trigger adds 1 to run_counters, docs/scaling.md "Schema and
migrations"). Per round three variants, in turn: no trigger, the trigger as shipped (16 rows per
counter, pg_backend_pid() % 16), and the trigger on one row per counter (every transaction waits
for the previous one's commit). Prints tps and average latency per variant. Bounded: about
rounds x 3 x (--seconds + 1) s. Not run by ctest; run it under `nice` on a shared machine.
"""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
os.environ["JV_PG_DURABLE"] = "1"
os.environ["JV_CP_BACKEND"] = "postgresql"

RUNS = 2000
FN = ("CREATE OR REPLACE FUNCTION run_counters_bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
      " UPDATE run_counters SET value = value + 1 WHERE name = CASE NEW.status WHEN 'RUNNING' THEN 'started'"
      " ELSE NEW.status END AND shard = %s; RETURN NULL; END $$")
TRIGGER = ("CREATE TRIGGER run_counters_bump AFTER UPDATE OF status ON job_runs FOR EACH ROW"
           " WHEN ((OLD.status = 'QUEUED' AND NEW.status = 'RUNNING') OR (OLD.status IN ('QUEUED', 'RUNNING')"
           " AND NEW.status IN ('COMPLETED', 'FAILED', 'CANCELLED'))) EXECUTE PROCEDURE run_counters_bump()")
SCRIPT = ("\\set id random(1, %d)\nBEGIN;\nUPDATE job_runs SET status = 'QUEUED' WHERE run_id = 'r' || :id;\n"
          "UPDATE job_runs SET status = 'RUNNING' WHERE run_id = 'r' || :id;\nCOMMIT;\n" % RUNS)


def parse_args(argv):
    opts = {"build": "build", "seconds": 8, "rounds": 3, "clients": 8}
    rest = list(argv)
    while rest:
        a = rest.pop(0)
        if a in ("--seconds", "--rounds", "--clients") and rest:
            opts[a[2:]] = int(rest.pop(0))
        elif not a.startswith("-"):
            opts["build"] = a
        else:
            sys.exit("usage: bench_cp_counters.py [BUILD_DIR] [--seconds N] [--rounds N] [--clients N]")
    return opts


def main():
    opts = parse_args(sys.argv[1:])
    os.environ.setdefault("JOBVISOR_CP_BIN", os.path.join(opts["build"], "examples/controlplane/jobvisor-cp"))
    import cp_harness
    import pg_harness
    cp = cp_harness.ControlPlane()
    cp.start()
    cp.stop()
    srv = pg_harness.shared()
    db = cp.db.rsplit("/", 1)[1]
    srv.psql(db, "INSERT INTO jobs (job_id, type, agent_id, instance_id, params, status, max_attempts,"
             " created_at, updated_at) SELECT 'j' || g, 'T', 'a', 'i' || g, '{}', 'RUNNING', 1, 0, 0"
             " FROM generate_series(1, %d) g;"
             "INSERT INTO job_runs (run_id, job_id, attempt, agent_id, status, created_at)"
             " SELECT 'r' || g, 'j' || g, 1, 'a', 'RUNNING', 0 FROM generate_series(1, %d) g" % (RUNS, RUNS))
    script = os.path.join(cp.dir, "claim.sql")
    with open(script, "w") as f:
        f.write(SCRIPT)

    def run(name):
        r = subprocess.run(["pgbench", "-n", "-h", "127.0.0.1", "-p", str(srv.port), "-U", pg_harness.PG_USER,
                            "-c", str(opts["clients"]), "-j", "2", "-T", str(opts["seconds"]), "-f", script, db],
                           capture_output=True, text=True, timeout=opts["seconds"] + 60)
        tps = re.search(r"tps = ([0-9.]+)", r.stdout)
        lat = re.search(r"latency average = ([0-9.]+) ms", r.stdout)
        if not tps or not lat:
            sys.exit("pgbench failed:\n" + r.stdout[-2000:] + r.stderr[-2000:])
        print("| %s | %.0f | %.2f |" % (name, float(tps.group(1)), float(lat.group(1))), flush=True)

    print("| variant (%d clients, durable) | tps | latency ms |\n|---|---|---|" % opts["clients"])
    for _ in range(opts["rounds"]):
        srv.psql(db, "DROP TRIGGER run_counters_bump ON job_runs")
        run("no trigger")
        srv.psql(db, FN % "pg_backend_pid() % 16")
        srv.psql(db, TRIGGER)
        run("trigger, 16 rows (shipped)")
        srv.psql(db, FN % "0")
        run("trigger, 1 row")
        srv.psql(db, FN % "pg_backend_pid() % 16")


if __name__ == "__main__":
    main()
