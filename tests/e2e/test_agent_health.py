"""`jobvisor health` against the real agent: healthy only while the agent's process lives, its
loop goes round and its polls are answered; every other case exits 1 with the reason."""
import json
import os
import signal
import subprocess
import time
import unittest

from agent_harness import JOBVISOR, AgentTestCase


class Health(AgentTestCase):
    def health(self, *args, data=None):
        p = subprocess.run([JOBVISOR, "health", "--data-dir", data or self.data, *args],
                           capture_output=True, text=True, timeout=30,
                           env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        self.assertIn(p.returncode, (0, 1), p.stderr)
        return p.returncode, p.stdout.strip()

    def wait_health(self, want_code, needle, *args, timeout=20):
        deadline = time.time() + timeout
        while True:
            code, out = self.health(*args)
            if code == want_code and needle in out:
                return out
            if time.time() > deadline:
                self.fail(f"health never gave {want_code} {needle!r}; last: {code} {out}\n"
                          f"{self.log()[-2000:]}")
            time.sleep(0.2)

    def test_no_agent_is_unhealthy(self):
        code, out = self.health()
        self.assertEqual(code, 1)
        self.assertIn("no agent is running on", out)

    def test_running_agent_is_healthy_then_a_clean_exit_is_not(self):
        p = self.start_agent()
        self.cp.wait(lambda: self.cp.poll_count() >= 2, what="two polls")
        out = self.wait_health(0, "healthy: agent agent-1")
        self.assertIn(f"pid {p.pid}, running", out)
        code, out = self.health("--json")
        self.assertEqual(code, 0)
        j = json.loads(out)
        self.assertTrue(j["healthy"])
        self.assertEqual(j["state"], "running")
        self.assertEqual(j["pid"], p.pid)
        self.assertLess(j["lastPollAgeSeconds"], 10)
        self.assertEqual(self.stop_agent(p), 0)
        self.assertFalse(os.path.exists(os.path.join(self.data, "agent-state.json")))
        code, out = self.health()
        self.assertEqual(code, 1)
        self.assertIn("no agent is running", out)

    def test_killed_agent_is_unhealthy_at_once(self):
        p = self.start_agent()
        self.wait_health(0, "healthy")
        p.kill()
        p.wait(10)
        code, out = self.health()
        self.assertEqual(code, 1)
        self.assertIn(f"pid {p.pid}, which wrote the state file, is gone", out)

    def test_stalled_loop_is_unhealthy_until_it_goes_on(self):
        p = self.start_agent()
        self.wait_health(0, "healthy")
        os.kill(p.pid, signal.SIGSTOP)
        try:
            out = self.wait_health(1, "is stalled: its loop last went round", "--max-beat-age", "7",
                                   timeout=20)
            self.assertIn("(limit 7 s)", out)
        finally:
            os.kill(p.pid, signal.SIGCONT)
        self.wait_health(0, "healthy", "--max-beat-age", "7", timeout=10)
        self.assertEqual(self.stop_agent(p), 0)

    def test_unreachable_control_plane_is_unhealthy_after_max_poll_age(self):
        p = self.start_agent()
        self.wait_health(0, "healthy", "--max-poll-age", "8")
        self.cp.go_down()
        out = self.wait_health(1, "had no poll answered for", "--max-poll-age", "8", timeout=25)
        self.assertIn("(limit 8 s)", out)
        self.cp.come_up()
        self.wait_health(0, "healthy", "--max-poll-age", "8", timeout=25)
        self.assertEqual(self.stop_agent(p), 0)

    def test_draining_agent_is_healthy_and_says_so(self):
        p = self.start_agent(DRAIN_TIMEOUT=60)
        rid = self.cp.add_job("GATED", instance="g1")
        self.cp.wait_status(rid, "RUNNING")
        p.send_signal(signal.SIGTERM)
        out = self.wait_health(0, "draining")
        self.assertIn("1 runs running", out)
        self.open_gates(["g1"])
        self.assertEqual(p.wait(30), 0)

    def test_a_reused_pid_is_not_taken_for_the_agent(self):
        # A state file naming a live process (this test) that started at another time.
        with open(f"/proc/{os.getpid()}/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])
        now = int(time.time() * 1000)
        with open(os.path.join(self.data, "agent-state.json"), "w") as f:
            json.dump({"pid": os.getpid(), "pidStartTime": start + 1, "heartbeatAtMs": now,
                       "startedAtMs": now, "lastPollAtMs": now, "state": "running"}, f)
        code, out = self.health()
        self.assertEqual(code, 1)
        self.assertIn("is gone", out)

    def test_bad_options_exit_2(self):
        for args in (["--max-beat-age", "0"], ["--max-poll-age", "x"], ["--nope"], ["extra"]):
            p = subprocess.run([JOBVISOR, "health", "--data-dir", self.data, *args],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn("jobvisor health:", p.stderr)


if __name__ == "__main__":
    unittest.main()
