"""The fuzz corpus (tests/lib/fuzz_corpus.py) replayed against the real
jobvisor-cp and the agent's parsers (issue 19, item 6).

Under `make test` these are the ASan/UBSan builds: every harness fails the
test on a sanitizer report. Each input must get a clear answer — the expected
4xx with a JSON {"error"} body that is valid UTF-8 — and the process must go
on serving."""
import json
import os
import socket
import subprocess
import time
import unittest

from agent_harness import JOBVISOR, AgentTestCase
from cp_harness import ADMIN_TOKEN, AGENT_TOKENS, ControlPlane, http
from fuzz_corpus import BODIES, REQUESTS, parse_answer
from tls_pki import answer_complete

CP_BIN = os.environ.get("JOBVISOR_CP_BIN", "")


def exchange(port, raw, timeout=20):
    """Send raw bytes (as far as the server takes them), read the answer (to EOF or its end)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before taking it all: the answer is still there
        chunks = []
        try:
            while not answer_complete(b"".join(chunks)):  # kept alive: not closed after it
                d = s.recv(65536)
                if not d:
                    break
                chunks.append(d)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


@unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN), "needs JOBVISOR_CP_BIN")
class ControlPlaneCorpus(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cp = ControlPlane().start()

    @classmethod
    def tearDownClass(cls):
        cls.cp.close()  # fails on a sanitizer report or an unclean exit

    def assert_clear(self, name, data, expected):
        self.assertTrue(data, "%s: no answer at all" % name)
        status, body = parse_answer(data)
        self.assertIn(status, expected, "%s: %r" % (name, data[:300]))
        answer = json.loads(body.decode("utf-8"))  # JSON, valid UTF-8
        if status >= 400:
            self.assertIsInstance(answer["error"], str)
            self.assertTrue(answer["error"], name)
        self.assertIsNone(self.cp.proc.poll(), "jobvisor-cp died on %s" % name)

    def test_bodies_are_refused_with_400(self):
        before = len(self.cp.api("GET", "/v1/jobs?limit=500").json["jobs"])
        for name, body in BODIES:
            with self.subTest(name):
                r = http(self.cp.url + "/v1/jobs", "POST", raw=body, token=ADMIN_TOKEN)
                self.assertEqual(r.status, 400, (name, r))
                self.assertTrue(r.json["error"], name)
                r.raw.decode("utf-8")
        self.assertEqual(len(self.cp.api("GET", "/v1/jobs?limit=500").json["jobs"]), before)
        self.assertEqual(self.cp.api("GET", "/v1/agents").status, 200)

    def test_raw_requests_get_a_clear_4xx(self):
        agent_token = AGENT_TOKENS["agent-1"].encode()
        for name, raw, expected in REQUESTS:
            with self.subTest(name):
                raw = raw.replace(b"{ADMIN}", ADMIN_TOKEN.encode()).replace(b"{AGENT}", agent_token)
                self.assert_clear(name, exchange(self.cp.port, raw), expected)
        self.assertEqual(self.cp.api("GET", "/v1/agents").status, 200)


class AgentCorpus(AgentTestCase):
    def test_poll_answers_from_the_corpus_are_survived(self):
        # The shortest poll interval and backoff the agent takes: two polls a body, 36 bodies.
        p = self.start_agent(BACKOFF_MAX="0.1", POLL_INTERVAL="0.05", REQUEST_TIMEOUT=5)
        self.cp.wait(lambda: self.cp.poll_count() >= 1, timeout=20, what="first poll")
        for name, body in BODIES + [("not-utf8-outside-strings", b"\xff{}"),
                                    ("jobs-with-nul-id", b'{"jobs":[{"jobRunId":"r\\u0000x","type":"SLEEPY"}]}')]:
            n = self.cp.poll_count()
            self.cp.fault("poll", body, count=1)
            self.cp.wait(lambda: self.cp.poll_count() >= n + 2, timeout=20, what="polls after " + name)
            self.assertIsNone(p.poll(), "agent died on " + name)
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.assertEqual(self.cp.wait_result(rid)["status"], "COMPLETED")
        with open(self.log_path, "rb") as f:
            log = f.read().decode("utf-8")
        self.assertIn("not a JSON object", log)
        self.assertEqual(self.stop_agent(p), 0)

    def test_run_params_from_the_corpus_are_refused(self):
        for name, body in BODIES:
            with self.subTest(name):
                r = subprocess.run([JOBVISOR, "run", "SLEEPY", "--instance", "i1", "--data-dir", self.data,
                                    "--jobs-dir", self.jobs, "--params", "@/dev/stdin"],
                                   input=body, capture_output=True, timeout=60)
                err = r.stderr.decode("utf-8")
                self.assertIn(r.returncode, (1, 2), (name, err))
                self.assertIn("params", err, name)
                self.assertNotIn("Sanitizer", err, name)
                self.assertNotIn("runtime error", err, name)


if __name__ == "__main__":
    unittest.main()
