"""One agent's instance traffic from many threads at once (issue 14).

The instance handlers no longer hold the replica's one mutex across their
database calls; an agent's own instance requests are still handled one at a
time per replica. What users see, on both backends:
  - threads posting the state events of their own instance (each batch sent
    twice, as after a lost answer) while another posts stats for all of them
    and one for an instance that does not exist, and another polls: every
    event is stored once (history, ackSeq, the metric) and pushed to
    WebSocket clients exactly once, in seq order; an instance's messages never
    carry an older row after a newer one; stats never create an instance;
    every poll is answered;
  - threads posting the same batch of one instance at once: each event is
    stored and pushed once.
PostgreSQL only (SQLite has one connection for every request): while the
test's own transaction holds the instances table locked, an instance events
request waits in the database and the polls of that agent and of another are
answered meanwhile.
"""

import re
import threading
import time
import unittest

import pg_harness
from cp_harness import ADMIN_TOKEN, CpTestCase, http
from cp_ws import WebSocket

TS = "2026-01-02T03:04:05.678Z"
INSTANCES = 6
EVENTS = 40  # per instance, at most the 50 an instance's history shows
BATCH = 4
STATES = ["STARTING", "RUNNING", "BACKOFF"]


def ev(seq, state):
    return {"seq": seq, "kind": "state", "state": state, "timestamp": TS, "message": "m%d" % seq}


def state_of(seq):
    return "STOPPED" if seq == EVENTS else STATES[seq % len(STATES)]


class Concurrent(CpTestCase):
    def post(self, a, path, body, timeout=30):
        return http(self.cp.url + "/v1/agents/%s%s" % (a.id, path), "POST", body, a.token, timeout=timeout)

    def stored_total(self):
        text = self.cp.api("GET", "/metrics").raw.decode()
        return int(re.search(r"^jobvisor_instance_events_stored_total (\d+)$", text, re.M).group(1))

    def ws(self):
        w = WebSocket(self.cp.url.replace("http://", "ws://") + "/v1/ws?token=" + ADMIN_TOKEN)
        self.addCleanup(w.close)
        self.assertEqual(w.recv_json()["type"], "hello")
        self.assertEqual(w.recv_json()["type"], "snapshot")
        return w

    def run_threads(self, targets):
        errors = []

        def guard(fn):
            try:
                fn()
            except Exception as e:  # reported below, with the others
                errors.append(repr(e))

        threads = [threading.Thread(target=guard, args=(fn,)) for fn in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])

    def instance_messages(self, w, agent_id, done):
        """The agent's instance messages, read until done(messages) holds."""
        got = []
        while not done(got):
            m = w.recv_json(timeout=15)
            if m["type"] == "instance" and m["instance"]["agentId"] == agent_id:
                got.append(m)
        return got

    def test_events_and_stats_from_many_threads_are_stored_and_pushed_once_in_order(self):
        a = self.cp.agent()
        w = self.ws()
        before = self.stored_total()
        ids = ["i%d" % n for n in range(INSTANCES)]
        finished = threading.Event()
        stats_answers, polls = [], []

        def events_of(iid):
            for start in range(1, EVENTS + 1, BATCH):
                batch = [ev(s, state_of(s)) for s in range(start, min(start + BATCH, EVENTS + 1))]
                for _ in range(2):  # the resend after a lost answer changes nothing
                    r = self.post(a, "/instances/%s/events" % iid, {"events": batch})
                    if (r.status, r.json) != (200, {"ackSeq": batch[-1]["seq"]}):
                        raise AssertionError("%s: %r" % (iid, r))

        def stats():
            while not finished.is_set():
                body = {"instances": [{"instanceId": i, "at": TS, "memoryBytes": 1000, "processes": 1}
                                      for i in ids + ["ghost"]]}
                r = self.post(a, "/stats", body)
                stats_answers.append((r.status, (r.json or {}).get("instances")))
                time.sleep(0.02)  # the WebSocket client reads at the end: stay well inside its ring

        def poll():
            while not finished.is_set():
                polls.append(a.poll(wait=0, timeout=30).status)
                time.sleep(0.01)

        side = [threading.Thread(target=stats), threading.Thread(target=poll)]
        for t in side:
            t.start()
        try:
            self.run_threads([lambda iid=iid: events_of(iid) for iid in ids])
        finally:
            finished.set()
            for t in side:
                t.join(60)
        self.assertTrue(polls and set(polls) == {200}, polls[:5])
        self.assertTrue(stats_answers)
        self.assertTrue(all(s == 200 and 0 <= n <= INSTANCES for s, n in stats_answers), stats_answers[:5])
        r = self.post(a, "/stats", {"instances": [{"instanceId": i, "at": "2026-01-02T03:09:09.000Z",
                                                             "memoryBytes": 7, "processes": 1}
                                                            for i in ids + ["ghost"]]})
        self.assertEqual(r.json, {"instances": INSTANCES})
        self.assertEqual(self.stored_total() - before, INSTANCES * EVENTS)

        def all_seen(got):
            last = [m for m in got if (m["instance"].get("stats") or {}).get("memoryBytes") == 7]
            return len(last) == INSTANCES
        got = self.instance_messages(w, a.id, all_seen)
        for iid in ids:
            mine = [m for m in got if m["instance"]["instanceId"] == iid]
            seqs = [m["instanceEvent"]["seq"] for m in mine if "instanceEvent" in m]
            self.assertEqual(seqs, list(range(1, EVENTS + 1)), "%s: each event pushed once, in order" % iid)
            last_seqs = [m["instance"]["lastSeq"] for m in mine]
            self.assertEqual(last_seqs, sorted(last_seqs), "%s: never an older row after a newer one" % iid)
            self.assertEqual((mine[-1]["instance"]["state"], mine[-1]["instance"]["lastSeq"]),
                             ("STOPPED", EVENTS))
            inst = self.cp.api("GET", "/v1/agents/%s/instances/%s" % (a.id, iid)).json
            self.assertEqual([(e["seq"], e["state"]) for e in inst["history"]],
                             [(s, state_of(s)) for s in range(1, EVENTS + 1)])
            self.assertEqual(inst["stats"]["memoryBytes"], 7)
        listed = self.cp.api("GET", "/v1/instances?agentId=" + a.id).json["instances"]
        self.assertEqual(sorted(i["instanceId"] for i in listed), ids)
        self.assertEqual(self.cp.api("GET", "/v1/agents/%s/instances/ghost" % a.id).status, 404)

    def test_the_same_batch_posted_at_once_is_stored_and_pushed_once(self):
        a = self.cp.agent()
        w = self.ws()
        before = self.stored_total()
        batch = [ev(s, state_of(s)) for s in range(1, EVENTS + 1)]
        answers = []

        def send():
            r = self.post(a, "/instances/dup/events", {"events": batch})
            answers.append((r.status, r.json))
        self.run_threads([send] * 6)
        self.assertEqual(answers, [(200, {"ackSeq": EVENTS})] * 6)
        self.assertEqual(self.stored_total() - before, EVENTS)
        got = self.instance_messages(w, a.id, lambda g: any(m.get("instanceEvent", {}).get("seq") == EVENTS
                                                            for m in g))
        # Anything else published for it would come after: one more request
        # and its message mark the end.
        self.post(a, "/instances/dup/events", {"events": [ev(EVENTS + 1, "STOPPED")]})
        got += self.instance_messages(w, a.id, lambda g: any(m.get("instanceEvent", {}).get("seq") == EVENTS + 1
                                                             for m in g))
        seqs = [m["instanceEvent"]["seq"] for m in got if "instanceEvent" in m]
        self.assertEqual(seqs, list(range(1, EVENTS + 2)))
        hist = self.cp.api("GET", "/v1/agents/%s/instances/dup" % a.id).json["history"]
        self.assertEqual([e["seq"] for e in hist], list(range(1, EVENTS + 2)))

    def test_polls_are_answered_while_an_instance_request_waits_for_the_database(self):
        if self.cp.backend != "postgresql":
            self.skipTest("PostgreSQL only: on SQLite one connection serves every request")
        a, other = self.cp.agent(), self.cp.agent(self.cp.second_agent)
        pg = pg_harness.shared()
        dbname = self.cp.db.rsplit("/", 1)[1]
        lock = pg.session(dbname, "jv-test-lock")
        self.addCleanup(lock.wait, 30)
        self.addCleanup(lock.kill)
        self.addCleanup(lock.stdout.close)
        lock.stdin.write(b"BEGIN;\nLOCK TABLE instances IN ACCESS EXCLUSIVE MODE;\n")
        lock.stdin.flush()

        def count(sql):
            return int(pg.psql(dbname, sql) or 0)

        def wait_for(sql, what):
            deadline = time.monotonic() + 20
            while count(sql) < 1:
                if time.monotonic() > deadline:
                    self.fail("timed out waiting for " + what)
                time.sleep(0.05)
        wait_for("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                 " WHERE c.relname = 'instances' AND l.mode = 'AccessExclusiveLock' AND l.granted",
                 "the test's lock on the instances table")
        answer = []
        slow = threading.Thread(target=lambda: answer.append(
            self.post(a, "/instances/slow/events", {"events": [ev(1, "RUNNING")]}, timeout=60)))
        slow.start()
        wait_for("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                 " AND wait_event_type = 'Lock' AND application_name <> 'jv-test-lock'",
                 "the events request to wait for the lock")
        # Before, the request held the replica's mutex while it waited: these
        # polls waited for it, which only the test's COMMIT below would end.
        for agent in (a, other):
            self.assertEqual(agent.poll(wait=0, timeout=30).status, 200)
        self.assertTrue(slow.is_alive(), "the events request was in flight during the polls")
        lock.stdin.write(b"COMMIT;\n")
        lock.stdin.close()
        slow.join(60)
        self.assertEqual([(r.status, r.json) for r in answer], [(200, {"ackSeq": 1})])


if __name__ == "__main__":
    unittest.main()
