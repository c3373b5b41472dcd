"""End to end: `jobvisor run` with real job-run children, signals and process groups."""
import json
import os
import pty
import signal
import subprocess
import time
import unittest

from jv_run import JOBVISOR, JobvisorTestCase, processes_in_group


class RunBasics(JobvisorTestCase):
    def test_completed_run_returns_output_and_events(self):
        path = self.script("""
return {
  type = "HELLO", params = { name = "string" },
  run = function(job)
    job.step("greeting")
    job.progress(50, "half way")
    log.info("hello " .. job.params.name)
    return { greeted = job.params.name, attempt = job.attempt, instance = job.instance_id }
  end,
}""")
        r = self.run_job(path, params={"name": "bob"})
        self.assertEqual(r.code, 0, r)
        self.assertEqual(r.status, "COMPLETED")
        self.assertEqual(r.result["output"], {"greeted": "bob", "attempt": 1, "instance": "test1"})
        self.assertIsNone(r.result["error"])
        seqs = [e["seq"] for e in r.events]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assertEqual(r.events[0]["kind"], "status")
        self.assertEqual(r.events[0]["status"], "RUNNING")
        self.assertEqual(r.events[-1]["status"], "COMPLETED")
        self.assertEqual(r.events[-1]["percent"], 100)
        for e in r.events:
            for key in ("jobId", "jobRunId", "instanceId", "status", "percent", "message", "timestamp", "kind"):
                self.assertIn(key, e)
            self.assertRegex(e["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        logs = [e for e in r.events if e["kind"] == "log"]
        self.assertEqual(logs[0]["message"], "hello bob")
        self.assertEqual(logs[0]["level"], "info")
        # the run left no run marker and no staging dir behind
        self.assertEqual(os.listdir(os.path.join(self.instance_dir(), ".jobvisor", "markers")), [])
        self.assertEqual(os.listdir(os.path.join(self.instance_dir(), ".jobvisor", "staging")), [])

    def test_log_lines_carry_job_and_run_ids(self):
        path = self.script('return { type = "X", run = function(job) log.warn("careful") end }')
        r = self.run_job(path)
        self.assertEqual(r.code, 0, r)
        job_id = r.events[0]["jobId"]
        run_id = r.events[0]["jobRunId"]
        lines = [l for l in r.stderr.splitlines() if "careful" in l]
        self.assertTrue(lines, r.stderr)
        self.assertIn(f"job_id={job_id}", lines[0])
        self.assertIn(f"run_id={run_id}", lines[0])
        self.assertIn("job run started", r.stderr)
        self.assertIn("job run COMPLETED", r.stderr)

    def test_failed_run_reports_message_and_traceback(self):
        path = self.script("""
local function inner() error("disk on fire") end
return { type = "BOOM", run = function(job) inner() end }""", name="boom.lua")
        r = self.run_job(path)
        self.assertEqual(r.code, 1, r)
        self.assertEqual(r.status, "FAILED")
        self.assertIn("boom.lua:2: disk on fire", r.error_message)
        stack = r.result["error"]["stack"]
        self.assertIn("stack traceback", stack)
        self.assertIn("boom.lua:2", stack)
        self.assertNotIn(self.jobs, stack)  # no absolute host paths outside the data dir

    def test_job_fail_gives_exact_message(self):
        path = self.script("""return { type = "F", run = function(job) job.fail("backup 'b1' is incomplete") end }""")
        r = self.run_job(path)
        self.assertEqual(r.code, 1)
        self.assertEqual(r.error_message, "backup 'b1' is incomplete")
        self.assertFalse(r.result["error"]["retryable"])

    def test_secrets_and_host_paths_are_sanitized(self):
        path = self.script("""return { type = "S", run = function(job)
  error("fetch https://user:hunter2@example.invalid/x?token=abc123&a=1 failed reading /etc/shadow")
end }""")
        r = self.run_job(path)
        msg = r.error_message
        self.assertNotIn("hunter2", msg)
        self.assertNotIn("abc123", msg)
        self.assertNotIn("/etc/shadow", msg)
        self.assertIn(".../shadow", msg)
        self.assertIn("a=1", msg)

    def test_script_returning_garbage_fails(self):
        path = self.script('return { type = "G", run = function(job) return 42 end }')
        r = self.run_job(path)
        self.assertEqual(r.code, 1)
        self.assertIn("run() must return a table or nil, got number", r.error_message)
        path = self.script('return { type = "G", run = function(job) return { f = print } end }')
        r = self.run_job(path)
        self.assertEqual(r.code, 1)
        self.assertIn("cannot encode function at value.f", r.error_message)

    def test_script_that_is_not_a_job_table_fails_with_file_and_line(self):
        path = self.script("return {\n type = 'X',\n run = function(job) end\n", name="broken.lua")
        r = self.run_job(path)
        self.assertEqual(r.code, 1)
        self.assertIn("broken.lua:", r.error_message)
        path = self.script("return { type = 'X' }", name="norun.lua")
        r = self.run_job(path)
        self.assertIn("norun.lua:1: field 'run' must be a function", r.error_message)
        path = self.script("return { type = 'X', cancellable = false, run = function() end }", name="nowhy.lua")
        r = self.run_job(path)
        self.assertIn("must say why", r.error_message)

    def test_child_killed_by_signal_is_reported(self):
        path = self.script('return { type = "W", run = function(job) job.sleep(30) end }')
        p = self.start_job(path)
        child = self.wait_child(p)
        time.sleep(0.3)
        os.kill(child, signal.SIGUSR1)  # (ASan intercepts SIGSEGV)
        r = self.finish(p)
        self.assertEqual(r.code, 1, r)
        self.assertEqual(r.status, "FAILED")
        self.assertIn("killed by SIGUSR1", r.error_message)


class Params(JobvisorTestCase):
    SCRIPT = """return { type = "P", params = { name = "string", count = "integer?", opts = "object?" },
  run = function(job) return { n = job.params.count or 0 } end }"""

    def test_child_failing_before_exec_says_why(self):
        # With too few descriptors the job-run child cannot set itself up
        # before exec: the reason reaches `jobvisor run` through the CLOEXEC
        # pipe, never as a bare "exited with status 127".
        import resource
        path = self.script('return { type = "T", run = function(job) return { ok = true } end }')
        explained = completed = 0
        for limit in range(5, 33):
            def low_nofile(limit=limit):
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            p = subprocess.run(self.cmd(path, "test1", None, (), True), capture_output=True,
                               text=True, timeout=60, preexec_fn=low_nofile)
            self.assertNotIn("without reporting a result", p.stdout + p.stderr, limit)
            if "cannot set up the job-run child's descriptors" in p.stderr:
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertIn("cannot start the job-run child", p.stderr)
                explained += 1
            elif p.returncode == 0:
                completed += 1
        self.assertGreater(explained, 0)
        self.assertGreater(completed, 0)

    def test_missing_required_param(self):
        r = self.run_job(self.script(self.SCRIPT), params={})
        self.assertEqual(r.code, 1)
        self.assertIn("missing required parameter 'name'", r.error_message)

    def test_mistyped_param(self):
        r = self.run_job(self.script(self.SCRIPT), params={"name": "x", "count": "three"})
        self.assertEqual(r.code, 1)
        self.assertIn("parameter 'count' must be integer, got string", r.error_message)
        r = self.run_job(self.script(self.SCRIPT), params={"name": "x", "count": 1.5})
        self.assertIn("parameter 'count' must be integer", r.error_message)

    def test_unknown_param(self):
        r = self.run_job(self.script(self.SCRIPT), params={"name": "x", "nmae": "y"})
        self.assertEqual(r.code, 1)
        self.assertIn("unknown parameter 'nmae'", r.error_message)

    def test_good_params(self):
        r = self.run_job(self.script(self.SCRIPT), params={"name": "x", "count": 3, "opts": {"a": [1, 2]}})
        self.assertEqual(r.code, 0, r)
        self.assertEqual(r.result["output"], {"n": 3})

    def test_params_from_file(self):
        pf = os.path.join(self.tmp, "p.json")
        with open(pf, "w") as f:
            json.dump({"name": "file"}, f)
        r = self.run_job(self.script(self.SCRIPT), params="@" + pf)
        self.assertEqual(r.code, 0, r)

    def test_malformed_params_json_is_a_usage_error(self):
        r = self.run_job(self.script(self.SCRIPT), params='{"name": ')
        self.assertEqual(r.code, 2)
        self.assertIn("jobvisor run: --params: invalid JSON at line 1, column 9 (byte 9): unexpected end of input",
                      r.stderr)
        self.assertIn("Run 'jobvisor help run' for details.", r.stderr)
        r = self.run_job(self.script(self.SCRIPT), params='{"name": "x",\n "n": 1,,}')
        self.assertEqual(r.code, 2)
        self.assertIn("--params: invalid JSON at line 2, column 10 (byte 24), near '}'", r.stderr)
        pf = os.path.join(self.tmp, "p.json")
        with open(pf, "w") as f:
            f.write('{"name": "x"} trailing')
        r = self.run_job(self.script(self.SCRIPT), params="@" + pf)
        self.assertEqual(r.code, 2)
        self.assertIn(f"--params file '{pf}': text after the JSON value at line 1, column 15", r.stderr)
        r = self.run_job(self.script(self.SCRIPT), params='[1,2]')
        self.assertEqual(r.code, 2)
        self.assertIn("--params must be a JSON object", r.stderr)

    def test_unknown_job_type(self):
        r = self.run_job("NO_SUCH_JOB")
        self.assertEqual(r.code, 2)
        self.assertIn("unknown job type 'NO_SUCH_JOB'", r.stderr)
        r = self.run_job("../../etc/passwd")
        self.assertEqual(r.code, 2)
        self.assertFalse(os.path.exists(self.data))

    def test_bad_instance_id_touches_nothing(self):
        path = self.script(self.SCRIPT)
        for bad in ("../escape", "a/b", ".hidden", "", "x" * 65, "a b"):
            r = self.run_job(path, instance=bad, params={"name": "x"})
            self.assertEqual(r.code, 2, bad)
            self.assertIn("invalid instance id", r.stderr)
        self.assertFalse(os.path.exists(self.data))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "escape")))

    def test_job_type_resolves_from_jobs_dir_and_must_match(self):
        self.script('return { type = "MY_JOB", run = function(job) return { t = job.type } end }', name="my_job.lua")
        r = self.run_job("MY_JOB")
        self.assertEqual(r.code, 0, r)
        self.assertEqual(r.result["output"], {"t": "MY_JOB"})
        self.script('return { type = "OTHER", run = function(job) end }', name="liar.lua")
        r = self.run_job("LIAR")
        self.assertEqual(r.code, 1)
        self.assertIn("declares type 'OTHER' but was run as 'LIAR'", r.error_message)


class Cancellation(JobvisorTestCase):
    def test_cancel_at_checkpoint_runs_cleanup_and_exits_3(self):
        path = self.script("""
return { type = "C", run = function(job)
  job.mark("started", { at = 1 })
  local ok, err = pcall(function()
    while true do job.checkpoint(); job.sleep(0.01) end
  end)
  job.mark("cleaned", { ok = ok })
  error(err, 0)
end }""")
        p = self.start_job(path)
        self.wait_file(os.path.join(self.instance_dir(), ".jobvisor", "markers", "started.json"))
        p.send_signal(signal.SIGTERM)
        r = self.finish(p)
        self.assertEqual(r.code, 3, r)
        self.assertEqual(r.status, "CANCELLED")
        self.assertTrue(os.path.exists(os.path.join(self.instance_dir(), ".jobvisor", "markers", "cleaned.json")))
        self.assertEqual(r.events[-1]["status"], "CANCELLED")

    def test_sigint_cancels_too(self):
        path = self.script('return { type = "C", run = function(job) job.mark("up", {}); job.sleep(30) end }')
        p = self.start_job(path)
        self.wait_file(os.path.join(self.instance_dir(), ".jobvisor", "markers", "up.json"))
        p.send_signal(signal.SIGINT)
        r = self.finish(p)
        self.assertEqual(r.code, 3, r)

    def test_script_ignoring_cancel_is_killed_with_its_group(self):
        # Truly stubborn: it catches the cancellation error and goes on spinning.
        path = self.script("""return { type = "STUBBORN", run = function(job)
  job.mark("up", {})
  local function spin() while true do end end
  while true do pcall(spin) end
end }""")
        p = self.start_job(path, extra=["--cancel-grace", "1"])
        child = self.wait_child(p)
        self.wait_file(os.path.join(self.instance_dir(), ".jobvisor", "markers", "up.json"))
        t0 = time.time()
        p.send_signal(signal.SIGTERM)
        r = self.finish(p)
        elapsed = time.time() - t0
        self.assertEqual(r.code, 3, r)
        self.assertIn("did not stop within 1 s and was killed", r.error_message)
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 10)
        self.assertEqual(processes_in_group(child), [])

    def test_busy_loop_ends_cancelled_at_next_safe_point(self):
        # No API call in the loop: the count hook meets the cancellation.
        path = self.script("""return { type = "SPIN", run = function(job)
  job.mark("up", {})
  local n = 0
  while true do n = n + 1 end
end }""")
        p = self.start_job(path, extra=["--cancel-grace", "30"])
        child = self.wait_child(p)
        self.wait_file(os.path.join(self.instance_dir(), ".jobvisor", "markers", "up.json"))
        t0 = time.time()
        p.send_signal(signal.SIGTERM)
        r = self.finish(p)
        elapsed = time.time() - t0
        self.assertEqual(r.code, 3, r)
        self.assertEqual(r.status, "CANCELLED")
        self.assertNotIn("killed", r.error_message or "")
        self.assertLess(elapsed, 10)
        self.assertEqual(processes_in_group(child), [])

    def test_timeout_fails_with_reason_timeout(self):
        path = self.script('return { type = "T", run = function(job) while true do job.checkpoint() end end }')
        t0 = time.time()
        r = self.run_job(path, extra=["--timeout", "1"])
        self.assertEqual(r.code, 1, r)
        self.assertEqual(r.status, "FAILED")
        self.assertEqual(r.result["error"]["reason"], "timeout")
        self.assertIn("timed out after 1 s", r.error_message)
        self.assertLess(time.time() - t0, 10)

    def test_timeout_kills_a_cpu_loop_that_never_checks(self):
        path = self.script('return { type = "T", run = function(job) while true do end end }')
        r = self.run_job(path, extra=["--timeout", "1", "--cancel-grace", "1"])
        self.assertEqual(r.code, 1, r)
        self.assertEqual(r.result["error"]["reason"], "timeout")

    def test_non_cancellable_job_reports_why_and_finishes(self):
        path = self.script("""return { type = "NC", cancellable = false,
  why = "swapping the world directory must not be interrupted",
  run = function(job)
    job.mark("up", {})
    job.sleep(1.5)
    return { finished = not job.cancelled() }
  end }""")
        p = self.start_job(path)
        self.wait_file(os.path.join(self.instance_dir(), ".jobvisor", "markers", "up.json"))
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        r = self.finish(p)
        self.assertEqual(r.code, 0, r)
        self.assertEqual(r.status, "COMPLETED")
        logs = [e["message"] for e in r.events if e["kind"] == "log"]
        self.assertTrue(any("not cancellable: swapping the world directory" in m for m in logs), logs)


class LimitsAndThrottle(JobvisorTestCase):
    def test_memory_cap_fails_cleanly(self):
        path = self.script("""return { type = "M", run = function(job)
  local t = {}
  for i = 1, 1e9 do t[i] = string.rep("x", 1000) .. i end
end }""")
        r = self.run_job(path, extra=["--memory-limit", "32"])
        self.assertEqual(r.code, 1, r)
        self.assertIn("memory limit of 32 MiB exceeded", r.error_message)

    def test_progress_is_throttled_and_last_percent_is_100(self):
        path = self.script("""return { type = "P", run = function(job)
  for i = 1, 100000 do job.progress(i / 1000, "step " .. i) end
end }""")
        r = self.run_job(path)
        self.assertEqual(r.code, 0, r)
        progress = [e for e in r.events if e["kind"] == "progress"]
        self.assertGreaterEqual(len(progress), 1)
        self.assertLessEqual(len(r.events), 30)
        self.assertEqual(progress[-1]["percent"], 100)
        self.assertEqual(progress[-1]["message"], "step 100000")

    def test_log_flood_is_rate_limited(self):
        path = self.script("""return { type = "L", run = function(job)
  for i = 1, 5000 do log.info("line " .. i) end
  job.sleep(0.2)
  log.info("after")
end }""")
        r = self.run_job(path)
        self.assertEqual(r.code, 0, r)
        logs = [e for e in r.events if e["kind"] == "log"]
        self.assertLess(len(logs), 200)
        self.assertTrue(any("log lines suppressed" in e["message"] for e in logs), logs[-3:])


class Markers(JobvisorTestCase):
    def test_mark_marker_unmark_roundtrip(self):
        path = self.script("""return { type = "MK", run = function(job)
  assert(job.marker("m1") == nil)
  job.mark("m1", { step = "copy", files = { "a", "b" } })
  local m = job.marker("m1")
  assert(m.step == "copy" and m.files[2] == "b")
  job.unmark("m1")
  assert(job.marker("m1") == nil)
  local ok, err = pcall(job.mark, "../evil", {})
  assert(not ok and tostring(err):find("marker name"))
  return { ok = true }
end }""")
        r = self.run_job(path)
        self.assertEqual(r.code, 0, r)

    def test_retry_after_kill_sees_previous_run_and_its_step(self):
        path = self.script("""return { type = "RESUMABLE", params = { probe = "boolean?" }, run = function(job)
  if job.previous then return { previous_step = job.previous.step, previous_run = job.previous.runId } end
  if job.params.probe then return { fresh = true } end
  job.step("copying world")
  job.sleep(1.2)
  job.step("still copying")
  job.sleep(30)
end }""", name="resumable.lua")
        p = self.start_job(path)
        child = self.wait_child(p)
        # Kill once a step of the script is recorded (the run marker says
        # "start"; steps and percents go to run.<TYPE>.progress beside it,
        # rewritten at most every 500 ms and never fsynced: docs/jobs.md).
        progress = os.path.join(self.instance_dir(), ".jobvisor", "markers", "run.RESUMABLE.progress")

        def step():
            try:
                with open(progress) as f:
                    return json.load(f).get("step")
            except (OSError, ValueError):
                return None
        deadline = time.time() + 30
        while step() in (None, "start"):
            self.assertLess(time.time(), deadline, "the run marker never recorded a step")
            time.sleep(0.02)
        first_run = None
        os.killpg(child, signal.SIGKILL)
        r1 = self.finish(p)
        self.assertEqual(r1.code, 1, r1)
        first_run = r1.events[0]["jobRunId"]
        r2 = self.run_job(path)
        self.assertEqual(r2.code, 0, r2)
        self.assertEqual(r2.result["output"]["previous_run"], first_run)
        self.assertIn(r2.result["output"]["previous_step"], ("copying world", "still copying"))
        self.assertTrue(any("did not finish; the last progress it recorded: '%s'" % r2.result["output"]["previous_step"]
                            in e["message"] for e in r2.events if e["kind"] == "log"), r2.events)
        # the successful retry removed the run marker: the next run (the same type, whose
        # marker it would be) sees no previous run and, probing, ends at once
        r3 = self.run_job(path, params={"probe": True})
        self.assertEqual(r3.code, 0, r3)
        self.assertEqual(r3.result["output"], {"fresh": True})

    def test_retry_warning_names_the_progress_the_earlier_run_reached(self):
        # Issue 17: a script that reports only job.progress was said to have "stopped during step
        # 'start'" although it got much further.
        path = self.script("""return { type = "PROGRESSONLY", run = function(job)
  if job.previous then return { step = job.previous.step, percent = job.previous.percent } end
  job.progress(30, "copying the world")
  job.progress(60, "compressing the world")
  job.sleep(1.5)
  error("disk on fire")
end }""", name="progress_only.lua")
        r1 = self.run_job(path)
        self.assertEqual(r1.status, "FAILED", r1)
        r2 = self.run_job(path)
        self.assertEqual(r2.status, "COMPLETED", r2)
        self.assertEqual(r2.result["output"], {"step": "compressing the world", "percent": 60})
        warnings = [e["message"] for e in r2.events if e["kind"] == "log" and e["level"] == "warn"]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("did not finish; the last progress it recorded: 'compressing the world' at 60%", warnings[0])
        self.assertNotIn("'start'", warnings[0])

    def test_second_run_on_same_instance_is_refused_while_first_runs(self):
        path = self.script('return { type = "LOCK", run = function(job) job.mark("up", {}); job.sleep(3) end }')
        p = self.start_job(path)
        self.wait_file(os.path.join(self.instance_dir(), ".jobvisor", "markers", "up.json"))
        r = self.run_job(path)
        self.assertEqual(r.code, 1)
        self.assertIn("is busy", r.error_message)
        self.assertTrue(r.result["error"]["retryable"])
        p.send_signal(signal.SIGTERM)
        self.finish(p)


class Output(JobvisorTestCase):
    def test_plain_mode_prints_result_line(self):
        # Issue 17: the result goes to stdout (so `> out` keeps it), logs and progress to stderr.
        path = self.script('return { type = "X", run = function(job) log.info("hello"); job.progress(50, "half")\n'
                           '  return { a = 1 } end }')
        p = subprocess.run(self.cmd(path, json_out=False), capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, 'COMPLETED {"a":1}\n')
        self.assertIn("hello", p.stderr)
        self.assertNotIn("COMPLETED {", p.stderr)
        path = self.script('return { type = "X", run = function(job) error("boom") end }', name="f.lua")
        p = subprocess.run(self.cmd(path, json_out=False), capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertTrue(p.stdout.startswith("FAILED: f.lua:1: boom\nstack traceback:"), p.stdout)

    def test_tty_draws_a_progress_bar(self):
        path = self.script("""return { type = "X", run = function(job)
  job.progress(40, "copying"); job.sleep(0.4); job.progress(80, "packing") end }""")
        master, slave = pty.openpty()
        p = subprocess.Popen([JOBVISOR, "run", path, "--instance", "t", "--data-dir", self.data],
                             stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        out = b""
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        p.wait(timeout=20)
        os.close(master)
        text = out.decode(errors="replace")
        self.assertEqual(p.returncode, 0, text)
        self.assertIn("[############", text)
        self.assertIn("40%", text)
        self.assertIn("copying", text)


class Check(JobvisorTestCase):
    def test_check_valid_script(self):
        path = self.script('return { type = "GOOD", params = { a = "string?" }, run = function(job) end }')
        p = subprocess.run([JOBVISOR, "check", path], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("type GOOD", p.stdout)
        self.assertIn("a:string?", p.stdout)

    def test_check_reports_file_and_line(self):
        path = self.script("return {\n  type = 'BAD',\n  run = function(job)\n    local x = = 1\n  end\n}\n", name="bad.lua")
        p = subprocess.run([JOBVISOR, "check", path], capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn("bad.lua:4:", p.stderr)

    def test_check_rejects_bad_param_type(self):
        path = self.script('return { type = "B", params = { a = "strnig" }, run = function(job) end }')
        p = subprocess.run([JOBVISOR, "check", path], capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn("parameter 'a' has unknown type 'strnig'", p.stderr)

    def test_builtin_scripts_all_check(self):
        jobs = os.path.join(os.environ.get("JV_SOURCE_DIR", "."), "jobs")
        for name in sorted(os.listdir(jobs)):
            if name.endswith(".lua"):
                p = subprocess.run([JOBVISOR, "check", os.path.join(jobs, name)], capture_output=True, text=True)
                self.assertEqual(p.returncode, 0, f"{name}: {p.stderr}")


if __name__ == "__main__":
    unittest.main()


class AgentSettings(JobvisorTestCase):
    """`jobvisor run` takes the agent's settings from --config and JOBVISOR_* (options win)."""

    def test_data_dir_and_memory_from_config_file(self):
        conf = os.path.join(self.tmp, "agent.conf")
        other = os.path.join(self.tmp, "other-data")
        with open(conf, "w") as f:
            f.write(f"data_dir = {other}\njob_memory = 16777216\n")
        path = self.script("""return { type = "M", run = function(job)
  local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 1000) .. i end end }""")
        p = subprocess.run([JOBVISOR, "run", path, "--instance", "c1", "--config", conf, "--json"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("memory limit of 16 MiB exceeded", p.stdout)
        self.assertTrue(os.path.isdir(os.path.join(other, "instances", "c1")))

    def test_environment_sets_the_data_dir(self):
        path = self.script('return { type = "X", run = function(job) end }')
        env = dict(os.environ, JOBVISOR_DATA_DIR=os.path.join(self.tmp, "envdata"))
        p = subprocess.run([JOBVISOR, "run", path, "--instance", "e1"], env=env,
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(os.path.isdir(os.path.join(self.tmp, "envdata", "instances", "e1")))

    def test_bad_configuration_is_a_usage_error(self):
        conf = os.path.join(self.tmp, "bad.conf")
        with open(conf, "w") as f:
            f.write("no_such_setting = 1\n")
        path = self.script('return { type = "X", run = function(job) end }')
        p = subprocess.run([JOBVISOR, "run", path, "--instance", "b1", "--config", conf,
                            "--data-dir", self.data], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 2)
        self.assertIn("no_such_setting", p.stderr)
        self.assertFalse(os.path.exists(self.data))
