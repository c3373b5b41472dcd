"""End to end: the agent against a control plane that fails — outages, errors, 409, cancels."""
import os
import signal
import time
import unittest

from agent_harness import AgentTestCase, pid_alive, processes_in_group


class Outages(AgentTestCase):
    def test_control_plane_down_mid_jobs_then_back(self):
        p = self.start_agent(CAPACITY=3, BACKOFF_MAX="0.5")
        ids = [self.cp.add_job("GATED", instance=f"i{n}", params={"lines": 40}) for n in range(3)]
        for rid in ids:
            self.cp.wait_status(rid, "RUNNING")
        self.cp.go_down()
        # Only now do the jobs log and finish, while nobody listens; everything
        # goes to the spool.
        self.open_gates(f"i{n}" for n in range(3))
        self.assertEqual(sorted(self.wait_spool_results(3)), sorted(ids))
        # Up again only once the agent has tried and failed to deliver.
        self.wait_log("kept in the spool")
        self.cp.come_up()
        for rid in ids:
            self.cp.wait_result(rid, timeout=30)
            run = self.assert_delivered_once(rid, "COMPLETED")
            self.assertEqual(len(run.results), 1)
            # 40 log lines + steps: nothing was lost in the outage
            logs = [e for e in run.events.values() if e["kind"] == "log"]
            self.assertEqual(len(logs), 40)
        self.cp.wait(lambda: not self.spool_runs(), what="spool emptied")
        self.assertEqual(self.stop_agent(p), 0)
        self.assertIn("kept in the spool", self.log())

    def test_server_errors_and_lost_answers_deliver_each_event_once(self):
        p = self.start_agent(BACKOFF_MAX="0.3")
        self.cp.fault("events", "lostack", count=2)
        self.cp.fault("result", "lostack", count=1)
        rid = self.cp.add_job("CHATTY", params={"lines": 30})
        self.cp.wait_status(rid, "RUNNING")
        self.cp.wait(lambda: "events" not in self.cp.faults, what="lost answers used up")
        self.cp.fault("events", "500", count=3)
        self.cp.wait(lambda: len(self.cp.run(rid).results) >= 2, what="result resent after lost answer")
        run = self.assert_delivered_once(rid, "COMPLETED")
        self.assertGreater(run.duplicates, 0)  # resent after the lost answers, stored once
        self.assertEqual(self.stop_agent(p), 0)

    def test_429_retry_after_is_honoured(self):
        p = self.start_agent(BACKOFF_MAX="0.2")
        self.cp.retry_after = 2
        self.cp.fault("events", "429", count=1)
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_result(rid, timeout=20)
        times = [t for t, ep, path in self.cp.requests if ep == "events" and rid in path]
        self.assertGreaterEqual(times[1] - times[0], 1.9, "second events POST came before Retry-After")
        self.assert_delivered_once(rid, "COMPLETED")
        self.assertEqual(self.stop_agent(p), 0)

    def test_poll_failures_back_off_and_recover(self):
        p = self.start_agent(POLL_INTERVAL="0.1", BACKOFF_MAX="2")
        self.cp.fault("poll", "503")
        time.sleep(4)
        failed = self.cp.poll_count()
        # 1 s, 2 s, 2 s ... with jitter: a handful, not 40 polls at the 0.1 s interval
        self.assertLessEqual(failed, 8)
        self.cp.clear_faults()
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_result(rid, timeout=10)
        self.assertIn("reachable again", self.log())
        self.assertEqual(self.stop_agent(p), 0)

    def test_bad_token_is_logged_loudly_and_never_printed(self):
        with open(self.token_file, "w") as f:
            f.write("wrong-token\n")
        p = self.start_agent(BACKOFF_MAX="0.5")
        self.cp.wait(lambda: self.cp.unauthorized >= 2, what="two refused polls")
        self.assertEqual(self.stop_agent(p), 0)
        log = self.log()
        self.assertIn("HTTP 401", log)
        self.assertIn("level=error", log)
        self.assertNotIn("wrong-token", log)


class Cancellation(AgentTestCase):
    def test_cancel_reaches_running_job_within_one_poll_interval(self):
        p = self.start_agent(POLL_INTERVAL=1)
        rid = self.cp.add_job("WAITER")
        self.cp.wait_status(rid, "RUNNING", timeout=10)
        time.sleep(0.2)
        t0 = time.time()
        self.cp.cancel(rid)
        self.cp.wait_status(rid, "CANCELLED", timeout=10)
        self.assertLess(time.time() - t0, 1.0 + 0.8)
        self.cp.wait_result(rid)
        run = self.assert_delivered_once(rid, "CANCELLED")
        self.assertEqual(run.result["status"], "CANCELLED")
        self.assertEqual(self.stop_agent(p), 0)

    def test_cancel_with_long_poll_is_immediate(self):
        p = self.start_agent(POLL_INTERVAL=5, POLL_WAIT=20, CAPACITY=2)
        rid = self.cp.add_job("WAITER")
        self.cp.wait_status(rid, "RUNNING", timeout=10)
        time.sleep(0.5)
        t0 = time.time()
        self.cp.cancel(rid)
        self.cp.wait_status(rid, "CANCELLED", timeout=10)
        self.assertLess(time.time() - t0, 1.0)
        self.assertEqual(self.stop_agent(p), 0)

    def test_pending_cancel_does_not_make_long_polls_spin(self):
        # The control plane repeats a cancel in every answer until the run
        # ends; a long poll answered at once must not be repeated at once.
        p = self.start_agent(POLL_INTERVAL=1, POLL_WAIT=20)
        rid = self.cp.add_job("STUBBORN", cancelGraceSeconds=3)
        self.cp.wait(lambda: len(self.cp.run(rid).events) >= 2, what="script running")
        self.cp.cancel(rid)
        n0 = self.cp.poll_count()
        self.cp.wait_result(rid, timeout=15)
        polls = self.cp.poll_count() - n0
        self.assertLessEqual(polls, 8, f"{polls} polls during a 3 s grace period")
        self.assertEqual(self.stop_agent(p), 0)

    def test_script_ignoring_cancel_is_killed_after_grace(self):
        p = self.start_agent()
        rid = self.cp.add_job("STUBBORN", cancelGraceSeconds=1)
        self.cp.wait_status(rid, "RUNNING")
        child = self.job_child(p)
        self.cp.wait(lambda: any(e.get("message") == "ignoring cancellation"
                                 for e in self.cp.run(rid).events.values()), what="script running")
        t0 = time.time()
        self.cp.cancel(rid)
        res = self.cp.wait_result(rid, timeout=15)
        elapsed = time.time() - t0
        self.assertEqual(res["status"], "CANCELLED")
        self.assertIn("did not stop within 1 s and was killed", res["error"]["message"])
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 5)
        self.assertEqual(processes_in_group(child), [])
        self.assertEqual(self.stop_agent(p), 0)

    def test_cancel_grace_is_capped_by_the_agent(self):
        p = self.start_agent(CANCEL_GRACE=1, CANCEL_GRACE_MAX=1)
        rid = self.cp.add_job("STUBBORN", cancelGraceSeconds=3600)
        self.cp.wait_status(rid, "RUNNING")
        self.cp.wait(lambda: len(self.cp.run(rid).events) >= 2, what="script running")
        self.cp.cancel(rid)
        res = self.cp.wait_result(rid, timeout=15)
        self.assertIn("did not stop within 1 s", res["error"]["message"])
        self.assertEqual(self.stop_agent(p), 0)

    def test_job_timeout_fails_the_run(self):
        p = self.start_agent()
        rid = self.cp.add_job("WAITER", timeoutSeconds=1)
        res = self.cp.wait_result(rid, timeout=15)
        self.assertEqual(res["status"], "FAILED")
        self.assertEqual(res["error"]["reason"], "timeout")
        self.assertEqual(self.stop_agent(p), 0)


class Conflicts(AgentTestCase):
    def test_409_stops_child_and_drops_spool(self):
        p = self.start_agent()
        rid = self.cp.add_job("TICKER")
        self.cp.wait_status(rid, "RUNNING")
        child = self.job_child(p)
        self.assertEqual(self.spool_runs(), [rid])
        self.cp.revoke(rid)
        self.cp.wait(lambda: not pid_alive(child), timeout=10, what="child stopped after 409")
        deadline = time.time() + 5
        while self.spool_runs() and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.spool_runs(), [])
        self.assertIsNone(self.cp.run(rid).result)
        self.assertIn("409", self.log())
        # The agent keeps working.
        rid2 = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_result(rid2)
        self.assertEqual(self.stop_agent(p), 0)

    def test_other_4xx_is_not_retried_forever(self):
        p = self.start_agent(BACKOFF_MAX="0.2")
        self.cp.fault("result", "400")
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.wait_log("giving up on run", timeout=20)
        n = len([1 for _, ep, path in self.cp.requests if ep == "result" and rid in path])
        self.assertEqual(n, 5)
        time.sleep(1)
        n2 = len([1 for _, ep, path in self.cp.requests if ep == "result" and rid in path])
        self.assertEqual(n, n2, "still retrying after giving up")
        self.assertTrue(os.path.isdir(os.path.join(self.data, "runs", ".rejected", rid)))
        self.assertEqual(self.spool_runs(), [])
        self.assertIsNone(p.poll())
        self.assertEqual(self.stop_agent(p), 0)


class Shutdown(AgentTestCase):
    def test_sigterm_kills_stubborn_job_after_shutdown_grace(self):
        p = self.start_agent(SHUTDOWN_GRACE=1)
        rid = self.cp.add_job("STUBBORN")
        self.cp.wait_status(rid, "RUNNING")
        child = self.job_child(p)
        t0 = time.time()
        self.assertEqual(self.stop_agent(p), 0)
        self.assertLess(time.time() - t0, 5)
        self.assertEqual(processes_in_group(child), [])
        res = self.cp.run(rid).result
        self.assertEqual(res["status"], "FAILED")
        self.assertTrue(res["error"]["retryable"])

    def test_sigterm_with_control_plane_down_keeps_spool_for_next_start(self):
        p = self.start_agent(SHUTDOWN_GRACE=2)
        rid = self.cp.add_job("WAITER")
        self.cp.wait_status(rid, "RUNNING")
        self.cp.go_down()
        t0 = time.time()
        self.assertEqual(self.stop_agent(p), 0)
        self.assertLess(time.time() - t0, 6)
        self.assertEqual(self.spool_runs(), [rid])
        self.cp.come_up()
        p2 = self.start_agent()
        res = self.cp.wait_result(rid, timeout=15)
        self.assertEqual(res["status"], "FAILED")
        self.assertIn("shutting down", res["error"]["message"])
        self.assert_delivered_once(rid, "FAILED")
        self.assertEqual(len(self.cp.run(rid).results), 1)
        self.assertEqual(self.stop_agent(p2), 0)

    def test_second_signal_exits_at_once(self):
        p = self.start_agent(SHUTDOWN_GRACE=30)
        rid = self.cp.add_job("STUBBORN")
        self.cp.wait_status(rid, "RUNNING")
        child = self.job_child(p)
        p.send_signal(signal.SIGTERM)
        # The second signal must come after the agent took in the first, and
        # outside the window in which a repeat counts as the same request.
        self.wait_log("SIGTERM received: shutting down")
        time.sleep(2.2)
        t0 = time.time()
        self.assertEqual(self.stop_agent(p, signal.SIGINT), 0)
        self.assertLess(time.time() - t0, 4)
        self.assertEqual(processes_in_group(child), [])


if __name__ == "__main__":
    unittest.main()
