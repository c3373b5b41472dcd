"""Keep-alive between clients and the control plane's accept front (front_keep.c).

An HTTP/1.1 client, plain or TLS, keeps one connection across requests; the
agent's own transport reuses one connection over many polls; "Connection:
close" and pipelining end the connection after the answer; an idle kept
connection is closed after FRONT_IDLE_MS; a slow next request still meets the
head deadline; idle kept connections are the first to go when an address has
too many connections."""
import http.client
import os
import re
import shutil
import socket
import tempfile
import time
import unittest

from agent_harness import AgentTestCase
from cp_harness import ADMIN_TOKEN, AGENT_TOKENS, ControlPlane
from tls_pki import OPENSSL, Pki, read_answer, start_tls_cp

CP_BIN = os.environ.get("JOBVISOR_CP_BIN", "")
IDLE = 65           # FRONT_IDLE_MS
HEAD_DEADLINE = 10  # FRONT_HEAD_MS
PER_CLIENT = 256    # FRONT_PENDING_PER_CLIENT
AUTH = {"Authorization": "Bearer " + ADMIN_TOKEN}


def metric(cp, name, conn=None):
    """A counter from /metrics, read on conn (a kept connection) or a new one."""
    if conn is None:
        raw = cp.api("GET", "/metrics").raw.decode()
    else:
        conn.request("GET", "/metrics", headers=AUTH)
        raw = conn.getresponse().read().decode()
    return int(re.search(r"^%s (\d+)$" % name, raw, re.M).group(1))


def accepted(cp, conn=None):
    return metric(cp, "jobvisor_front_connections_accepted_total", conn)


def closed_by_server(s, timeout=5):
    s.settimeout(timeout)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


@unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN), "needs JOBVISOR_CP_BIN")
class KeepAlive(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="jvcp-ka-")
        cls.cp = ControlPlane().start()
        cls.tls = None
        if OPENSSL:
            pki = Pki(cls.tmp)
            cert, key = pki.server("server")
            cls.tls = ControlPlane(["--tls-cert", cert, "--tls-key", key])
            cls.tls.ssl_context = pki.context()
            cls.tls.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.cp.close()
            if cls.tls:
                cls.tls.close()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def connect(self, cp, timeout=15):
        if cp.url.startswith("https://"):
            return http.client.HTTPSConnection("127.0.0.1", cp.port, timeout=timeout, context=cp.ssl_context)
        return http.client.HTTPConnection("127.0.0.1", cp.port, timeout=timeout)

    def test_many_requests_on_one_connection_plain_and_tls(self):
        for cp in (self.cp, self.tls):
            if cp is None:
                continue
            with self.subTest(cp.url):
                before = accepted(cp)
                c = self.connect(cp)
                sock = None
                for i in range(20):
                    method, path, body = [("GET", "/v1/jobs", None), ("GET", "/healthz", None),
                                          ("POST", "/v1/jobs", b"{}"), ("GET", "/nowhere", None)][i % 4]
                    c.request(method, path, body=body, headers=AUTH)
                    r = c.getresponse()
                    data = r.read()
                    self.assertEqual(r.status, {0: 200, 1: 200, 2: 400, 3: 404}[i % 4], data)
                    self.assertTrue(data.startswith(b"{"), data)
                    self.assertEqual(r.getheader("Connection"), "keep-alive")
                    self.assertRegex(r.getheader("Keep-Alive"), r"^timeout=%d, max=\d+$" % IDLE)
                    sock = sock or c.sock
                    self.assertIs(c.sock, sock, "the same connection carried answer %d" % i)
                c.close()
                self.assertEqual(accepted(cp) - before, 2, "one connection for 20 requests, one for /metrics")

    def test_connection_close_and_http_1_0_are_honoured(self):
        for req, kept in ((b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
                          (b"GET /healthz HTTP/1.0\r\n\r\n", False),
                          (b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
                          (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", True)):
            with self.subTest(req), socket.create_connection(("127.0.0.1", self.cp.port), timeout=10) as s:
                s.sendall(req)
                data = read_answer(s, 10)
                self.assertIn(b" 200 OK\r\n", data)
                self.assertIn(b"\r\nConnection: keep-alive\r\n" if kept else b"\r\nConnection: close\r\n", data)
                if kept:
                    s.sendall(req)
                    self.assertIn(b" 200 OK\r\n", read_answer(s, 10))
                else:
                    self.assertTrue(closed_by_server(s))

    def test_pipelined_requests_get_the_first_answer_then_the_close(self):
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", self.cp.port), timeout=10) as s:
            s.sendall(req + req)
            data = read_answer(s, 10)
            self.assertIn(b" 200 OK\r\n", data)
            self.assertIn(b"\r\nConnection: close\r\n", data)
            self.assertTrue(closed_by_server(s))

    def test_a_slow_next_request_on_a_kept_connection_gets_408_at_the_head_deadline(self):
        with socket.create_connection(("127.0.0.1", self.cp.port), timeout=30) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertIn(b"keep-alive", read_answer(s, 10))
            time.sleep(2)  # idle: no deadline runs before the first byte
            t0 = time.monotonic()
            s.sendall(b"GET /healthz HTTP/1.1\r\nX-Pad: ")
            data = b""
            while time.monotonic() - t0 < HEAD_DEADLINE + 5:
                try:
                    s.sendall(b"a")  # one byte a second: never a whole head
                except OSError:
                    break
                s.settimeout(1)
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    continue
                data += chunk
                if not chunk or b"\r\n\r\n" in data:
                    break
            took = time.monotonic() - t0
            self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data[:200])
            self.assertGreater(took, HEAD_DEADLINE - 1.5)
            self.assertLess(took, HEAD_DEADLINE + 2)

    def test_idle_kept_connections_are_the_first_to_go_when_an_address_has_too_many(self):
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for i in range(PER_CLIENT + 4):
            if i >= PER_CLIENT - 1:
                time.sleep(0.3)  # the answers before are through: those connections are idle now
            s = socket.create_connection(("127.0.0.1", self.cp.port), timeout=10)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertIn(b"keep-alive", read_answer(s, 10))
            socks.append(s)
        for i in range(4):
            self.assertTrue(closed_by_server(socks[i]), "the oldest idle connection %d was closed" % i)
        for s in socks[-8:]:  # the newest are kept and still serve
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertIn(b" 200 OK\r\n", read_answer(s, 10))
        st = self.cp.api("GET", "/healthz")
        self.assertEqual(st.status, 200)

    def test_an_idle_kept_connection_is_closed_after_the_idle_timeout(self):
        with socket.create_connection(("127.0.0.1", self.cp.port), timeout=IDLE + 10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertIn(b"keep-alive", read_answer(s, 10))
            t0 = time.monotonic()
            s.settimeout(IDLE + 10)
            self.assertEqual(s.recv(100), b"")
            took = time.monotonic() - t0
            self.assertGreater(took, IDLE - 1)
            self.assertLess(took, IDLE + 3)


@unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN) and OPENSSL, "needs JOBVISOR_CP_BIN and openssl")
class AgentReusesItsConnection(AgentTestCase):
    """The real agent over https polls many times on one kept connection."""
    AGENT = "agent-1"

    def setUp(self):
        super().setUp()
        self.cp.stop()  # the fake is not used here
        self.real = start_tls_cp(self, ["--poll-interval", "1"])
        with open(self.token_file, "w") as f:
            f.write(AGENT_TOKENS[self.AGENT] + "\n")

    def test_many_polls_over_one_tls_connection(self):
        """A poll a second (the control plane tells the interval), no long poll: 12 polls,
        one TLS handshake."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.real.port, timeout=10,
                                           context=self.real.ssl_context)
        self.addCleanup(conn.close)
        before = accepted(self.real, conn)  # this connection is counted already
        p = self.start_agent(URL=self.real.url, AGENT_ID=self.AGENT, TLS_CA_FILE=self.pki.ca,
                             POLL_WAIT="0")
        deadline = time.monotonic() + 30
        while metric(self.real, "jobvisor_poll_request_seconds_count", conn) < 12:
            self.assertLess(time.monotonic(), deadline, "the agent did not poll 12 times:\n" + self.log()[-3000:])
            time.sleep(0.2)
        n = accepted(self.real, conn) - before
        # The agent's: one (another only if a poll and a post overlapped).
        self.assertGreaterEqual(n, 1)
        self.assertLessEqual(n, 2, "%d connections for 12 polls" % n)
        self.assertEqual(self.stop_agent(p), 0)


if __name__ == "__main__":
    unittest.main()
