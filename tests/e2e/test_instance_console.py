"""Live console through the control plane: watch, stream, commands, floods.

Real agent, real jobvisor-cp, real monitors with the demo server; the
browser's part is played by a WebSocket client."""
import json
import os
import time
import unittest

from agent_harness import AgentTestCase
from cp_harness import ADMIN_TOKEN, cp_bin
from cp_ws import WebSocket
from drop_proxy import DropProxy
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
        self.proxy = None

    def tearDown(self):
        if self.ws:
            self.ws.close()
        if self.proxy:
            self.proxy.stop()
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

    def command(self, line, iid="s1", **more):
        r = self.cp.api("POST", "/v1/agents/agent-1/instances/%s/console" % iid, {"line": line, **more})
        self.assertEqual(r.status, 202, r)
        return r.json["commandId"]

    def results(self, cid, wait_after=0.0, timeout=20):
        """Every result message for cid: waits for the first, then wait_after seconds more."""
        found = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                m = self.ws.recv_json(timeout=max(0.05, end - time.monotonic()))
            except (TimeoutError, OSError):
                break
            if m.get("type") == "console" and m.get("result", {}).get("commandId") == cid:
                found.append(m["result"])
                if len(found) == 1:
                    end = time.monotonic() + wait_after
        return found

    def through_proxy(self, decide=None, hold=None):
        self.proxy = DropProxy(self.cp.fixed, decide=decide, hold=hold)
        return self.start_agent(URL=self.proxy.url, POLL_WAIT="20")

    def test_command_whose_poll_answer_is_lost_reaches_the_server_once(self):
        inst = self.instance()
        lost = []

        def decide(method, path, body, status, answer):
            # Lose the first poll answer that hands out a console command: the
            # control plane gave it away, the agent never sees it.
            if path.endswith("/poll") and not lost and status == 200 and \
                    json.loads(answer).get("consoleCommands"):
                lost.append(answer)
                return "drop"
            return "pass"

        self.through_proxy(decide)
        self.connect()
        cid = self.command("say lost-once-7f3a")
        found = self.results(cid, wait_after=5.0, timeout=30)
        self.assertEqual(len(lost), 1, "no poll answer with the command was dropped")
        self.assertIn(cid, lost[0].decode())
        self.assertEqual([r["status"] for r in found], ["sent"], found)
        inst.wait_console("[Server] lost-once-7f3a")
        self.assertEqual(inst.console().count("[Server] lost-once-7f3a"), 1)

    def test_a_command_offered_again_is_not_run_twice(self):
        inst = self.instance()
        first_result = []

        def hold(path, body):
            # The agent's console POSTs carrying results fail (502) for 5 s after
            # the first: the control plane hears nothing and offers the command again.
            if path.endswith("/console") and b'"commandId"' in body:
                first_result.append(time.monotonic())
                return first_result[-1] - first_result[0] < 5.0
            return False

        self.through_proxy(hold=hold)
        self.connect()
        cid = self.command("say once-only-91c2")
        found = self.results(cid, wait_after=4.0, timeout=40)
        self.assertEqual([r["status"] for r in found], ["sent"], found)
        self.assertTrue(self.proxy.held, "no result was held back")
        self.wait_log("console command %s offered again; it was run already (sent)" % cid)
        self.assertEqual(inst.console().count("[Server] once-only-91c2"), 1)

    def test_an_agent_killed_before_its_result_got_out_does_not_run_the_command_again(self):
        self.kill_agent_holding_a_result(cut_short=False)

    def test_a_command_cut_short_by_a_kill_is_answered_rejected_not_run_again(self):
        self.kill_agent_holding_a_result(cut_short=True)

    def kill_agent_holding_a_result(self, cut_short):
        inst = self.instance()
        self.proxy = DropProxy(self.cp.fixed,
                               hold=lambda path, body: path.endswith("/console") and b'"commandId"' in body)
        agent = self.start_agent(URL=self.proxy.url, POLL_WAIT="20")
        self.connect()
        cid = self.command("say survives-kill-5b7c")
        inst.wait_console("[Server] survives-kill-5b7c")
        wait_until(lambda: self.proxy.held, 10, what="the result held back")
        agent.kill()  # SIGKILL: the result never reached the control plane
        agent.wait(10)
        journal = os.path.join(self.data, "runs", ".console-commands")
        with open(journal) as f:
            kept = f.readlines()
        self.assertEqual([json.loads(l)["status"] for l in kept if cid in l], ["sending", "sent"])
        if cut_short:
            # As if the kill came between "sending" reaching the disk and the
            # monitor's answer: the agent cannot know whether the server got it.
            with open(journal, "w") as f:
                f.writelines(l for l in kept if not (cid in l and '"sent"' in l))
        # A new agent, straight to the control plane, which offers the command again.
        self.start_agent(POLL_WAIT="20")
        found = self.results(cid, wait_after=4.0, timeout=30)
        want = "rejected" if cut_short else "sent"
        self.assertEqual([r["status"] for r in found], [want], found)
        self.wait_log("console command %s offered again; it was run already (%s)" % (cid, want))
        if cut_short:
            self.assertIn("may or may not have reached it", found[0]["error"])
            self.wait_log("console commands: 1 known from before this start (1 cut short by it)")
        self.assertEqual(inst.console().count("[Server] survives-kill-5b7c"), 1)

    def test_a_result_sent_again_is_pushed_once(self):
        inst = self.instance()
        lost = []

        def decide(method, path, body, status, answer):
            # The control plane takes the result, the agent never hears the 200.
            if path.endswith("/console") and b'"commandId"' in body and not lost:
                lost.append(body)
                return "drop"
            return "pass"

        self.through_proxy(decide)
        self.connect()
        cid = self.command("say pushed-once-4d1e")
        found = self.results(cid, wait_after=4.0, timeout=30)
        self.assertEqual(len(lost), 1)
        self.assertEqual([r["status"] for r in found], ["sent"], found)
        self.assertEqual(inst.console().count("[Server] pushed-once-4d1e"), 1)

    def test_a_command_nobody_picks_up_expires(self):
        inst = self.instance()
        self.connect()
        for bad in (0, 301, 1.5, "5", None):
            r = self.cp.api("POST", "/v1/agents/agent-1/instances/s1/console",
                            {"line": "x", "timeoutSeconds": bad})
            self.assertEqual(r.status, 400, (bad, r))
        t0 = time.monotonic()
        cid = self.command("say too-late-e2b0", timeoutSeconds=1)  # no agent runs
        found = self.results(cid, wait_after=1.0, timeout=10)
        took = time.monotonic() - t0
        self.assertEqual([r["status"] for r in found], ["expired"], found)
        self.assertIn("did not ask for it", found[0]["error"])
        self.assertGreaterEqual(took, 1.0)
        self.assertLess(took, 5.0)
        # The agent that comes afterwards never runs it.
        self.start_agent()
        cid2 = self.command("say in-time-e2b0")
        self.assertEqual([r["status"] for r in self.results(cid2)], ["sent"])
        inst.wait_console("[Server] in-time-e2b0")
        self.assertNotIn("too-late-e2b0", inst.console())

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

    def test_a_watcher_gets_the_lines_after_its_since_and_no_others(self):
        self.instance()
        self.start_agent()
        self.connect()
        self.watch()
        # The control plane's kept tail: lines numbered by the monitor.
        self.command("say kept-a")
        self.command("say kept-b")
        _, msgs = self.console_until(lambda lines, m: any("kept-b" in l for l in lines))
        seen = {l["seq"]: l["line"] for m in msgs for l in m.get("lines", [])}
        b = [q for q, l in seen.items() if "kept-b" in l][0]
        a = [q for q, l in seen.items() if "kept-a" in l][0]
        self.ws.close()
        # A new watcher with since=a gets exactly the kept lines after a, first.
        self.connect()
        self.watch(since=a)
        first = self.console_until(lambda lines, m: True)[1][0]
        self.assertTrue(first.get("tail"), first)
        self.assertEqual([l["seq"] for l in first["lines"]], [q for q in sorted(seen) if q > a])
        self.assertIn("kept-b", first["lines"][-1]["line"])
        self.ws.close()
        # The control plane restarts and keeps nothing; a watcher that has
        # everything up to b gets what the monitor printed after b, nothing older.
        self.cp.stop()
        self.cp.start()
        wait_until(lambda: "instance s1: console no longer watched" in self.log(), 20,
                   what="the agent stopped streaming for the new control plane")
        self.connect()
        self.watch(since=b)
        self.command("say after-restart")
        lines, msgs = self.console_until(lambda lines, m: any("after-restart" in l for l in lines))
        got = [l["seq"] for m in msgs for l in m.get("lines", [])]
        self.assertTrue(got and min(got) > b, (b, got, lines))
        self.assertFalse(any("kept-" in l for l in lines), lines)

    def test_a_watch_made_while_no_poll_waits_reaches_a_long_polling_agent_at_once(self):
        self.instance()
        self.connect()
        self.watch()  # before the agent's first poll: no long poll to wake
        t0 = time.monotonic()
        self.start_agent(POLL_WAIT="20")
        self.console_until(lambda lines, m: any("Done (" in l for l in lines), timeout=30)
        took = time.monotonic() - t0
        # The agent asks for 20 s long polls; the watch must not wait for the first one to end
        # (10 s leaves room for a slow agent start under a sanitizer on a busy machine).
        self.assertLess(took, 10.0, "the console started streaming %.1f s after the agent" % took)

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
