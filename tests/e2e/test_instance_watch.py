"""The agent watches every instance monitor (issue 19 item 2).

A real agent (against FakeCP, which does not know instance reports: the
agent must turn them off after one 404 and go on watching) and a real monitor
with the demo server in the agent's data dir. The monitor is killed with
SIGKILL as the OOM killer would; the agent must notice at once, adopt the
running server with a fresh monitor, keep its restart policy in force, and
the server must never block on console output."""
import os
import re
import signal
import socket
import time
import unittest

from agent_harness import AgentTestCase
from instance_helpers import DEMO, JOBVISOR, Instance, default_spec, proc_alive, wait_until


def console_write(inst, line):
    """Type a line on the server's stdin FIFO directly (no monitor needed)."""
    fd = os.open(os.path.join(inst.jv, "console.in"), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def server_port(inst):
    m = re.findall(r"Starting game server on 127\.0\.0\.1:(\d+)", inst.console())
    return int(m[-1]) if m else None


def server_answers(port, timeout=2.0):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4096)
    except OSError:
        return b""


def monitor_of(inst):
    """pid of the live monitor according to state.json, or None."""
    st = inst.state() or {}
    pid = st.get("monitorPid")
    return pid if pid and proc_alive(pid) else None


@unittest.skipUnless(JOBVISOR and DEMO, "needs JOBVISOR_BIN and JV_DEMO_SERVER_BIN")
class MonitorWatch(AgentTestCase):
    def setUp(self):
        super().setUp()
        self.inst = None

    def tearDown(self):
        if self.inst:
            self.inst.cleanup()
        super().tearDown()

    def start_instance(self, **spec):
        self.inst = Instance(self, data_dir=self.data,
                             spec=default_spec(**spec) if spec else None)
        self.assertTrue(self.inst.start().startswith("ok started"))
        return self.inst.wait_state("RUNNING")

    def kill_monitor(self):
        mon = self.inst.monitors[0]
        mon.send_signal(signal.SIGKILL)
        mon.wait(10)

    def test_dead_monitor_is_replaced_and_a_later_crash_is_restarted(self):
        st = self.start_instance(restart={"policy": "on-failure", "backoffSeconds": 0.1})
        agent = self.start_agent()
        self.wait_log("instance s1: RUNNING")
        pid, old_monitor = st["pid"], st["monitorPid"]
        self.kill_monitor()
        t0 = time.monotonic()
        # Adopted by a new monitor within seconds (the socket closing is the signal).
        wait_until(lambda: monitor_of(self.inst) not in (None, old_monitor), 5,
                   what="a new monitor")
        noticed = time.monotonic() - t0
        self.assertLess(noticed, 3.0)
        now = self.inst.status()
        self.assertEqual(now["pid"], pid)
        self.assertTrue(now["adopted"])
        self.wait_log("starting a monitor to adopt it")
        # The restart policy is in force again: a crash is restarted.
        console_write(self.inst, "crash")
        st = wait_until(lambda: (lambda s: s if s and s.get("state") == "RUNNING" and
                                 s.get("pid") not in (None, pid) else None)(self.inst.state()),
                        20, what="the crashed server restarted")
        self.assertTrue(proc_alive(st["pid"]))
        self.assertEqual(st["restarts"], 1)
        self.assertFalse(proc_alive(pid))
        # FakeCP has no instance endpoints: one 404, reporting off, said once.
        self.wait_log("does not know instance reports (HTTP 404)")
        self.assertEqual(self.log().count("does not know instance reports"), 1)
        self.assertIsNone(agent.poll())

    def test_monitor_and_server_gone_while_agent_paused_server_started_again(self):
        st = self.start_instance(restart={"policy": "on-failure", "backoffSeconds": 0.1})
        agent = self.start_agent()
        self.wait_log("instance s1: RUNNING")
        pid = st["pid"]
        # Both die before the agent can look: the agent finds state.json
        # saying RUNNING, no monitor and no server, and applies the policy.
        agent.send_signal(signal.SIGSTOP)
        try:
            self.kill_monitor()
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not proc_alive(pid), 5, what="server gone")
        finally:
            agent.send_signal(signal.SIGCONT)
        st = wait_until(lambda: (lambda s: s if s and s.get("state") == "RUNNING" and
                                 s.get("pid") not in (None, pid) else None)(self.inst.state()),
                        20, what="the server started again")
        self.assertTrue(proc_alive(st["pid"]))
        self.wait_log("starting it again (restart policy on-failure)")

    def test_policy_never_leaves_a_dead_server_alone(self):
        st = self.start_instance(restart={"policy": "never"})
        agent = self.start_agent()
        self.wait_log("instance s1: RUNNING")
        agent.send_signal(signal.SIGSTOP)
        try:
            self.kill_monitor()
            os.kill(st["pid"], signal.SIGKILL)
            wait_until(lambda: not proc_alive(st["pid"]), 5, what="server gone")
        finally:
            agent.send_signal(signal.SIGCONT)
        self.wait_log("instance s1: CRASHED")
        time.sleep(1.0)  # it must not start one (nothing to wait for: absence)
        self.assertIsNone(monitor_of(self.inst))
        self.assertEqual((self.inst.state() or {}).get("pid"), st["pid"])

    def test_console_flood_after_the_monitor_died_never_blocks_the_server(self):
        self.start_instance()
        self.start_agent()
        self.wait_log("instance s1: RUNNING")
        port = wait_until(lambda: server_port(self.inst), 10, what="the server's port")
        self.assertTrue(server_answers(port))
        self.kill_monitor()
        # 160,000 lines of ~71 bytes: more than 10 MiB, ten times the FIFO.
        console_write(self.inst, "spam 160000")
        # The new monitor drains the console: the server finishes the flood
        # and goes on answering its game port.
        wait_until(lambda: "Spammed 160000 lines" in self.inst.console() or
                   "Spammed 160000 lines" in self.inst.console("console.log.1"),
                   60, what="the end of the flood in the console log")
        answer = server_answers(port)
        self.assertTrue(answer, "the server does not answer its game port after the flood")
        self.assertTrue(self.inst.status()["adopted"])
        total = sum(os.path.getsize(os.path.join(self.inst.logs, f))
                    for f in os.listdir(self.inst.logs) if f.startswith("console.log"))
        self.assertGreater(total, 10 * 1024 * 1024)


if __name__ == "__main__":
    unittest.main()
