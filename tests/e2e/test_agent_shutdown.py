"""How the real `jobvisor agent` stops, against the real `jobvisor-cp`.

SIGTERM/SIGINT drain: polls go on with capacity 0 (leases renewed, no new work), running
jobs finish and are delivered, exit 0. After drain_timeout, on SIGQUIT, or on the signal
repeated after the 2 s window, runs are cancelled at a safe point (FAILED, retryable,
delivered); a further repeat kills. SIGINT and SIGTERM arriving together are one request."""
import os
import signal
import time
import unittest

from agent_harness import AgentTestCase, processes_in_group
from cp_harness import AGENT_TOKENS, ControlPlane

CP_BIN = os.environ.get("JOBVISOR_CP_BIN", "")
TYPES = "SLEEPY,WAITER,TICKER,STUBBORN,GATED"
LEASE_S = 3


@unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN), "needs JOBVISOR_CP_BIN")
class Shutdown(AgentTestCase):
    AGENT = "agent-1"

    def setUp(self):
        super().setUp()
        self.cp.stop()  # the fake is not used here
        cp_dir = os.path.join(self.tmp, "cp")
        os.makedirs(cp_dir)
        self.real = ControlPlane(["--job-types", TYPES, "--poll-interval", "1",
                                  "--lease-seconds", str(LEASE_S)], tmpdir=cp_dir)
        self.real.start()
        with open(self.token_file, "w") as f:
            f.write(AGENT_TOKENS[self.AGENT] + "\n")
        os.chmod(self.token_file, 0o600)

    def tearDown(self):
        try:
            self.real.stop(check=False)
        finally:
            super().tearDown()

    def env(self, **overrides):
        env = super().env(**overrides)
        env["JOBVISOR_URL"] = self.real.url
        env["JOBVISOR_AGENT_ID"] = self.AGENT
        return env

    def create(self, type_, instance="inst-1"):
        return self.real.create_job(agent=self.AGENT, instance=instance, type_=type_,
                                    maxAttempts=1)["jobId"]

    def wait_job(self, job_id, status, timeout=30):
        return self.real.wait_job(job_id, lambda j: j["status"] == status, timeout,
                                  f"job {job_id} {status}")

    def wait_started(self, job_id, timeout=30):
        """RUNNING is the control plane's claim; the run has started on the agent
        once its first event acknowledged it. An assignment that reaches an agent
        already shutting down is given back unstarted (test_cp_not_started), so a
        signal sent between the two would test something else."""
        return self.real.wait_job(job_id, lambda j: j["status"] == "RUNNING" and j["runs"]
                                  and j["runs"][-1].get("acknowledged"), timeout, f"job {job_id} started")

    def agent_row(self):
        r = self.real.api("GET", "/v1/agents")
        self.assertEqual(r.status, 200, r)
        return [a for a in r.json["agents"] if a["agentId"] == self.AGENT][0]

    def wait_exit(self, p, timeout=30):
        try:
            return p.wait(timeout)
        except Exception:
            self.fail(f"agent still running {timeout}s later:\n{self.log()[-4000:]}")

    def test_sigterm_drains_running_job_to_completion_and_exits_0(self):
        p = self.start_agent(DRAIN_TIMEOUT=60)
        jid = self.create("GATED", instance="a")
        self.wait_started(jid)
        self.assertEqual(self.agent_row()["capacity"], 2)
        p.send_signal(signal.SIGTERM)
        self.wait_log("SIGTERM received: shutting down: taking no new work")
        # Draining: the agent goes on polling, telling the control plane it has no room.
        deadline = time.time() + 10
        while self.agent_row()["capacity"] != 0:
            self.assertLess(time.time(), deadline, "capacity never went to 0")
            time.sleep(0.1)
        queued = self.create("SLEEPY", instance="b")
        created = time.time()
        # Longer than the lease: only polls listing the run keep it from being lost.
        time.sleep(LEASE_S + 1.5)
        self.assertIsNone(p.poll(), self.log()[-3000:])
        self.assertEqual(self.real.job(jid)["status"], "RUNNING")
        row = self.agent_row()
        self.assertEqual(row["capacity"], 0)
        self.assertTrue(row["online"])
        self.assertEqual(self.real.job(queued)["status"], "QUEUED")
        self.assertGreater(time.time() - created, LEASE_S)

        self.open_gates(["a"])
        self.assertEqual(self.wait_exit(p), 0)
        job = self.real.job(jid)
        self.assertEqual(job["status"], "COMPLETED", job)
        self.assertEqual(len(job["runs"]), 1)
        self.assertEqual(job["runs"][0]["output"], {"done": True})
        self.assertEqual(self.spool_runs(), [])
        self.assertEqual(self.real.job(queued)["status"], "QUEUED")  # never assigned
        self.assertNotIn("killing", self.log())

    def test_cancel_from_the_control_plane_still_reaches_a_draining_agent(self):
        p = self.start_agent(DRAIN_TIMEOUT=60)
        jid = self.create("WAITER")
        self.wait_started(jid)
        p.send_signal(signal.SIGTERM)
        self.wait_log("SIGTERM received: shutting down")
        r = self.real.api("POST", f"/v1/jobs/{jid}/cancel")
        self.assertIn(r.status, (200, 202), r)
        self.assertEqual(self.wait_exit(p), 0)
        job = self.real.job(jid)
        self.assertEqual(job["status"], "CANCELLED", job)
        self.assertEqual(job["runs"][0]["status"], "CANCELLED")
        self.assertIn("cancel requested by the control plane", self.log())
        self.assertEqual(self.spool_runs(), [])

    def test_drain_timeout_cancels_at_a_safe_point_and_delivers(self):
        p = self.start_agent(DRAIN_TIMEOUT=1, SHUTDOWN_GRACE=20)
        jid = self.create("WAITER")
        self.wait_started(jid)
        child = self.job_child(p)
        t0 = time.time()
        p.send_signal(signal.SIGTERM)
        self.assertEqual(self.wait_exit(p), 0)
        elapsed = time.time() - t0
        self.assertGreaterEqual(elapsed, 1.0)
        self.assertLess(elapsed, 15)  # the script stopped at job.sleep, not at SIGKILL (20 s)
        self.assertIn("drain_timeout (1 s) reached: cancelling 1 running runs", self.log())
        self.assertEqual(processes_in_group(child), [])
        job = self.real.job(jid)
        run = job["runs"][0]
        self.assertEqual(run["status"], "FAILED", job)
        self.assertIn("shutting down", run["error"]["message"])
        self.assertTrue(run["error"]["retryable"])
        self.assertNotIn("did not stop within", self.log())
        self.assertEqual(self.spool_runs(), [])  # delivered, not left in the spool

    def test_sigint_and_sigterm_together_are_one_request(self):
        # What Ctrl-C plus a wrapper's (or a process manager's) SIGTERM looks like.
        p = self.start_agent(DRAIN_TIMEOUT=60)
        jid = self.create("GATED", instance="a")
        self.wait_started(jid)
        child = self.job_child(p)
        p.send_signal(signal.SIGINT)
        p.send_signal(signal.SIGTERM)
        self.wait_log("the same request, nothing more to do")
        time.sleep(2.5)  # past the window: nothing escalates by itself
        self.assertIsNone(p.poll())
        self.assertTrue(processes_in_group(child), "the job run was stopped")
        self.assertEqual(self.real.job(jid)["status"], "RUNNING")
        self.open_gates(["a"])
        self.assertEqual(self.wait_exit(p), 0)
        self.assertEqual(self.real.job(jid)["status"], "COMPLETED")
        self.assertEqual(self.spool_runs(), [])
        log = self.log()
        self.assertNotIn("cancelling", log)
        self.assertNotIn("killing", log)

    def test_sigquit_cancels_now(self):
        p = self.start_agent(DRAIN_TIMEOUT=60, SHUTDOWN_GRACE=20)
        jid = self.create("WAITER")
        self.wait_started(jid)
        t0 = time.time()
        p.send_signal(signal.SIGQUIT)
        self.assertEqual(self.wait_exit(p), 0)
        self.assertLess(time.time() - t0, 15)
        run = self.real.job(jid)["runs"][0]
        self.assertEqual(run["status"], "FAILED", self.log()[-3000:])
        self.assertTrue(run["error"]["retryable"])
        self.assertEqual(self.spool_runs(), [])

    def test_sigquit_while_draining_cancels_now(self):
        p = self.start_agent(DRAIN_TIMEOUT=60, SHUTDOWN_GRACE=20)
        jid = self.create("WAITER")
        self.wait_started(jid)
        p.send_signal(signal.SIGTERM)
        self.wait_log("SIGTERM received: shutting down")
        p.send_signal(signal.SIGQUIT)  # no window for an explicit SIGQUIT
        self.assertEqual(self.wait_exit(p), 0)
        self.assertIn("SIGQUIT received while draining: cancelling 1 running runs", self.log())
        self.assertEqual(self.real.job(jid)["runs"][0]["status"], "FAILED", self.log()[-3000:])
        self.assertEqual(self.spool_runs(), [])

    def test_repeat_after_the_window_cancels_then_kills(self):
        p = self.start_agent(DRAIN_TIMEOUT=60, SHUTDOWN_GRACE=60)
        jid = self.create("STUBBORN")  # ignores cancellation
        self.wait_started(jid)
        child = self.job_child(p)
        p.send_signal(signal.SIGTERM)
        self.wait_log("SIGTERM received: shutting down")
        time.sleep(2.3)
        p.send_signal(signal.SIGTERM)
        self.wait_log("SIGTERM received again: cancelling 1 running runs")
        self.assertIsNone(p.poll())
        self.assertTrue(processes_in_group(child))
        time.sleep(2.3)
        t0 = time.time()
        p.send_signal(signal.SIGINT)
        self.assertEqual(self.wait_exit(p), 0)
        self.assertLess(time.time() - t0, 5)
        self.assertIn("SIGINT received again: killing job runs and exiting now", self.log())
        self.assertEqual(processes_in_group(child), [])
        # Killed without the last delivery: the spool keeps the record for the next start.
        self.assertEqual(len(self.spool_runs()), 1)
        self.assertEqual(self.real.job(jid)["status"], "RUNNING")
        p2 = self.start_agent(DRAIN_TIMEOUT=60)
        self.wait_job(jid, "FAILED")
        self.assertEqual(self.stop_agent(p2), 0)
        self.assertEqual(self.spool_runs(), [])

    def test_idle_agent_exits_at_once_on_sigterm(self):
        p = self.start_agent(DRAIN_TIMEOUT=60, POLL_WAIT=20)
        deadline = time.time() + 10
        while not self.agent_row()["online"]:  # a long poll is held by the control plane
            self.assertLess(time.time(), deadline)
            time.sleep(0.1)
        t0 = time.time()
        self.assertEqual(self.stop_agent(p), 0)
        self.assertLess(time.time() - t0, 3)


if __name__ == "__main__":
    unittest.main()
