"""Long polls park in jobvisor-cp's accept front, not in worker threads (issue 14).

A control plane with 8 HTTP worker threads holds 300 long polls at once, each
on its own raw connection from its own agent. While they are parked a job for
one of them is delivered within 200 ms, an admin call and a short poll are
answered at once, a parked poll ends at its deadline with the normal empty
answer, clients that hang up free their slots, and a client cannot send the
front's marker header itself."""
import json
import re
import socket
import time
import unittest

import tls_pki
from cp_harness import ADMIN_TOKEN, ControlPlane

PARKED = 300
AGENTS = {"p%03d" % i: "p%03d-token-0123456789abcdef" % i for i in range(PARKED + 10)}


def poll_request(agent, wait, extra=b""):
    body = json.dumps({"capacity": 1, "waitSeconds": wait, "running": []}).encode()
    return (b"POST /v1/agents/%s/poll HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (agent.encode(), AGENTS[agent].encode(), len(body), extra) + body)


def open_poll(port, agent, wait, extra=b""):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(poll_request(agent, wait, extra))
    return s


def read_answer(s, timeout):
    """(status, json body) of the whole answer (Content-Length; the connection may stay open)."""
    data = tls_pki.read_answer(s, timeout)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None


class Parking(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cp = ControlPlane(["--threads", "8", "--max-wait", "60"], agents=AGENTS).start()
        cls.socks = {}
        for i in range(PARKED):
            agent = "p%03d" % i
            cls.socks[agent] = open_poll(cls.cp.port, agent, 60)
        cls.wait_parked(PARKED)

    @classmethod
    def tearDownClass(cls):
        for s in cls.socks.values():
            s.close()
        cls.cp.close()

    @classmethod
    def parked(cls):
        r = cls.cp.api("GET", "/metrics")
        return int(re.search(r"^jobvisor_long_polls_parked (\d+)$", r.raw.decode(), re.M).group(1))

    @classmethod
    def wait_parked(cls, n, timeout=30):
        deadline = time.monotonic() + timeout
        while cls.parked() != n:
            if time.monotonic() > deadline:
                raise AssertionError("%d polls parked, not %d" % (cls.parked(), n))
            time.sleep(0.05)

    def test_a_new_job_reaches_its_parked_poll_within_200_ms(self):
        agent = "p017"
        job = self.cp.create_job(agent=agent, instance="mc")
        t = time.monotonic()
        s = self.socks.pop(agent)
        status, body = read_answer(s, 5)
        took = time.monotonic() - t
        s.close()
        self.assertEqual(status, 200)
        self.assertEqual([a["jobId"] for a in body["jobs"]], [job["jobId"]])
        self.assertLess(took, 0.2, "delivered %.3f s after the job was created" % took)

    def test_other_calls_are_answered_while_far_more_polls_than_threads_wait(self):
        self.assertGreaterEqual(self.parked(), 200, "far more than the 8 worker threads")
        t = time.monotonic()
        self.assertEqual(self.cp.api("GET", "/v1/agents").status, 200)
        s = open_poll(self.cp.port, "p305", 0)
        status, body = read_answer(s, 5)
        s.close()
        took = time.monotonic() - t
        self.assertEqual((status, body["jobs"]), (200, []))
        self.assertLess(took, 1.0, "an admin call and a short poll took %.3f s" % took)

    def test_a_parked_poll_ends_at_its_deadline_with_the_normal_empty_answer(self):
        t = time.monotonic()
        s = open_poll(self.cp.port, "p306", 2)
        status, body = read_answer(s, 10)
        s.close()
        took = time.monotonic() - t
        self.assertEqual(status, 200)
        self.assertEqual((body["jobs"], body["cancel"]), ([], []))
        self.assertIn("leaseSeconds", body)
        self.assertTrue(1.9 <= took < 3.0, "answered after %.3f s, asked for 2" % took)
        agents = {a["agentId"]: a for a in self.cp.api("GET", "/v1/agents").json["agents"]}
        self.assertTrue(agents["p306"]["lastSeen"], "the handler saw the poll")

    def test_a_client_that_hangs_up_while_parked_frees_its_slot(self):
        before = self.parked()
        gone = ["p%03d" % i for i in range(200, 250)]
        for agent in gone:
            self.socks.pop(agent).close()
        self.wait_parked(before - len(gone), timeout=5)
        # A job for one of them waits for its next poll (nobody is there to take it).
        job = self.cp.create_job(agent="p200", instance="mc")
        s = open_poll(self.cp.port, "p200", 0)
        status, body = read_answer(s, 5)
        s.close()
        self.assertEqual([a["jobId"] for a in body["jobs"]], [job["jobId"]])

    def test_a_client_cannot_send_the_marker_header(self):
        for value in (b"0" * 32 + b" 000000000", b"anything"):
            s = open_poll(self.cp.port, "p307", 30, b"X-JV-Front: " + value + b"\r\n")
            status, body = read_answer(s, 5)
            s.close()
            self.assertEqual(status, 400)
            self.assertIn("reserved", body["error"])
        s = open_poll(self.cp.port, "p307", 30, b"x-jv-front: " + b"0" * 32 + b" 000000000\r\n")
        self.assertEqual(read_answer(s, 5)[0], 400, "header names are case-insensitive")
        s.close()


if __name__ == "__main__":
    unittest.main()
