"""Instance monitor: the stop ladder (console -> signal -> SIGKILL) and tree kills.

The demo server misbehaves on request: a stop command it does not know,
`hang` (ignores the console and SIGTERM), children that sleep, double-forked
daemons that leave its process group, and stubborn ones that ignore SIGTERM."""
import os
import shutil
import time
import unittest

from instance_helpers import (DEMO, JOBVISOR, Instance, cgroup2_writable, cgroup_leaf, default_spec,
                              proc_alive, wait_until)


@unittest.skipUnless(JOBVISOR and DEMO, "needs JOBVISOR_BIN and JV_DEMO_SERVER_BIN")
class StopLadder(unittest.TestCase):
    def test_falls_through_to_the_stop_signal(self):
        # "list" is a harmless command: the server keeps running, so the
        # monitor must go on to SIGTERM, which the demo server obeys.
        spec = default_spec(stop={"command": "list", "signal": "SIGTERM", "timeoutSeconds": 0.5,
                                  "signalTimeoutSeconds": 10})
        inst = Instance(self, spec=spec)
        inst.start()
        inst.wait_state("RUNNING")
        t0 = time.monotonic()
        reply, events = inst.stop()
        took = time.monotonic() - t0
        final = reply["status"]
        self.assertEqual(final["state"], "STOPPED")
        self.assertEqual(final["lastExit"]["code"], 0)
        self.assertTrue(final["lastExit"]["requested"])
        phases = [e["status"].get("phase") for e in events]
        self.assertIn("console", phases)
        self.assertIn("signal", phases)
        self.assertNotIn("kill", phases)
        self.assertGreaterEqual(took, 0.5)
        self.assertLess(took, 8)
        console = inst.console()
        self.assertIn("There are 0 of a max of 20 players online", console)
        self.assertIn("Stopping the server (SIGTERM)", console)

    def test_hang_falls_through_to_sigkill(self):
        spec = default_spec(stop={"command": "stop", "timeoutSeconds": 0.5,
                                  "signalTimeoutSeconds": 0.5})
        inst = Instance(self, spec=spec)
        inst.start()
        inst.wait_state("RUNNING")
        pid = inst.state()["pid"]
        inst.call({"op": "send", "line": "hang"})
        inst.wait_console("Server thread is hanging")
        t0 = time.monotonic()
        reply, events = inst.stop()
        took = time.monotonic() - t0
        final = reply["status"]
        self.assertEqual(final["state"], "STOPPED")
        self.assertEqual(final["lastExit"]["signal"], "SIGKILL")
        self.assertIsNone(final["lastExit"]["code"])
        self.assertEqual([p for p in (e["status"].get("phase") for e in events) if p][:3],
                         ["console", "signal", "kill"])
        self.assertGreaterEqual(took, 1.0)
        self.assertLess(took, 10)
        self.assertFalse(proc_alive(pid))

    def test_force_kills_at_once(self):
        inst = Instance(self)
        inst.start()
        inst.wait_state("RUNNING")
        t0 = time.monotonic()
        reply, _ = inst.stop(force=True)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(reply["status"]["lastExit"]["signal"], "SIGKILL")
        self.assertNotIn("Stopping the server", inst.console())

    def test_request_timeout_overrides_the_spec(self):
        spec = default_spec(stop={"command": "list", "timeoutSeconds": 60,
                                  "signalTimeoutSeconds": 5})
        inst = Instance(self, spec=spec)
        inst.start()
        inst.wait_state("RUNNING")
        t0 = time.monotonic()
        reply, _ = inst.stop(timeoutSeconds=0.3)
        self.assertLess(time.monotonic() - t0, 8)
        self.assertEqual(reply["status"]["state"], "STOPPED")

    def test_stop_command_typed_on_the_console_is_a_stop(self):
        inst = Instance(self)
        inst.start()
        inst.wait_state("RUNNING")
        inst.call({"op": "send", "line": "stop"})
        st = inst.wait_state("STOPPED", timeout=20)
        self.assertTrue(st["lastExit"]["requested"])
        self.assertEqual(st["restarts"], 0)

    def test_sigterm_to_the_monitor_stops_the_server(self):
        inst = Instance(self)
        inst.start()
        pid = inst.wait_state("RUNNING")["pid"]
        inst.monitors[0].terminate()
        inst.monitors[0].wait(30)
        self.assertEqual(inst.monitors[0].returncode, 0)
        st = inst.state()
        self.assertEqual(st["state"], "STOPPED")
        self.assertTrue(st["lastExit"]["requested"])
        self.assertEqual(st["lastExit"]["code"], 0)
        self.assertFalse(proc_alive(pid))

    def test_deleting_the_instance_dir_stops_the_server(self):
        inst = Instance(self)
        inst.start()
        pid = inst.wait_state("RUNNING")["pid"]
        shutil.rmtree(inst.dir)
        inst.wait_monitor_exit(timeout=30)
        self.assertFalse(proc_alive(pid))

    def _tree(self, settings):
        spec = default_spec(["--fork-child"], stop={"command": "stop", "timeoutSeconds": 5,
                                                      "signalTimeoutSeconds": 5})
        inst = Instance(self, spec=spec, settings=settings)
        inst.start()
        inst.wait_state("RUNNING")
        for cmd in ("fork", "fork daemon", "fork daemon stubborn"):
            inst.call({"op": "send", "line": cmd})
        wait_until(lambda: len(inst.child_pids()) >= 4, 10, what="4 children reported")
        kids = inst.child_pids()
        server = inst.state()["pid"]
        inst.running_cgroup = inst.state()["cgroup"]
        self.assertTrue(all(proc_alive(p) for p in kids))
        reply, _ = inst.stop()
        self.assertEqual(reply["status"]["state"], "STOPPED")
        # The leader exits cleanly; every child, including the double-forked
        # daemon that ignores SIGTERM, must be gone by the time STOPPED is said.
        self.assertEqual(reply["status"]["lastExit"]["code"], 0)
        for p in kids + [server]:
            self.assertFalse(proc_alive(p), "pid %d survived the stop" % p)
        return inst

    def test_whole_tree_is_killed_with_cgroup(self):
        if not cgroup2_writable():
            self.skipTest("no writable cgroup2 hierarchy here")
        inst = self._tree({})
        cg = inst.running_cgroup
        self.assertEqual(cg, cgroup_leaf(inst.dir, inst.id))
        self.assertFalse(os.path.exists(cg), "cgroup leaf still there when STOPPED was reported")

    def test_whole_tree_is_killed_without_cgroup(self):
        inst = self._tree({"cgroups": False})
        self.assertIsNone(inst.running_cgroup)

    def test_sigkill_of_the_group_reaches_children(self):
        spec = default_spec(stop={"command": "stop", "timeoutSeconds": 0.3,
                                  "signalTimeoutSeconds": 0.3})
        inst = Instance(self, spec=spec, settings={"cgroups": False})
        inst.start()
        inst.wait_state("RUNNING")
        inst.call({"op": "send", "line": "fork stubborn"})
        inst.call({"op": "send", "line": "fork daemon stubborn"})
        wait_until(lambda: len(inst.child_pids()) >= 2, 10, what="children")
        kids = inst.child_pids()
        inst.call({"op": "send", "line": "hang"})
        inst.wait_console("hanging")
        reply, _ = inst.stop()
        self.assertEqual(reply["status"]["lastExit"]["signal"], "SIGKILL")
        for p in kids:
            self.assertFalse(proc_alive(p), "pid %d survived" % p)


if __name__ == "__main__":
    unittest.main()
