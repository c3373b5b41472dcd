"""Lua-level contract of fs, archive and http (one sandboxed script per test through
`jobvisor run`): misuse raises with the argument or option named, expected failures
return nil and a message, results have the documented shapes, arrays stay JSON arrays."""
import os
import unittest

from fsapi_e2e import FsapiCase

CHECK = '''
local results = json.array()
local function raises(name, pattern, f, ...)
  local ok, err = pcall(f, ...)
  if ok then results[#results + 1] = name .. ": did not raise"
  elseif not tostring(err):find(pattern, 1, true) then
    results[#results + 1] = name .. ": raised '" .. tostring(err) .. "', wanted '" .. pattern .. "'"
  end
end
local function fails(name, pattern, a, b)
  if a ~= nil then results[#results + 1] = name .. ": did not fail"
  elseif type(b) ~= "string" or not b:find(pattern, 1, true) then
    results[#results + 1] = name .. ": message '" .. tostring(b) .. "', wanted '" .. pattern .. "'"
  end
end
'''


class Contract(FsapiCase):
    def check(self, body):
        res = self.run_lua(CHECK + body + "\nreturn { problems = results }")
        out = self.assertCompleted(res)
        self.maxDiff = None
        self.assertEqual(out["problems"], [], "\n".join(out["problems"]))

    def test_misuse_raises(self):
        self.check('''
          raises("fs.read(nil)", "bad argument #1 to '?' (string expected, got no value)", fs.read)
          raises("fs.write(1 arg)", "bad argument #2 to '?' (string expected", fs.write, "a")
          raises("fs.mkdir(mode)", "option 'mode' must be an integer", fs.mkdir, "a", {mode = "x"})
          raises("fs.mkdir(opts)", "bad argument #2 to '?' (table expected, got number)", fs.mkdir, "a", 5)
          raises("fs.read(NUL)", "empty path or NUL byte", fs.read, "a\\0b")
          raises("fs.read('')", "empty path", fs.read, "")
          raises("fs.link_swap", "bad argument #2 to '?' (string expected", fs.link_swap, "current")
          raises("archive.create(opts)", "unknown option 'levle'", archive.create, "data", "b.tar.zst", {levle = 3})
          raises("archive.create(level)", "option 'level' must be an integer from 1 to 19", archive.create, "data", "b.tar.zst", {level = 40})
          raises("archive.create(exclude)", "exclude patterns must be strings", archive.create, "data", "b.tar.zst", {exclude = {1}})
          raises("archive.verify(no manifest)", "bad argument #2 to '?' (manifest expected, got nil)", archive.verify, "b.tar.zst")
          raises("archive.extract(strip)", "option 'strip_components'", archive.extract, "b.tar.zst", "x", {strip_components = -1})
          raises("http.download(no opts)", "bad argument #3 to '?' (table expected", http.download, "http://127.0.0.1:9/", "x")
          raises("http.download(no sha)", "opts.sha256 is required", http.download, "http://127.0.0.1:9/", "x", {})
          raises("http.download(bad sha)", "64 hex digits", http.download, "http://127.0.0.1:9/", "x", {sha256 = "abc"})
          raises("http.download(typo)", "unknown option 'sha'", http.download, "http://127.0.0.1:9/", "x", {sha = "abc"})
          raises("http.download(insecure type)", "option 'insecure_no_checksum' must be a boolean", http.download, "http://127.0.0.1:9/", "x", {insecure_no_checksum = "yes"})
          raises("http.get_json(opts)", "unknown option 'headers'", http.get_json, "http://127.0.0.1:9/", {headers = {}})
          raises("fs.clean_staging(bad)", "not a run id", fs.clean_staging, "../x")
        ''')

    def test_expected_failures_return_nil_and_message(self):
        os.makedirs(self.ipath("data"))
        with open(self.ipath("data/notes.txt"), "w") as f:
            f.write("hello")
        self.check('''
          fails("stat missing", "cannot stat 'nope'", fs.stat("nope"))
          fails("list file", "cannot list 'data/notes.txt'", fs.list("data/notes.txt"))
          fails("sha256 dir", "not a regular file", fs.sha256("data"))
          fails("read max", "larger than 2 bytes", fs.read("data/notes.txt", {max_bytes = 2}))
          fails("mkdir over file", "cannot create directory 'data/notes.txt/x'", fs.mkdir("data/notes.txt/x"))
          fails("extract missing", "cannot extract 'nope.tar'", archive.extract("nope.tar", "x"))
          fails("extract not archive", "cannot extract 'data/notes.txt'", archive.extract("data/notes.txt", "x"))
          fails("list not archive", "cannot list 'data/notes.txt'", archive.list("data/notes.txt"))
          fails("verify bad manifest", "not a format 1 manifest", archive.verify("data/notes.txt", {format = 7, files = {}}))
          fails("extract bad manifest", "needs string fields 'path' and 'type'",
                archive.extract("data/notes.txt", "x", {manifest = {format = 1, files = {{}}}}))
          fails("download refused port", "download failed", http.download("http://127.0.0.1:9/x", "x",
                {sha256 = string.rep("a", 64), retries = 0, connect_timeout = 2}))
          fails("get_json refused port", "request failed", http.get_json("http://127.0.0.1:9/", {retries = 0}))
        ''')

    def test_result_shapes(self):
        os.makedirs(self.ipath("data/sub"))
        with open(self.ipath("data/sub/a.txt"), "w") as f:
            f.write("abc")
        res = self.run_lua('''
          local st = fs.stat("data/sub/a.txt")
          local m, info = archive.create("data", "backups/b.tar.zst", {level = 1, threads = 1})
          local sha, size = fs.sha256("data/sub/a.txt")
          local avail, total = fs.free_space()
          return {
            stat = st, sha = sha, size = size, avail_ok = avail > 0 and total >= avail,
            empty_list = fs.list("data/sub/nothing") == nil, stale = fs.stale_staging(),
            manifest = m, info = info, listing = fs.list("data"),
            archive_list = archive.list("backups/b.tar.zst"),
            exists = { fs.exists("data"), fs.exists("nope"), fs.exists("data/sub/a.txt/x") },
          }
        ''')
        out = self.assertCompleted(res)
        self.assertEqual(out["stat"], {"type": "file", "size": 3, "mode": 0o644,
                                       "mtime": out["stat"]["mtime"]})
        self.assertEqual(out["sha"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        self.assertEqual(out["size"], 3)
        self.assertTrue(out["avail_ok"])
        self.assertEqual(out["stale"], [])  # an empty array, not {}
        self.assertEqual(out["info"]["skipped"], [])
        self.assertEqual(out["info"]["files"], 1)
        m = out["manifest"]
        self.assertEqual(m["format"], 1)
        self.assertEqual(len(m["sha256"]), 64)
        self.assertEqual(m["bytes"], os.path.getsize(self.ipath("backups/b.tar.zst")))
        self.assertEqual([f["path"] for f in m["files"]], ["sub", "sub/a.txt"])
        self.assertEqual(m["files"][1]["sha256"], out["sha"])
        self.assertEqual(out["listing"][0]["name"], "sub")
        self.assertEqual(out["listing"][0]["type"], "dir")
        self.assertEqual([e["path"] for e in out["archive_list"]], ["sub", "sub/a.txt"])
        self.assertEqual(out["exists"], [True, False, False])


if __name__ == "__main__":
    unittest.main()
