"""jobvisor-cp: hundreds of WebSocket clients at once on one service thread (issue 14).

300 admin clients (above the old cap of one civetweb worker thread per client,
threads / 8) connect and each gets its hello and snapshot; a job change then
reaches every one of them, in the same numbered message, while new agent polls
are still answered promptly. The agents' liveness arrives batched: polls of an
agent already online show up in one `agents.seen` message a second, not as an
`agent` message per poll.
"""
import time
import unittest

from cp_harness import ADMIN_TOKEN, ControlPlane
from cp_ws import ConnectionClosed, WebSocket

CLIENTS = 300
AGENTS = {"m%03d" % i: "m%03d-token-0123456789abcdef" % i for i in range(20)}


class ManyClients(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cp = ControlPlane(agents=AGENTS).start()
        url = cls.cp.url.replace("http://", "ws://") + "/v1/ws?token=" + ADMIN_TOKEN
        cls.clients = []
        try:
            for _ in range(CLIENTS):
                cls.clients.append(WebSocket(url, timeout=20))
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for w in cls.clients:
            w.close()
        cls.cp.close()

    def until(self, w, pred, limit=100):
        for _ in range(limit):
            m = w.recv_json(timeout=20)
            if pred(m):
                return m
        self.fail("no matching message in %d" % limit)

    def poll_ms(self, agent_id):
        t = time.monotonic()
        r = self.cp.agent(agent_id).poll(wait=0)
        self.assertEqual(r.status, 200)
        return (time.monotonic() - t) * 1000

    def test_all_clients_see_a_job_change_and_polls_stay_prompt(self):
        for w in self.clients:
            self.assertEqual(w.recv_json(timeout=20)["type"], "hello")
            self.assertEqual(w.recv_json(timeout=20)["type"], "snapshot")
        job = self.cp.create_job(agent="m000")
        queued = lambda m: m.get("type") == "job" and m["job"]["jobId"] == job["jobId"] \
            and m["job"]["status"] == "QUEUED"
        # New polls while 300 clients are being written to.
        lat = [self.poll_ms("m%03d" % (1 + i % 19)) for i in range(20)]
        seen = [self.until(w, queued) for w in self.clients]
        self.assertEqual(len({m["seq"] for m in seen}), 1, "one numbered message, the same for everyone")
        lat.sort()
        self.assertLess(lat[len(lat) // 2], 200, "median new-poll latency (ms) with %d clients: %r" % (CLIENTS, lat))
        self.assertLess(lat[-1], 2000, "slowest new poll (ms): %r" % lat)

    def test_repeated_polls_are_batched_into_agents_seen(self):
        w = self.clients[0]
        a = self.cp.agent("m010")
        a.poll(wait=0)  # online now (an agent message the first time)
        t0 = time.monotonic()
        for _ in range(10):
            a.poll(wait=0)
        m = self.until(w, lambda m: m.get("type") == "agents.seen" and "m010" in m["agentIds"], limit=400)
        self.assertTrue(m["lastSeen"])
        # Ten polls in well under a second: no `agent` message per poll.
        later = []
        deadline = t0 + 2.5
        while time.monotonic() < deadline:
            try:
                later.append(w.recv_json(timeout=max(0.05, deadline - time.monotonic())))
            except TimeoutError:
                break
        per_poll = [x for x in later if x.get("type") == "agent" and x["agent"]["agentId"] == "m010"]
        self.assertEqual(per_poll, [])


class SlowClient(unittest.TestCase):
    """A client that stops reading is not waited for: the others keep getting
    the stream, and once it is more than the ring (8192 messages) behind it
    gets `overflow` and is closed, so it reconnects for a snapshot."""

    def test_a_client_that_falls_out_of_the_ring_is_told_and_closed(self):
        cp = ControlPlane().start()
        self.addCleanup(cp.close)
        url = cp.url.replace("http://", "ws://") + "/v1/ws?token=" + ADMIN_TOKEN
        slow, quick = WebSocket(url, timeout=20), WebSocket(url, timeout=20)
        self.addCleanup(slow.close)
        self.addCleanup(quick.close)
        for w in (slow, quick):
            self.assertEqual(w.recv_json()["type"], "hello")
            self.assertEqual(w.recv_json()["type"], "snapshot")
        cp.create_job()
        agent = cp.agent()
        [a] = agent.take()
        # 12,000 events of 4 KB (48 MB, 200 a request): far more than the socket buffers
        # between here and the server hold, and more than the ring.
        text = "x" * 4000
        seq = 0
        for _ in range(60):
            batch = []
            for _ in range(200):
                seq += 1
                batch.append({"seq": seq, "kind": "log", "jobId": a["jobId"], "jobRunId": a["jobRunId"],
                              "instanceId": a["instanceId"], "message": text,
                              "timestamp": "2026-01-02T03:04:05.678Z"})
            self.assertEqual(agent.events(a["jobRunId"], batch).status, 200)
            # The quick client reads as it goes (the last event of each batch).
            want = seq
            while True:
                m = quick.recv_json(timeout=20)
                if m.get("type") == "event" and m["event"]["seq"] == want:
                    break
        got = None
        with self.assertRaises(ConnectionClosed):
            for _ in range(20000):
                got = slow.recv_json(timeout=20)
                if got.get("type") == "overflow":
                    slow.recv_json(timeout=20)  # then the close
        self.assertEqual(got, {"type": "overflow"})


if __name__ == "__main__":
    unittest.main()
