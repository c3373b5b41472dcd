"""proc.run from hostile job scripts and hostile programs, through the real `jobvisor run`
and real processes: the allow-list, argv passed without a shell, cwd confined to the
instance, an environment that holds nothing of the agent's, rlimits and the process-count
watchdog, SIGTERM-ignoring and daemonizing programs, cancellation, kill -9 of the job (the
shepherd ends the program's group and its orphans) and the next-run sweep when the shepherd
was killed too."""
import json
import os
import signal
import subprocess
import sys
import time
import unittest
import uuid

from jv_run import JOBVISOR, JobvisorTestCase, children_of

PY = "/usr/bin/python3"


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(")") + 2] not in "ZX"


def tagged(tag):
    """Pids of live programs (python3 here) whose command line contains tag."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if tag.encode() in cmd and cmd.startswith(PY.encode()) and alive(int(d)):
            found.append(int(d))
    return found


def wait_for(pred, timeout=20, what="condition"):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class ProcCase(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.tag = "jvtag-" + uuid.uuid4().hex[:12]
        self.conf = os.path.join(self.tmp, "agent.conf")
        self.configure(f"{PY}:/bin/true:/bin/echo")
        os.makedirs(self.instance_dir(), exist_ok=True)
        self.addCleanup(self.kill_tagged)

    def kill_tagged(self):
        for pid in tagged(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def configure(self, executables):
        with open(self.conf, "w") as f:
            f.write(f"job_executables = {executables}\n")

    def lua(self, body):
        return self.script('return { type = "PROC_TEST", params = { args = "any?" }, run = function(job)\n'
                           'local args = job.params.args or {}\n' + body + '\nend }\n')

    def run_lua(self, body, args=None, env=None, timeout=60, extra=()):
        path = self.lua(body)
        argv = self.cmd(path, params={"args": args} if args is not None else None,
                        extra=["--config", self.conf, *extra])
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           env=env if env is not None else os.environ)
        from jv_run import RunResult
        return RunResult(p.returncode, p.stdout, p.stderr)

    def start_lua(self, body, args=None, extra=()):
        path = self.lua(body)
        return subprocess.Popen(self.cmd(path, params={"args": args} if args is not None else None,
                                         extra=["--config", self.conf, *extra]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def py(self, code):
        """argv running code with the test's tag in the command line."""
        return [PY, "-c", code, self.tag]

    def assertFailed(self, r, needle):
        self.assertEqual(r.code, 1, r)
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn(needle, r.error_message, r)

    def assertDone(self, r):
        self.assertEqual(r.code, 0, r)
        return r.result["output"]


class AllowList(ProcCase):
    def test_only_listed_absolute_paths_run(self):
        cases = [
            ('proc.run({"/bin/sh", "-c", "touch /tmp/jv-pwned"})', "'.../sh' is not allowed"),
            ('proc.run({"sh", "-c", "id"})', "must be an absolute path"),
            ('proc.run({"/usr/bin/../bin/python3", "-c", "1"})', "is not allowed"),
            ('proc.run({"/bin//true"})', "is not allowed"),
            ('proc.run({})', "non-empty list"),
            ('proc.run({"/bin/true", 42})', "argv[2] must be a string"),
            ('proc.run({"/bin/true", "a\\0b"})', "NUL byte"),
            ('proc.run({[1] = "/bin/true", [3] = "x"})', "keys 1..n only"),
            ('proc.run({"/bin/true"}, { shell = true })', "unknown option 'shell'"),
            ('proc.run({"/bin/true"}, { timeout = -1 })', "option 'timeout'"),
            ('proc.run({"/bin/true"}, { on_line = "print" })', "option 'on_line'"),
            ('proc.run({"/bin/true"}, { progress_pattern = "(%d+)" })', "needs progress"),
            ('proc.run({"/bin/true"}, { steam_login = "bob" })', "only for the steamcmd program"),
        ]
        for body, needle in cases:
            with self.subTest(body=body):
                self.assertFailed(self.run_lua(body), needle)
        self.assertFalse(os.path.exists("/tmp/jv-pwned"))

    def test_nothing_runs_without_the_setting(self):
        with open(self.conf, "w") as f:
            f.write("# no job_executables\n")
        r = self.run_lua('proc.run({"/bin/true"})')
        self.assertFailed(r, "'.../true' is not allowed")

    def test_the_environment_variable_sets_the_list_too(self):
        os.unlink(self.conf)
        with open(self.conf, "w") as f:
            f.write("")
        env = dict(os.environ, JOBVISOR_JOB_EXECUTABLES="/bin/echo")
        out = self.assertDone(self.run_lua('local r = assert(proc.run({"/bin/echo", "hi"})) return { out = r.stdout }',
                                           env=env))
        self.assertEqual(out["out"], "hi\n")

    def test_a_missing_allowed_program_is_an_expected_failure(self):
        self.configure("/nonexistent/tool")
        out = self.assertDone(self.run_lua('local r, err = proc.run({"/nonexistent/tool"}) return { r = r == nil, err = err }'))
        self.assertTrue(out["r"])
        self.assertIn("cannot execute '/nonexistent/tool': No such file or directory", out["err"])


class ArgvCwdEnv(ProcCase):
    def test_argv_reaches_the_program_verbatim_without_a_shell(self):
        hostile = ["; touch /tmp/jv-pwned", "$(touch /tmp/jv-pwned)", "`id`", "a b\tc", "*", "'\"", "--", "\n"]
        code = "import sys, json; print(json.dumps(sys.argv[2:]))"
        out = self.assertDone(self.run_lua(
            'local argv = { args.py, "-c", args.code, args.tag } for _, a in ipairs(args.hostile) do argv[#argv + 1] = a end '
            'local r = assert(proc.run(argv)) return { argv = json.decode(r.stdout), code = r.code, ok = r.ok }',
            {"py": PY, "code": code, "tag": self.tag, "hostile": hostile}))
        self.assertEqual(out["argv"], hostile)
        self.assertEqual(out["code"], 0)
        self.assertTrue(out["ok"])
        self.assertFalse(os.path.exists("/tmp/jv-pwned"))

    def test_cwd_is_confined_to_the_instance(self):
        inst = self.instance_dir()
        os.makedirs(os.path.join(inst, "data", "world"))
        os.symlink(self.tmp, os.path.join(inst, "out-link"))
        os.symlink("data", os.path.join(inst, "in-link"))
        code = "import os; print(os.getcwd())"
        out = self.assertDone(self.run_lua(
            'local a = assert(proc.run({ args.py, "-c", args.code }, { cwd = "data/world" })) '
            'local b = assert(proc.run({ args.py, "-c", args.code })) '
            'local c = assert(proc.run({ args.py, "-c", args.code }, { cwd = "in-link" })) '
            'return { a = a.stdout, b = b.stdout, c = c.stdout }', {"py": PY, "code": code}))
        self.assertEqual(out["a"].strip(), os.path.realpath(os.path.join(inst, "data", "world")))
        self.assertEqual(out["b"].strip(), os.path.realpath(inst))
        self.assertEqual(out["c"].strip(), os.path.realpath(os.path.join(inst, "data")))
        for cwd, needle in [("..", "'..'"), ("../../..", "'..'"), ("/tmp", "absolute"), ("out-link", "outside"),
                            ("data/../../x", "'..'"), ("nope", "No such file")]:
            with self.subTest(cwd=cwd):
                r = self.run_lua('local r, err = proc.run({"/bin/true"}, { cwd = args.cwd }) error(err or "ran")',
                                 {"cwd": cwd})
                self.assertEqual(r.status, "FAILED", r)
                self.assertIn(needle, r.error_message, r)

    def test_nothing_of_the_agents_environment_leaks(self):
        token = os.path.join(self.tmp, "token")
        with open(token, "w") as f:
            f.write("s3cr3t-agent-token\n")
        os.chmod(token, 0o600)
        env = dict(os.environ, JOBVISOR_TOKEN_FILE=token, JOBVISOR_URL="http://127.0.0.1:9",
                   JOBVISOR_SECRET="hunter2", AWS_SECRET_ACCESS_KEY="aws-secret", GITHUB_TOKEN="gh-token",
                   HOME="/root/agent-home")
        code = ("import os, json; print(json.dumps({'env': dict(os.environ), "
                "'fds': sorted(int(x) for x in os.listdir('/proc/self/fd'))}))")
        out = self.assertDone(self.run_lua(
            'local r = assert(proc.run({ args.py, "-c", args.code }, { env = { GAME_MODE = "survival" } })) '
            'return json.decode(r.stdout)', {"py": PY, "code": code}, env=env))
        self.assertEqual(out["env"], {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.instance_dir(),
                                      "LANG": "C.UTF-8", "GAME_MODE": "survival"})
        # 0-2 and the descriptor os.listdir itself opened: no lock, event pipe or socket
        self.assertEqual(out["fds"][:3], [0, 1, 2])
        self.assertLessEqual(len(out["fds"]), 4, out["fds"])

    def test_loader_variables_and_bad_names_are_refused(self):
        for env, needle in [({"LD_PRELOAD": "/tmp/x.so"}, "'LD_PRELOAD' is not allowed"),
                            ({"LD_LIBRARY_PATH": "."}, "not allowed"),
                            ({"GCONV_PATH": "."}, "not allowed"),
                            ({"A=B": "x"}, "bad environment variable name"),
                            ({"1X": "x"}, "bad environment variable name")]:
            with self.subTest(env=env):
                r = self.run_lua('proc.run({"/bin/true"}, { env = args.env })', {"env": env})
                self.assertFailed(r, needle)

    def test_stdin_capture_cap_and_lines(self):
        code = ("import sys; data = sys.stdin.read(); sys.stdout.write(data.upper()); "
                "sys.stderr.write('e' * 5000 + '\\n')")
        out = self.assertDone(self.run_lua(
            'local lines = {} '
            'local r = assert(proc.run({ args.py, "-c", args.code }, { stdin = "one\\ntwo\\n", capture = 1000, '
            '  on_line = function(stream, line) lines[#lines + 1] = stream .. ":" .. #line end })) '
            'return { out = r.stdout, err = #r.stderr, trunc = r.stderr_truncated, otrunc = r.stdout_truncated, lines = lines }',
            {"py": PY, "code": code}))
        self.assertEqual(out["out"], "ONE\nTWO\n")
        self.assertEqual(out["err"], 1000)
        self.assertTrue(out["trunc"])
        self.assertFalse(out["otrunc"])
        self.assertEqual(sorted(out["lines"]), ["stderr:5000", "stdout:3", "stdout:3"])

    def test_exit_codes_and_signals_are_reported(self):
        out = self.assertDone(self.run_lua(
            'local a = assert(proc.run({ args.py, "-c", "raise SystemExit(7)" })) '
            'local b = assert(proc.run({ args.py, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)" })) '
            'return { a = a.code, aok = a.ok, b = b.signal, bcode = b.code }', {"py": PY}))
        self.assertEqual(out, {"a": 7, "aok": False, "b": "SIGSEGV"})

    def test_progress_pattern_drives_job_progress(self):
        code = ("import time\nfor d in (1234, 2500, 4000, 5678):\n"
                "    print(f'Update state (0x61) downloading, progress: {d/5678*100:.2f} ({d} / 5678)', flush=True)\n"
                "    time.sleep(0.3)\n")
        r = self.run_lua('assert(proc.run({ args.py, "-c", args.code }, { progress = { 10, 90 }, '
                         'progress_pattern = "progress: [%d.]+ %((%d+) / (%d+)%)" }))', {"py": PY, "code": code})
        self.assertEqual(r.code, 0, r)
        pcts = [e["percent"] for e in r.events if e["kind"] == "progress" and e.get("percent") is not None]
        # 10 + 80 * d / 5678 for each line, then 90 at the end
        for want in (27.4, 45.2, 66.4, 90.0):
            self.assertIn(want, pcts, pcts)

    def test_a_replaced_string_match_does_not_reach_the_progress_parser(self):
        r = self.run_lua('string.match = function() error("hooked") end '
                         'local r = assert(proc.run({ args.py, "-c", "print(\'progress: 50\')" }, '
                         '{ progress = { 0, 100 }, progress_pattern = "progress: (%d+)" })) return { ok = r.ok }',
                         {"py": PY})
        self.assertEqual(r.code, 0, r)
        self.assertIn(50, [e["percent"] for e in r.events if e["kind"] == "progress"])

    def test_an_on_line_error_ends_the_program_and_fails_the_job(self):
        code = "import time\nprint('first', flush=True)\ntime.sleep(60)\n"
        t0 = time.time()
        r = self.run_lua('proc.run({ args.py, "-c", args.code, args.tag }, { kill_grace = 1, on_line = function(s, l) '
                         'error("bad line: " .. l) end })', {"py": PY, "code": code, "tag": self.tag})
        self.assertFailed(r, "bad line: first")
        self.assertLess(time.time() - t0, 20)
        self.assertEqual(tagged(self.tag), [])


class HostilePrograms(ProcCase):
    def test_sigterm_ignoring_program_is_killed_after_the_grace(self):
        code = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "print('ready', flush=True)\ntime.sleep(600)\n")
        t0 = time.time()
        out = self.assertDone(self.run_lua(
            'local r, err, res = proc.run({ args.py, "-c", args.code, args.tag }, { timeout = 1, kill_grace = 1 }) '
            'return { r = r == nil, err = err, signal = res.signal, timed_out = res.timed_out, out = res.stdout }',
            {"py": PY, "code": code, "tag": self.tag}))
        took = time.time() - t0
        self.assertTrue(out["r"])
        self.assertIn("did not finish within 1", out["err"])
        self.assertEqual(out["signal"], "SIGKILL")
        self.assertTrue(out["timed_out"])
        self.assertEqual(out["out"], "ready\n")
        self.assertGreaterEqual(took, 2.0)
        self.assertEqual(tagged(self.tag), [])

    def test_double_fork_setsid_daemon_does_not_outlive_the_call(self):
        code = ("import os, sys, time\n"
                "if os.fork() == 0:\n"
                "    os.setsid()\n"
                "    if os.fork() == 0:\n"
                "        os.setsid() if False else None\n"
                "        sys.stdout.flush(); os.close(1); os.close(2)\n"
                "        open('daemon.pid', 'w').write(str(os.getpid()))\n"
                "        time.sleep(600)\n"
                "    os._exit(0)\n"
                "time.sleep(0.5)\n")
        out = self.assertDone(self.run_lua(
            'local r = assert(proc.run({ args.py, "-c", args.code, args.tag }, { kill_grace = 1 })) '
            'return { code = r.code, leftovers = r.leftovers, pid = tonumber(fs.read("daemon.pid")) }',
            {"py": PY, "code": code, "tag": self.tag}))
        self.assertEqual(out["code"], 0)
        self.assertGreaterEqual(out["leftovers"], 1)
        self.assertFalse(alive(out["pid"]))
        self.assertEqual(tagged(self.tag), [])

    def test_fork_bomb_is_stopped_by_the_process_watchdog(self):
        # A bounded, linear bomb (safe on a shared machine): 300 sleeping children.
        code = ("import os, time\nfor i in range(300):\n"
                "    if os.fork() == 0:\n        time.sleep(600); os._exit(0)\n"
                "time.sleep(600)\n")
        t0 = time.time()
        out = self.assertDone(self.run_lua(
            'local r, err, res = proc.run({ args.py, "-c", args.code, args.tag }, { max_procs = 20, timeout = 120 }) '
            'return { r = r == nil, err = err, signal = res.signal }', {"py": PY, "code": code, "tag": self.tag},
            timeout=120))
        self.assertTrue(out["r"])
        self.assertIn("started more than 20 processes", out["err"])
        self.assertEqual(out["signal"], "SIGKILL")
        self.assertLess(time.time() - t0, 60)
        self.assertEqual(tagged(self.tag), [])

    @unittest.skipIf(os.geteuid() != 0, "needs root to switch to an unprivileged user")
    def test_rlimit_nproc_applies_to_a_non_root_job(self):
        # As root the kernel ignores RLIMIT_NPROC; run the job as `nobody` to see it bite.
        with open(self.conf, "a") as f:
            f.write("user = nobody\n")
        os.chmod(self.tmp, 0o755)
        for d in (self.data, self.jobs):
            subprocess.run(["chown", "-R", "nobody", d], check=True)
        code = ("import os, time\nn = 0\nfor i in range(200):\n"
                "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
                "    if pid == 0:\n        time.sleep(30); os._exit(0)\n    n += 1\n"
                "print(n, flush=True)\n")
        r = self.run_lua('local r = assert(proc.run({ args.py, "-c", args.code, args.tag }, { max_procs = 200 })) '
                         'return { forked = tonumber(r.stdout) }', {"py": PY, "code": code, "tag": self.tag})
        if r.code != 0 and "user" in (r.error_message or ""):
            self.skipTest(r.error_message)
        out = self.assertDone(r)
        self.assertLess(out["forked"], 200)
        self.assertEqual(tagged(self.tag), [])


class CancelAndKill(ProcCase):
    GROUP = ("import os, signal, time\n"
             "if os.fork() == 0:\n    time.sleep(600); os._exit(0)\n"
             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
             "open('started', 'w').write('x')\n"
             "time.sleep(600)\n")

    def test_cancel_ends_the_whole_group_then_raises(self):
        p = self.start_lua('proc.run({ args.py, "-c", args.code, args.tag }, { kill_grace = 1 })',
                           {"py": PY, "code": self.GROUP, "tag": self.tag})
        wait_for(lambda: os.path.exists(os.path.join(self.instance_dir(), "started")), what="program start")
        self.assertEqual(len(tagged(self.tag)), 2)
        p.send_signal(signal.SIGTERM)
        r = self.finish(p)
        self.assertEqual(r.code, 3, r)
        self.assertEqual(r.status, "CANCELLED")
        self.assertEqual(tagged(self.tag), [])

    def test_kill_9_of_the_job_leaves_no_program_behind(self):
        p = self.start_lua('proc.run({ args.py, "-c", args.code, args.tag }, { kill_grace = 1 })',
                           {"py": PY, "code": self.GROUP, "tag": self.tag})
        child = self.wait_child(p)
        wait_for(lambda: os.path.exists(os.path.join(self.instance_dir(), "started")), what="program start")
        progs = tagged(self.tag)
        self.assertEqual(len(progs), 2)
        os.kill(child, signal.SIGKILL)
        self.finish(p)
        # the shepherd sees the job die: SIGTERM (ignored by one), grace, SIGKILL
        wait_for(lambda: not any(alive(x) for x in progs), timeout=15, what="the program group to end")

    def test_next_run_sweeps_a_daemon_when_the_shepherd_was_killed_too(self):
        code = ("import os, time\n"
                "if os.fork() == 0:\n"
                "    os.setsid()\n"
                "    if os.fork() == 0:\n"
                "        if os.fork() == 0:\n            time.sleep(600); os._exit(0)\n"
                "        open('daemon.pid', 'w').write(str(os.getpid()))\n"
                "        time.sleep(600)\n"
                "    os._exit(0)\n"
                "time.sleep(600)\n")
        p = self.start_lua('proc.run({ args.py, "-c", args.code, args.tag })',
                           {"py": PY, "code": code, "tag": self.tag})
        child = self.wait_child(p)
        pidfile = os.path.join(self.instance_dir(), "daemon.pid")
        def daemon_pid():
            try:
                with open(pidfile) as f:
                    return int(f.read())
            except (OSError, ValueError):
                return None
        daemon = wait_for(daemon_pid, what="daemon pid")
        procs = os.path.join(self.instance_dir(), ".jobvisor", "procs")

        def recorded():
            pids = set()
            for name in os.listdir(procs):
                with open(os.path.join(procs, name)) as f:
                    pids |= {int(l.split()[0]) for l in f if l.strip()}
            return pids
        wait_for(lambda: daemon in recorded(), what="the daemon in the record")
        shepherd = [k for k in children_of(child)][0]
        program = children_of(shepherd)[0]
        self.assertIn(program, tagged(self.tag))
        os.kill(shepherd, signal.SIGKILL)
        os.kill(child, signal.SIGKILL)
        self.finish(p)
        # PDEATHSIG: the program dies with its shepherd at once ...
        wait_for(lambda: not alive(program), timeout=5, what="PDEATHSIG to end the program")
        # ... but the double-forked, setsid daemon has no such tie: it waits for the next run
        self.assertTrue(alive(daemon), "the daemon should have escaped until the next run")
        self.assertEqual(len(tagged(self.tag)), 2)  # the daemon and its child
        r = self.run_lua('return {}')
        self.assertEqual(r.code, 0, r)
        logs = [e["message"] for e in r.events if e["kind"] == "log"]
        ended = [int(m.split()[1]) for m in logs
                 if m.startswith("ended ") and "that an earlier run's programs left behind" in m]
        # the daemon and its child at least (a program that had not yet died of PDEATHSIG too)
        self.assertTrue(ended and ended[0] >= 2, logs)
        wait_for(lambda: tagged(self.tag) == [], timeout=5, what="the sweep to end the daemon")
        self.assertEqual(os.listdir(procs), [])


class Check(ProcCase):
    def test_check_reports_a_literal_program_that_is_not_allowed(self):
        bad = self.lua('proc.run({ "/bin/sh", "-c", "id" })')
        p = subprocess.run([JOBVISOR, "check", bad, "--config", self.conf], capture_output=True, text=True)
        self.assertNotEqual(p.returncode, 0, p)
        self.assertIn("'/bin/sh'", p.stderr)
        self.assertIn("job_executables", p.stderr)
        self.assertIn("job.lua:3:", p.stderr)  # file:line of the call
        good = self.script('return { type = "OK", run = function(job) proc.run({ "/bin/echo", "x" }) '
                           'local prog = job.params.p proc.run({ prog }) end }', name="good.lua")
        p = subprocess.run([JOBVISOR, "check", good, "--config", self.conf], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p)


if __name__ == "__main__":
    unittest.main()
