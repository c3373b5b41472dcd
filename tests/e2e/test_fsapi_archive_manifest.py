"""End-to-end: archive.create writes the manifest file itself (opts.manifest, manifest_fields)
and reads a reuse manifest from a path, without the file list crossing into Lua. The file is
the same document the table form gives, verify/extract accept it, misuse raises, and a reuse
file that cannot serve only costs hashing (info.reuse_error)."""
import json
import os
import time
import unittest

from fsapi_e2e import FsapiCase

BOTH = '''
local m1, i1 = archive.create("data", "out/t.tar.zst")
if not m1 then job.fail(i1) end
local s, info = archive.create("data", "out/f.tar.zst",
  { manifest = "out/f.json", manifest_fields = { backupId = "f", complete = true, n = 3,
                                                  tags = json.array({ "a", "b" }) } })
if not s then job.fail(info) end
fs.write("out/t.json", json.encode(m1))
local m2 = json.decode(fs.read("out/f.json"))
assert(archive.verify("out/f.tar.zst", m2))
local r, err = archive.extract("out/f.tar.zst", fs.staging() .. "/x", { manifest = m2 })
if not r then job.fail(err) end
return { summary = s, files = info.files, restored = r.files }
'''


class ManifestFile(FsapiCase):
    def setUp(self):
        super().setUp()
        os.makedirs(self.ipath("data/world/region"))
        for i in range(3):
            with open(self.ipath(f"data/world/region/r.{i}.mca"), "wb") as f:
                f.write(os.urandom(100000) + bytes(100000))
        for i, name in enumerate(["plain.txt", 'quote"back\\slash.txt', "tab\there.txt",
                                  "ctl\x01.txt", "üñí.txt"]):
            with open(self.ipath("data/world/" + name), "w") as f:
                f.write(f"file {i}\n" * (i + 1))
        os.symlink("world/region", self.ipath("data/regions"))

    def load(self, rel):
        with open(self.ipath(rel), "rb") as f:
            return json.loads(f.read())

    def test_the_file_is_the_document_the_table_gives_and_verifies(self):
        out = self.assertCompleted(self.run_lua(BOTH))
        doc, table = self.load("out/f.json"), self.load("out/t.json")
        self.assertEqual(out["summary"], {"format": 1, "sha256": doc["sha256"], "bytes": doc["bytes"],
                                          "entries": len(doc["files"])})
        self.assertNotIn("files", out["summary"])
        self.assertEqual(doc["bytes"], os.path.getsize(self.ipath("out/f.tar.zst")))
        self.assertEqual((doc["backupId"], doc["complete"], doc["n"], doc["tags"]), ("f", True, 3, ["a", "b"]))
        # Same entries (paths with quotes, backslashes, control and non-ASCII characters
        # included) as the table form of an archive of the same tree.
        self.assertEqual(doc["files"], table["files"])
        self.assertEqual(out["files"], 8)
        self.assertEqual(out["restored"], 8)
        self.assertEqual(set(os.listdir(self.ipath("out"))), {"t.tar.zst", "f.tar.zst", "t.json", "f.json"})

    def test_misuse_raises(self):
        for opts, needle in [
            ('{ manifest_fields = { a = 1 } }', "manifest_fields needs manifest"),
            ('{ manifest = "out/m.json", manifest_fields = { files = {} } }', "'files' is written by"),
            ('{ manifest = "out/m.json", manifest_fields = { sha256 = "x" } }', "'sha256' is written by"),
            ('{ manifest = "out/m.json", manifest_fields = { 1, 2 } }', "string keys"),
            ('{ manifest = "out/m.json", manifest_fields = "x" }', "table of members"),
            ('{ manifest = "out/a.tar.zst" }', "must not be the archive itself"),
            ('{ manifest = 5 }', "manifest"),
            ('{ manifest_file = "out/m.json" }', "unknown option 'manifest_file'"),
        ]:
            res = self.run_lua(f'''
                local ok, err = pcall(archive.create, "data", "out/a.tar.zst", {opts})
                if ok then return {{ raised = false }} end
                return {{ raised = true, err = tostring(err) }}''')
            out = self.assertCompleted(res)
            self.assertTrue(out["raised"], opts)
            self.assertIn(needle, out["err"], opts)
        self.assertFalse(os.path.exists(self.ipath("out/a.tar.zst")))

    def test_reuse_from_a_path(self):
        # Files changed within the last 2 s (ctime) are never given a reusable stat id.
        time.sleep(2.2)
        body = '''
            local a, i1 = archive.create("data", "out/g.tar.zst", { manifest = "out/g.json" })
            if not a then job.fail(i1) end
            local b, i2 = archive.create("data", "out/h.tar.zst", { manifest = "out/h.json",
                                                                    reuse = args.reuse })
            if not b then job.fail(i2) end
            return { reused = i2.reused, files = i2.files, why = i2.reuse_error }'''
        out = self.assertCompleted(self.run_lua(body, {"reuse": "out/g.json"}))
        self.assertEqual((out["reused"], out["files"], out.get("why")), (8, 8, None))
        self.assertEqual(self.load("out/h.json")["files"], self.load("out/g.json")["files"])
        # A reuse file that cannot serve: every file is hashed, and the reason is given.
        with open(self.ipath("out/bad.json"), "w") as f:
            f.write('{"format": 1, "files": [')
        with open(self.ipath("out/incomplete.json"), "w") as f:
            json.dump(dict(self.load("out/g.json"), complete=False), f)
        for path, why in [("out/bad.json", "not JSON"), ("out/none.json", "cannot read"),
                          ("out/incomplete.json", "not marked complete")]:
            out = self.assertCompleted(self.run_lua(body, {"reuse": path}))
            self.assertEqual(out["reused"], 0, path)
            self.assertIn(why, out["why"], path)
            self.assertEqual(self.load("out/h.json")["files"], self.load("out/g.json")["files"])


if __name__ == "__main__":
    unittest.main()
