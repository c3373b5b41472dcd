"""jobvisor-cp: per-instance ordering, cancellation, manual retry, long poll."""

import threading
import time
import unittest

from cp_harness import ControlPlane, CpTestCase


def wait_polls_waiting(cp, agent_ids, timeout=20):
    """Until each agent's first poll is parked in the long-poll wait. The
    control plane records lastSeen and starts waiting under one lock, and
    /v1/agents reads under it: a lastSeen means that poll is waiting."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {a["agentId"] for a in cp.api("GET", "/v1/agents").json["agents"] if a["lastSeen"]}
        if set(agent_ids) <= seen:
            return
        if time.monotonic() > deadline:
            raise AssertionError("polls of %s not waiting after %ss" % (agent_ids, timeout))
        time.sleep(0.05)


class Ordering(CpTestCase):
    def test_one_run_at_a_time_per_instance_in_creation_order(self):
        j1 = self.cp.create_job(instance="mc", type_="STOP_INSTANCE")
        j2 = self.cp.create_job(instance="mc", type_="BACKUP_INSTANCE")
        j3 = self.cp.create_job(instance="mc", type_="START_INSTANCE")
        other = self.cp.create_job(instance="other", type_="BACKUP_INSTANCE")
        agent = self.cp.agent()
        got = agent.take(capacity=10)
        self.assertEqual(sorted(a["jobId"] for a in got), sorted([j1["jobId"], other["jobId"]]),
                         "only the oldest job of 'mc' runs, 'other' runs beside it")
        a1 = next(a for a in got if a["jobId"] == j1["jobId"])
        ao = next(a for a in got if a["jobId"] == other["jobId"])
        for a in got:
            agent.progress(a, 1, "x")
        held = [a1["jobRunId"], ao["jobRunId"]]
        self.assertEqual(agent.take(capacity=10, running=held), [])
        agent.result(a1["jobRunId"], "COMPLETED")
        [a2] = agent.take(capacity=10, running=held[1:])
        self.assertEqual(a2["jobId"], j2["jobId"])
        agent.progress(a2, 1, "x")
        # A failed job ends its turn too (non-retryable): the next one follows.
        agent.result(a2["jobRunId"], "FAILED", error={"message": "no", "retryable": False})
        [a3] = agent.take(capacity=10, running=held[1:])
        self.assertEqual(a3["jobId"], j3["jobId"])

    def test_a_long_queue_of_one_instance_does_not_hide_later_instances(self):
        # More queued jobs of one instance than the claim's first look covers
        # (4 per run to take + 32: store_pg_dispatch.c, PGS_SQL_CLAIM), created
        # before the jobs of three other instances.
        deep = [self.cp.create_job(instance="deep")["jobId"] for _ in range(60)]
        w1, w2, w3 = (self.cp.create_job(instance=i)["jobId"] for i in ("w1", "w2", "w3"))
        agent = self.cp.agent()
        got = agent.take(capacity=3)
        self.assertEqual([a["jobId"] for a in got], [deep[0], w1, w2], "the head of each instance, in creation order")
        for a in got:
            agent.progress(a, 1, "x")
        runs = {a["jobId"]: a["jobRunId"] for a in got}
        agent.result(runs[deep[0]], "COMPLETED")
        [d1] = agent.take(capacity=3, running=[runs[w1], runs[w2]])
        self.assertEqual(d1["jobId"], deep[1])
        agent.progress(d1, 1, "x")
        held = [runs[w1], runs[w2], d1["jobRunId"]]
        # Every instance busy but w3: only w3 is left to take, behind 58 queued jobs of 'deep'.
        self.assertEqual([a["jobId"] for a in agent.take(capacity=5, running=held)], [w3])

    def test_a_job_waiting_for_its_retry_holds_back_later_jobs_of_its_instance(self):
        j1 = self.cp.create_job(instance="mc", maxAttempts=2)
        j2 = self.cp.create_job(instance="mc")
        agent = self.cp.agent()
        [a1] = agent.take(capacity=5)
        agent.progress(a1, 1, "x")
        agent.result(a1["jobRunId"], "FAILED", error={"message": "flaky", "retryable": True})
        # Default backoff is 5 s: the retry of j1 waits, and j2 must not overtake it.
        self.assertEqual(agent.take(capacity=5), [])
        self.assertEqual(self.cp.job(j2["jobId"])["status"], "QUEUED")
        self.assertEqual(self.cp.job(j1["jobId"])["status"], "RETRIED")

    def test_manual_retry_is_a_new_run_and_runs_before_later_jobs(self):
        j1 = self.cp.create_job(instance="mc")
        agent = self.cp.agent()
        [a1] = agent.take()
        agent.progress(a1, 1, "x")
        agent.result(a1["jobRunId"], "FAILED", error={"message": "bad", "retryable": False})
        j2 = self.cp.create_job(instance="mc")
        r = self.cp.api("POST", "/v1/jobs/%s/retry" % j1["jobId"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "RETRIED")
        self.assertEqual([x["attempt"] for x in r.json["runs"]], [1, 2])
        [a] = agent.take(capacity=5)
        self.assertEqual(a["jobId"], j1["jobId"], "creation order: j1 before j2")
        self.assertEqual(a["attempt"], 2)
        self.assertNotEqual(a["jobRunId"], a1["jobRunId"])
        agent.progress(a, 100, "ok")
        agent.result(a["jobRunId"], "COMPLETED")
        self.assertEqual(self.cp.job(j1["jobId"])["status"], "COMPLETED")
        [b] = agent.take(capacity=5, running=[])
        self.assertEqual(b["jobId"], j2["jobId"])

    def test_retry_of_a_running_or_completed_job_is_409(self):
        j = self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        self.assertEqual(self.cp.api("POST", "/v1/jobs/%s/retry" % j["jobId"]).status, 409)
        agent.progress(a, 1, "x")
        agent.result(a["jobRunId"], "COMPLETED")
        r = self.cp.api("POST", "/v1/jobs/%s/retry" % j["jobId"])
        self.assertEqual(r.status, 409)
        self.assertIn("COMPLETED", r.json["error"])
        self.assertEqual(self.cp.api("POST", "/v1/jobs/nope/retry").status, 404)


class Cancel(CpTestCase):
    def test_cancel_of_a_queued_job_is_immediate(self):
        j = self.cp.create_job()
        r = self.cp.api("POST", "/v1/jobs/%s/cancel" % j["jobId"])
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["status"], "CANCELLED")
        self.assertEqual(r.json["runs"][0]["status"], "CANCELLED")
        self.assertEqual(self.cp.agent().take(capacity=5), [])
        # Cancelling again: it is already over.
        self.assertEqual(self.cp.api("POST", "/v1/jobs/%s/cancel" % j["jobId"]).status, 409)
        # A cancelled job can be retried.
        r = self.cp.api("POST", "/v1/jobs/%s/retry" % j["jobId"])
        self.assertEqual(r.status, 200)
        self.assertEqual(len(self.cp.agent().take()), 1)

    def test_cancel_of_a_running_job_is_delivered_and_ends_when_the_agent_says(self):
        j = self.cp.create_job(maxAttempts=3)
        agent = self.cp.agent()
        [a] = agent.take()
        run_id = a["jobRunId"]
        self.assertEqual(agent.progress(a, 10, "x").json["cancelRequested"], False)
        r = self.cp.api("POST", "/v1/jobs/%s/cancel" % j["jobId"])
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["status"], "RUNNING")
        self.assertTrue(r.json["cancelRequested"])
        self.assertTrue(r.json["runs"][0]["cancelRequested"])
        # Repeated cancel while waiting for the agent: fine, nothing changes.
        self.assertEqual(self.cp.api("POST", "/v1/jobs/%s/cancel" % j["jobId"]).status, 200)
        p = agent.poll(running=[run_id])
        self.assertEqual(p.json["cancel"], [run_id])
        self.assertEqual(p.json["jobs"], [])
        self.assertTrue(agent.progress(a, 20, "stopping").json["cancelRequested"])
        self.assertEqual(agent.result(run_id, "CANCELLED").status, 200)
        done = self.cp.job(j["jobId"])
        self.assertEqual(done["status"], "CANCELLED")
        self.assertEqual(done["runs"][0]["status"], "CANCELLED")
        self.assertEqual(len(done["runs"]), 1)
        self.assertEqual(agent.poll(running=[]).json["cancel"], [])

    def test_a_run_that_fails_after_cancel_is_not_retried(self):
        j = self.cp.create_job(maxAttempts=3)
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 10, "x")
        self.cp.api("POST", "/v1/jobs/%s/cancel" % j["jobId"])
        agent.result(a["jobRunId"], "FAILED", error={"message": "killed", "retryable": True})
        done = self.cp.job(j["jobId"])
        self.assertEqual(done["status"], "FAILED")
        self.assertEqual(len(done["runs"]), 1)

    def test_cancel_unknown_job_is_404(self):
        r = self.cp.api("POST", "/v1/jobs/no-such-job/cancel")
        self.assertEqual(r.status, 404)
        self.assertIn("error", r.json)


class LongPoll(CpTestCase):
    CP_ARGS = ("--max-wait", "10")

    def test_long_poll_answers_when_work_appears(self):
        agent = self.cp.agent()
        out = {}

        def poll():
            t = time.monotonic()
            out["r"] = agent.poll(wait=8)
            out["t"] = time.monotonic() - t

        th = threading.Thread(target=poll)
        th.start()
        time.sleep(0.7)
        j = self.cp.create_job()
        th.join(15)
        self.assertFalse(th.is_alive())
        self.assertEqual(out["r"].status, 200)
        self.assertEqual([a["jobId"] for a in out["r"].json["jobs"]], [j["jobId"]])
        self.assertLess(out["t"], 4)
        self.assertGreater(out["t"], 0.5)

    def test_long_poll_answers_when_a_cancel_appears(self):
        j = self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 1, "x")
        out = {}
        th = threading.Thread(target=lambda: out.update(r=agent.poll(wait=8, running=[a["jobRunId"]])))
        t = time.monotonic()
        th.start()
        time.sleep(0.5)
        self.cp.api("POST", "/v1/jobs/%s/cancel" % j["jobId"])
        th.join(15)
        self.assertLess(time.monotonic() - t, 4)
        self.assertEqual(out["r"].json["cancel"], [a["jobRunId"]])

    def test_long_poll_without_work_returns_after_wait_seconds(self):
        t = time.monotonic()
        r = self.cp.agent().poll(wait=1)
        took = time.monotonic() - t
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["jobs"], [])
        self.assertGreaterEqual(took, 0.9)
        self.assertLess(took, 4)

    def test_wait_seconds_above_max_wait_is_capped_not_refused(self):
        t = time.monotonic()
        r = self.cp.agent().poll(wait=300, timeout=30)
        took = time.monotonic() - t
        self.assertEqual(r.status, 200)
        self.assertGreaterEqual(took, 9.5)
        self.assertLess(took, 14, "capped at --max-wait 10")


# Polls no longer wait in worker threads (they park in the accept front), so
# the old "at most threads - threads/8 - threads/4 polls wait" limit is gone;
# test_cp_parking.py shows far more parked polls than threads while other
# calls are still answered.


class Shutdown(unittest.TestCase):
    def test_sigterm_answers_waiting_long_polls_and_exits_0(self):
        cp = ControlPlane(["--max-wait", "30"]).start()
        self.addCleanup(cp.close)
        out = {}
        th = threading.Thread(target=lambda: out.update(r=cp.agent("a01").poll(wait=30, timeout=40)))
        th.start()
        wait_polls_waiting(cp, ["a01"])
        t = time.monotonic()
        self.assertEqual(cp.stop(), 0)  # SIGTERM; also checks sanitizer output
        th.join(20)
        self.assertLess(time.monotonic() - t, 10)
        self.assertEqual(out["r"].status, 200, "the waiting poll got a normal (empty) answer")
        self.assertEqual(out["r"].json["jobs"], [])


if __name__ == "__main__":
    unittest.main()
