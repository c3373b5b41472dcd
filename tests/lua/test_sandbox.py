"""Sandbox escape attempts: each must fail cleanly (FAILED with a clear message,
or end by the timeout) and leave no trace outside the instance directory."""
import os
import time
import unittest

from jv_run import JobvisorTestCase, processes_in_group

# (name, script body inside run(job), expected substring of the error message)
ESCAPES = [
    ("bytecode_through_load", 'assert(load("\\27Lua\\84\\0"))()', "attempt to load a binary chunk"),
    ("bytecode_with_mode_b", 'assert(load("\\27Lua\\84\\0", "x", "b"))()', "attempt to load a binary chunk"),
    ("bytecode_through_reader", 'local done = false\n assert(load(function() if done then return nil end done = true return "\\27Lua" end))()',
     "attempt to load a binary chunk"),
    ("string_dump", 'return { s = string.dump(function() end) }', "field 'dump'"),
    ("string_dump_via_method", 'local f = ("").dump; return { s = f(print) }', "attempt to call a nil value"),
    ("io_open", 'io.open("/etc/passwd")', "global 'io'"),
    ("os_execute", 'os.execute("touch /tmp/jv-pwned")', "field 'execute'"),
    ("os_exit", 'os.exit(0)', "field 'exit'"),
    ("os_getenv", 'return { v = os.getenv("HOME") }', "field 'getenv'"),
    ("os_remove", 'os.remove("/tmp/x")', "field 'remove'"),
    ("os_rename", 'os.rename("/tmp/a", "/tmp/b")', "field 'rename'"),
    ("package_loadlib", 'package.loadlib("libc.so.6", "system")', "global 'package'"),
    ("debug_registry", 'debug.getregistry()', "global 'debug'"),
    ("require_os", 'require("os")', "module 'os' not found"),
    ("require_io", 'require("io")', "module 'io' not found"),
    ("require_native", 'require("socket.core")', "not found"),
    ("require_path_escape", 'require("../../../etc/passwd")', "invalid module name"),
    ("require_absolute", 'require("/etc/passwd")', "invalid module name"),
    ("dofile", 'dofile("/etc/passwd")', "global 'dofile'"),
    ("loadfile", 'loadfile("/etc/passwd")', "global 'loadfile'"),
    ("string_metatable_read", 'local mt = getmetatable(""); return { x = mt.__index }', "attempt to index a boolean value"),
    ("string_metatable_write", 'getmetatable("").__index = { upper = function() return "pwned" end }', "attempt to index a boolean value"),
    ("string_metatable_rawset", 'rawset(getmetatable(""), "__index", {})', "bad argument #1 to 'rawset'"),
    ("collectgarbage_stop", 'collectgarbage("stop")', "collectgarbage('stop') is not allowed"),
    ("collectgarbage_collect", 'collectgarbage()', "collectgarbage('collect') is not allowed"),
    ("string_rep_bomb", 'local s = string.rep("x", 1 << 40)', "resulting string too large"),
    ("string_rep_doubling_bomb", 'local s = "x"; for i = 1, 64 do s = s .. s end', "memory limit"),
    ("table_bomb", 'local t = {}; for i = 1, 1e10 do t[i] = i end', "memory limit"),
    ("infinite_recursion", 'local function f() return 1 + f() end; f()', ("stack overflow", "memory limit")),
    ("c_stack_recursion", 'local t = setmetatable({}, { __index = function(t, k) return t[k] end }); return { v = t.x }', ("stack overflow", "C stack overflow")),
    ("marker_path_escape", 'job.mark("../../../../tmp/jv-evil", {})', "marker name"),
    ("marker_absolute", 'job.mark("/tmp/jv-evil", {})', "marker name"),
    ("cyclic_output", 'local t = {}; t.self = t; return t', "nesting deeper"),
    ("setfenv_gone", 'setfenv(1, {})', "global 'setfenv'"),
    ("warn_gone", 'warn("@on")', "global 'warn'"),
    ("load_env_cannot_reach_io", 'local f = load("return io", "x", "t", _G); return { v = f() ~= nil and "io" or error("no io here") }', "no io here"),
]

# (name, body, timeout seconds): CPU runaways that only the wall-clock timeout ends.
RUNAWAYS = [
    ("gc_finalizer_loop", """
for i = 1, 200 do setmetatable({}, { __gc = function() while true do end end }) end
local junk = {}
for i = 1, 1e7 do junk[i % 1000] = {} end
""", 2),
    ("coroutine_loop", """
local co = coroutine.wrap(function() while true do coroutine.yield() end end)
while true do co() end
""", 2),
    ("pattern_bomb", 'string.find(string.rep("a", 300000), ".-.-.-.-.-.-.-.-b")', 2),
]


class SandboxEscapes(JobvisorTestCase):
    def assert_no_trace_outside(self, before):
        after = __import__("jv_run").tree_snapshot(self.tmp, skip=self.instance_dir())
        self.assertEqual(before, after)
        self.assertFalse(os.path.exists("/tmp/jv-pwned"))
        self.assertFalse(os.path.exists("/tmp/jv-evil.json"))

    def test_escape_attempts_fail_cleanly(self):
        self.assertGreaterEqual(len(ESCAPES) + len(RUNAWAYS), 25)
        os.makedirs(self.instance_dir(), exist_ok=True)
        for name, body, expected in ESCAPES:
            with self.subTest(name):
                path = self.script(f'return {{ type = "ESCAPE", run = function(job)\n{body}\nend }}', name=f"{name}.lua")
                before = __import__("jv_run").tree_snapshot(self.tmp, skip=self.instance_dir())
                r = self.run_job(path, extra=["--memory-limit", "64", "--timeout", "30"])
                self.assertEqual(r.code, 1, r)
                self.assertEqual(r.status, "FAILED")
                expected = expected if isinstance(expected, tuple) else (expected,)
                self.assertTrue(any(e in r.error_message for e in expected), (expected, r.error_message))
                self.assert_no_trace_outside(before)

    def test_runaways_end_by_timeout_and_leave_no_process(self):
        for name, body, timeout in RUNAWAYS:
            with self.subTest(name):
                path = self.script(f'return {{ type = "RUNAWAY", run = function(job)\n{body}\nend }}', name=f"{name}.lua")
                t0 = time.time()
                p = self.start_job(path, extra=["--timeout", str(timeout), "--cancel-grace", "1"])
                child = self.wait_child(p)
                r = self.finish(p)
                self.assertEqual(r.code, 1, r)
                self.assertEqual(r.result["error"]["reason"], "timeout")
                self.assertLess(time.time() - t0, timeout + 10)
                self.assertEqual(processes_in_group(child), [])

    def test_print_goes_to_the_log_not_stdout(self):
        path = self.script('return { type = "P", run = function(job) print("hello", 42) end }')
        r = self.run_job(path)
        self.assertEqual(r.code, 0, r)
        logs = [e["message"] for e in r.events if e["kind"] == "log"]
        self.assertEqual(logs, ["hello\t42"])

    def test_gc_finalizer_at_exit_does_not_hang(self):
        path = self.script("""return { type = "G", run = function(job)
  setmetatable({}, { __gc = function() while true do end end })
  return { ok = true }
end }""")
        t0 = time.time()
        r = self.run_job(path)
        self.assertEqual(r.code, 0, r)
        self.assertLess(time.time() - t0, 5)

    def test_safe_library_still_works(self):
        path = self.script("""return { type = "OK", run = function(job)
  local t = { 3, 1, 2 }; table.sort(t)
  local s = ("Hello"):upper() .. string.format("%05.1f", math.pi)
  local co = coroutine.wrap(function() coroutine.yield(7) end)
  local f = load("return 1 + 1")
  return { sorted = t, s = s, co = co(), load = f(), utf8 = utf8.len("héllo"),
           time = type(os.time()), clock = type(os.clock()), date = os.date("!%Y", 0),
           mem = collectgarbage("count") > 0, json = json.decode(json.encode({ a = { 1, 2 } })).a[2] }
end }""")
        r = self.run_job(path)
        self.assertEqual(r.code, 0, r)
        out = r.result["output"]
        self.assertEqual(out["sorted"], [1, 2, 3])
        self.assertEqual(out["s"], "HELLO003.1")
        self.assertEqual(out["co"], 7)
        self.assertEqual(out["load"], 2)
        self.assertEqual(out["utf8"], 5)
        self.assertEqual(out["date"], "1970")
        self.assertEqual(out["json"], 2)

    def test_require_loads_helpers_from_jobs_lib_only(self):
        os.makedirs(os.path.join(self.jobs, "lib"))
        with open(os.path.join(self.jobs, "lib", "greet.lua"), "w") as f:
            f.write('local M = {}\nfunction M.hi(n) return "hi " .. n end\nreturn M\n')
        path = self.script("""return { type = "R", run = function(job)
  local g = require("lib.greet")
  assert(require("greet") == g)
  return { msg = g.hi("x") }
end }""")
        r = self.run_job(path)
        self.assertEqual(r.code, 0, r)
        self.assertEqual(r.result["output"]["msg"], "hi x")


if __name__ == "__main__":
    unittest.main()
