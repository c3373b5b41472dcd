"""Slow clients without a token cannot stall jobvisor-cp (issue 19, item 1).

A bounded slowloris runs on 127.0.0.1 (the same address the real agent and
the admin use): 200 sockets, a quarter of them silent and the rest sending a
request head one byte at a time, opening a new socket whenever the server
drops one. Meanwhile a real
`jobvisor agent` long-polls and runs jobs, and an admin lists jobs. Their
latency is measured before the attack (baseline) and during it; the attack
ends once they are measured (and by itself after ATTACK_SECONDS)."""
import json
import os
import selectors
import socket
import struct
import threading
import time
import unittest

from agent_harness import AgentTestCase
from cp_harness import ADMIN_TOKEN, AGENT_TOKENS, ControlPlane, http

CP_BIN = os.environ.get("JOBVISOR_CP_BIN", "")
SOCKETS = 200
ATTACK_SECONDS = 25
DRIBBLE_SECONDS = 0.5
EARLY_SECONDS = 5  # well before the server's 10 s head deadline
HEAD = (b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"X-Padding: " + b"a" * 4000 + b"\r\n\r\n")


class Slowloris:
    """SOCKETS connections dribbling HEAD; reopened when closed; stops by itself."""

    def __init__(self, port, sockets=SOCKETS, source="127.0.0.1"):
        self.port = port
        self.sockets = sockets
        self.source = source
        self.dropped_early = None
        self.opened = 0
        self.dropped = 0
        self.max_open = 0
        self.started = time.monotonic()
        self.stop_at = self.started + ATTACK_SECONDS
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _open(self, sel):
        s = socket.socket()
        s.bind((self.source, 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", self.port))
        # [bytes sent, silent]: every fourth socket never sends a byte.
        sel.register(s, selectors.EVENT_READ, [0, self.opened % 4 == 0])
        self.opened += 1
        return s

    def _run(self):
        sel = selectors.DefaultSelector()
        socks = [self._open(sel) for _ in range(self.sockets)]
        next_byte = time.monotonic()
        early = self.started + EARLY_SECONDS
        try:
            while time.monotonic() < self.stop_at:
                if self.dropped_early is None and time.monotonic() >= early:
                    self.dropped_early = self.dropped
                for key, _ in sel.select(timeout=0.05):
                    s = key.fileobj
                    try:
                        data = s.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:  # the server dropped it: come back at the next tick
                        sel.unregister(s)
                        s.close()
                        socks.remove(s)
                        self.dropped += 1
                if time.monotonic() >= next_byte:
                    next_byte += DRIBBLE_SECONDS
                    socks += [self._open(sel) for _ in range(self.sockets - len(socks))]
                    for s in socks:
                        pos = sel.get_key(s).data
                        if not pos[1] and pos[0] < len(HEAD) - 1:  # never finish the head
                            try:
                                if s.send(HEAD[pos[0]:pos[0] + 1]) == 1:
                                    pos[0] += 1
                            except OSError:
                                pass
                self.max_open = max(self.max_open, len(socks))
        finally:
            for s in socks:
                sel.unregister(s)
                s.close()
            sel.close()

    def finish(self):
        """End the attack now (once the early drop count is taken) and wait for it."""
        self.stop_at = min(self.stop_at, max(time.monotonic(), self.started + EARLY_SECONDS + 0.5))
        self.join()

    def join(self):
        self.thread.join(ATTACK_SECONDS + 10)


@unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN), "needs JOBVISOR_CP_BIN")
class SlowClientsDoNotStarveAgentsOrAdmins(AgentTestCase):
    AGENT = "agent-1"

    def setUp(self):
        super().setUp()
        self.cp.stop()  # the fake is not used here
        cp_dir = os.path.join(self.tmp, "cp")
        os.makedirs(cp_dir)
        self.real = ControlPlane(["--job-types", "SLEEPY", "--poll-interval", "1"], tmpdir=cp_dir)
        self.real.start()
        with open(self.token_file, "w") as f:
            f.write(AGENT_TOKENS[self.AGENT] + "\n")

    def tearDown(self):
        for p in self.agents:
            if p.poll() is None:
                self.stop_agent(p)
        try:
            self.real.stop()
        finally:
            super().tearDown()

    def env(self, **overrides):
        env = super().env(**overrides)
        env["JOBVISOR_URL"] = self.real.url
        env["JOBVISOR_AGENT_ID"] = self.AGENT
        return env

    def admin_list_seconds(self):
        t0 = time.monotonic()
        r = http(self.real.url + "/v1/jobs?limit=5", token=ADMIN_TOKEN, timeout=60)
        self.assertEqual(r.status, 200, r)
        return time.monotonic() - t0

    def job_seconds(self, n):
        """Create a one-step job and wait for the agent to complete it: the
        agent's parked poll is woken, the run starts, events and result post."""
        t0 = time.monotonic()
        jid = self.real.create_job(agent=self.AGENT, instance="inst-%d" % n, type_="SLEEPY",
                                   params={"steps": 1, "delay": 0})["jobId"]
        self.real.wait_job(jid, lambda j: j["status"] == "COMPLETED", 90, "job %s COMPLETED" % jid)
        return time.monotonic() - t0

    def test_slow_head_dribblers_do_not_delay_polls_or_admin_calls(self):
        attack = self.measure_under(SOCKETS, "127.0.0.1")
        self.assertGreaterEqual(attack.max_open, SOCKETS)

    def test_one_address_gets_a_bounded_share(self):
        # 600 dribblers from 127.0.0.2 (loopback too): beyond the per-address cap
        # (256 requests still arriving) the server drops them at once, while
        # the agent and the admin on 127.0.0.1 keep their latency.
        attack = self.measure_under(600, "127.0.0.2")
        self.assertGreaterEqual(attack.dropped_early, 600 - 256)
        # The operator's log names the address the drops came from (refused
        # at once, or evicted after a second), not 0.0.0.0.
        self.assertIn("(last from 127.0.0.2)", self.real.stderr_text())

    def test_deadlines_bound_the_whole_request_not_each_read(self):
        """Each socket sends a byte every half second, so no single read ever
        waits long: the head must still be complete within 10 s of the
        connection, a token holder's body within 30 s of the head, and a
        token-less request's body within the head's 10 s."""
        def open_(head_bytes):
            s = socket.create_connection(("127.0.0.1", self.real.port), timeout=60)
            if head_bytes:
                s.sendall(head_bytes)
            s.setblocking(False)
            return {"sock": s, "t0": time.monotonic(), "answer": b"", "closed": None, "sent": 0}

        body_head = ("POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000\r\n%s\r\n")
        clients = {
            "head": open_(b""),
            "body-with-token": open_((body_head % ("Authorization: Bearer %s\r\n" % ADMIN_TOKEN)).encode()),
            "body-without-token": open_((body_head % "").encode()),
        }
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and any(c["closed"] is None for c in clients.values()):
            for c in clients.values():
                if c["closed"] is not None:
                    continue
                try:
                    data = c["sock"].recv(4096)
                    if data:
                        c["answer"] += data
                    else:
                        c["closed"] = time.monotonic() - c["t0"]
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    c["closed"] = time.monotonic() - c["t0"]
                    continue
                try:  # the head client spells out HEAD (never reaching its end), the others pad their body
                    c["sock"].send(HEAD[c["sent"]:c["sent"] + 1] if c is clients["head"] else b" ")
                    c["sent"] += 1
                except OSError:
                    pass
            time.sleep(0.5)
        for c in clients.values():
            c["sock"].close()
        for name, lo, hi in (("head", 9.5, 13), ("body-with-token", 29.5, 33), ("body-without-token", 9.5, 13)):
            c = clients[name]
            self.assertIsNotNone(c["closed"], "%s: still open after 45 s" % name)
            self.assertTrue(lo <= c["closed"] <= hi, "%s: closed after %.1f s" % (name, c["closed"]))
            self.assertTrue(c["answer"].startswith(b"HTTP/1.1 408 "), (name, c["answer"][:200]))
            self.assertIn(b"not received in time", c["answer"])
        self.assertLess(self.admin_list_seconds(), 2.0)

    def test_clients_that_reset_during_a_long_poll_cost_no_cpu(self):
        def cpu_seconds():
            with open("/proc/%d/stat" % self.real.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        body = json.dumps({"capacity": 1, "waitSeconds": 10}).encode()
        head = ("POST /v1/agents/%s/poll HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (self.AGENT, AGENT_TOKENS[self.AGENT], len(body))).encode()
        socks = [socket.create_connection(("127.0.0.1", self.real.port), timeout=10) for _ in range(5)]
        for s in socks:
            s.sendall(head + body)
        time.sleep(1)  # the polls are parked in civetweb
        for s in socks:  # abortive close: RST, the kind of hang-up epoll keeps reporting
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        t0 = cpu_seconds()
        time.sleep(4)
        used = cpu_seconds() - t0
        self.assertLess(used, 1.0, "jobvisor-cp burnt %.2f s of CPU in 4 s with nothing to do" % used)
        self.assertLess(self.admin_list_seconds(), 2.0)

    def measure_under(self, sockets, source):
        self.start_agent(POLL_WAIT="20", POLL_INTERVAL="1", REQUEST_TIMEOUT="60")
        self.job_seconds(0)  # warm up: the agent has polled and runs jobs
        base_jobs = max(self.job_seconds(n) for n in range(1, 4))
        base_list = max(self.admin_list_seconds() for _ in range(5))

        attack = Slowloris(self.real.port, sockets, source).start()
        time.sleep(3)  # every socket is open and dribbling
        try:
            during_list = [self.admin_list_seconds() for _ in range(5)]
            during_jobs = [self.job_seconds(n) for n in range(10, 13)]
            during_list += [self.admin_list_seconds() for _ in range(5)]
            still_attacking = time.monotonic() < attack.stop_at
        finally:
            attack.finish()  # measured: no need to sit out the rest of the attack
        # Generous: ten times the baseline, and never less than 1.5 s of slack for a loaded machine.
        list_bound = max(10 * base_list, 1.5)
        job_bound = max(3 * base_jobs, base_jobs + 1.5)
        self.assertLess(max(during_list), list_bound,
                        "admin list under attack %s vs baseline %.3f s" % (during_list, base_list))
        self.assertLess(max(during_jobs), job_bound,
                        "jobs under attack %s vs baseline %.3f s" % (during_jobs, base_jobs))
        self.assertTrue(still_attacking, "the measurements outlasted the attack; nothing was shown")
        # The attack is over: the control plane is fine and answers at once.
        self.assertLess(self.admin_list_seconds(), list_bound)
        print("baseline list %.3f s jobs %.3f s; under attack list max %.3f s jobs max %.3f s; "
              "slow sockets opened %d, dropped by the server %d"
              % (base_list, base_jobs, max(during_list), max(during_jobs), attack.opened, attack.dropped))
        return attack


if __name__ == "__main__":
    unittest.main()
