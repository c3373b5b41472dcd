"""The jobvisor modules (log, json, fs, archive, http, instance, remote) are built on their
first use (lua/sandbox.c). What a script sees through indexing, assignment and pairs() must
be what an eagerly built module showed: every function there on first use, whichever way
the first use comes (rawget and next included), unknown names refused with the script's line, assignments kept, the
metatable hidden, and `jobvisor check` still knowing every field."""
import subprocess
import unittest

from jv_run import JOBVISOR, JobvisorTestCase

MODULES = ["log", "json", "fs", "archive", "http", "instance", "remote", "proc"]


class LazyModules(JobvisorTestCase):
    def run_body(self, body, name="job.lua"):
        path = self.script(f'return {{ type = "LAZY", run = function(job)\n{body}\nend }}', name=name)
        return self.run_job(path)

    def test_first_use_by_index_pairs_or_assignment_sees_the_whole_module(self):
        r = self.run_body("""
local out = {}
-- first use through pairs(): every function listed
local names = {}
for k, v in pairs(json) do names[#names + 1] = k .. ":" .. type(v) end
table.sort(names)
out.json_pairs = table.concat(names, ",")
-- first use through an assignment: the script's field stays, the module's arrive
fs.mine = 42
out.fs_mine, out.fs_exists = fs.mine, type(fs.exists)
-- an assignment over a module function before its first read wins, as before
archive.list = "replaced"
out.archive_list, out.archive_create = archive.list, type(archive.create)
-- first use through an index
out.http_download = type(http.download)
out.remote_put = type(remote.put)
out.instance_status = type(instance.status)
out.log_info = type(log.info)
-- the metatable stays hidden, before and after the first use
out.mt = tostring(getmetatable(fs)) .. "," .. tostring(getmetatable(instance))
out.round = json.decode(json.encode({ a = { 1, 2 } })).a[2]
return out
""")
        self.assertEqual(r.code, 0, r)
        out = r.result["output"]
        self.assertEqual(out["json_pairs"], "array:function,decode:function,encode:function,null:userdata")
        self.assertEqual(out["fs_mine"], 42)
        self.assertEqual(out["fs_exists"], "function")
        self.assertEqual(out["archive_list"], "replaced")
        self.assertEqual(out["archive_create"], "function")
        for k in ("http_download", "remote_put", "instance_status", "log_info"):
            self.assertEqual(out[k], "function", k)
        self.assertEqual(out["mt"], "false,false")
        self.assertEqual(out["round"], 2)

    def test_raw_access_on_first_use_sees_the_whole_module(self):
        # docs/lua-api.md: test for an optional function with rawget(fs, "name")
        r = self.run_body("""
local k, v = next(http)
return { rawget_fs = type(rawget(fs, "swap")), rawget_missing = rawget(remote, "nope") == nil,
         next_http = type(k) .. ":" .. type(v), rawget_archive = type(rawget(archive, "verify")),
         plain = rawget({ a = 1 }, "a"), plain_next = next({}) == nil }
""")
        self.assertEqual(r.code, 0, r)
        self.assertEqual(r.result["output"], {
            "rawget_fs": "function", "rawget_missing": True, "next_http": "string:function",
            "rawget_archive": "function", "plain": 1, "plain_next": True})
        for call, expected in [("rawget(nil, 1)", "bad argument #1 to 'rawget' (table expected, got nil)"),
                               ("rawget({})", "bad argument #2 to 'rawget' (value expected)"),
                               ("next(42)", "bad argument #1 to 'next' (table expected, got number)")]:
            with self.subTest(call):
                r = self.run_body(f"return {{ v = {call} }}", name="raw.lua")
                self.assertEqual(r.code, 1, r)
                self.assertIn(expected, r.result["error"]["message"])

    def test_unknown_name_on_first_use_is_refused_at_the_scripts_line(self):
        for mod, name, hint in [("fs", "raed", "fs.read"), ("archive", "craete", "archive.create"),
                                ("http", "nothing_like_it", None)]:
            with self.subTest(mod):
                r = self.run_body(f"local x = 1\nreturn {{ v = {mod}.{name} }}", name=f"{mod}.lua")
                self.assertEqual(r.code, 1, r)
                msg = r.result["error"]["message"]
                self.assertIn(f"{mod}.lua:3: {mod}.{name}: no such field in module '{mod}'", msg)
                if hint:
                    self.assertIn(f"did you mean {hint}?", msg)

    def test_setmetatable_on_a_module_is_still_refused(self):
        for mod in MODULES:
            with self.subTest(mod):
                r = self.run_body(f"setmetatable({mod}, {{}})", name=f"{mod}.lua")
                self.assertEqual(r.code, 1, r)
                self.assertIn("cannot change a protected metatable", r.result["error"]["message"])

    def test_proc_keeps_the_string_match_it_had_before_the_script_ran(self):
        # proc is built eagerly: a script replacing string.match must not reach proc's
        # pattern checks (proc.run(...).expect patterns and the like).
        r = self.run_body("""
local real = string.match
string.match = function() error("hooked") end
local ok = pcall(function() return proc.run end)
string.match = real
return { proc_run = type(proc.run), ok = ok }
""")
        self.assertEqual(r.code, 0, r)
        self.assertEqual(r.result["output"], {"proc_run": "function", "ok": True})

    def test_check_knows_every_module_field_before_any_use(self):
        path = self.script("""return { type = "LAZY", run = function(job)
  fs.exists("x"); archive.list("x"); http.download("u", "p"); remote.info("r")
  instance.status(); log.info("m"); json.encode({})
  fs.raed("x")
end }""", name="check.lua")
        p = subprocess.run([JOBVISOR, "check", path], capture_output=True, text=True, timeout=30)
        self.assertNotEqual(p.returncode, 0, p)
        problems = [l for l in p.stderr.splitlines() if "no such field" in l]
        self.assertEqual(len(problems), 1, p.stderr)
        self.assertIn("fs.raed: no such field in module 'fs' (did you mean fs.read?)", problems[0])


if __name__ == "__main__":
    unittest.main()
