"""Live console through the control plane: watch, stream, commands, floods.

Real agent, real jobvisor-cp, real monitors with the demo server; the
browser's part is played by a WebSocket client."""
import os
import time
import unittest

from agent_harness import AgentTestCase
from cp_harness import ADMIN_TOKEN, cp_bin
from cp_ws import WebSocket
from instance_helpers import DEMO, JOBVISOR, Instance, wait_until
from test_instance_report import FixedPortCP


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@unittest.skipUnless(JOBVISOR and DEMO and os.environ.get("JOBVISOR_CP_BIN"),
                     "needs the agent, the demo server and jobvisor-cp")
class Console(AgentTestCase):
    TOKEN = "agent-1-token-0123456789abcdef"

    def setUp(self):
        super().setUp()
        cp_bin()
        self.cp.stop()
        os.makedirs(os.path.join(self.tmp, "cp"))
        self.cp = FixedPortCP(self.TOKEN, os.path.join(self.tmp, "cp"))
        self.cp.start()
        self.insts = []
        self.ws = None

    def tearDown(self):
        if self.ws:
            self.ws.close()
        for i in self.insts:
            i.cleanup()
        super().tearDown()

    def instance(self, iid="s1"):
        inst = Instance(self, iid=iid, data_dir=self.data)
        self.insts.append(inst)
        self.assertTrue(inst.start().startswith("ok started"))
        inst.wait_state("RUNNING")
        return inst

    def connect(self):
        self.ws = WebSocket(self.cp.url.replace("http://", "ws://") + "/v1/ws",
                            headers={"Authorization": "Bearer " + ADMIN_TOKEN})
        self.assertEqual(self.ws.recv_json()["type"], "hello")
        self.assertEqual(self.ws.recv_json()["type"], "snapshot")
        return self.ws

    def watch(self, iid="s1", since=0):
        self.ws.send_json({"op": "console.watch", "agentId": "agent-1", "instanceId": iid,
                           "since": since})

    def console_until(self, pred, timeout=15):
        """Collect console messages until pred(lines, messages) holds."""
        lines, msgs = [], []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                m = self.ws.recv_json(timeout=max(0.05, end - time.monotonic()))
            except (TimeoutError, OSError):
                break
            if m.get("type") != "console":
                continue
            msgs.append(m)
            lines.extend(l["line"] for l in m.get("lines", []))
            if pred(lines, msgs):
                return lines, msgs
        self.fail("console never showed what was expected; last lines: %r" % lines[-10:])

    def command(self, line, iid="s1"):
        r = self.cp.api("POST", "/v1/agents/agent-1/instances/%s/console" % iid, {"line": line})
        self.assertEqual(r.status, 202, r)
        return r.json["commandId"]

    def test_watch_stream_command_and_answer(self):
        self.instance()
        self.start_agent()
        self.connect()
        self.watch()
        # The tail first (the monitor's kept lines: the ready line is among them).
        self.console_until(lambda lines, m: any("Done (" in l for l in lines))
        t0 = time.monotonic()
        cid = self.command("say hello-console")
        lines, msgs = self.console_until(
            lambda lines, m: any("hello-console" in l for l in lines) and
            any(x.get("result", {}).get("commandId") == cid for x in m))
        took = time.monotonic() - t0
        result = [x["result"] for x in msgs if "result" in x][0]
        self.assertEqual(result["status"], "sent")
        self.assertIn("[Server] hello-console", " ".join(lines))
        self.assertLess(took, 5.0)
        # seq numbers only go up
        seqs = [l["seq"] for m in msgs for l in m.get("lines", [])]
        self.assertEqual(seqs, sorted(seqs))
        # Bad commands are refused at the control plane.
        for bad in ({"line": ""}, {"line": "a\nb"}, {"line": 5}, {"line": "x", "extra": 1}):
            r = self.cp.api("POST", "/v1/agents/agent-1/instances/s1/console", bad)
            self.assertEqual(r.status, 400, (bad, r))
        self.assertEqual(self.cp.api("POST", "/v1/agents/nobody/instances/s1/console",
                                     {"line": "x"}).status, 404)

    def test_command_to_a_stopped_instance_says_not_running(self):
        inst = self.instance()
        self.start_agent()
        self.connect()
        self.watch()
        inst.stop()
        inst.wait_monitor_exit()
        cid = self.command("say anyone")
        _, msgs = self.console_until(lambda l, m: any(x.get("result", {}).get("commandId") == cid
                                                       for x in m))
        result = [x["result"] for x in msgs if "result" in x][0]
        self.assertEqual(result["status"], "not-running")

    def test_unwatched_consoles_send_nothing(self):
        self.instance("s1")
        s2 = self.instance("s2")
        self.start_agent()
        self.connect()
        self.watch("s1")
        self.console_until(lambda lines, m: any("Done (" in l for l in lines))
        self.assertTrue(s2.call({"op": "send", "line": "spam 5000"})["ok"])
        s2.wait_console("Spammed 5000 lines")
        self.command("say only-s1")
        lines, msgs = self.console_until(lambda lines, m: any("only-s1" in l for l in lines))
        self.assertEqual({m["instanceId"] for m in msgs}, {"s1"})
        self.assertIn("instance s1: console watched", self.log())
        self.assertNotIn("instance s2: console watched", self.log())
        # Nobody watches any more: the agent stops streaming s1 as well.
        self.ws.close()
        self.ws = None
        self.wait_log("instance s1: console no longer watched")

    def test_flood_is_capped_with_a_dropped_marker_and_bounded_memory(self):
        inst = self.instance()
        # Under AddressSanitizer freed memory sits in a quarantine (256 MiB by
        # default) and would be counted as growth; keep it small for this agent.
        saved = os.environ.get("ASAN_OPTIONS")
        os.environ["ASAN_OPTIONS"] = (saved + ":" if saved else "") + \
            "quarantine_size_mb=0:thread_local_quarantine_size_kb=0"
        try:
            agent = self.start_agent()
        finally:
            if saved is None:
                del os.environ["ASAN_OPTIONS"]
            else:
                os.environ["ASAN_OPTIONS"] = saved
        self.connect()
        self.watch()
        self.console_until(lambda lines, m: any("Done (" in l for l in lines))
        before = rss_kib(agent.pid)
        self.assertTrue(inst.call({"op": "send", "line": "spam 300000"})["ok"])
        lines, msgs = self.console_until(
            lambda lines, m: any("Spammed 300000 lines" in l for l in lines), timeout=90)
        dropped = sum(m.get("dropped", 0) for m in msgs)
        self.assertGreater(dropped, 0, "a flood of 300,000 lines went through without a drop")
        self.assertLess(len(lines), 300000)
        # Every line either arrived or was counted.
        seqs = [l["seq"] for m in msgs for l in m.get("lines", [])]
        self.assertEqual(seqs, sorted(seqs))
        after = rss_kib(agent.pid)
        self.assertLess(after - before, 32 * 1024, "agent RSS grew from %d to %d KiB" % (before, after))
        # The server and the agent are fine afterwards.
        self.command("say after-flood")
        self.console_until(lambda lines, m: any("after-flood" in l for l in lines))
        print("flood: %d lines shown, %d dropped, agent RSS %d -> %d KiB"
              % (len(lines), dropped, before, after))


if __name__ == "__main__":
    unittest.main()
