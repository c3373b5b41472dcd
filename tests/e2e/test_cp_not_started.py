"""A run the agent never started does not use up an attempt (docs/protocol.md section 5).

An assignment that reaches an agent already shutting down is given back: a FAILED result
with `error.reason: "not_started"` and no event. jobvisor-cp puts that run back to QUEUED
(same jobRunId, same attempt) instead of counting it, so a job with maxAttempts 1 still runs
once the agent is back. Every other refusal (bad assignment, unknown type, instance busy,
agent at capacity) keeps counting as an attempt, and so does a "not_started" claim for a run
that did send events. Runs against SQLite and (e2e-pg.*) PostgreSQL."""
import json
import os
import signal
import threading
import time
import unittest

from agent_harness import AgentTestCase
from cp_harness import CpTestCase
from drop_proxy import DropProxy

NOT_STARTED = {"message": "agent is shutting down", "retryable": True, "reason": "not_started"}


class NotStartedProtocol(CpTestCase):
    """The control plane's side, with the agent played by hand."""
    CP_ARGS = ("--retry-backoff", "0")

    def assigned(self, **job):
        job = self.cp.create_job(**job)
        agent = self.cp.agent()
        [a] = agent.take()
        self.assertEqual(a["jobId"], job["jobId"])
        return agent, a

    def test_not_started_run_is_queued_again_with_the_same_attempt(self):
        agent, a = self.assigned(maxAttempts=1)
        r = agent.result(a["jobRunId"], "FAILED", error=NOT_STARTED)
        self.assertEqual(r.status, 200, r)
        job = self.cp.job(a["jobId"])
        self.assertEqual(job["status"], "QUEUED", job)
        [run] = job["runs"]
        self.assertEqual(run["jobRunId"], a["jobRunId"])
        self.assertEqual(run["attempt"], 1)
        self.assertEqual(run["status"], "QUEUED")
        self.assertIsNone(run["startedAt"])
        self.assertIsNone(run["finishedAt"])
        self.assertIsNone(run["error"])
        self.assertIn("given back unstarted", run["message"])
        self.assertIn("agent is shutting down", run["message"])
        # The answer to the give-back was lost and it comes again: the run is not held any more.
        self.assertEqual(agent.result(a["jobRunId"], "FAILED", error=NOT_STARTED).status, 409)
        # Assigned again (same run, attempt 1) and finished: the job completes.
        [b] = agent.take()
        self.assertEqual((b["jobRunId"], b["attempt"]), (a["jobRunId"], 1))
        self.assertEqual(agent.progress(b, None, "starting").status, 200)
        self.assertEqual(agent.result(b["jobRunId"], "COMPLETED", output={"ok": True}).status, 200)
        job = self.cp.job(a["jobId"])
        self.assertEqual(job["status"], "COMPLETED", job)
        self.assertEqual([(r["attempt"], r["status"]) for r in job["runs"]], [(1, "COMPLETED")])
        self.assertEqual(job["runs"][0]["message"], "starting")

    def test_a_later_attempt_given_back_waits_as_retried(self):
        agent, a = self.assigned(maxAttempts=2)
        self.assertEqual(agent.result(a["jobRunId"], "FAILED", error={"message": "x", "retryable": True}).status,
                         200)
        [b] = agent.take()
        self.assertEqual(b["attempt"], 2)
        self.assertEqual(agent.result(b["jobRunId"], "FAILED", error=NOT_STARTED).status, 200)
        job = self.cp.job(a["jobId"])
        self.assertEqual(job["status"], "RETRIED", job)
        self.assertEqual([(r["attempt"], r["status"]) for r in job["runs"]], [(1, "FAILED"), (2, "QUEUED")])
        [c] = agent.take()
        self.assertEqual((c["jobRunId"], c["attempt"]), (b["jobRunId"], 2))

    def test_not_started_after_an_event_counts_as_an_attempt(self):
        # The run acknowledged (it started): the claim is not believed, the attempt is used.
        agent, a = self.assigned(maxAttempts=1)
        self.assertEqual(agent.progress(a, None, "starting").status, 200)
        self.assertEqual(agent.result(a["jobRunId"], "FAILED", error=NOT_STARTED).status, 200)
        job = self.cp.job(a["jobId"])
        self.assertEqual(job["status"], "FAILED", job)
        self.assertEqual(job["runs"][0]["error"]["reason"], "not_started")
        self.assertEqual(agent.take(), [])

    def test_other_refusals_still_count(self):
        # What the agent sends for an instance busy, a full agent (retryable) and a bad
        # assignment or unknown type (not retryable): FAILED without reason "not_started".
        for error, max_attempts, want in (
                ({"message": "instance 'inst-1' is busy with run 'x'", "retryable": True}, 1, "FAILED"),
                ({"message": "agent is at capacity (1 runs)", "retryable": True}, 2, "RETRIED"),
                ({"message": "unknown job type 'NOPE'", "retryable": False}, 3, "FAILED"),
                ({"message": "agent is shutting down", "retryable": True, "reason": "lost"}, 1, "FAILED")):
            with self.subTest(error=error):
                self.cp.fresh_agents()
                agent, a = self.assigned(maxAttempts=max_attempts)
                self.assertEqual(agent.result(a["jobRunId"], "FAILED", error=error).status, 200)
                job = self.cp.job(a["jobId"])
                self.assertEqual(job["status"], want, job)
                self.assertEqual(job["runs"][0]["status"], "FAILED")
                self.assertEqual(len(job["runs"]), 2 if want == "RETRIED" else 1)
                if want == "RETRIED":
                    self.assertEqual(job["runs"][1]["attempt"], 2)

    def test_not_started_with_a_cancel_requested_is_cancelled(self):
        agent, a = self.assigned(maxAttempts=3)
        r = self.cp.api("POST", "/v1/jobs/%s/cancel" % a["jobId"])
        self.assertIn(r.status, (200, 202), r)
        self.assertEqual(agent.result(a["jobRunId"], "FAILED", error=NOT_STARTED).status, 200)
        job = self.cp.job(a["jobId"])
        self.assertEqual(job["status"], "CANCELLED", job)
        self.assertEqual([(r["attempt"], r["status"], r["finishedBy"]) for r in job["runs"]],
                         [(1, "CANCELLED", "server")])
        self.assertEqual(agent.take(), [])


TYPES = "SLEEPY,GATED,NOSCRIPT"


@unittest.skipUnless(os.environ.get("JOBVISOR_CP_BIN"), "needs JOBVISOR_CP_BIN")
class NotStartedRealAgent(AgentTestCase):
    """The real agent and the real control plane: SIGTERM with a drain while a poll answer
    carrying an assignment is on its way (held by a proxy until the agent is draining)."""
    AGENT = "agent-1"

    def setUp(self):
        super().setUp()
        self.real = self.start_real_cp(["--job-types", TYPES, "--poll-interval", "1", "--retry-backoff", "1"],
                                       self.AGENT)
        self.gate = threading.Event()
        self.holding = threading.Event()
        self.block_results = False
        self.proxy = DropProxy(self.real.port, decide=self.hold_assignments,
                               hold=lambda path, body: self.block_results and path.endswith("/result"))

    def tearDown(self):
        self.gate.set()
        try:
            self.proxy.stop()
            self.real.stop(check=False)
        finally:
            super().tearDown()

    def hold_assignments(self, method, path, body, status, answer):
        """A poll answer with jobs waits at the proxy until the test opens the gate."""
        if path.endswith("/poll") and status == 200 and json.loads(answer)["jobs"]:
            self.holding.set()
            self.gate.wait(30)
        return "pass"

    def env(self, **overrides):
        env = super().env(**overrides)
        env["JOBVISOR_URL"] = self.proxy.url
        env["JOBVISOR_AGENT_ID"] = self.AGENT
        return env

    def drain_with_assignment_in_flight(self, p):
        """SIGTERM while the answer assigning a job is held; then let it reach the agent."""
        self.assertTrue(self.holding.wait(20), "no poll answer carried the job")
        p.send_signal(signal.SIGTERM)
        self.wait_log("SIGTERM received: shutting down: taking no new work")
        self.gate.set()
        self.assertEqual(p.wait(30), 0, self.log()[-3000:])

    def test_assignment_reaching_a_draining_agent_runs_after_restart_with_attempt_1(self):
        job_id = self.real.create_job(agent=self.AGENT, instance="a", type_="SLEEPY", maxAttempts=1)["jobId"]
        p = self.start_agent(DRAIN_TIMEOUT=60)
        self.drain_with_assignment_in_flight(p)
        job = self.real.job(job_id)
        self.assertEqual(job["status"], "QUEUED", job)  # not FAILED: no attempt was used
        self.assertIn("giving back assignment unstarted: agent is shutting down", self.log())
        self.assertEqual(self.spool_runs(), [])  # delivered, not left for the next start
        [run] = job["runs"]
        self.assertEqual((run["attempt"], run["status"], run["lastSeq"]), (1, "QUEUED", 0))
        self.assertIn("given back unstarted by its agent (agent is shutting down)", run["message"])
        self.assertIn("given back unstarted by agent 'agent-1'", self.real.stderr_text())

        p2 = self.start_agent(DRAIN_TIMEOUT=60)
        job = self.real.wait_job(job_id, lambda j: j["status"] == "COMPLETED", 30, "job COMPLETED")
        self.assertEqual([(r["jobRunId"], r["attempt"], r["status"]) for r in job["runs"]],
                         [(run["jobRunId"], 1, "COMPLETED")])
        self.assertEqual(job["runs"][0]["output"], {"steps": 3})
        self.assertEqual(self.stop_agent(p2), 0)

    def test_give_back_kept_in_the_spool_is_sent_by_the_next_start(self):
        # The control plane is unreachable for results while the agent drains: the give-back
        # stays in the spool, the next start sends it, and the run still costs no attempt.
        job_id = self.real.create_job(agent=self.AGENT, instance="a", type_="SLEEPY", maxAttempts=1)["jobId"]
        self.block_results = True
        p = self.start_agent(DRAIN_TIMEOUT=60)
        self.drain_with_assignment_in_flight(p)
        [run_id] = self.spool_runs()
        self.assertEqual(self.real.job(job_id)["status"], "RUNNING")  # assigned, never acknowledged
        self.block_results = False
        p2 = self.start_agent(DRAIN_TIMEOUT=60)
        job = self.real.wait_job(job_id, lambda j: j["status"] in ("COMPLETED", "FAILED"), 30, "job finished")
        self.assertEqual([(r["jobRunId"], r["attempt"], r["status"]) for r in job["runs"]],
                         [(run_id, 1, "COMPLETED")], job)
        self.assertEqual(self.stop_agent(p2), 0)
        self.assertEqual(self.spool_runs(), [])

    def test_unknown_type_refusal_still_ends_the_job(self):
        # Created before the agent reports its types, for a type it has no script for.
        job_id = self.real.create_job(agent=self.AGENT, instance="b", type_="NOSCRIPT", maxAttempts=3)["jobId"]
        self.gate.set()
        p = self.start_agent(DRAIN_TIMEOUT=60)
        job = self.real.wait_job(job_id, lambda j: j["status"] == "FAILED", 30, "job FAILED")
        [run] = job["runs"]
        self.assertEqual(run["attempt"], 1)
        self.assertIn("unknown job type 'NOSCRIPT'", run["error"]["message"])
        self.assertFalse(run["error"]["retryable"])
        self.assertNotIn("reason", run["error"])
        time.sleep(1.5)
        self.assertEqual(len(self.real.job(job_id)["runs"]), 1)
        self.assertEqual(self.stop_agent(p), 0)


if __name__ == "__main__":
    unittest.main()
