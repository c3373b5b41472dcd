"""jobvisor-cp: the /v1/ws WebSocket stream, through a real RFC 6455 client.

Checks authentication, that every job state change and every new event is
pushed with dense increasing sequence numbers, replay of missed messages on
reconnect (?since=&epoch=), snapshots for new clients, the events request, and
the client limit.
"""

import socket
import unittest

from cp_harness import ADMIN_TOKEN, ControlPlane, CpTestCase
from cp_ws import ConnectionClosed, HandshakeError, WebSocket


class Stream(CpTestCase):
    def ws(self, query="token=" + ADMIN_TOKEN, headers=None):
        w = WebSocket(self.cp.url.replace("http://", "ws://") + "/v1/ws?" + query, headers=headers)
        self.addCleanup(w.close)
        return w

    def greet(self, w):
        hello = w.recv_json()
        self.assertEqual(hello["type"], "hello")
        return hello

    def next_of(self, w, pred, limit=200):
        """Messages until one matches pred; returns (message, all messages seen)."""
        seen = []
        for _ in range(limit):
            m = w.recv_json()
            seen.append(m)
            if pred(m):
                return m, seen
        self.fail("no matching message in %d: %r" % (limit, seen[-3:]))

    def test_authentication(self):
        with self.assertRaises(HandshakeError) as e:
            self.ws(query="")
        self.assertEqual(e.exception.status, 401)
        with self.assertRaises(HandshakeError) as e:
            self.ws(query="token=wrong-token-0123456789abcdef")
        self.assertEqual(e.exception.status, 401)
        with self.assertRaises(HandshakeError) as e:
            self.ws(query="token=" + self.cp.agent().token)
        self.assertEqual(e.exception.status, 403)
        w = self.ws(query="", headers={"Authorization": "Bearer " + ADMIN_TOKEN})
        self.assertEqual(self.greet(w)["replay"], "snapshot")

    def test_every_state_change_and_event_is_pushed_in_order(self):
        w = self.ws()
        hello = self.greet(w)
        snap = w.recv_json()
        self.assertEqual(snap["type"], "snapshot")
        self.assertEqual(snap["seq"], hello["seq"])
        self.assertIn("jobs", snap)
        self.assertTrue(any(a["agentId"] == self.cp.default_agent for a in snap["agents"]))
        last = hello["seq"]

        job = self.cp.create_job()
        jid = job["jobId"]
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 25, "quarter")
        agent.progress(a, 75, "three quarters")
        agent.result(a["jobRunId"], "COMPLETED", output={"n": 1})

        _, seen = self.next_of(w, lambda m: m["type"] == "job" and m["job"]["status"] == "COMPLETED")
        seqs = [m["seq"] for m in seen]
        self.assertEqual(seqs, list(range(last + 1, last + 1 + len(seen))), "dense, increasing")
        mine = [m for m in seen if (m.get("job") or {}).get("jobId") == jid
                or (m.get("event") or {}).get("jobId") == jid]
        states = [m["job"]["status"] for m in mine if m["type"] == "job"]
        for want in ("CREATED", "QUEUED", "RUNNING", "COMPLETED"):
            self.assertIn(want, states)
        self.assertLess(states.index("CREATED"), states.index("QUEUED"))
        self.assertLess(states.index("QUEUED"), states.index("RUNNING"))
        events = [m["event"] for m in mine if m["type"] == "event"]
        self.assertEqual([(e["seq"], e["percent"], e["message"]) for e in events],
                         [(1, 25, "quarter"), (2, 75, "three quarters")])
        self.assertEqual(events[0]["jobRunId"], a["jobRunId"])
        final = [m for m in mine if m["type"] == "job"][-1]["job"]
        self.assertEqual(final["runs"][0]["output"], {"n": 1})
        # Agent presence is pushed too.
        self.assertTrue(any(m["type"] == "agent" and m["agent"]["agentId"] == agent.id for m in seen))

    def test_duplicate_events_are_not_pushed_twice(self):
        w = self.ws()
        self.greet(w)
        self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        ev = [{"seq": 1, "kind": "progress", "percent": 5, "message": "once"}]
        agent.events(a["jobRunId"], ev)
        agent.events(a["jobRunId"], ev)
        agent.seq[a["jobRunId"]] = 1
        agent.progress(a, 6, "marker")  # seq 2
        _, seen = self.next_of(w, lambda m: m["type"] == "event" and m["event"]["message"] == "marker")
        onces = [m for m in seen if m["type"] == "event" and m["event"]["message"] == "once"]
        self.assertEqual(len(onces), 1)

    def test_reconnect_with_since_replays_what_was_missed(self):
        w = self.ws()
        hello = self.greet(w)
        w.recv_json()  # snapshot
        job = self.cp.create_job()
        m, _ = self.next_of(w, lambda m: m["type"] == "job" and m["job"]["status"] == "QUEUED")
        since = m["seq"]
        w.close()
        # While disconnected: the job runs and finishes.
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 50, "while away")
        agent.result(a["jobRunId"], "COMPLETED")
        w2 = self.ws("token=%s&since=%d&epoch=%s" % (ADMIN_TOKEN, since, hello["epoch"]))
        h2 = self.greet(w2)
        self.assertEqual(h2["replay"], "ring")
        self.assertEqual(h2["epoch"], hello["epoch"])
        m, seen = self.next_of(w2, lambda m: m["type"] == "job" and m["job"]["jobId"] == job["jobId"]
                               and m["job"]["status"] == "COMPLETED")
        self.assertEqual(seen[0]["seq"], since + 1, "replay starts right after what we saw")
        self.assertEqual([x["seq"] for x in seen], list(range(since + 1, since + 1 + len(seen))))
        self.assertNotIn("snapshot", [x["type"] for x in seen])
        self.assertTrue(any(x["type"] == "event" and x["event"]["message"] == "while away" for x in seen))

    def test_reconnect_from_another_epoch_gets_a_snapshot(self):
        job = self.cp.create_job()
        w = self.ws("token=%s&since=1&epoch=0000000000000000" % ADMIN_TOKEN)
        self.assertEqual(self.greet(w)["replay"], "snapshot")
        snap = w.recv_json()
        self.assertEqual(snap["type"], "snapshot")
        self.assertIn(job["jobId"], [j["jobId"] for j in snap["jobs"]])

    def test_events_request_returns_a_runs_log(self):
        self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 10, "a")
        agent.progress(a, 20, "b")
        w = self.ws()
        self.greet(w)
        w.send_json({"op": "events", "jobRunId": a["jobRunId"], "after": 0})
        m, _ = self.next_of(w, lambda m: m["type"] == "events")
        self.assertEqual(m["jobRunId"], a["jobRunId"])
        self.assertEqual([e["message"] for e in m["events"]], ["a", "b"])
        self.assertNotIn("seq", m, "answers are not part of the numbered stream")
        w.send_text("not json")
        m, _ = self.next_of(w, lambda m: m["type"] == "error")
        w.send_text("[" * 5000 + "]" * 5000)  # deep nesting must not reach the recursive parser
        m, _ = self.next_of(w, lambda m: m["type"] == "error")
        w.send_json({"op": "dance"})
        m, _ = self.next_of(w, lambda m: m["type"] == "error")
        self.assertIn("unknown op", m["error"])
        # Still alive afterwards.
        w.send_json({"op": "events", "jobRunId": a["jobRunId"], "after": 1})
        m, _ = self.next_of(w, lambda m: m["type"] == "events")
        self.assertEqual([e["message"] for e in m["events"]], ["b"])

    def test_two_clients_see_the_same_stream(self):
        w1, w2 = self.ws(), self.ws()
        self.greet(w1)
        self.greet(w2)
        job = self.cp.create_job()
        pred = lambda m: m["type"] == "job" and m["job"]["jobId"] == job["jobId"] and m["job"]["status"] == "QUEUED"
        m1, _ = self.next_of(w1, pred)
        m2, _ = self.next_of(w2, pred)
        self.assertEqual(m1, m2)


class ClientLimit(unittest.TestCase):
    def test_clients_beyond_the_limit_are_refused_with_503(self):
        cp = ControlPlane(["--ws-clients", "2"]).start()
        self.addCleanup(cp.close)
        url = cp.url.replace("http://", "ws://") + "/v1/ws?token=" + ADMIN_TOKEN
        first = [WebSocket(url), WebSocket(url)]
        for w in first:
            self.addCleanup(w.close)
            self.assertEqual(w.recv_json()["type"], "hello")
        with self.assertRaises(HandshakeError) as e:
            WebSocket(url)
        self.assertEqual(e.exception.status, 503)
        first[0].close()
        # The slot is released when a client leaves.
        for _ in range(50):
            try:
                w = WebSocket(url)
                break
            except HandshakeError:
                import time
                time.sleep(0.1)
        self.addCleanup(w.close)
        self.assertEqual(w.recv_json()["type"], "hello")
        # HTTP is still served.
        self.assertEqual(cp.api("GET", "/v1/agents").status, 200)


if __name__ == "__main__":
    unittest.main()
