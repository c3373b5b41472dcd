"""Instance state reaches the control plane: durable, exactly once, in order.

The real agent, the real jobvisor-cp and a real monitor with the demo
server. The control plane listens on a fixed loopback port so it can be
stopped, have its database deleted, and come back where the agent looks."""
import json
import os
import signal
import socket
import sys
import time
import unittest

from agent_harness import AgentTestCase
from cp_harness import ADMIN_TOKEN, ControlPlane, cp_bin
from cp_ws import WebSocket
from instance_helpers import DEMO, JOBVISOR, Instance, default_spec, proc_alive, wait_until

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_cp_openapi import load as load_openapi, validate  # noqa: E402


def schema_errors(name, value):
    return validate(load_openapi(), {"$ref": "#/components/schemas/" + name}, value)


class FixedPortCP(ControlPlane):
    def __init__(self, token, tmpdir):
        super().__init__(tmpdir=tmpdir, agents={"agent-1": token})
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.fixed = s.getsockname()[1]
        s.close()

    def command(self, listen=None):
        return super().command("127.0.0.1:%d" % self.fixed)

    def wipe_database(self):
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(self.db + suffix)
            except FileNotFoundError:
                pass


@unittest.skipUnless(JOBVISOR and DEMO and os.environ.get("JOBVISOR_CP_BIN"),
                     "needs the agent, the demo server and jobvisor-cp")
class InstanceReports(AgentTestCase):
    TOKEN = "agent-1-token-0123456789abcdef"

    def setUp(self):
        super().setUp()
        cp_bin()
        self.cp.stop()  # the fake one: this test talks to the real control plane
        os.makedirs(os.path.join(self.tmp, "cp"))
        self.cp = FixedPortCP(self.TOKEN, os.path.join(self.tmp, "cp"))
        self.cp.start()
        self.inst = None

    def tearDown(self):
        if self.inst:
            self.inst.cleanup()
        super().tearDown()

    def instance(self, **spec):
        self.inst = Instance(self, data_dir=self.data, spec=default_spec(**spec) if spec else None)
        self.assertTrue(self.inst.start().startswith("ok started"))
        return self.inst.wait_state("RUNNING")

    def cp_instance(self):
        r = self.cp.api("GET", "/v1/agents/agent-1/instances/s1")
        return r.json if r.status == 200 else None

    def history(self):
        inst = self.cp_instance()
        return inst["history"] if inst else []

    def states(self):
        return [(e["seq"], e["state"]) for e in self.history() if e.get("kind") == "state"]

    def test_crash_is_visible_on_the_websocket_within_one_second(self):
        st = self.instance(restart={"policy": "on-failure", "backoffSeconds": 2})
        self.start_agent()
        wait_until(lambda: (self.cp_instance() or {}).get("state") == "RUNNING", 15,
                   what="the instance RUNNING at the control plane")
        ws = WebSocket(self.cp.url.replace("http://", "ws://") + "/v1/ws",
                       headers={"Authorization": "Bearer " + ADMIN_TOKEN})
        try:
            hello = ws.recv_json()
            snap = ws.recv_json()
            self.assertEqual(hello["type"], "hello")
            self.assertEqual([(i["instanceId"], i["state"]) for i in snap["instances"]],
                             [("s1", "RUNNING")])
            os.kill(st["pid"], signal.SIGKILL)
            t0 = time.monotonic()
            seen = None
            while time.monotonic() - t0 < 5:
                m = ws.recv_json(timeout=5)
                if m.get("type") == "instance" and (m.get("instanceEvent") or {}).get("state") == "CRASHED":
                    seen = m
                    break
            took = time.monotonic() - t0
        finally:
            ws.close()
        print("crash -> WebSocket: %.3f s" % took)
        self.assertIsNotNone(seen, "no CRASHED instance message")
        self.assertEqual(schema_errors("StreamMessage", seen), [])
        self.assertEqual(schema_errors("StreamMessage", snap), [])
        self.assertLessEqual(took, 1.0, "crash took %.3fs to reach the WebSocket" % took)
        self.assertEqual(seen["instance"]["agentId"], "agent-1")
        self.assertEqual(seen["instanceEvent"]["lastExit"]["signal"], "SIGKILL")
        self.assertTrue(seen["instanceEvent"]["restarting"])
        listed = self.cp.api("GET", "/v1/instances?agentId=agent-1").json["instances"]
        self.assertEqual(len(listed), 1)
        self.assertIn(listed[0]["state"], ("CRASHED", "BACKOFF", "STARTING", "RUNNING"))

    def test_backoff_carries_its_delay_and_the_crash_loop_breaker_its_flag(self):
        # backoffSeconds 1.5: the monitor waits 1.5 s * (0.8..1.2) before the first
        # restart, 3 s * (0.8..1.2) before the second; the third crash trips the breaker.
        self.instance(restart={"policy": "always", "maxRestarts": 2, "windowSeconds": 60,
                               "backoffSeconds": 1.5})
        self.start_agent()
        wait_until(lambda: (self.cp_instance() or {}).get("state") == "RUNNING", 15,
                   what="the instance RUNNING at the control plane")
        ws = WebSocket(self.cp.url.replace("http://", "ws://") + "/v1/ws",
                       headers={"Authorization": "Bearer " + ADMIN_TOKEN})
        events = []
        try:
            ws.recv_json()  # hello
            ws.recv_json()  # instances snapshot
            for _ in range(3):
                pid = wait_until(lambda: (lambda s: s["pid"] if s and s["state"] == "RUNNING"
                                          else None)(self.inst.state()), 20, what="RUNNING")
                os.kill(pid, signal.SIGKILL)
                t0 = time.monotonic()
                while time.monotonic() - t0 < 15:
                    m = ws.recv_json(timeout=15)
                    ev = m.get("instanceEvent") or {}
                    if m.get("type") != "instance" or not ev:
                        continue
                    self.assertEqual(schema_errors("StreamMessage", m), [])
                    events.append(ev)
                    if ev.get("state") in ("BACKOFF", "CRASHED") and \
                            (ev.get("state") == "BACKOFF" or ev.get("crashLoop")):
                        break
        finally:
            ws.close()
        backoffs = [e for e in events if e["state"] == "BACKOFF"]
        self.assertEqual(len(backoffs), 2, events)
        d1, d2 = backoffs[0]["restartInSeconds"], backoffs[1]["restartInSeconds"]
        self.assertTrue(1.5 * 0.8 - 0.001 <= d1 <= 1.5 * 1.2 + 0.001, d1)
        self.assertTrue(3.0 * 0.8 - 0.001 <= d2 <= 3.0 * 1.2 + 0.001, d2)
        # The CRASHED said before each BACKOFF carries the same delay.
        crashed = [e for e in events if e["state"] == "CRASHED"]
        self.assertEqual([c.get("restarting", False) for c in crashed], [True, True, False], crashed)
        self.assertEqual([c.get("restartInSeconds") for c in crashed[:2]], [d1, d2])
        self.assertEqual([c["crashLoop"] for c in crashed], [False, False, True])
        self.assertNotIn("restartInSeconds", crashed[2])
        self.assertIn("crash loop", crashed[2]["message"])
        inst = self.cp_instance()
        self.assertEqual(inst["state"], "CRASHED")
        self.assertTrue(inst["crashLoop"])

    def test_state_changes_exactly_once_across_an_outage_and_agent_kill_9(self):
        st = self.instance(restart={"policy": "on-failure", "backoffSeconds": 0.2})
        agent = self.start_agent()
        wait_until(lambda: self.states() == [(1, "RUNNING")], 15, what="RUNNING reported")
        self.cp.stop()
        # While the control plane is down: a crash and the automatic restart.
        os.kill(st["pid"], signal.SIGKILL)
        new = wait_until(lambda: (lambda s: s if s and s["state"] == "RUNNING" and
                                  s["pid"] != st["pid"] else None)(self.inst.state()),
                         20, what="the restart")
        self.wait_log("instance s1: RUNNING (was STARTING)")
        spool = os.path.join(self.data, "runs", ".instances", "s1", "events.jsonl")
        with open(spool) as f:
            pending = [l for l in f if l.strip()]
        self.assertEqual(len(pending), 4, pending)  # CRASHED, BACKOFF, STARTING, RUNNING
        agent.kill()
        agent.wait(10)
        # A new agent finds the same instance in the same state: nothing new to say.
        agent = self.start_agent()
        self.wait_log("4 state events from before the restart to deliver")
        self.cp.start()
        want = [(1, "RUNNING"), (2, "CRASHED"), (3, "BACKOFF"), (4, "STARTING"), (5, "RUNNING")]
        wait_until(lambda: self.states() == want, 20, what="the events after the outage")
        wait_until(lambda: os.path.getsize(spool) == 0, 10, what="the spool emptied")
        time.sleep(0.5)
        self.assertEqual(self.states(), want)
        inst = self.cp_instance()
        self.assertEqual(inst["state"], "RUNNING")
        self.assertEqual(inst["pid"], new["pid"])
        self.assertEqual(inst["restarts"], 1)
        self.assertEqual(inst["lastSeq"], 5)

    def test_an_agent_killed_before_it_wrote_last_json_reports_each_state_once(self):
        # The agent makes a state event durable in the stream, then rewrites
        # last.json. A kill -9 between the two leaves exactly this on disk:
        # RUNNING (seq 5) pending in events.jsonl, last.json still at seq 4.
        st = self.instance(restart={"policy": "on-failure", "backoffSeconds": 0.2})
        agent = self.start_agent()
        wait_until(lambda: self.states() == [(1, "RUNNING")], 15, what="RUNNING reported")
        self.cp.stop()
        os.kill(st["pid"], signal.SIGKILL)
        stream = os.path.join(self.data, "runs", ".instances", "s1")

        def pending():
            with open(os.path.join(stream, "events.jsonl")) as f:
                return [json.loads(line) for line in f if line.strip()]
        wait_until(lambda: len(pending()) == 4, 20, what="CRASHED, BACKOFF, STARTING, RUNNING spooled")
        agent.kill()
        agent.wait(10)
        events = pending()
        self.assertEqual([(e["seq"], e["state"]) for e in events],
                         [(2, "CRASHED"), (3, "BACKOFF"), (4, "STARTING"), (5, "RUNNING")])
        tmp = os.path.join(stream, "last.json.tmp")
        with open(tmp, "w") as f:
            json.dump(events[2], f)
        os.rename(tmp, os.path.join(stream, "last.json"))
        self.start_agent()
        self.wait_log("4 state events from before the restart to deliver")
        self.cp.start()
        t0 = time.monotonic()
        want = [(1, "RUNNING"), (2, "CRASHED"), (3, "BACKOFF"), (4, "STARTING"), (5, "RUNNING")]
        wait_until(lambda: self.states() == want, 20, what="the events after the outage")
        took = time.monotonic() - t0
        # Backoff max is 1 s here: delivery resumes within a few retries of the return.
        self.assertLess(took, 5.0, "the events took %.1fs after the control plane came back" % took)
        time.sleep(1.0)  # a second RUNNING would be seq 6
        self.assertEqual(self.states(), want)
        self.assertEqual(self.cp_instance()["lastSeq"], 5)
        self.assertIn("instance s1: its last state is RUNNING (seq 5) from the event stream", self.log())
        with open(os.path.join(stream, "last.json")) as f:
            self.assertEqual(json.load(f)["seq"], 5)

    def test_snapshot_brings_back_a_control_plane_that_lost_its_database(self):
        self.instance()
        self.start_agent()
        wait_until(lambda: (self.cp_instance() or {}).get("state") == "RUNNING", 15,
                   what="RUNNING reported")
        self.cp.stop()
        self.cp.wipe_database()
        self.cp.start()
        self.assertIsNone(self.cp_instance())
        got = wait_until(self.cp_instance, 20, what="the instance back after the snapshot")
        self.assertEqual(got["state"], "RUNNING")
        self.assertEqual(got["pid"], self.inst.status()["pid"])
        # The next change is stored in order after what the snapshot said.
        self.assertTrue(self.inst.call({"op": "stop"}, timeout=30)["ok"])
        wait_until(lambda: (self.cp_instance() or {}).get("state") == "STOPPED", 20,
                   what="STOPPED after the snapshot")
        hist = self.states()
        self.assertEqual([s for _, s in hist], ["STOPPING", "STOPPED"])
        self.assertEqual([q for q, _ in hist], [2, 3])

    def test_instances_appear_and_disappear(self):
        self.instance()
        self.start_agent()
        wait_until(lambda: [i["instanceId"] for i in
                            self.cp.api("GET", "/v1/instances").json["instances"]] == ["s1"],
                   15, what="s1 listed")
        other = os.path.join(self.data, "instances", "fresh-1")
        os.makedirs(other)
        with open(os.path.join(other, "instance.json"), "w") as f:
            f.write("{}")
        wait_until(lambda: sorted(i["instanceId"] for i in
                                  self.cp.api("GET", "/v1/instances").json["instances"])
                   == ["fresh-1", "s1"], 10, what="fresh-1 listed")
        fresh = self.cp.api("GET", "/v1/agents/agent-1/instances/fresh-1").json
        self.assertEqual(fresh["state"], "STOPPED")
        self.assertEqual(schema_errors("Instance", fresh), [])
        self.assertEqual(schema_errors("Instance", self.cp_instance()), [])
        self.assertEqual(schema_errors("InstanceList", self.cp.api("GET", "/v1/instances").json), [])
        os.unlink(os.path.join(other, "instance.json"))
        os.rmdir(other)
        wait_until(lambda: [i["instanceId"] for i in
                            self.cp.api("GET", "/v1/instances").json["instances"]] == ["s1"],
                   10, what="fresh-1 gone")
        self.assertEqual(self.cp.api("GET", "/v1/agents/agent-1/instances/fresh-1").status, 404)
        self.assertEqual(self.cp.api("GET", "/v1/instances?state=RUNNING").json["instances"][0]
                         ["instanceId"], "s1")
        self.assertEqual(self.cp.api("GET", "/v1/instances?state=BOGUS").status, 400)


if __name__ == "__main__":
    unittest.main()
