"""jobvisor-cp speaks TLS on its accept front (--tls-cert, --tls-key; issue 14).

A throwaway CA and server certificates are made with the `openssl` command in
a temp dir. Against the real binary: the real agent, configured only through
its public settings (an https:// URL and tls_ca_file), runs a job end to end
with its long poll parked in the front; curl with the CA reaches the API, and
a WebSocket client the stream, over TLS; long polls park and wake over TLS;
the front's refusals (malformed, oversized, token-less, the whole fuzz
corpus) hold over TLS, 100-continue works and a slow reader gets a 6 MB
answer whole; TLS 1.0/1.1 are refused; plain HTTP to the TLS port gets a
clear 400, not a hang; a client that never finishes its handshake is dropped
at the 10 s head deadline without slowing anyone else; a wrong key or a
missing file stops the start with a clear message; SIGHUP loads a renewed
certificate and keeps the current one when the new files are broken."""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import unittest
import warnings

from agent_harness import AgentTestCase
from cp_harness import ADMIN_TOKEN, AGENT_TOKENS, ControlPlane
from cp_ws import WebSocket
from fuzz_corpus import REQUESTS, parse_answer
from tls_pki import OPENSSL, Pki, der_of, read_answer, start_tls_cp

CP_BIN = os.environ.get("JOBVISOR_CP_BIN", "")
HEAD_DEADLINE = 10  # FRONT_HEAD_MS


def tls_connect(port, ctx, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(s, server_hostname="127.0.0.1")


def read_all(s, timeout=10):
    """One whole answer (Content-Length, or until the server closes): (status, body bytes)."""
    data = read_answer(s, timeout)
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    return (int(m.group(1)) if m else 0), body


def tls_request(port, ctx, raw, timeout=10):
    with tls_connect(port, ctx, timeout) as s:
        s.sendall(raw)
        return read_all(s, timeout)


def needs_tools(cls):
    cls = unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN), "needs JOBVISOR_CP_BIN")(cls)
    return unittest.skipUnless(OPENSSL, "needs the openssl command (Debian package openssl)")(cls)


@needs_tools
class TlsFront(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="jvcp-tls-")
        cls.pki = Pki(cls.tmp)
        cls.cert, cls.key = cls.pki.server("server")
        cls.ctx = cls.pki.context()
        cls.cp = ControlPlane(["--tls-cert", cls.cert, "--tls-key", cls.key, "--max-wait", "60"])
        cls.cp.ssl_context = cls.ctx
        cls.cp.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.cp.close()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.cp.fresh_agents()

    def curl(self, *args):
        return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True,
                              timeout=30)

    def test_curl_with_the_ca_reaches_the_api_and_without_it_is_refused(self):
        if not shutil.which("curl"):
            self.skipTest("needs curl")
        job = self.cp.create_job(instance="tls-curl")
        p = self.curl("--cacert", self.pki.ca, "-H", "Authorization: Bearer " + ADMIN_TOKEN,
                      self.cp.url + "/v1/jobs/" + job["jobId"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["jobId"], job["jobId"])
        p = self.curl(self.cp.url + "/healthz")  # the system store does not know the test CA
        self.assertEqual(p.returncode, 60, "certificate verification must fail: %s" % p.stderr)
        # The certificate served is the one configured.
        with tls_connect(self.cp.port, self.ctx) as s:
            self.assertEqual(s.getpeercert(binary_form=True), der_of(self.cert))
            self.assertIn(s.version(), ("TLSv1.2", "TLSv1.3"))

    def test_curl_expect_100_continue_over_tls(self):
        if not shutil.which("curl"):
            self.skipTest("needs curl")
        body = json.dumps({"type": "BACKUP_INSTANCE", "agentId": self.cp.default_agent, "instanceId": "tls-100",
                           "params": {}})
        p = self.curl("-v", "--cacert", self.pki.ca, "-H", "Authorization: Bearer " + ADMIN_TOKEN,
                      "-H", "Expect: 100-continue", "-H", "Content-Type: application/json", "-d", body,
                      self.cp.url + "/v1/jobs")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("< HTTP/1.1 100 Continue", p.stderr)
        self.assertEqual(json.loads(p.stdout)["instanceId"], "tls-100")

    def test_a_slow_reader_gets_a_large_answer_whole(self):
        """A 6 MB answer (100 jobs with 60 KB params: more than the kernel's 4 MB send buffer) to a
        client with a tiny receive buffer that reads nothing for a while: the front's TLS writes
        wait (SSL_ERROR_WANT_WRITE, seen with strace) and go on from the same bytes, as OpenSSL
        requires, when the client reads."""
        for _ in range(100):
            self.cp.create_job(instance="tls-big", params={"pad": "x" * 60000})
        get = (b"GET /v1/jobs?limit=100 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
               % ADMIN_TOKEN.encode())
        fast = tls_request(self.cp.port, self.ctx, get)
        self.assertEqual(fast[0], 200)
        self.assertGreater(len(fast[1]), 100 * 60000)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(30)
        raw.connect(("127.0.0.1", self.cp.port))
        with self.ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(get)
            time.sleep(1.5)  # the front's socket buffer fills up meanwhile
            data = read_answer(s)
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: %d\r\n" % len(body), head)
        self.assertEqual(body, fast[1])

    def test_websocket_stream_over_tls(self):
        url = self.cp.url.replace("https://", "wss://") + "/v1/ws?token=" + ADMIN_TOKEN
        w = WebSocket(url, ssl_context=self.ctx)
        self.addCleanup(w.close)
        self.assertEqual(w.recv_json()["type"], "hello")
        job = self.cp.create_job(instance="tls-ws")
        for _ in range(200):
            m = w.recv_json()
            if json.dumps(m).find(job["jobId"]) >= 0:
                break
        else:
            self.fail("the new job never reached the WebSocket client")

    def test_tls_1_0_and_1_1_are_refused_and_1_2_works(self):
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(self.pki.ca)
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client offers TLS 1.1 at all
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with self.assertRaises(ssl.SSLError) as e:
            tls_connect(self.cp.port, old).close()
        self.assertIn("PROTOCOL_VERSION", str(e.exception).upper().replace(" ", "_"))
        v12 = self.pki.context()
        v12.maximum_version = ssl.TLSVersion.TLSv1_2
        with tls_connect(self.cp.port, v12) as s:
            self.assertEqual(s.version(), "TLSv1.2")
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            self.assertEqual(read_all(s)[0], 200)

    def test_plain_http_to_the_tls_port_gets_a_clear_400(self):
        t = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.cp.port), timeout=10) as s:
            s.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, body = read_all(s, timeout=10)
        self.assertEqual(status, 400)
        self.assertIn("use https://", json.loads(body)["error"])
        self.assertLess(time.monotonic() - t, 3, "answered and closed at once, not at a deadline")

    def test_the_fronts_refusals_hold_over_tls(self):
        port = self.cp.port
        status, body = tls_request(port, self.ctx, b"GET /v1/jobs HTTP/1.1\r\nBad Name: x\r\n\r\n")
        self.assertEqual((status, json.loads(body)["error"]), (400, "malformed HTTP request: malformed header name"))
        status, _ = tls_request(port, self.ctx, b"GET /v1/jobs HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n")
        self.assertEqual(status, 431)
        status, _ = tls_request(port, self.ctx, b"POST /v1/jobs HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
        self.assertEqual(status, 401)
        status, body = tls_request(port, self.ctx, b"GET /v1/jobs HTTP/1.1\r\nX-JV-Front: x\r\n\r\n")
        self.assertEqual(status, 400)

    def test_the_fuzz_corpus_gets_the_same_clear_answers_over_tls(self):
        agent_token = AGENT_TOKENS[self.cp.default_agent].encode()
        for name, raw, expected in REQUESTS:
            with self.subTest(name):
                raw = raw.replace(b"{ADMIN}", ADMIN_TOKEN.encode()).replace(b"{AGENT}", agent_token)
                raw = raw.replace(b"agent-1", self.cp.default_agent.encode())
                with tls_connect(self.cp.port, self.ctx, timeout=20) as s:
                    try:
                        s.sendall(raw)
                    except OSError:
                        pass  # answered and closed before taking it all: the answer is still there
                    try:
                        data = read_answer(s, 20)
                    except OSError:
                        data = b""
                self.assertTrue(data, "%s: no answer" % name)
                status, body = parse_answer(data)
                self.assertIn(status, expected, "%s: %r" % (name, data[:300]))
                if status >= 400:
                    self.assertTrue(json.loads(body.decode("utf-8"))["error"], name)
        self.assertIsNone(self.cp.proc.poll())

    def test_long_polls_park_over_tls_and_wake_at_once(self):
        agents = []
        for _ in range(5):
            self.cp.fresh_agents()
            agents += [self.cp.default_agent, self.cp.second_agent]
        socks = {}
        for a in agents:
            body = json.dumps({"capacity": 1, "waitSeconds": 60, "running": []}).encode()
            s = tls_connect(self.cp.port, self.ctx, timeout=30)
            s.sendall(b"POST /v1/agents/%s/poll HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (a.encode(), AGENT_TOKENS[a].encode(), len(body), body))
            socks[a] = s
        self.addCleanup(lambda: [s.close() for s in socks.values()])
        deadline = time.monotonic() + 20
        while self.parked() < len(agents):
            self.assertLess(time.monotonic(), deadline, "%d parked, not %d" % (self.parked(), len(agents)))
            time.sleep(0.05)
        socks.pop(agents[1]).close()  # a hang-up frees its slot
        job = self.cp.create_job(agent=agents[0], instance="tls-park")
        t = time.monotonic()
        with socks.pop(agents[0]) as s:
            status, body = read_all(s, timeout=5)
        took = time.monotonic() - t
        self.assertEqual(status, 200)
        self.assertEqual([a["jobId"] for a in json.loads(body)["jobs"]], [job["jobId"]])
        self.assertLess(took, 0.5, "delivered %.3f s after the job was created" % took)
        deadline = time.monotonic() + 5
        while self.parked() != len(agents) - 2:
            self.assertLess(time.monotonic(), deadline, "%d parked" % self.parked())
            time.sleep(0.05)

    def parked(self):
        r = self.cp.api("GET", "/metrics")
        return int(re.search(r"^jobvisor_long_polls_parked (\d+)$", r.raw.decode(), re.M).group(1))

    def test_unfinished_handshakes_are_dropped_at_the_head_deadline_without_blocking_others(self):
        hello = client_hello(self.ctx)
        t0 = time.monotonic()
        silent = [socket.create_connection(("127.0.0.1", self.cp.port), timeout=30) for _ in range(20)]
        halves = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", self.cp.port), timeout=30)
            s.sendall(hello[:len(hello) // 2])
            halves.append(s)
        # A handshake done, then no request: a 408 it can read, over TLS.
        idle = tls_connect(self.cp.port, self.ctx, timeout=30)
        stalled = silent + halves
        self.addCleanup(lambda: [s.close() for s in stalled + [idle]])
        slowest = 0
        while time.monotonic() - t0 < HEAD_DEADLINE - 2:
            t = time.monotonic()
            status, _ = tls_request(self.cp.port, self.ctx, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(status, 200)
            slowest = max(slowest, time.monotonic() - t)
            time.sleep(0.2)
        self.assertLess(slowest, 2.0, "a TLS request took %.3f s while 40 handshakes stalled" % slowest)
        for s in stalled:
            s.settimeout(max(0.1, t0 + HEAD_DEADLINE + 5 - time.monotonic()))
            try:
                self.assertEqual(s.recv(100), b"", "a stalled handshake gets no answer, just the close")
            except ConnectionResetError:
                pass
            took = time.monotonic() - t0
            self.assertTrue(HEAD_DEADLINE - 0.5 <= took < HEAD_DEADLINE + 4, "dropped after %.1f s" % took)
        status, body = read_all(idle, timeout=5)
        self.assertEqual(status, 408)
        self.assertIn("request head not received in time", json.loads(body)["error"])


def client_hello(ctx):
    """The first flight of a real TLS client (a ClientHello), as bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


@needs_tools
class TlsStartAndReload(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="jvcp-tls-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.pki = Pki(self.tmp)

    def refused(self, *args):
        cp = ControlPlane(list(args), tmpdir=self.tmp)
        p = subprocess.run(cp.command(), capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertEqual(p.stdout, "", "nothing listened")
        return p.stderr

    def test_a_wrong_or_missing_key_refuses_to_start_with_a_clear_message(self):
        cert, _ = self.pki.server("one")
        _, other_key = self.pki.server("two")
        err = self.refused("--tls-cert", cert, "--tls-key", other_key)
        self.assertIn("--tls-key '%s' does not match the certificate in --tls-cert '%s'" % (other_key, cert), err)
        missing = os.path.join(self.tmp, "nope.key")
        err = self.refused("--tls-cert", cert, "--tls-key", missing)
        self.assertIn("cannot read --tls-key '%s': No such file or directory" % missing, err)
        err = self.refused("--tls-cert", other_key, "--tls-key", other_key)
        self.assertIn("holds no PEM certificate", err)
        os.chmod(other_key, 0o644)
        err = self.refused("--tls-cert", cert, "--tls-key", other_key)
        self.assertIn("is open to others (mode 0644)", err)
        err = self.refused("--tls-cert", cert)
        self.assertIn("--tls-cert and --tls-key go together", err)

    def sighup(self, cp, logged):
        cp.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while logged not in cp.stderr_text():
            self.assertLess(time.monotonic(), deadline, cp.stderr_text())
            time.sleep(0.05)

    def test_sighup_loads_a_renewed_certificate_and_keeps_it_when_the_files_break(self):
        cert, key = self.pki.server("live")
        first = der_of(cert)
        cp = ControlPlane(["--tls-cert", cert, "--tls-key", key], tmpdir=self.tmp)
        cp.ssl_context = self.pki.context()
        cp.start()
        self.addCleanup(cp.close)
        held = tls_connect(cp.port, cp.ssl_context)  # accepted before the reload
        self.addCleanup(held.close)
        new_cert, new_key = self.pki.server("renewed")
        second = der_of(new_cert)
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        self.sighup(cp, "SIGHUP: TLS certificate reloaded")
        with tls_connect(cp.port, cp.ssl_context) as s:
            self.assertEqual(s.getpeercert(binary_form=True), second)
            self.assertNotEqual(second, first)
        held.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(read_all(held)[0], 200, "a connection from before the reload is served")
        with open(cert, "w") as f:
            f.write("not a certificate\n")
        self.sighup(cp, "SIGHUP: keeping the current TLS certificate: --tls-cert")
        with tls_connect(cp.port, cp.ssl_context) as s:
            self.assertEqual(s.getpeercert(binary_form=True), second)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(read_all(s)[0], 200)


@needs_tools
class AgentOverTls(AgentTestCase):
    """The real agent, told only an https:// URL and tls_ca_file."""
    AGENT = "agent-1"

    def setUp(self):
        super().setUp()
        self.cp.stop()  # the fake is not used here
        self.real = start_tls_cp(self, ["--job-types", "SLEEPY"])
        with open(self.token_file, "w") as f:
            f.write(AGENT_TOKENS[self.AGENT] + "\n")

    def last_seen(self):
        agents = {a["agentId"]: a for a in self.real.api("GET", "/v1/agents").json["agents"]}
        return agents[self.AGENT].get("lastSeen")

    def test_agent_runs_a_job_end_to_end_over_tls_with_its_long_poll_parked(self):
        self.assertTrue(self.real.url.startswith("https://127.0.0.1:"))
        # Nothing but the public settings: an https:// URL and tls_ca_file.
        p = self.start_agent(URL=self.real.url, AGENT_ID=self.AGENT, TLS_CA_FILE=self.pki.ca, POLL_WAIT="25")
        deadline = time.monotonic() + 20
        while not self.last_seen():
            self.assertLess(time.monotonic(), deadline, "the agent never polled:\n" + self.log()[-3000:])
            time.sleep(0.1)
        time.sleep(0.5)  # its next poll is parked now
        t = time.monotonic()
        jid = self.real.create_job(agent=self.AGENT, instance="inst-tls", type_="SLEEPY",
                                   params={"steps": 3, "delay": 0.05})["jobId"]
        job = self.real.wait_job(jid, lambda j: j["status"] == "COMPLETED", 30, "job COMPLETED")
        took = time.monotonic() - t
        run = job["runs"][0]
        self.assertEqual(run["output"], {"steps": 3})
        self.assertGreaterEqual(run["lastSeq"], 4, "progress events and the result arrived")
        self.assertLess(took, 10, "the parked long poll was woken (poll_wait 25 s)")
        self.assertEqual(self.stop_agent(p), 0)
        self.assertNotIn("certificate", self.log().lower())


if __name__ == "__main__":
    unittest.main()
