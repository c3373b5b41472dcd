"""End to end: the agent dies (kill -9) and restarts — nothing is lost or sent twice."""
import os
import signal
import subprocess
import time
import unittest

from agent_harness import AgentTestCase, pid_alive

RESTART_MSG = "agent restarted during run"


class Restart(AgentTestCase):
    def kill9(self, p):
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def test_kill9_mid_job_reports_failed_retryable_once(self):
        # A process the agent does not own (think: a game server under its
        # monitor, in its own session) must survive the agent's death.
        bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
        try:
            p = self.start_agent()
            rid = self.cp.add_job("TICKER", instance="srv1")
            self.cp.wait(lambda: len(self.cp.run(rid).events) >= 3, what="a few ticks")
            child = self.job_child(p)
            self.kill9(p)
            self.cp.wait(lambda: not pid_alive(child), timeout=5, what="child died with the agent")
            self.assertEqual(self.spool_runs(), [rid])
            self.assertIsNone(self.cp.run(rid).result)

            p2 = self.start_agent()
            res = self.cp.wait_result(rid)
            self.assertEqual(res["status"], "FAILED")
            self.assertEqual(res["error"]["message"], RESTART_MSG)
            self.assertTrue(res["error"]["retryable"])
            run = self.assert_delivered_once(rid, "FAILED")
            self.assertEqual(run.events[res["lastSeq"]]["message"], RESTART_MSG)

            # The retry, as a new run on the same instance, completes.
            rid2 = self.cp.add_job("SLEEPY", instance="srv1", attempt=2)
            self.cp.wait_result(rid2)
            self.assert_delivered_once(rid2, "COMPLETED")
            time.sleep(0.5)
            self.assertEqual(len(self.cp.run(rid).results), 1, "restart failure reported twice")
            self.assertEqual(self.stop_agent(p2), 0)
            self.assertIsNone(bystander.poll(), "a process outside the agent was interrupted")
        finally:
            bystander.kill()
            bystander.wait()

    def test_kill9_with_control_plane_down_then_restart_delivers_everything_once(self):
        p = self.start_agent(BACKOFF_MAX="0.3")
        rid = self.cp.add_job("CHATTY", params={"lines": 250})  # ~5 s: still running at the kill
        self.cp.wait_status(rid, "RUNNING")
        self.cp.go_down()
        time.sleep(1.0)  # events pile up in the spool
        self.kill9(p)
        self.cp.come_up()
        p2 = self.start_agent()
        res = self.cp.wait_result(rid)
        self.assertEqual(res["error"]["message"], RESTART_MSG)
        run = self.assert_delivered_once(rid, "FAILED")
        self.assertGreater(len(run.events), 10)
        # Restart again: nothing is resent.
        self.assertEqual(self.stop_agent(p2), 0)
        self.assertEqual(self.spool_runs(), [])
        n = len(self.cp.requests)
        polls = self.cp.poll_count()
        p3 = self.start_agent()
        self.cp.wait(lambda: self.cp.poll_count() >= polls + 3, what="polls")
        self.assertEqual([r for r in self.cp.requests[n:] if r[1] != "poll"], [])
        self.assertEqual(self.stop_agent(p3), 0)

    def test_finished_run_keeps_its_real_result_across_restart(self):
        p = self.start_agent()
        self.cp.fault("result", "down")
        rid = self.cp.add_job("SLEEPY", params={"steps": 2, "delay": 0})
        self.cp.wait(lambda: any(e.get("status") == "COMPLETED"
                                 for e in self.cp.run(rid).events.values()), what="COMPLETED event")
        self.kill9(p)
        self.cp.clear_faults()
        p2 = self.start_agent()
        res = self.cp.wait_result(rid)
        self.assertEqual(res["status"], "COMPLETED")
        self.assert_delivered_once(rid, "COMPLETED")
        self.assertIn("resuming delivery", self.log())
        self.assertEqual(self.stop_agent(p2), 0)

    def test_unreadable_spool_record_is_set_aside(self):
        os.makedirs(os.path.join(self.data, "runs", "half-made"))
        with open(os.path.join(self.data, "runs", "junkfile"), "w") as f:
            f.write("x")
        p = self.start_agent()
        aside = os.path.join(self.data, "runs", ".rejected", "half-made")
        self.cp.wait(lambda: os.path.isdir(aside), timeout=10, what="record set aside")
        self.wait_log("cannot load run record")
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_result(rid)
        self.assertEqual(self.stop_agent(p), 0)


if __name__ == "__main__":
    unittest.main()


try:
    from instance_helpers import DEMO, Instance, proc_start_time
except ImportError:  # the instance helpers are not in this tree yet
    DEMO = ""


@unittest.skipUnless(DEMO, "needs JV_DEMO_SERVER_BIN")
class RestartWithGameServer(AgentTestCase):
    def test_kill9_mid_job_leaves_running_game_server_alone(self):
        inst = Instance(self, iid="srv1", data_dir=self.data)
        p = self.start_agent()
        start = self.cp.add_job("START_INSTANCE", instance="srv1")
        res = self.cp.wait_result(start, timeout=60)
        self.assertEqual(res["status"], "COMPLETED", res)
        pid = res["output"]["pid"]
        born = proc_start_time(pid)

        rid = self.cp.add_job("TICKER", instance="other")
        self.cp.wait(lambda: len(self.cp.run(rid).events) >= 3, what="ticks")
        child = self.job_child(p)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        self.cp.wait(lambda: not pid_alive(child), timeout=5, what="job child died with the agent")

        p2 = self.start_agent()
        res = self.cp.wait_result(rid)
        self.assertEqual(res["error"]["message"], RESTART_MSG)
        self.assertEqual(proc_start_time(pid), born, "the game server was restarted or killed")
        self.assertEqual(inst.state()["state"], "RUNNING")

        stop = self.cp.add_job("STOP_INSTANCE", instance="srv1")
        res = self.cp.wait_result(stop, timeout=60)
        self.assertEqual(res["status"], "COMPLETED", res)
        self.assertEqual(self.stop_agent(p2), 0)
