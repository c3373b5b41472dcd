"""End to end: a control plane that answers garbage. The agent logs it, reports
FAILED where there is a run to report, and keeps polling."""
import os
import time
import unittest

from agent_harness import AgentTestCase


class GarbageAnswers(AgentTestCase):
    def assert_still_works(self, p):
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_result(rid, timeout=20)
        self.assert_delivered_once(rid, "COMPLETED")
        self.assertIsNone(p.poll(), "agent died")

    def test_poll_answers_that_are_not_protocol(self):
        p = self.start_agent(BACKOFF_MAX="0.3", MAX_RESPONSE="64K", REQUEST_TIMEOUT=2)
        for mode in ("garbage", "wrongtypes", "huge", "slow", "down", "409", "400"):
            n = self.cp.poll_count()
            self.cp.fault("poll", mode, count=1)
            # the faulty poll, then at least one good one after it
            self.cp.wait(lambda: self.cp.poll_count() >= n + 2, timeout=20, what=f"polls after {mode}")
        self.assert_still_works(p)
        log = self.log()
        self.assertIn("not a JSON object", log)
        self.assertIn("'jobs' is not an array", log)
        self.assertIn("larger than max_response", log)
        self.assertIn("HTTP 409", log)
        self.assertIn("HTTP 400", log)
        self.assertEqual(self.stop_agent(p), 0)

    def test_garbage_events_answers_are_retried(self):
        p = self.start_agent(BACKOFF_MAX="0.3", MAX_RESPONSE="64K", REQUEST_TIMEOUT=2)
        self.cp.fault("events", "garbage", count=1)
        rid = self.cp.add_job("SLEEPY", params={"steps": 2, "delay": 0.05})
        self.cp.wait_result(rid, timeout=20)
        self.cp.fault("events", "wrongtypes", count=1)
        rid2 = self.cp.add_job("SLEEPY", params={"steps": 2, "delay": 0.05})
        self.cp.wait_result(rid2, timeout=20)
        self.cp.fault("events", "slow", count=1)
        rid3 = self.cp.add_job("SLEEPY", params={"steps": 2, "delay": 0.05})
        self.cp.wait_result(rid3, timeout=30)
        for r in (rid, rid2, rid3):
            self.assert_delivered_once(r, "COMPLETED")
        self.assertIn("no valid ackSeq", self.log())
        self.assertEqual(self.stop_agent(p), 0)

    def test_bad_assignments_are_reported_failed(self):
        p = self.start_agent(CAPACITY=4)
        cases = {
            "r-type": ({"jobId": "j1", "jobRunId": "r-type", "type": "NO_SUCH_JOB",
                        "instanceId": "i1", "params": {}}, "unknown job type 'NO_SUCH_JOB'"),
            "r-inst": ({"jobId": "j2", "jobRunId": "r-inst", "type": "SLEEPY",
                        "instanceId": "../../etc", "params": {}}, "instanceId"),
            "r-params": ({"jobId": "j3", "jobRunId": "r-params", "type": "SLEEPY",
                          "instanceId": "i3", "params": [1, 2]}, "params must be a JSON object"),
            "r-lower": ({"jobId": "j4", "jobRunId": "r-lower", "type": "sleepy",
                         "instanceId": "i4"}, "job type"),
            "r-timeout": ({"jobId": "j5", "jobRunId": "r-timeout", "type": "SLEEPY",
                           "instanceId": "i5", "timeoutSeconds": "soon"}, "timeoutSeconds"),
            "r-jobid": ({"jobId": 17, "jobRunId": "r-jobid", "type": "SLEEPY",
                         "instanceId": "i6"}, "jobId"),
            "r-attempt": ({"jobId": "j7", "jobRunId": "r-attempt", "type": "SLEEPY",
                           "instanceId": "i7", "attempt": -3}, "attempt"),
        }
        for rid, (a, _) in cases.items():
            self.cp.add_raw(a, run_id=rid)
        # Assignments that cannot even be reported: logged and skipped.
        for junk in (42, "a string", None, [], {"jobRunId": "../../x", "type": "SLEEPY"},
                     {"jobRunId": "x" * 300}):
            self.cp.add_raw(junk)
        for rid, (_, needle) in cases.items():
            res = self.cp.wait_result(rid, timeout=20)
            self.assertEqual(res["status"], "FAILED")
            self.assertIn(needle, res["error"]["message"])
            self.assertFalse(res["error"]["retryable"])
            run = self.assert_delivered_once(rid, "FAILED")
            self.assertEqual(len(run.events), 1)
        # The junk comes after the seven cases (capacity 4): it may be handed
        # out only once their results are in.
        self.wait_log("cannot report it without a valid jobRunId")
        self.assert_still_works(p)
        self.assertFalse(os.path.exists("/etc/instances"))
        self.assertEqual(self.stop_agent(p), 0)

    def test_duplicate_assignment_runs_once(self):
        p = self.start_agent()
        a = {"jobId": "jd", "jobRunId": "r-dup", "type": "SLEEPY", "instanceId": "idup",
             "params": {"steps": 2, "delay": 0.2}}
        self.cp.add_raw(a, run_id="r-dup")
        self.cp.wait_status("r-dup", "RUNNING")
        self.cp.add_raw(dict(a))
        res = self.cp.wait_result("r-dup")
        self.assertEqual(res["status"], "COMPLETED")
        time.sleep(0.5)
        run = self.assert_delivered_once("r-dup", "COMPLETED")
        running = [e for e in run.events.values() if e["status"] == "RUNNING" and e["kind"] == "status"]
        self.assertEqual(len(running), 1)
        self.assertEqual(self.stop_agent(p), 0)

    def test_busy_instance_and_full_agent_refuse_retryable(self):
        p = self.start_agent(CAPACITY=1)
        rid = self.cp.add_job("WAITER", instance="same")
        self.cp.wait_status(rid, "RUNNING")
        # Ignore capacity: hand out two more anyway.
        self.cp.add_raw({"jobId": "jb", "jobRunId": "r-busy", "type": "SLEEPY",
                         "instanceId": "same"}, run_id="r-busy", force=True)
        self.cp.add_raw({"jobId": "jf", "jobRunId": "r-full", "type": "SLEEPY",
                         "instanceId": "other"}, run_id="r-full", force=True)
        busy = self.cp.wait_result("r-busy")
        full = self.cp.wait_result("r-full")
        for res in (busy, full):
            self.assertEqual(res["status"], "FAILED")
            self.assertTrue(res["error"]["retryable"])
            # An attempt, unlike a run given back unstarted while shutting down.
            self.assertNotIn("reason", res["error"])
        self.assertIn("instance 'same' is busy", busy["error"]["message"])
        self.assertIn("at capacity", full["error"]["message"])
        self.assertIsNone(self.cp.run(rid).result, "the running job was not disturbed")
        self.assertEqual(self.stop_agent(p), 0)


if __name__ == "__main__":
    unittest.main()
