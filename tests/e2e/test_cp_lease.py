"""jobvisor-cp: leases, ack deadlines, lost runs and automatic retries.

Runs with 2-second leases and ack windows so that expiry happens within the
test; the sweep runs twice a second.
"""

import time
import unittest

from cp_harness import CpTestCase


def wait_until(pred, timeout=10, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


class Lease(CpTestCase):
    CP_ARGS = ("--lease-seconds", "2", "--ack-seconds", "2", "--retry-backoff", "0")

    def test_lapsed_lease_is_lost_and_retried_as_a_new_run(self):
        job = self.cp.create_job(maxAttempts=2)
        agent = self.cp.agent()
        [a] = agent.take()
        self.assertEqual(agent.progress(a, 10, "working").status, 200)
        # The agent stops polling: after the lease the run is FAILED (lost) and attempt 2 is queued.
        j = self.cp.wait_job(job["jobId"], lambda j: len(j["runs"]) == 2, timeout=10, what="a second run")
        first, second = j["runs"]
        self.assertEqual(first["status"], "FAILED")
        self.assertEqual(first["error"]["reason"], "lost")
        self.assertTrue(first["error"]["retryable"])
        self.assertIn("did not list it", first["error"]["message"])
        self.assertEqual(first["finishedBy"], "server")
        self.assertEqual(second["status"], "QUEUED")
        self.assertEqual(second["attempt"], 2)
        self.assertNotEqual(second["jobRunId"], first["jobRunId"])
        self.assertEqual(j["status"], "RETRIED")

        # The old run is fenced off: 409 for events and result, and a cancel if listed.
        self.assertEqual(agent.progress(a, 20, "still here").status, 409)
        self.assertEqual(agent.result(a["jobRunId"]).status, 409)
        r = agent.poll(capacity=1, running=[a["jobRunId"]])
        self.assertEqual(r.status, 200)
        self.assertIn(a["jobRunId"], r.json["cancel"])
        [b] = r.json["jobs"]
        self.assertEqual(b["jobRunId"], second["jobRunId"])
        self.assertEqual(b["attempt"], 2)
        self.assertEqual(self.cp.job(job["jobId"])["status"], "RUNNING")
        agent.progress(b, 100, "done")
        self.assertEqual(agent.result(b["jobRunId"]).status, 200)
        self.assertEqual(self.cp.job(job["jobId"])["status"], "COMPLETED")

    def test_polls_listing_the_run_keep_the_lease(self):
        job = self.cp.create_job(maxAttempts=2)
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 1, "go")
        end = time.monotonic() + 4
        while time.monotonic() < end:
            self.assertEqual(agent.poll(running=[a["jobRunId"]]).status, 200)
            time.sleep(0.4)
        j = self.cp.job(job["jobId"])
        self.assertEqual(len(j["runs"]), 1)
        self.assertEqual(j["runs"][0]["status"], "RUNNING")

    def test_unacknowledged_assignment_is_lost_after_the_ack_deadline(self):
        job = self.cp.create_job(maxAttempts=1)
        agent = self.cp.agent()
        [a] = agent.take()
        # Listed in polls (lease renewed) but no first event ever arrives.
        end = time.monotonic() + 10
        j = None
        while time.monotonic() < end:
            agent.poll(running=[a["jobRunId"]])
            j = self.cp.job(job["jobId"])
            if j["status"] == "FAILED":
                break
            time.sleep(0.3)
        self.assertEqual(j["status"], "FAILED", j)
        self.assertEqual(len(j["runs"]), 1, "maxAttempts 1: no automatic retry")
        self.assertIn("no event", j["runs"][0]["error"]["message"])
        self.assertEqual(j["runs"][0]["error"]["reason"], "lost")

    def test_retryable_failures_are_retried_up_to_max_attempts(self):
        job = self.cp.create_job(maxAttempts=2)
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 5, "x")
        agent.result(a["jobRunId"], "FAILED", error={"message": "mirror down", "retryable": True})
        j = self.cp.job(job["jobId"])
        self.assertEqual(j["status"], "RETRIED")
        self.assertEqual([r["status"] for r in j["runs"]], ["FAILED", "QUEUED"])
        [b] = agent.take()
        self.assertEqual(b["attempt"], 2)
        agent.progress(b, 5, "x")
        agent.result(b["jobRunId"], "FAILED", error={"message": "mirror down", "retryable": True})
        j = self.cp.job(job["jobId"])
        self.assertEqual(j["status"], "FAILED")
        self.assertEqual(len(j["runs"]), 2)
        self.assertEqual(agent.take(), [])

    def test_lost_run_of_a_cancelled_job_is_not_retried(self):
        job = self.cp.create_job(maxAttempts=3)
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 5, "x")
        self.assertEqual(self.cp.api("POST", "/v1/jobs/%s/cancel" % job["jobId"]).status, 200)
        j = self.cp.wait_job(job["jobId"], lambda j: j["status"] == "FAILED", what="lost")
        self.assertEqual(len(j["runs"]), 1)


class Backoff(CpTestCase):
    CP_ARGS = ("--retry-backoff", "1", "--max-wait", "10")

    def test_automatic_retry_waits_for_the_backoff_and_wakes_a_long_poll(self):
        job = self.cp.create_job(maxAttempts=3)
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 5, "x")
        t0 = time.monotonic()
        agent.result(a["jobRunId"], "FAILED", error={"message": "flaky", "retryable": True})
        j = self.cp.job(job["jobId"])
        self.assertIsNotNone(j["runs"][1]["notBefore"])
        self.assertEqual(agent.take(), [], "still in backoff")
        r = agent.poll(wait=8)
        waited = time.monotonic() - t0
        self.assertEqual(r.status, 200)
        self.assertEqual(len(r.json["jobs"]), 1, r)
        self.assertEqual(r.json["jobs"][0]["attempt"], 2)
        self.assertGreaterEqual(waited, 0.9)
        self.assertLess(waited, 5, "the long poll is woken when the backoff ends")


if __name__ == "__main__":
    unittest.main()
