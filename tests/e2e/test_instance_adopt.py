"""Instance monitor: losing the monitor (kill -9), adopting its orphan without
ever signalling a reused pid, and one monitor per instance under races."""
import json
import os
import signal
import subprocess
import time
import unittest

from instance_helpers import (DEMO, JOBVISOR, Instance, default_spec, proc_alive,
                              proc_start_time, wait_until)


def status_json(root):
    out = subprocess.run([JOBVISOR, "status", "--data-dir", root, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return {i["instanceId"]: i for i in json.loads(out.stdout)["instances"]}


@unittest.skipUnless(JOBVISOR and DEMO, "needs JOBVISOR_BIN and JV_DEMO_SERVER_BIN")
class Adoption(unittest.TestCase):
    def test_kill_9_of_the_monitor_then_adopt_and_stop(self):
        inst = Instance(self)
        inst.start()
        st = inst.wait_state("RUNNING")
        pid, mon = st["pid"], inst.monitors[0]
        mon.send_signal(signal.SIGKILL)
        mon.wait(10)
        # The server outlives its monitor: its console FIFOs have no EOF/EPIPE.
        time.sleep(0.3)
        self.assertTrue(proc_alive(pid))
        seen = status_json(inst.root)["s1"]
        self.assertFalse(seen["monitor"])
        self.assertTrue(seen["orphan"])
        self.assertEqual(seen["state"], "RUNNING")
        self.assertEqual(seen["pid"], pid)
        # Console input and output while no monitor is attached are not lost.
        with open(os.path.join(inst.jv, "console.in"), "w") as f:
            f.write("say written while orphaned\n")
        line = inst.start()
        self.assertEqual(line, "ok adopted %d" % pid)
        now = inst.status()
        self.assertEqual(now["state"], "RUNNING")
        self.assertTrue(now["adopted"])
        self.assertEqual(now["pid"], pid)
        inst.wait_console("[Server] written while orphaned")
        self.assertTrue(inst.call({"op": "send", "line": "say after adoption"})["ok"])
        inst.wait_console("[Server] after adoption")
        reply, _ = inst.stop()
        final = reply["status"]
        self.assertEqual(final["state"], "STOPPED")
        self.assertTrue(final["lastExit"]["unknown"])
        self.assertTrue(final["lastExit"]["requested"])
        wait_until(lambda: not proc_alive(pid), 10, what="adopted server gone")
        self.assertIn("Saved the game (stop", inst.console())

    def test_adopted_server_that_crashes_is_restarted(self):
        inst = Instance(self, spec=default_spec(restart={"policy": "on-failure",
                                                         "backoffSeconds": 0.1}))
        inst.start()
        pid = inst.wait_state("RUNNING")["pid"]
        inst.monitors[0].send_signal(signal.SIGKILL)
        inst.monitors[0].wait(10)
        self.assertEqual(inst.start(), "ok adopted %d" % pid)
        inst.call({"op": "send", "line": "crash"})
        wait_until(lambda: (inst.state() or {}).get("restarts") == 1 and
                   inst.state()["state"] == "RUNNING", 20, what="restart of the adopted server")
        st = inst.status()
        self.assertNotEqual(st["pid"], pid)
        self.assertFalse(st["adopted"])
        self.assertTrue(st["lastExit"]["unknown"])

    def _kill_monitor_leaving_starting(self, inst, mon):
        """SIGKILL the monitor with state.json saying STARTING. A monitor tells
        its subscribers RUNNING before it persists RUNNING, so this is what a
        kill in that window leaves behind; STOP then KILL makes the window
        certain."""
        st = inst.state()
        mon.send_signal(signal.SIGSTOP)
        with open(os.path.join(inst.jv, "state.json"), "w") as f:
            json.dump(dict(st, state="STARTING", readyAt=None), f)
        mon.send_signal(signal.SIGKILL)
        mon.wait(10)
        return st["pid"]

    def test_adopted_starting_server_whose_ready_line_was_read_is_running(self):
        # The dead monitor consumed the ready line from the FIFO: the new one
        # finds it in console.log. Waiting for it instead would end in the
        # ready timeout killing a healthy server.
        inst = Instance(self)
        inst.start()
        inst.wait_state("RUNNING")
        pid = self._kill_monitor_leaving_starting(inst, inst.monitors[0])
        self.assertEqual(inst.start(), "ok adopted %d" % pid)
        now = inst.status()
        self.assertEqual(now["state"], "RUNNING", now)
        self.assertEqual(now["pid"], pid)
        self.assertTrue(now["adopted"])
        self.assertIn("its ready line is already in the log", inst.console())

    def test_adopted_starting_server_without_a_ready_line_keeps_starting(self):
        # Only a ready line after this server's own start note counts: the
        # one an earlier run printed does not.
        spec = default_spec(ready={"logPattern": "\\[Server\\] go-ready", "timeoutSeconds": 120})
        inst = Instance(self, spec=spec)
        inst.start()
        inst.wait_state("STARTING")
        self.assertTrue(inst.call({"op": "send", "line": "say go-ready"})["ok"])
        inst.wait_state("RUNNING")
        reply, _ = inst.stop()
        self.assertEqual(reply["status"]["state"], "STOPPED")
        inst.wait_monitor_exit()
        inst.start()
        inst.wait_state("STARTING")
        pid = self._kill_monitor_leaving_starting(inst, inst.monitors[1])
        self.assertEqual(inst.start(), "ok adopted %d" % pid)
        self.assertEqual(inst.status()["state"], "STARTING")
        self.assertTrue(inst.call({"op": "send", "line": "say go-ready"})["ok"])
        st = inst.wait_state("RUNNING")
        self.assertEqual(st["pid"], pid)

    def test_adopt_only_without_an_orphan_starts_nothing(self):
        inst = Instance(self)
        p, r = inst.launch(adopt_only=True)
        self.assertEqual(inst.read_status(r), "ok none")
        p.wait(10)
        self.assertEqual(p.returncode, 0)
        self.assertIsNone(inst.state())
        self.assertNotIn("server started", inst.console())

    def _impostor(self):
        """A live process of ours that a stale state.json will point at."""
        p = subprocess.Popen(["sleep", "60"])
        self.addCleanup(lambda: (p.kill(), p.wait()))
        wait_until(lambda: proc_start_time(p.pid) is not None, 5, what="sleep started")
        return p

    def _fake_state(self, inst, pid, start, boot=None):
        os.makedirs(inst.jv, exist_ok=True)
        with open("/proc/sys/kernel/random/boot_id") as f:
            real_boot = f.read().strip()
        with open(os.path.join(inst.jv, "state.json"), "w") as f:
            json.dump({"instanceId": inst.id, "state": "RUNNING", "pid": pid,
                       "startTime": start, "bootId": boot or real_boot}, f)

    def test_reused_pid_is_never_touched(self):
        inst = Instance(self)
        imp = self._impostor()
        # Same pid, different start time: the pid was reused by another process.
        self._fake_state(inst, imp.pid, proc_start_time(imp.pid) + 1)
        seen = status_json(inst.root)["s1"]
        self.assertEqual(seen["state"], "CRASHED")
        self.assertTrue(seen["stale"])
        self.assertEqual(seen["recordedState"], "RUNNING")
        self.assertFalse(seen["orphan"])
        line = inst.start()
        self.assertRegex(line, r"^ok started \d+$")
        self.assertNotEqual(int(line.split()[-1]), imp.pid)
        inst.wait_state("RUNNING")
        reply, _ = inst.stop(force=True)
        self.assertEqual(reply["status"]["state"], "STOPPED")
        self.assertIsNone(imp.poll(), "the impostor was signalled")
        self.assertTrue(proc_alive(imp.pid))

    def test_pid_from_another_boot_is_never_touched(self):
        inst = Instance(self)
        imp = self._impostor()
        self._fake_state(inst, imp.pid, proc_start_time(imp.pid),
                         boot="00000000-0000-0000-0000-000000000000")
        self.assertFalse(status_json(inst.root)["s1"]["orphan"])
        self.assertRegex(inst.start(), r"^ok started \d+$")
        inst.stop(force=True)
        self.assertIsNone(imp.poll())

    def test_two_concurrent_starts_make_one_server(self):
        inst = Instance(self)
        launches = [inst.launch() for _ in range(3)]
        lines = [inst.read_status(r) for _, r in launches]
        self.assertEqual(sum(l.startswith("ok started") for l in lines), 1, lines)
        self.assertEqual(sum(l.startswith("busy") for l in lines), 2, lines)
        wait_until(lambda: sum(1 for p, _ in launches if p.poll() == 3) == 2, 10,
                   what="two monitors to give up with status 3")
        inst.wait_state("RUNNING")
        self.assertEqual(inst.console().count("server started"), 1)


if __name__ == "__main__":
    unittest.main()
