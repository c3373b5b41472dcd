"""Instance monitor: start, readiness, console, log capture and rotation, status.

Real `jobvisor monitor` processes supervising the real demo server."""
import json
import os
import socket
import stat
import subprocess
import time
import unittest

from instance_helpers import (DEMO, JOBVISOR, MONITOR, Instance, default_spec, proc_alive,
                              proc_start_time, wait_until)


@unittest.skipUnless(JOBVISOR and DEMO, "needs JOBVISOR_BIN and JV_DEMO_SERVER_BIN")
class MonitorLifecycle(unittest.TestCase):
    def test_start_ready_stop_by_console_command(self):
        inst = Instance(self, spec=default_spec(["--ready-delay-ms", "400"]))
        line = inst.start()
        self.assertRegex(line, r"^ok started \d+$")
        pid = int(line.split()[-1])
        st = inst.state()
        self.assertIn(st["state"], ("STARTING", "RUNNING"))
        self.assertEqual(st["pid"], pid)
        self.assertEqual(st["startTime"], proc_start_time(pid))
        st = inst.wait_state("RUNNING", timeout=20)
        self.assertIsNotNone(st["readyAt"])
        # The server leads its own session and process group.
        self.assertEqual(os.getsid(pid), pid)
        self.assertEqual(os.getpgid(pid), pid)
        # Socket and console FIFOs are private.
        self.assertEqual(stat.S_IMODE(os.stat(inst.sock_path).st_mode), 0o600)
        reply, events = inst.stop()
        self.assertTrue(reply["ok"] and reply["done"], reply)
        final = reply["status"]
        self.assertEqual(final["state"], "STOPPED")
        self.assertEqual(final["lastExit"]["code"], 0)
        self.assertIsNone(final["lastExit"]["signal"])
        self.assertTrue(final["lastExit"]["requested"])
        self.assertIn("STOPPING", [e["status"]["state"] for e in events])
        inst.wait_monitor_exit()
        self.assertFalse(proc_alive(pid))
        console = inst.console()
        self.assertIn("Stopping the server (console)", console)
        self.assertIn("Saved the game (stop", console)
        self.assertTrue(os.path.exists(os.path.join(inst.dir, "data", "world", "level.dat")))
        self.assertEqual(inst.state()["state"], "STOPPED")
        self.assertFalse(os.path.exists(inst.sock_path))

    def test_jobvisor_monitor_subcommand_works_too(self):
        # The launcher's fallback when jobvisor-monitor is not installed.
        inst = Instance(self)
        self.assertRegex(inst.start(via_jobvisor=True), r"^ok started \d+$")
        inst.wait_state("RUNNING")
        with open("/proc/%d/cmdline" % inst.monitors[0].pid, "rb") as f:
            self.assertIn(b"\0monitor\0", f.read())
        reply, _ = inst.stop()
        self.assertEqual(reply["status"]["state"], "STOPPED")

    def test_launcher_prefers_the_slim_monitor(self):
        if not MONITOR:
            self.skipTest("jobvisor-monitor is not built")
        inst = Instance(self)
        out = subprocess.run([JOBVISOR, "run", "START_INSTANCE", "--instance", inst.id,
                              "--data-dir", inst.root, "--params", '{"waitReady": false}'],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        mon = inst.state()["monitorPid"]
        self.assertEqual(os.readlink("/proc/%d/exe" % mon), os.path.realpath(MONITOR))

    def test_readiness_without_pattern_is_immediate(self):
        spec = default_spec(["--ready-delay-ms", "5000"])
        del spec["ready"]
        inst = Instance(self, spec=spec)
        self.assertTrue(inst.start().startswith("ok started"))
        self.assertEqual(inst.status()["state"], "RUNNING")

    def test_ready_timeout_stops_the_server_and_counts_as_a_crash(self):
        spec = default_spec(["--ready-delay-ms", "60000"],
                            ready={"logPattern": "Done \\(", "timeoutSeconds": 0.5},
                            restart={"policy": "never"})
        inst = Instance(self, spec=spec)
        self.assertTrue(inst.start().startswith("ok started"))
        st = inst.wait_state("CRASHED", timeout=20)
        self.assertIn("ready timeout", st["lastExit"]["reason"])
        self.assertFalse(st["lastExit"]["requested"])
        self.assertIn("not ready within", inst.console())

    def test_console_send_tail_and_subscribe(self):
        inst = Instance(self)
        inst.start()
        inst.wait_state("RUNNING")
        c = inst.conn()
        c.send({"op": "subscribe", "console": True})
        first = c.reply()
        self.assertTrue(first["ok"])
        self.assertEqual(first["status"]["state"], "RUNNING")
        r = inst.call({"op": "send", "line": "say hello from the test"})
        self.assertTrue(r["ok"], r)
        seen = wait_until(lambda: (lambda m: m if "hello from the test" in m.get("line", "") else None)(c.recv()),
                          10, what="console line event")
        self.assertEqual(seen["event"], "line")
        self.assertGreater(seen["seq"], r["seq"])
        c.close()
        tail = inst.call({"op": "tail", "lines": 5})
        self.assertTrue(any("[Server] hello from the test" in l for l in tail["lines"]), tail)
        self.assertLessEqual(len(tail["lines"]), 5)
        self.assertEqual(tail["firstSeq"] + len(tail["lines"]) - 1, tail["seq"])
        inst.wait_console("[Server] hello from the test")
        # since: replay what came after the send, so an answer is never missed.
        c = inst.conn()
        c.send({"op": "subscribe", "console": True, "since": r["seq"]})
        c.reply()
        replayed = c.recv()
        self.assertEqual(replayed["event"], "line")
        self.assertEqual(replayed["seq"], r["seq"] + 1)
        c.close()

    def test_bad_requests_get_clear_errors(self):
        inst = Instance(self)
        inst.start()
        inst.wait_state("RUNNING")
        self.assertIn("unknown op", inst.call({"op": "frobnicate"})["error"])
        self.assertIn("'line'", inst.call({"op": "send"})["error"])
        self.assertIn("one line", inst.call({"op": "send", "line": "a\nstop"})["error"])
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(inst.sock_path)
        s.sendall(b"this is not json\n")
        self.assertIn(b'"ok":false', s.recv(4096))
        s.close()
        # Still fine afterwards.
        self.assertEqual(inst.status()["state"], "RUNNING")

    def test_console_log_rotation(self):
        inst = Instance(self, settings={"console_log_max_bytes": 8192, "console_log_keep": 3})
        inst.start()
        inst.wait_state("RUNNING")
        self.assertTrue(inst.call({"op": "send", "line": "spam 3000"})["ok"])
        inst.wait_console("Spammed 3000 lines", timeout=30)
        names = sorted(os.listdir(inst.logs))
        for n in ("console.log", "console.log.1", "console.log.2", "console.log.3"):
            self.assertIn(n, names)
        self.assertNotIn("console.log.4", names)
        for n in ("console.log.1", "console.log.2", "console.log.3"):
            size = os.path.getsize(os.path.join(inst.logs, n))
            self.assertLessEqual(size, 8192, n)
            self.assertGreater(size, 4096, n)
            text = inst.console(n)
            self.assertTrue(text.endswith("\n"), "%s cut mid-line" % n)
            for l in text.splitlines():
                self.assertTrue(l.startswith("spam line") or l.startswith("["), l)
        tail = inst.call({"op": "tail", "lines": 3})["lines"]
        self.assertIn("Spammed 3000 lines", tail[-1])
        self.assertIn("spam line 3000 of 3000", tail[-2])

    def test_status_command_lists_instances(self):
        inst = Instance(self, iid="alpha")
        Instance(self, iid="beta", data_dir=inst.root)
        inst.start()
        inst.wait_state("RUNNING")
        os.makedirs(os.path.join(inst.root, "runs", "run-1"))
        with open(os.path.join(inst.root, "runs", "run-1", "assignment.json"), "w") as f:
            json.dump({"jobId": "j1", "type": "BACKUP_INSTANCE", "instanceId": "alpha"}, f)
        out = subprocess.run([JOBVISOR, "status", "--data-dir", inst.root, "--json"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        doc = json.loads(out.stdout)
        by_id = {i["instanceId"]: i for i in doc["instances"]}
        self.assertEqual(by_id["alpha"]["state"], "RUNNING")
        self.assertTrue(by_id["alpha"]["monitor"])
        self.assertGreaterEqual(by_id["alpha"]["uptimeSeconds"], 0)
        self.assertEqual(by_id["beta"]["state"], "STOPPED")
        self.assertTrue(by_id["beta"]["neverStarted"])
        self.assertEqual(doc["runs"][0]["jobRunId"], "run-1")
        self.assertEqual(doc["runs"][0]["type"], "BACKUP_INSTANCE")
        text = subprocess.run([JOBVISOR, "status", "--data-dir", inst.root],
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(text.returncode, 0)
        self.assertRegex(text.stdout, r"alpha\s+RUNNING\s+\d+")
        self.assertRegex(text.stdout, r"beta\s+STOPPED\s+-")
        self.assertIn("run-1  BACKUP_INSTANCE", text.stdout)
        bad = subprocess.run([JOBVISOR, "status", "--data-dir", "/nonexistent/x"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("cannot open data dir", bad.stderr)


if __name__ == "__main__":
    unittest.main()
