"""End to end: `jobvisor agent` against a fake control plane — the happy paths."""
import os
import signal
import time
import unittest

from agent_harness import AgentTestCase


class AgentRunsJobs(AgentTestCase):
    def test_full_job_through_agent(self):
        p = self.start_agent()
        rid = self.cp.add_job("SLEEPY", params={"steps": 4, "delay": 0.05})
        self.cp.wait_result(rid)
        run = self.assert_delivered_once(rid, "COMPLETED")
        self.assertEqual(run.result["output"], {"steps": 4})
        self.assertIsNone(run.result["error"])
        self.assertEqual(run.events[1]["status"], "RUNNING")
        self.assertTrue(any(e["kind"] == "progress" for e in run.events.values()))
        self.assertEqual(run.duplicates, 0)
        self.assertEqual(len(run.results), 1)
        # The spool is cleaned up once the result is acknowledged.
        deadline = time.time() + 5
        while self.spool_runs() and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.spool_runs(), [])
        self.assertEqual(self.cp.unauthorized, 0)
        self.assertEqual(self.cp.bad_requests, [])
        self.assertEqual(self.stop_agent(p), 0)
        log = self.log()
        self.assertIn("result delivered", log)
        self.assertNotIn(self.TOKEN, log)

    def test_poll_reports_capacity_and_running(self):
        p = self.start_agent(CAPACITY=3)
        rid = self.cp.add_job("WAITER")
        self.cp.wait_status(rid, "RUNNING")
        def poll_with_run():
            for _, body in self.cp.polls:
                if any(r["jobRunId"] == rid for r in body["running"]):
                    return body
        body = self.cp.wait(poll_with_run, what="a poll listing the run")
        self.assertEqual(body["capacity"], 3)
        entry = [r for r in body["running"] if r["jobRunId"] == rid][0]
        self.assertGreaterEqual(entry["lastSeq"], 1)
        self.cp.cancel(rid)
        self.cp.wait_result(rid)
        self.assertEqual(self.cp.run(rid).result["status"], "CANCELLED")
        self.assertEqual(self.stop_agent(p), 0)

    def test_parallel_jobs_respect_capacity_and_instances(self):
        p = self.start_agent(CAPACITY=2)
        ids = [self.cp.add_job("SLEEPY", instance=f"i{n}", params={"steps": 3, "delay": 0.1})
               for n in range(5)]
        for rid in ids:
            self.cp.wait_result(rid, timeout=30)
            self.assert_delivered_once(rid, "COMPLETED")
        for _, body in self.cp.polls:
            self.assertEqual(body["capacity"], 2)
            self.assertLessEqual(len(body["running"]), 2)
        self.assertEqual(self.stop_agent(p), 0)

    def test_failed_job_reports_error(self):
        p = self.start_agent()
        rid = self.cp.add_job("FAILER")
        res = self.cp.wait_result(rid)
        self.assert_delivered_once(rid, "FAILED")
        self.assertEqual(res["error"]["message"], "it went wrong")
        self.assertTrue(res["error"]["retryable"])
        self.assertEqual(self.stop_agent(p), 0)

    def test_long_poll_picks_up_at_once(self):
        p = self.start_agent(POLL_WAIT=20, POLL_INTERVAL=10)
        self.cp.wait(lambda: self.cp.polls, what="first poll")
        time.sleep(0.3)  # the agent is now parked in a long poll
        t0 = time.time()
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_status(rid, "RUNNING", timeout=5)
        self.assertLess(time.time() - t0, 2.0)
        self.cp.wait_result(rid)
        self.assertEqual(self.cp.polls[0][1]["waitSeconds"], 20)
        self.assertEqual(self.stop_agent(p), 0)

    def test_idle_agent_polls_once_per_interval(self):
        p = self.start_agent(POLL_INTERVAL=0.5, POLL_JITTER="0.2")
        time.sleep(3.2)
        n = self.cp.poll_count()
        self.assertGreaterEqual(n, 4)
        self.assertLessEqual(n, 8)
        self.assertEqual(self.stop_agent(p), 0)

    def test_sigterm_exits_zero_and_fails_running_job_retryable(self):
        p = self.start_agent()
        rid = self.cp.add_job("WAITER")
        self.cp.wait_status(rid, "RUNNING")
        t0 = time.time()
        self.assertEqual(self.stop_agent(p), 0)
        self.assertLess(time.time() - t0, 8)
        res = self.cp.run(rid).result
        self.assertIsNotNone(res, self.log()[-3000:])
        self.assertEqual(res["status"], "FAILED")
        self.assertTrue(res["error"]["retryable"])
        self.assert_delivered_once(rid, "FAILED")
        self.assertEqual(self.spool_runs(), [])

    def test_sighup_reloads_configuration(self):
        conf = os.path.join(self.tmp, "agent.conf")
        with open(conf, "w") as f:
            f.write("capacity = 1\n")
        p = self.start_agent(["--config", conf], CAPACITY=None)
        self.cp.wait(lambda: self.cp.polls and self.cp.polls[-1][1]["capacity"] == 1, what="capacity 1")
        with open(conf, "w") as f:
            f.write("capacity = 4\n")
        p.send_signal(signal.SIGHUP)
        self.cp.wait(lambda: self.cp.polls[-1][1]["capacity"] == 4, what="capacity 4 after SIGHUP")
        self.wait_log("configuration reloaded")
        # A broken file on reload keeps the running configuration.
        with open(conf, "w") as f:
            f.write("capacity = lots\n")
        p.send_signal(signal.SIGHUP)
        self.wait_log("reload failed, keeping the current configuration")
        n = self.cp.poll_count()
        self.cp.wait(lambda: self.cp.poll_count() > n + 2, what="more polls")
        self.assertEqual(self.cp.polls[-1][1]["capacity"], 4)
        self.assertIsNone(p.poll())
        self.assertEqual(self.stop_agent(p), 0)

    def test_sighup_rotates_the_token(self):
        p = self.start_agent(BACKOFF_MAX="0.3")
        self.cp.wait(lambda: self.cp.polls, what="first poll")
        self.cp.token = "rotated-token-456"
        self.cp.wait(lambda: self.cp.unauthorized >= 1, what="old token refused")
        with open(self.token_file, "w") as f:
            f.write("rotated-token-456\n")
        p.send_signal(signal.SIGHUP)
        self.wait_log("configuration reloaded")
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_result(rid, timeout=15)
        self.assertEqual(self.stop_agent(p), 0)
        self.assertNotIn("rotated-token-456", self.log())


if __name__ == "__main__":
    unittest.main()
