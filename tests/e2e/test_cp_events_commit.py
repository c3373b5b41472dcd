#!/usr/bin/env python3
"""An events answer of 200 means the events are stored (both backends).

Many agents' threads post batches of events concurrently (on PostgreSQL
they share commits: store_pg_evgroup.c); the control plane is killed with
SIGKILL while requests are still in flight, then started again on the same
database. Every event whose request was answered 200 must be there, each
(run, seq) once, with the body that was sent; resending acknowledged
batches after the restart stores nothing twice and answers the run's
highest gap-free seq as ackSeq.
"""
import http.client
import json
import os
import random
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import cp_harness  # noqa: E402

RUNS = 6
THREADS_PER_RUN = 2  # two posters per run: its batches also race each other
BATCH_MAX = 40


def make_event(a, seq):
    return {"seq": seq, "kind": "log" if seq % 3 == 0 else "progress", "jobId": a["jobId"],
            "jobRunId": a["jobRunId"], "instanceId": a["instanceId"], "status": "RUNNING",
            "level": "info", "percent": seq % 101, "message": "step %d \"quoted\" \\ %s" % (seq, "é"),
            "timestamp": "2026-01-02T03:04:05.678Z"}


class Poster(threading.Thread):
    """Posts batches of seqs k, k + THREADS_PER_RUN, ... of one run until stopped;
    records the batches answered 200 and how many requests failed otherwise."""

    def __init__(self, url, token, assignment, first, stop):
        super().__init__(daemon=True)
        self.url, self.token, self.a, self.next, self.stop = url, token, assignment, first, stop
        self.acked, self.failed = [], 0
        self.rng = random.Random(first * 7919 + len(assignment["jobRunId"]))

    def run(self):
        while not self.stop.is_set():
            n = self.rng.randint(1, BATCH_MAX)
            seqs = [self.next + THREADS_PER_RUN * i for i in range(n)]
            batch = [make_event(self.a, s) for s in seqs]
            try:
                r = cp_harness.http(self.url + "/v1/runs/%s/events" % self.a["jobRunId"], "POST",
                                    {"events": batch}, self.token, timeout=30)
            except (OSError, http.client.HTTPException):
                self.failed += 1  # the control plane went away: not acknowledged
                return
            if r.status != 200:
                self.failed += 1
                return
            self.acked.append(batch)
            self.next = seqs[-1] + THREADS_PER_RUN


class EventsCommitTest(unittest.TestCase):
    def setUp(self):
        self.cp = cp_harness.ControlPlane().start()
        self.addCleanup(self.cp.close)
        self.agent = self.cp.agent("agent-1")
        for i in range(RUNS):
            self.cp.create_job(agent="agent-1", instance="commit-%d" % i)
        runs = []
        while len(runs) < RUNS:
            runs += self.agent.take(capacity=RUNS - len(runs), running=[r["jobRunId"] for r in runs])
        self.runs = runs

    def stored(self):
        """{(run, seq): body} of every stored event."""
        rows = self.cp.sql("SELECT run_id, seq, body FROM events")
        out = {}
        for run_id, seq, body in rows:
            key = (run_id, int(seq))
            self.assertNotIn(key, out, "event %r stored twice" % (key,))
            out[key] = json.loads(body)
        return out

    def post_until_killed(self):
        stop = threading.Event()
        posters = [Poster(self.cp.url, self.agent.token, a, k + 1, stop)
                   for a in self.runs for k in range(THREADS_PER_RUN)]
        for p in posters:
            p.start()
        deadline = time.monotonic() + 20
        while sum(len(p.acked) for p in posters) < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.cp.stop(sig=signal.SIGKILL)  # requests are in flight now
        stop.set()
        for p in posters:
            p.join(40)
            self.assertFalse(p.is_alive(), "a poster hangs")
        return posters

    def test_acknowledged_events_survive_a_kill_and_resends_are_ignored(self):
        posters = self.post_until_killed()
        acked = [b for p in posters for b in p.acked]
        self.assertGreaterEqual(len(acked), 100, "too few requests answered before the kill")
        self.cp.start()
        stored = self.stored()
        missing = [(e["jobRunId"], e["seq"]) for b in acked for e in b
                   if (e["jobRunId"], e["seq"]) not in stored]
        self.assertEqual(missing, [], "%d acknowledged events are not stored" % len(missing))
        for b in acked:
            for e in b:
                got = stored[(e["jobRunId"], e["seq"])]
                self.assertEqual({k: got.get(k) for k in e}, e)
        # Resends after the restart: nothing stored twice, ackSeq = the gap-free prefix.
        count = len(stored)
        for p in posters:
            for b in p.acked[-3:]:
                r = self.agent.events(b[0]["jobRunId"], b)
                self.assertEqual(r.status, 200, r)
                seqs = {s for (run, s) in stored if run == b[0]["jobRunId"]}
                prefix = 0
                while prefix + 1 in seqs:
                    prefix += 1
                self.assertEqual(r.json["ackSeq"], prefix)
        self.assertEqual(len(self.stored()), count)


if __name__ == "__main__":
    unittest.main()
