"""Instance monitor: restart policy, exponential backoff with jitter, the
crash-loop breaker, and how exits are classified (code, signal, requested)."""
import datetime
import os
import time
import unittest

from instance_helpers import DEMO, JOBVISOR, Instance, default_spec, wait_until


def timeline(conn, until_states, timeout):
    """Record (monotonic time, state) for every state event until one of
    until_states is seen."""
    seen = []
    end = time.monotonic() + timeout
    while True:
        m = conn.recv(max(0.05, end - time.monotonic()))
        if m.get("event") != "state":
            continue
        st = m["status"]["state"]
        if not seen or seen[-1][1] != st:
            seen.append((time.monotonic(), st, m["status"]))
        if st in until_states:
            return seen


def since_seconds(status):
    """The monitor's own timestamp of a state change, in seconds."""
    t = datetime.datetime.strptime(status["since"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def backoff_delays(seen):
    """Seconds spent in each BACKOFF before the next STARTING, by the monitor's
    clock (client-side receive times would add delivery jitter)."""
    out = []
    for i, (_, st, status) in enumerate(seen):
        if st == "BACKOFF" and i + 1 < len(seen) and seen[i + 1][1] == "STARTING":
            out.append(since_seconds(seen[i + 1][2]) - since_seconds(status))
    return out


@unittest.skipUnless(JOBVISOR and DEMO, "needs JOBVISOR_BIN and JV_DEMO_SERVER_BIN")
class RestartPolicy(unittest.TestCase):
    def test_backoff_doubles_within_jitter_bounds(self):
        spec = default_spec(["--ready-delay-ms", "50", "--exit-after-ms", "150"],
                            restart={"policy": "on-failure", "maxRestarts": 3,
                                     "windowSeconds": 300, "backoffSeconds": 0.4,
                                     "backoffMaxSeconds": 60})
        inst = Instance(self, spec=spec)
        c = None
        inst.start()
        c = inst.conn()
        c.send({"op": "subscribe"})
        c.reply()
        seen = timeline(c, ("CRASHED",), 30)
        c.close()
        delays = backoff_delays(seen)
        self.assertEqual(len(delays), 3, seen)
        for k, d in enumerate(delays):
            base = 0.4 * 2 ** k
            self.assertGreaterEqual(d, base * 0.8 - 0.002, "restart %d after %.3fs" % (k + 1, d))
            self.assertLessEqual(d, base * 1.2 + 0.4, "restart %d after %.3fs" % (k + 1, d))
        final = seen[-1][2]
        self.assertEqual(final["restarts"], 3)
        self.assertEqual(final["lastExit"]["code"], 1)
        self.assertIn("crash loop", final["message"])
        inst.wait_monitor_exit()
        self.assertEqual(inst.monitors[0].returncode, 1)

    def test_backoff_resets_after_stable_uptime(self):
        spec = default_spec(["--ready-delay-ms", "50"],
                            restart={"policy": "on-failure", "maxRestarts": 10,
                                     "backoffSeconds": 0.5, "stableSeconds": 1.5})
        inst = Instance(self, spec=spec)
        inst.start()
        inst.wait_state("RUNNING")
        c = inst.conn()
        c.send({"op": "subscribe"})
        c.reply()

        def crash_and_time():
            inst.call({"op": "send", "line": "crash"})
            seen = timeline(c, ("RUNNING",), 20)
            return backoff_delays(seen)[0]

        time.sleep(1.6)
        d1 = crash_and_time()        # stable run: base delay
        d2 = crash_and_time()        # crashed right after start: doubled
        time.sleep(1.6)
        d3 = crash_and_time()        # stable again: base delay
        c.close()
        self.assertTrue(0.4 - 0.002 <= d1 <= 0.6 + 0.4, d1)
        self.assertTrue(0.8 - 0.002 <= d2 <= 1.2 + 0.4, d2)
        self.assertTrue(0.4 - 0.002 <= d3 <= 0.6 + 0.4, d3)
        self.assertEqual(inst.status()["restarts"], 3)

    def test_crash_loop_moves_to_crashed(self):
        spec = default_spec(["--ready-delay-ms", "20", "--exit-after-ms", "60"],
                            restart={"policy": "always", "maxRestarts": 2, "windowSeconds": 60,
                                     "backoffSeconds": 0.05})
        inst = Instance(self, spec=spec)
        inst.start()
        st = inst.wait_state("CRASHED", timeout=30)
        self.assertEqual(st["restarts"], 2)
        self.assertIn("crash loop: 2 restarts within 60s", st["message"])
        self.assertIsNone(st["pid"])
        inst.wait_monitor_exit()
        self.assertFalse(os.path.exists(inst.sock_path))
        self.assertEqual(inst.console().count("server started"), 3)

    def test_unrequested_exit_0_is_restarted_under_on_failure(self):
        inst = Instance(self)
        inst.start()
        first = inst.wait_state("RUNNING")
        inst.call({"op": "send", "line": "exit 0"})
        wait_until(lambda: (inst.state() or {}).get("restarts") == 1 and
                   inst.state()["state"] == "RUNNING", 20, what="restart after exit 0")
        st = inst.status()
        self.assertNotEqual(st["pid"], first["pid"])
        self.assertEqual(st["lastExit"]["code"], 0)
        self.assertFalse(st["lastExit"]["requested"])

    def test_success_exit_code_is_a_clean_stop_under_on_failure(self):
        spec = default_spec(restart={"policy": "on-failure", "successExitCodes": [0, 3]})
        inst = Instance(self, spec=spec)
        inst.start()
        inst.wait_state("RUNNING")
        inst.call({"op": "send", "line": "exit 3"})
        st = inst.wait_state("STOPPED")
        self.assertEqual(st["lastExit"]["code"], 3)
        self.assertEqual(st["restarts"], 0)
        self.assertIn("exited on its own", st["message"])

    def test_always_restarts_even_a_success_code(self):
        spec = default_spec(restart={"policy": "always", "successExitCodes": [0],
                                     "backoffSeconds": 0.1})
        inst = Instance(self, spec=spec)
        inst.start()
        inst.wait_state("RUNNING")
        inst.call({"op": "send", "line": "exit 0"})
        wait_until(lambda: (inst.state() or {}).get("restarts") == 1, 20, what="restart")

    def test_signal_death_under_never_is_crashed_with_the_signal(self):
        spec = default_spec(restart={"policy": "never"})
        inst = Instance(self, spec=spec)
        inst.start()
        inst.wait_state("RUNNING")
        inst.call({"op": "send", "line": "crash segv"})
        st = inst.wait_state("CRASHED")
        self.assertEqual(st["lastExit"]["signal"], "SIGSEGV")
        self.assertIsNone(st["lastExit"]["code"])
        self.assertFalse(st["lastExit"]["oom"])
        self.assertIn("killed by SIGSEGV", st["lastExit"]["reason"])

    def test_exit_code_under_never_is_crashed_with_the_code(self):
        spec = default_spec(restart={"policy": "never"})
        inst = Instance(self, spec=spec)
        inst.start()
        inst.wait_state("RUNNING")
        inst.call({"op": "send", "line": "crash"})
        st = inst.wait_state("CRASHED")
        self.assertEqual(st["lastExit"]["code"], 1)
        self.assertIsNone(st["lastExit"]["signal"])

    def test_restart_uses_the_new_build_and_spec(self):
        inst = Instance(self, spec=default_spec(restart={"policy": "on-failure",
                                                         "backoffSeconds": 0.1}))
        inst.start()
        pid = inst.wait_state("RUNNING")["pid"]
        b2 = os.path.join(inst.dir, "builds", "b2")
        os.makedirs(b2)
        os.link(os.path.join(inst.dir, "builds", "b1", "server"), os.path.join(b2, "server"))
        tmp = os.path.join(inst.dir, "current.tmp")
        os.symlink("builds/b2", tmp)
        os.replace(tmp, os.path.join(inst.dir, "current"))
        inst.call({"op": "send", "line": "crash"})
        wait_until(lambda: (inst.state() or {}).get("restarts") == 1 and
                   inst.state()["state"] == "RUNNING", 20, what="restart")
        new = inst.status()["pid"]
        self.assertNotEqual(new, pid)
        self.assertEqual(os.readlink("/proc/%d/exe" % new), os.path.realpath(os.path.join(b2, "server")))

    def test_a_spec_broken_before_a_restart_makes_it_crashed(self):
        inst = Instance(self, spec=default_spec(restart={"policy": "on-failure",
                                                         "backoffSeconds": 0.1}))
        inst.start()
        inst.wait_state("RUNNING")
        inst.write_spec({"cwd": "data"})
        inst.call({"op": "send", "line": "crash"})
        st = inst.wait_state("CRASHED")
        self.assertIn("restart failed: instance.json: 'command' is missing", st["message"])
        self.assertIn("restart failed", inst.console())

    def test_stop_during_backoff_stops_without_restart(self):
        spec = default_spec(restart={"policy": "on-failure", "backoffSeconds": 30,
                                     "backoffMaxSeconds": 60})
        inst = Instance(self, spec=spec)
        inst.start()
        inst.wait_state("RUNNING")
        inst.call({"op": "send", "line": "crash"})
        inst.wait_state("BACKOFF")
        self.assertIsNotNone(inst.state().get("nextRestartAt"))
        reply, _ = inst.stop(timeout=10)
        self.assertEqual(reply["status"]["state"], "STOPPED")
        self.assertEqual(reply["status"]["restarts"], 0)
        inst.wait_monitor_exit()


if __name__ == "__main__":
    unittest.main()
