"""START/STOP/RESTART_INSTANCE and the `instance` Lua module, through the real
`jobvisor run` (job-run child, sandbox) against the real monitor and demo server."""
import json
import os
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
import unittest

from instance_helpers import (DEMO, JOBVISOR, Instance, default_spec, proc_alive,
                              wait_until)


def run(inst, what, params=None, timeout=90):
    argv = [JOBVISOR, "run", what, "--instance", inst.id, "--data-dir", inst.root, "--json"]
    if params is not None:
        argv += ["--params", json.dumps(params)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    result = next((l for l in reversed(lines) if "seq" not in l), None)
    events = [l for l in lines if "seq" in l]
    return p.returncode, result, events, p.stderr


def script(test, body):
    fd, path = tempfile.mkstemp(suffix=".lua")
    with os.fdopen(fd, "w") as f:
        f.write(textwrap.dedent(body))
    test.addCleanup(os.unlink, path)
    return path


@unittest.skipUnless(JOBVISOR and DEMO, "needs JOBVISOR_BIN and JV_DEMO_SERVER_BIN")
class InstanceJobs(unittest.TestCase):
    def adopt_monitor_cleanup(self, inst):
        """Monitors launched by jobs are not our children: stop them by socket."""
        def stop():
            if os.path.exists(inst.sock_path):
                try:
                    inst.call({"op": "kill"}, timeout=20)
                except (OSError, ValueError, TimeoutError):
                    pass
            wait_until(lambda: not os.path.exists(inst.sock_path), 20, what="monitor exit")
        self.addCleanup(stop)

    def test_start_stop_and_the_no_op_cases(self):
        inst = Instance(self)
        self.adopt_monitor_cleanup(inst)
        code, res, events, err = run(inst, "START_INSTANCE")
        self.assertEqual(code, 0, err)
        out = res["output"]
        self.assertEqual(out["state"], "RUNNING")
        self.assertFalse(out["already"])
        pid = out["pid"]
        self.assertTrue(proc_alive(pid))
        self.assertIn("Done (", inst.console())
        code, res, events, err = run(inst, "START_INSTANCE")
        self.assertEqual(code, 0, err)
        self.assertTrue(res["output"]["already"])
        self.assertEqual(res["output"]["pid"], pid)
        self.assertIn("already RUNNING", err)
        code, res, events, err = run(inst, "STOP_INSTANCE")
        self.assertEqual(code, 0, err)
        self.assertEqual(res["output"], {"state": "STOPPED", "exitCode": 0, "already": False})
        self.assertFalse(proc_alive(pid))
        code, res, events, err = run(inst, "STOP_INSTANCE")
        self.assertEqual(code, 0, err)
        self.assertTrue(res["output"]["already"])
        self.assertIn("already STOPPED; nothing to stop", err)

    def test_restart_gives_a_new_server(self):
        inst = Instance(self)
        self.adopt_monitor_cleanup(inst)
        self.assertEqual(run(inst, "START_INSTANCE")[0], 0)
        first = inst.state()["pid"]
        code, res, _, err = run(inst, "RESTART_INSTANCE")
        self.assertEqual(code, 0, err)
        self.assertEqual(res["output"]["state"], "RUNNING")
        self.assertNotEqual(res["output"]["pid"], first)
        self.assertEqual(res["output"]["previousExit"], "exit code 0")
        self.assertFalse(proc_alive(first))
        code, res, _, err = run(inst, "STOP_INSTANCE", {"force": True})
        self.assertEqual(res["output"]["signal"], "SIGKILL")

    def test_two_concurrent_start_jobs_make_one_server(self):
        # Two layers keep this safe: the job runner's per-instance lock (a
        # second run at the same moment fails "busy") and the monitor lock
        # (a second launcher attaches to the first monitor).
        inst = Instance(self, spec=default_spec(["--ready-delay-ms", "800"]))
        self.adopt_monitor_cleanup(inst)
        results = []

        def go():
            results.append(run(inst, "START_INSTANCE"))
        threads = [threading.Thread(target=go) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        done = [r for r in results if r[0] == 0]
        self.assertGreaterEqual(len(done), 1, [r[3][-500:] for r in results])
        for r in results:
            if r[0] != 0:
                self.assertIn("is busy", r[1]["error"]["message"])
        self.assertEqual(len({r[1]["output"]["pid"] for r in done}), 1)
        self.assertTrue(all(r[1]["output"]["state"] == "RUNNING" for r in done))
        self.assertEqual(inst.console().count("server started"), 1)

    def test_disallowed_executable_fails_the_start(self):
        inst = Instance(self, spec=default_spec(command=["/bin/sleep", "100"]))
        code, res, _, err = run(inst, "START_INSTANCE")
        self.assertEqual(code, 1, err)
        self.assertEqual(res["status"], "FAILED")
        self.assertIn("not inside the active build and not listed in allowed_executables",
                      res["error"]["message"])
        self.assertFalse(os.path.exists(inst.sock_path))

    def test_bad_spec_fails_with_its_message(self):
        spec = default_spec(stop={"command": "stop", "signal": "SIGNOPE"})
        inst = Instance(self, spec=spec)
        code, res, _, _ = run(inst, "START_INSTANCE")
        self.assertEqual(code, 1)
        self.assertIn("'stop.signal' names an unknown signal 'SIGNOPE'", res["error"]["message"])

    def test_server_that_dies_while_starting_fails_the_job(self):
        spec = default_spec(["--ready-delay-ms", "5000", "--exit-after-ms", "100"],
                            restart={"policy": "never"})
        inst = Instance(self, spec=spec)
        code, res, _, err = run(inst, "START_INSTANCE")
        self.assertEqual(code, 1, err)
        self.assertIn("CRASHED", res["error"]["message"])
        self.assertIn("exit code 1", res["error"]["message"])

    def test_ready_wait_is_cancellable_and_leaves_the_server_starting(self):
        inst = Instance(self, spec=default_spec(["--ready-delay-ms", "60000"]))
        self.adopt_monitor_cleanup(inst)
        p = subprocess.Popen([JOBVISOR, "run", "START_INSTANCE", "--instance", inst.id,
                              "--data-dir", inst.root, "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        inst.wait_state("STARTING", timeout=20)
        time.sleep(0.5)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 3, err)
        self.assertLess(time.monotonic() - t0, 5)
        result = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(result["status"], "CANCELLED")
        # Progress was reported while waiting.
        self.assertIn("waiting for the server to be ready", out)
        # The server is not the job's: it keeps starting under its monitor.
        self.assertEqual(inst.status()["state"], "STARTING")

    def test_start_adopts_a_server_whose_monitor_died(self):
        inst = Instance(self)
        self.adopt_monitor_cleanup(inst)
        self.assertEqual(run(inst, "START_INSTANCE")[0], 0)
        st = inst.state()
        os.kill(st["monitorPid"], signal.SIGKILL)
        wait_until(lambda: not proc_alive(st["monitorPid"]), 10, what="monitor gone")
        code, res, _, err = run(inst, "START_INSTANCE")
        self.assertEqual(code, 0, err)
        self.assertTrue(res["output"]["adopted"])
        self.assertEqual(res["output"]["pid"], st["pid"])
        self.assertTrue(inst.status()["adopted"])

    def test_status_adopts_and_stop_stops_an_orphan(self):
        inst = Instance(self)
        self.adopt_monitor_cleanup(inst)
        self.assertEqual(run(inst, "START_INSTANCE")[0], 0)
        st = inst.state()
        os.kill(st["monitorPid"], signal.SIGKILL)
        wait_until(lambda: not proc_alive(st["monitorPid"]), 10, what="monitor gone")
        path = script(self, """
            return { type = "PROBE", run = function(job)
              local st = assert(instance.status())
              local r = assert(instance.stop({ timeoutSeconds = 5 }))
              return { before = st.state, adopted = st.adopted, monitor = st.monitor,
                       after = r.state, already = r.already }
            end }
        """)
        code, res, _, err = run(inst, path)
        self.assertEqual(code, 0, err)
        self.assertEqual(res["output"], {"before": "RUNNING", "adopted": True, "monitor": True,
                                         "after": "STOPPED", "already": False})
        self.assertFalse(proc_alive(st["pid"]))

    def test_send_wait_log_and_spec_from_lua(self):
        inst = Instance(self)
        self.adopt_monitor_cleanup(inst)
        path = script(self, """
            return { type = "PROBE", run = function(job)
              local spec = assert(instance.spec())
              assert(instance.start())
              assert(instance.wait_ready(20))
              local seq = assert(instance.send("say hello lua"))
              local line, lseq = instance.wait_log("\\\\[Server\\\\] hello lua", 10)
              local missing, err = instance.wait_log("never printed", 0.5)
              local ok, bad = pcall(instance.wait_log, "(", 1)
              local sent, nerr = instance.send("stop")
              local st = instance.status()
              return { exe = spec.executable, signal = spec.stop.signal, line = line,
                       after = lseq > seq, missing = missing == nil, err = err,
                       bad = (not ok) and tostring(bad) or "", policy = spec.restart.policy }
            end }
        """)
        code, res, _, err = run(inst, path)
        self.assertEqual(code, 0, err)
        out = res["output"]
        self.assertTrue(out["exe"].endswith("/builds/b1/server"), out)
        self.assertEqual(out["signal"], "SIGTERM")
        self.assertIn("[Server] hello lua", out["line"])
        self.assertTrue(out["after"])
        self.assertTrue(out["missing"])
        self.assertIn("no console line matched 'never printed'", out["err"])
        self.assertIn("not a valid extended regex", out["bad"])
        self.assertEqual(out["policy"], "on-failure")
        # "stop" typed on the console is a requested stop, not a crash.
        st = inst.wait_state("STOPPED", timeout=20)
        self.assertEqual(st["restarts"], 0)

    def test_calls_on_a_stopped_instance_say_so(self):
        inst = Instance(self)
        path = script(self, """
            return { type = "PROBE", run = function(job)
              local _, e1 = instance.send("say x")
              local _, e2 = instance.wait_ready(1)
              local _, e3 = instance.wait_log("x", 1)
              local st = instance.status()
              local m = {}
              for i, f in ipairs({
                  function() instance.start(5) end,
                  function() instance.stop({ timeoutSeconds = -1 }) end,
                  function() instance.send("a\\nb") end,
                  function() instance.wait_ready(0) end,
                  function() instance.wait_log("x", 1, "since") end }) do
                local ok, err = pcall(f)
                m[i] = ok and "no error" or tostring(err)
              end
              return { e1 = e1, e2 = e2, e3 = e3, state = st.state, misuse = m }
            end }
        """)
        code, res, _, err = run(inst, path)
        self.assertEqual(code, 0, err)
        out = res["output"]
        self.assertIn("is not running", out["e1"])
        self.assertIn("is STOPPED", out["e2"])
        self.assertIn("is STOPPED", out["e3"])
        self.assertEqual(out["state"], "STOPPED")
        m = out["misuse"]
        self.assertIn("bad argument #1 to 'start' (table expected, got number)", m[0])
        self.assertIn("option 'timeoutSeconds' must be a number of seconds in (0, 86400], got -1", m[1])
        self.assertIn("must be one line", m[2])
        self.assertIn("timeoutSeconds must be within", m[3])
        self.assertIn("bad argument #3 to 'wait_log' (table expected, got string)", m[4])


if __name__ == "__main__":
    unittest.main()
