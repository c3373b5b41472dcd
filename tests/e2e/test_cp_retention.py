"""Retention on the real jobvisor-cp: finished jobs older than --retention-days
go with their runs and events, in small batches; the newest --retention-keep
jobs of each instance, unfinished jobs, young jobs and schedules stay. Measured:
agent poll latency (p50/p99) before and while 1,000,000 events are deleted.

The old history is written straight into the database while the control plane
is stopped (as a year of use would leave it); everything after that is the
control plane's own sweep."""
import json
import os
import threading
import time
import unittest

from cp_harness import ControlPlane

JOBS = 1000
EVENTS_PER_JOB = 1000
KEEP = 5
DAY_MS = 86400 * 1000


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


class Retention(unittest.TestCase):
    def populate(self, cp):
        now = int(time.time() * 1000)
        old = now - 40 * DAY_MS
        body = json.dumps({"kind": "progress", "message": "copying world/region/r.0.0.mca", "percent": 50})
        jobs, runs = [], []
        for i in range(JOBS):
            jid, rid = "old-%04d" % i, "old-%04d-r1" % i
            jobs.append((jid, "BACKUP_INSTANCE", "agent-1", "mc-old", "{}", "COMPLETED", 1, old, old + i))
            runs.append((rid, jid, 1, "agent-1", "COMPLETED", old, old + i))
        # Unfinished and young jobs of the same era stay; so does a schedule.
        jobs.append(("old-queued", "BACKUP_INSTANCE", "agent-1", "mc-other", "{}", "QUEUED", 1, old, old))
        jobs.append(("young-done", "BACKUP_INSTANCE", "agent-1", "mc-other", "{}", "COMPLETED", 1, now, now))
        cp.insert_rows("jobs", ("job_id", "type", "agent_id", "instance_id", "params", "status", "max_attempts",
                                "created_at", "updated_at"), jobs)
        cp.insert_rows("job_runs", ("run_id", "job_id", "attempt", "agent_id", "status", "created_at",
                                    "finished_at"), runs)
        cp.insert_rows("events", ("run_id", "seq", "body", "received_at"),
                       (("old-%04d-r1" % i, s, body, old) for i in range(JOBS) for s in range(1, EVENTS_PER_JOB + 1)))
        cp.sql("INSERT INTO schedules (schedule_id, cron, timezone, job, enabled, overlap, next_fire,"
               " created_at, updated_at) VALUES ('keep-me', '0 4 * * *', 'UTC', '{}', 0, 'skip', 0, ?, ?)",
               (old, old))

    def poll_latencies(self, cp, stop, out):
        agent = cp.agent("agent-2")
        while not stop.is_set():
            t = time.perf_counter()
            r = agent.poll(capacity=0)
            out.append((time.perf_counter() - t) * 1000)
            if r.status != 200:
                out.append(float("inf"))

    def count(self, cp, sql):
        return int(cp.sql(sql)[0][0])

    def test_deletes_a_million_events_in_batches_without_delaying_polls(self):
        cp = ControlPlane(["--retention-days", "0"])
        self.addCleanup(cp.close)
        cp.start()
        cp.stop()
        self.populate(cp)
        # Baseline: the same database, retention off.
        cp.start()
        stop, base = threading.Event(), []
        t = threading.Thread(target=self.poll_latencies, args=(cp, stop, base))
        t.start()
        time.sleep(5)
        stop.set()
        t.join()
        cp.stop()
        # Retention on: measure while it deletes.
        cp.args = ["--retention-days", "30", "--retention-keep", str(KEEP)]
        cp.start()
        stop, during = threading.Event(), []
        t = threading.Thread(target=self.poll_latencies, args=(cp, stop, during))
        t.start()
        started = time.monotonic()
        deadline = started + 300
        while time.monotonic() < deadline:
            if self.count(cp, "SELECT count(*) FROM jobs WHERE instance_id = 'mc-old'") == KEEP:
                break
            time.sleep(0.5)
        took = time.monotonic() - started
        stop.set()
        t.join()
        print("\npoll latency ms, retention off: n=%d p50=%.1f p99=%.1f max=%.1f" %
              (len(base), pct(base, 0.5), pct(base, 0.99), max(base)))
        print("poll latency ms, deleting %d events: n=%d p50=%.1f p99=%.1f max=%.1f; deletion took %.1f s" %
              (JOBS * EVENTS_PER_JOB, len(during), pct(during, 0.5), pct(during, 0.99), max(during), took))
        kept = [r[0] for r in cp.sql("SELECT job_id FROM jobs WHERE instance_id = 'mc-old' ORDER BY seq")]
        self.assertEqual(kept, ["old-%04d" % i for i in range(JOBS - KEEP, JOBS)], "the newest jobs of the instance stay")
        self.assertEqual(self.count(cp, "SELECT count(*) FROM events"), KEEP * EVENTS_PER_JOB)
        self.assertEqual(self.count(cp, "SELECT count(*) FROM job_runs"), KEEP)
        for jid in ("old-queued", "young-done"):
            self.assertEqual(cp.job(jid)["jobId"], jid)
        self.assertEqual(cp.api("GET", "/v1/schedules/keep-me").status, 200)
        self.assertTrue(all(x != float("inf") for x in during), "every poll answered 200")
        self.assertGreater(len(during), 100)
        # No batch holds the lock long: a poll waits for one batch at most.
        self.assertLess(pct(during, 0.99), 100.0)


if __name__ == "__main__":
    unittest.main()
