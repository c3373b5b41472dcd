"""jobvisor-cp: a job's whole life over real HTTP, acting as the agent by hand.

Covers assignment, progress events (dedup, ackSeq over gaps), results
(idempotent, conflicting), 409 fencing of runs the agent no longer holds,
re-delivery of unacknowledged assignments, and capacity.
"""

import unittest

from cp_harness import CpTestCase


class Lifecycle(CpTestCase):
    def test_full_lifecycle_created_to_completed(self):
        job = self.cp.create_job(params={"backupId": "b1"}, timeoutSeconds=600, cancelGraceSeconds=20)
        self.assertEqual(job["status"], "QUEUED")
        self.assertEqual(len(job["runs"]), 1)
        self.assertEqual(job["runs"][0]["status"], "QUEUED")
        self.assertEqual(job["runs"][0]["attempt"], 1)

        agent = self.cp.agent()
        r = agent.poll(capacity=2)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["cancel"], [])
        self.assertGreater(r.json["pollIntervalSeconds"], 0)
        self.assertGreater(r.json["leaseSeconds"], 0)
        [a] = r.json["jobs"]
        self.assertEqual(a["jobId"], job["jobId"])
        self.assertEqual(a["jobRunId"], job["runs"][0]["jobRunId"])
        self.assertEqual(a["attempt"], 1)
        self.assertEqual(a["type"], "BACKUP_INSTANCE")
        self.assertEqual(a["instanceId"], "inst-1")
        self.assertEqual(a["params"], {"backupId": "b1"})
        self.assertEqual(a["timeoutSeconds"], 600)
        self.assertEqual(a["cancelGraceSeconds"], 20)
        self.assertTrue(a["createdAt"].endswith("Z"))

        j = self.cp.job(job["jobId"])
        self.assertEqual(j["status"], "RUNNING")
        self.assertFalse(j["runs"][0]["acknowledged"])

        r = agent.progress(a, None, "starting")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json, {"ackSeq": 1, "cancelRequested": False})
        r = agent.progress(a, 40, "archiving")
        self.assertEqual(r.json["ackSeq"], 2)
        j = self.cp.job(job["jobId"])
        run = j["runs"][0]
        self.assertTrue(run["acknowledged"])
        self.assertEqual(run["percent"], 40)
        self.assertEqual(run["message"], "archiving")
        self.assertEqual(run["lastSeq"], 2)

        r = agent.result(a["jobRunId"], "COMPLETED", output={"backupId": "b1", "bytes": 10})
        self.assertEqual(r.status, 200, r)
        j = self.cp.job(job["jobId"])
        self.assertEqual(j["status"], "COMPLETED")
        self.assertEqual(j["runs"][0]["status"], "COMPLETED")
        self.assertEqual(j["runs"][0]["output"], {"backupId": "b1", "bytes": 10})
        self.assertIsNotNone(j["runs"][0]["finishedAt"])

        ev = self.cp.api("GET", "/v1/runs/%s/events?after=0" % a["jobRunId"]).json
        self.assertEqual([e["seq"] for e in ev["events"]], [1, 2])
        self.assertEqual(ev["events"][1]["message"], "archiving")
        self.assertEqual(ev["events"][1]["jobId"], job["jobId"])
        after = self.cp.api("GET", "/v1/runs/%s/events?after=1" % a["jobRunId"]).json
        self.assertEqual([e["seq"] for e in after["events"]], [2])

        # Nothing more to do; the finished run is not assigned again.
        self.assertEqual(agent.take(capacity=2), [])

    def test_repeated_events_are_stored_once(self):
        self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        run_id = a["jobRunId"]
        batch = [{"seq": s, "kind": "progress", "percent": s * 10, "message": "step %d" % s} for s in (1, 2, 3)]
        for _ in range(3):
            r = agent.events(run_id, batch)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json["ackSeq"], 3)
        # A resend that overlaps the stored ones and adds one more.
        r = agent.events(run_id, batch[1:] + [{"seq": 4, "kind": "log", "level": "info", "message": "x"}])
        self.assertEqual(r.json["ackSeq"], 4)
        events = self.cp.api("GET", "/v1/runs/%s/events" % run_id).json["events"]
        self.assertEqual([e["seq"] for e in events], [1, 2, 3, 4])
        # A duplicate with different content does not replace the first one.
        r = agent.events(run_id, [{"seq": 2, "kind": "progress", "percent": 99, "message": "changed"}])
        self.assertEqual(r.json["ackSeq"], 4)
        events = self.cp.api("GET", "/v1/runs/%s/events" % run_id).json["events"]
        self.assertEqual(events[1]["message"], "step 2")
        # The log event did not become the run's progress line.
        run = self.cp.api("GET", "/v1/runs/" + run_id).json
        self.assertEqual(run["message"], "step 3")
        self.assertEqual(run["percent"], 30)

    def test_ack_seq_is_the_highest_contiguous_seq(self):
        self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        run_id = a["jobRunId"]
        ev = lambda s: {"seq": s, "kind": "progress", "message": "m%d" % s}
        self.assertEqual(agent.events(run_id, [ev(1), ev(2), ev(5)]).json["ackSeq"], 2)
        self.assertEqual(agent.events(run_id, [ev(4)]).json["ackSeq"], 2)
        self.assertEqual(agent.events(run_id, [ev(3)]).json["ackSeq"], 5)
        # Out-of-order delivery: the progress line follows the highest seq.
        run = self.cp.api("GET", "/v1/runs/" + run_id).json
        self.assertEqual(run["message"], "m5")
        self.assertEqual(run["lastSeq"], 5)

    def test_result_is_idempotent_and_a_conflicting_one_is_409(self):
        job = self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 50, "half")
        r1 = agent.result(a["jobRunId"], "FAILED", error={"message": "disk full", "stack": "x.lua:1", "retryable": False})
        self.assertEqual(r1.status, 200)
        r2 = agent.result(a["jobRunId"], "FAILED", error={"message": "disk full", "stack": "x.lua:1", "retryable": False})
        self.assertEqual(r2.status, 200)
        self.assertEqual(r1.json, r2.json)
        j = self.cp.job(job["jobId"])
        self.assertEqual(j["status"], "FAILED")
        self.assertEqual(len(j["runs"]), 1, "a non-retryable failure is not retried")
        self.assertEqual(j["runs"][0]["error"]["message"], "disk full")
        self.assertEqual(j["runs"][0]["error"]["stack"], "x.lua:1")
        r3 = agent.result(a["jobRunId"], "COMPLETED", output={})
        self.assertEqual(r3.status, 409)
        self.assertIn("error", r3.json)
        self.assertEqual(self.cp.job(job["jobId"])["runs"][0]["status"], "FAILED")

    def test_late_events_of_a_run_the_agent_finished_are_kept(self):
        self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 10, "one")
        self.assertEqual(agent.result(a["jobRunId"], "COMPLETED").status, 200)
        r = agent.events(a["jobRunId"], [{"seq": 2, "kind": "log", "level": "info", "message": "late"}])
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json, {"ackSeq": 2, "cancelRequested": False})

    def test_unknown_run_is_409(self):
        agent = self.cp.agent()
        r = agent.events("no-such-run", [{"seq": 1, "kind": "progress"}])
        self.assertEqual(r.status, 409)
        self.assertEqual(agent.result("no-such-run").status, 409)

    def test_unacknowledged_assignment_is_delivered_again(self):
        job = self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        # The answer was lost: the next poll does not list the run, and gets it again.
        [again] = agent.take()
        self.assertEqual(again["jobRunId"], a["jobRunId"])
        # Listed in running: not delivered a third time.
        self.assertEqual(agent.take(running=[a["jobRunId"]]), [])
        # Acknowledged: no longer re-delivered even when not listed.
        agent.progress(a, 1, "go")
        self.assertEqual(agent.take(), [])
        self.assertEqual(len(self.cp.job(job["jobId"])["runs"]), 1)

    def test_capacity_limits_runs_in_flight(self):
        ids = [self.cp.create_job(instance="i%d" % n)["jobId"] for n in range(4)]
        agent = self.cp.agent()
        first = agent.take(capacity=2)
        self.assertEqual(len(first), 2)
        held = [a["jobRunId"] for a in first]
        for a in first:
            agent.progress(a, 5, "x")
        self.assertEqual(agent.take(capacity=2, running=held), [])
        third = agent.take(capacity=3, running=held)
        self.assertEqual(len(third), 1)
        held.append(third[0]["jobRunId"])
        self.assertEqual(agent.result(held[0], "COMPLETED").status, 200)
        # One slot freed: exactly one new run (the fourth job).
        more = agent.take(capacity=3, running=held[1:])
        self.assertEqual(len(more), 1)
        self.assertNotIn(more[0]["jobRunId"], held)
        held.append(more[0]["jobRunId"])
        # Capacity 0 drains: nothing new, nothing re-delivered for listed runs.
        self.assertEqual(agent.take(capacity=0, running=held[1:]), [])
        self.assertEqual(self.cp.job(ids[0])["status"], "COMPLETED")

    def test_other_agents_do_not_get_the_job(self):
        self.cp.create_job()
        self.assertEqual(self.cp.agent(self.cp.second_agent).take(capacity=5), [])
        self.assertEqual(len(self.cp.agent().take(capacity=5)), 1)

    def test_agents_list_shows_last_seen_and_capacity(self):
        one, two = self.cp.default_agent, self.cp.second_agent
        before = {a["agentId"]: a for a in self.cp.api("GET", "/v1/agents").json["agents"]}
        self.assertEqual(set(before), set(self.cp.agents))
        self.assertIsNone(before[two]["lastSeen"])
        self.assertFalse(before[two]["online"])
        self.cp.agent(two).take(capacity=4)
        after = {a["agentId"]: a for a in self.cp.api("GET", "/v1/agents").json["agents"]}
        self.assertIsNotNone(after[two]["lastSeen"])
        self.assertTrue(after[two]["online"])
        self.assertEqual(after[two]["capacity"], 4)
        self.assertIsNone(after[one]["lastSeen"])


if __name__ == "__main__":
    unittest.main()
