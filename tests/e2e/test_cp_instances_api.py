"""The instance endpoints of jobvisor-cp played by hand: dedup and order of
instance events, snapshot rules, and every malformed body refused with 400
before anything is stored."""
import unittest

from cp_harness import ADMIN_TOKEN, CpTestCase, http

TS = "2026-01-02T03:04:05.678Z"


def ev(seq, state="RUNNING", kind="state", **kw):
    e = {"seq": seq, "kind": kind, "state": state, "timestamp": TS, "pid": 100 + seq, "restarts": 0}
    e.update(kw)
    return e


class InstancesApi(CpTestCase):
    def post(self, path, body, token=None):
        a = self.cp.agent()
        return http(self.cp.url + "/v1/agents/%s%s" % (a.id, path), "POST", body, token or a.token)

    def get(self):
        a = self.cp.agent()
        return self.cp.api("GET", "/v1/agents/%s/instances/mc" % a.id)

    def test_events_are_kept_once_in_order_and_acknowledged(self):
        r = self.post("/instances/mc/events", {"events": [ev(1, "STARTING"), ev(2, "RUNNING")]})
        self.assertEqual((r.status, r.json), (200, {"ackSeq": 2}))
        # A resend (lost answer) changes nothing; a newer one goes on top.
        r = self.post("/instances/mc/events", {"events": [ev(1, "STARTING"), ev(2, "RUNNING"),
                                                          ev(3, "STOPPING")]})
        self.assertEqual(r.json, {"ackSeq": 3})
        inst = self.get().json
        self.assertEqual(inst["state"], "STOPPING")
        self.assertEqual([(e["seq"], e["state"]) for e in inst["history"]],
                         [(1, "STARTING"), (2, "RUNNING"), (3, "STOPPING")])
        self.assertEqual(inst["pid"], 103)

    def test_snapshot_is_newer_than_late_events_and_removes_what_it_does_not_list(self):
        self.post("/instances/gone/events", {"events": [ev(1, "RUNNING")]})
        r = self.post("/instances", {"instances": [dict(ev(5, "RUNNING"), instanceId="mc")]})
        self.assertEqual((r.status, r.json), (200, {"instances": 1}))
        a = self.cp.agent()
        listed = self.cp.api("GET", "/v1/instances?agentId=" + a.id).json["instances"]
        self.assertEqual([i["instanceId"] for i in listed], ["mc"])
        self.assertEqual(self.cp.api("GET", "/v1/agents/%s/instances/gone" % a.id).status, 404)
        # Events 4 and 5 were still on their way: kept as history, the state stays.
        self.post("/instances/mc/events", {"events": [ev(4, "STARTING"), ev(5, "RUNNING")]})
        inst = self.get().json
        self.assertEqual(inst["state"], "RUNNING")
        self.assertEqual(inst["stateSeq"], 5)
        self.post("/instances/mc/events", {"events": [ev(6, "STOPPED", pid=None)]})
        self.assertEqual(self.get().json["state"], "STOPPED")
        # REMOVED hides it; a later state brings it back.
        self.post("/instances/mc/events", {"events": [ev(7, "REMOVED", pid=None)]})
        self.assertEqual(self.get().status, 404)
        self.post("/instances/mc/events", {"events": [ev(8, "STOPPED", pid=None)]})
        self.assertEqual(self.get().json["state"], "STOPPED")

    def test_malformed_bodies_are_refused_and_nothing_is_stored(self):
        bad_events = [
            {"events": "x"},
            {"events": [ev(0)]},
            {"events": [ev(1.5)]},
            {"events": [ev(1, "SLEEPING")]},
            {"events": [ev(1, kind="gossip")]},
            {"events": [ev(1, instanceId="other")]},
            {"events": [ev(1, timestamp="yesterday")]},
            {"events": [ev(1, message="x" * 5000)]},
            {"events": [ev(1, pid=-3)]},
            {"events": [ev(1, restarts="many")]},
            {"events": [ev(i) for i in range(1, 1002)]},
        ]
        for body in bad_events:
            with self.subTest(body=str(body)[:80]):
                self.assertEqual(self.post("/instances/mc/events", body).status, 400)
        self.assertEqual(self.get().status, 404)
        bad_snapshots = [
            {"instances": {}},
            {"instances": [{"state": "RUNNING", "seq": 1}]},
            {"instances": [{"instanceId": "../x", "state": "RUNNING", "seq": 1}]},
            {"instances": [{"instanceId": "mc", "state": "REMOVED", "seq": 1}]},
            {"instances": [{"instanceId": "mc", "state": "RUNNING", "seq": 1},
                           {"instanceId": "mc", "state": "RUNNING", "seq": 1}]},
        ]
        for body in bad_snapshots:
            with self.subTest(body=str(body)[:80]):
                self.assertEqual(self.post("/instances", body).status, 400)
        bad_console = [
            {"instances": [{"instanceId": "mc", "lines": [{"seq": 1}]}]},
            {"instances": [{"instanceId": "mc", "lines": [{"seq": 1, "line": "x" * 5000}]}]},
            {"instances": [{"instanceId": "mc", "dropped": -1}]},
            {"results": [{"commandId": "c", "instanceId": "mc", "status": "maybe"}]},
        ]
        for body in bad_console:
            with self.subTest(body=str(body)[:80]):
                self.assertEqual(self.post("/console", body).status, 400)
        self.assertEqual(self.post("/stats", {"instances": [{"instanceId": "mc"}]}).status, 400)
        self.assertEqual(self.get().status, 404)
        # Another agent's path, the admin token, and the wrong kind of id.
        other = self.cp.agent(self.cp.second_agent)
        self.assertEqual(self.post("/instances/mc/events", {"events": [ev(1)]}, other.token).status, 403)
        self.assertEqual(self.post("/instances/mc/events", {"events": [ev(1)]}, ADMIN_TOKEN).status, 403)
        a = self.cp.agent()
        r = http(self.cp.url + "/v1/agents/%s/instances/-bad/events" % a.id, "POST",
                 {"events": [ev(1)]}, a.token)
        self.assertEqual(r.status, 400)
        self.assertEqual(self.cp.api("GET", "/v1/instances?state=REMOVED").status, 400)


if __name__ == "__main__":
    unittest.main()
