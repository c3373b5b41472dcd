"""Where the docs and the command line used to disagree (issue 17), each checked against the
real `jobvisor` binary: help and usage-error style, relative --data-dir, where results go,
what a cancel prints, the type of a run by path, `jobvisor check`, strict module tables at
run time, and lua-api.md's params example."""
import json
import os
import re
import signal
import subprocess
import time
import unittest

from jv_run import JOBVISOR, JobvisorTestCase

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def jv(*args, **kw):
    return subprocess.run([JOBVISOR, *args], capture_output=True, text=True, timeout=60, **kw)


class Help(unittest.TestCase):
    COMMANDS = ("agent", "run", "check", "status", "health", "monitor", "version", "help")

    def test_overview_names_every_command_and_option(self):
        for args in (["--help"], ["-h"], ["help"]):
            p = jv(*args)
            self.assertEqual(p.returncode, 0, args)
            self.assertEqual(p.stderr, "")
            # one line a command, "  NAME ..." (the man page generator reads the names there)
            names = re.findall(r"(?m)^  ([a-z][a-z-]*)", p.stdout)
            self.assertEqual(names, list(self.COMMANDS))
            for opt in ("--memory-limit MIB", "--config FILE", "--check-config", "--cancel-grace S"):
                self.assertIn(opt, p.stdout)

    def test_help_command_and_command_help_are_the_same_text(self):
        for cmd in self.COMMANDS[:5]:
            a, b = jv("help", cmd), jv(cmd, "--help")
            self.assertEqual((a.returncode, b.returncode), (0, 0), cmd)
            self.assertEqual(a.stdout, b.stdout)
            self.assertTrue(a.stdout.startswith(f"usage: jobvisor {cmd}"), a.stdout)
        self.assertEqual(jv("status", "--help").returncode, 0)
        self.assertEqual(jv("status", "-h").returncode, 0)
        self.assertIn("--memory-limit MIB", jv("help", "run").stdout)

    def test_version_spellings(self):
        outs = {jv(v).stdout for v in ("--version", "-V", "version")}
        self.assertEqual(len(outs), 1)
        self.assertRegex(outs.pop(), r"^jobvisor \d+\.\d+\.\d+\n$")

    def test_usage_errors_share_one_style(self):
        cases = [
            (["run", "--bogus", "X"], "jobvisor run: unknown option '--bogus'", "run"),
            (["run", "X", "--instance"], "jobvisor run: option '--instance' needs a value", "run"),
            (["run", "X"], "jobvisor run: --instance is required", "run"),
            (["status", "--bogus"], "jobvisor status: unknown option '--bogus'", "status"),
            (["agent", "--bogus"], "jobvisor agent: unknown option '--bogus'", "agent"),
            (["agent", "--config"], "jobvisor agent: option '--config' needs a value", "agent"),
            (["monitor", "--bogus"], "jobvisor monitor: unknown option '--bogus'", "monitor"),
            (["monitor"], "jobvisor monitor: --instance-dir is required", "monitor"),
            (["check"], "jobvisor check: missing the script to check", "check"),
            (["help", "nope"], "jobvisor help: unknown command 'nope'", "help"),
            (["nope"], "jobvisor: unknown command 'nope'", None),
            (["--nope"], "jobvisor: unknown option '--nope'", None),
        ]
        for args, first, cmd in cases:
            with self.subTest(args):
                p = jv(*args)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertEqual(p.stdout, "")
                self.assertEqual(p.stderr.splitlines()[0], first)
                if cmd:
                    self.assertIn(f"usage: jobvisor {cmd}", p.stderr)
                    self.assertIn(f"Run 'jobvisor help {cmd}' for details.", p.stderr)
                self.assertNotRegex(p.stderr, r"(?m)^(run|status|check): ")

    def test_no_arguments_is_a_usage_error(self):
        p = jv()
        self.assertEqual(p.returncode, 2)
        self.assertIn("usage: jobvisor COMMAND", p.stderr)


class RunBehaviour(JobvisorTestCase):
    def test_relative_data_dir_is_refused_like_the_agent_does(self):
        cwd = os.path.join(self.tmp, "cwd")
        os.makedirs(cwd)
        p = subprocess.run([JOBVISOR, "run", "BACKUP_INSTANCE", "--instance", "i1", "--data-dir", "rel/data"],
                           capture_output=True, text=True, cwd=cwd, timeout=60)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("jobvisor run: --data-dir 'rel/data' must be an absolute path (as data_dir for the agent)",
                      p.stderr)
        self.assertEqual(os.listdir(cwd), [])
        # the agent's own refusal of the same value, for comparison
        a = subprocess.run([JOBVISOR, "agent", "--check-config"], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, JOBVISOR_DATA_DIR="rel/data", JOBVISOR_URL="http://127.0.0.1:9",
                                    JOBVISOR_AGENT_ID="a1"))
        self.assertEqual(a.returncode, 2, a.stderr)
        self.assertIn("'data_dir' = 'rel/data' must be an absolute path", a.stderr)

    def test_run_by_path_logs_the_scripts_type(self):
        path = self.script('return { type = "MY_TYPE", run = function(job) end }', name="mine.lua")
        r = self.run_job(path)
        self.assertEqual(r.code, 0, r)
        self.assertIn("job run started: type=MY_TYPE instance=test1", r.stderr)
        self.assertNotIn("type=-", r.stderr)

    def cancel_plain(self, json_out=False):
        path = self.script('return { type = "SLOW", run = function(job) job.step("waiting"); job.sleep(60) end }',
                           name="slow.lua")
        p = subprocess.Popen(self.cmd(path, json_out=json_out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        marker = os.path.join(self.instance_dir(), ".jobvisor", "markers", "run.SLOW.json")
        self.wait_file(marker, timeout=30)
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        return p.returncode, out, err

    def test_user_cancel_prints_no_traceback(self):
        code, out, err = self.cancel_plain()
        self.assertEqual(code, 3, err)
        self.assertEqual(out, "CANCELLED: job cancelled\n")
        self.assertNotIn("traceback", out + err)
        code, out, err = self.cancel_plain(json_out=True)
        self.assertEqual(code, 3, err)
        result = json.loads(out.splitlines()[-1])
        self.assertEqual(result["status"], "CANCELLED")
        self.assertEqual(result["error"]["stack"], "")
        self.assertNotIn("traceback", out + err)

    def test_unknown_module_field_raises_at_run_time(self):
        path = self.script('return { type = "T", run = function(job)\n'
                           '  assert(job.previous == nil)\n'
                           '  local ok, e1 = pcall(function() return fs.raed("x") end)\n'
                           '  local ok2, e2 = pcall(function() return job.progres end)\n'
                           '  local ok3, e3 = pcall(function() return instance.stat end)\n'
                           '  return { e1 = e1, e2 = e2, e3 = e3, ok = ok or ok2 or ok3 }\nend }')
        r = self.run_job(path)
        self.assertEqual(r.status, "COMPLETED", r)
        out = r.result["output"]
        self.assertFalse(out["ok"])
        self.assertIn("job.lua:3: fs.raed: no such field in module 'fs' (did you mean fs.read?)", out["e1"])
        self.assertIn("job.progres: no such field in module 'job' (did you mean job.progress?)", out["e2"])
        self.assertIn("instance.stat: no such field in module 'instance'", out["e3"])

    def test_lua_api_params_example_is_what_the_job_prints(self):
        with open(os.path.join(ROOT, "docs", "lua-api.md")) as f:
            doc = f.read()
        m = re.search(r"<!-- params-example: (\S+) (\{.*?\}) -->\n\s*```\n\s*(.*?)\n\s*```", doc)
        self.assertIsNotNone(m, "lua-api.md lost its params example")
        jtype, params, shown = m.groups()
        p = subprocess.run(self.cmd(jtype, params=params, json_out=False), capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(p.stdout.strip(), shown)


class Check(JobvisorTestCase):
    def test_check_reports_every_problem_with_its_line(self):
        path = self.script(
            "local helper = fs.exists\n"                              # 1 fine
            "return { type = 'T', cancelable = false,\n"              # 2 unknown field
            "  params = { a = 'strng' },\n"                           # 3 bad type
            "  run = function(job)\n"
            "    local x = fs.raed('a')\n"                            # 5
            "    job.progres(5)\n"                                    # 6
            "    os.execute('x') -- os.nope in a comment\n"           # 7
            "    local s = 'fs.nope in a string'\n"
            "    return json.encod({})\n"                             # 9
            "  end }\n", name="bad.lua")
        p = jv("check", path)
        self.assertEqual(p.returncode, 1)
        lines = p.stderr.splitlines()
        want = [f"{path}:2: unknown field 'cancelable' in the script table",
                f"{path}:3: parameter 'a' has unknown type 'strng'",
                f"{path}:5: fs.raed: no such field in module 'fs' (did you mean fs.read?)",
                f"{path}:6: job.progres: no such field in module 'job' (did you mean job.progress?)",
                f"{path}:7: os.execute: no such field in module 'os'",
                f"{path}:9: json.encod: no such field in module 'json' (did you mean json.encode?)"]
        for w in want:
            self.assertTrue(any(l.startswith(w) for l in lines), f"{w!r} not in {lines}")
        self.assertEqual(lines[-1], "jobvisor check: 6 problems in 1 of 1 script")
        self.assertNotIn("nope", p.stderr)

    def test_check_scans_helpers_without_running_them(self):
        os.makedirs(os.path.join(self.jobs, "lib"))
        path = self.script("local M = {}\nfunction M.x() return fs.exsts('a') end\nerror('not run')\nreturn M\n",
                           name="lib/helper.lua")
        p = jv("check", path)
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"{path}:2: fs.exsts: no such field in module 'fs' (did you mean fs.exists?)", p.stderr)
        self.assertNotIn("not run", p.stderr)

    def test_check_leaves_the_scripts_own_tables_alone(self):
        path = self.script("local fs = { raed = 1 }\n"
                           "local function f(instance) return instance.anything end\n"
                           "local M = {}\nfunction M.g(a, http) return http.whatever end\n"
                           "for _, json in ipairs({}) do local _ = json.x end\n"
                           "return { type = 'T', run = function(job) job.mine = 1; return { x = job.mine, y = fs.raed } end }\n")
        p = jv("check", path)
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_check_is_not_fooled_by_calls_and_keywords(self):
        # a call's argument is not a parameter, a keyword before the name is not a `local`
        path = self.script("local x\n"
                           "return { type = 'T', run = function(job)\n"
                           "  local t = {}\n"
                           "  print(tostring(archive.lst('a')))\n"
                           "  return fs.exits('a') and {} or {}\n"
                           "end }\n")
        p = jv("check", path)
        self.assertEqual(p.returncode, 1)
        self.assertIn(f"{path}:4: archive.lst: no such field in module 'archive' (did you mean archive.list?)", p.stderr)
        self.assertIn(f"{path}:5: fs.exits: no such field in module 'fs' (did you mean fs.exists?)", p.stderr)

    def test_every_builtin_and_example_script_checks_clean(self):
        dirs = (os.path.join(ROOT, "jobs"), os.path.join(ROOT, "jobs", "lib"), os.path.join(ROOT, "examples", "jobs"))
        scripts = sorted(os.path.join(d, f) for d in dirs for f in os.listdir(d) if f.endswith(".lua"))
        p = jv("check", *scripts)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(len(p.stdout.splitlines()), len(scripts))


if __name__ == "__main__":
    unittest.main()
