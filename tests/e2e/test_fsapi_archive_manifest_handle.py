"""End-to-end: archive.manifest(path) reads a manifest file in C, entry by entry, into a handle
that archive.extract and archive.verify take in place of the table (issue 12: RESTORE_BACKUP and
VERIFY_BACKUP no longer turn a world's file list into a Lua table). The handle reads the same
document as json.decode does (paths with escapes, values across the reader's 256 KiB window),
refuses what is not a manifest with a message naming the file, and keeps a job's Lua memory
flat however many files the backup lists."""
import json
import os
import shutil
import unittest

from fsapi_e2e import FsapiCase

READ = '''
local m, err = archive.manifest(args.path)
if not m then job.fail(err) end
local ok, verr = archive.verify(args.archive, m)
if not ok then job.fail(verr) end
local r, xerr = archive.extract(args.archive, fs.staging() .. "/x", { manifest = m })
if not r then job.fail(xerr) end
local files_err = select(2, pcall(function() return m.files end))
return { entries = m.entries, file_count = m.file_count, file_bytes = m.file_bytes,
         sha256 = m.sha256, bytes = m.bytes, backupId = m.backupId, tags = m.tags,
         missing = m.nothing == nil, restored = r.files, files_err = tostring(files_err),
         str = tostring(m):match("^manifest %(%d+ entries%)$") ~= nil }
'''

CREATE = '''
local s, info = archive.create("data", "out/f.tar.zst",
  { manifest = "out/f.json", manifest_fields = { backupId = "f", complete = true,
                                                  tags = json.array({ "a", "b" }) } })
if not s then job.fail(info) end
return { files = info.files }
'''


class ManifestHandle(FsapiCase):
    def make_world(self, n, pad=0):
        d = self.ipath("data/world")
        os.makedirs(d)
        names = ['quote"back\\slash.txt', "tab\there.txt", "ctl\x01.txt", "üñí.txt"]
        names += ["f%05d_%s.json" % (i, "p" * pad) for i in range(n)]
        for i, name in enumerate(names):
            with open(os.path.join(d, name), "w") as f:
                f.write("x" * (i % 50))
        return len(names)

    def load(self, rel):
        with open(self.ipath(rel), "rb") as f:
            return json.loads(f.read())

    def test_the_handle_reads_what_json_decode_reads(self):
        # 3,600 entries with long names: the document is several times the reader's window.
        n = self.make_world(3600, pad=120)
        self.assertEqual(self.assertCompleted(self.run_lua(CREATE))["files"], n)
        self.assertGreater(os.path.getsize(self.ipath("out/f.json")), 3 * (256 << 10))
        doc = self.load("out/f.json")
        out = self.assertCompleted(self.run_lua(READ, {"path": "out/f.json", "archive": "out/f.tar.zst"}))
        files = [f for f in doc["files"] if f["type"] == "file"]
        self.assertEqual(out["entries"], len(doc["files"]))
        self.assertEqual(out["file_count"], len(files))
        self.assertEqual(out["file_bytes"], sum(f["size"] for f in files))
        self.assertEqual((out["sha256"], out["bytes"], out["backupId"], out["tags"]),
                         (doc["sha256"], doc["bytes"], "f", ["a", "b"]))
        self.assertEqual((out["missing"], out["str"], out["restored"]), (True, True, n))
        self.assertIn("no 'files' list", out["files_err"])

    def test_a_handle_is_checked_as_strictly_as_a_table(self):
        self.make_world(20)
        self.assertCompleted(self.run_lua(CREATE))
        doc = self.load("out/f.json")
        text = json.dumps(doc, indent=1)
        bad_digest = dict(doc, files=[dict(f, sha256="0" * 64) if f["type"] == "file" else f
                                      for f in doc["files"]])
        cases = {
            "truncated.json": (text[: len(text) // 2], "'out/truncated.json' is not JSON"),
            "trailing.json": (text + " x", "'out/trailing.json' is not JSON"),
            "twice.json": (text[:-1] + ', "bytes": 3}', "member 'bytes' twice"),
            "nofiles.json": (json.dumps({"format": 1}), "'files' must be an array"),
            "filesobj.json": (json.dumps(dict(doc, files={})), "'out/filesobj.json' is not JSON"),
            "format2.json": (json.dumps(dict(doc, format=2)), "not a format 1 manifest"),
            "incomplete.json": (json.dumps(dict(doc, complete=False)),
                                "'out/incomplete.json' is not marked complete"),
            "dup.json": (json.dumps(dict(doc, files=doc["files"] + doc["files"][-1:])), "twice"),
            "badpath.json": (json.dumps(dict(doc, files=[{"path": "../x", "type": "dir"}])),
                             "not a clean relative path"),
            "empty.json": ("", "'out/empty.json' is not JSON"),
        }
        for name, (body, _) in cases.items():
            with open(self.ipath("out/" + name), "w") as f:
                f.write(body)
        with open(self.ipath("out/digest.json"), "w") as f:
            json.dump(bad_digest, f)
        body = '''
local out = {}
for _, p in ipairs(args.paths) do
  local m, err = archive.manifest(p)
  out[#out + 1] = m and "read" or err
end
local m = assert(archive.manifest("out/digest.json"))
local ok, verr = archive.verify("out/f.tar.zst", m)
out[#out + 1] = ok and "verified" or verr
local r, xerr = archive.extract("out/f.tar.zst", fs.staging() .. "/x", { manifest = m })
out[#out + 1] = r and "extracted" or xerr
local none, nerr = archive.manifest("out/none.json")
out[#out + 1] = none and "read" or nerr
return { list = out }'''
        out = self.assertCompleted(self.run_lua(body, {"paths": ["out/" + n for n in cases]}))["list"]
        for (name, (_, want)), got in zip(cases.items(), out):
            self.assertIn(want, got, name)
        self.assertIn("but the manifest says", out[len(cases)])
        self.assertIn("but the manifest says", out[len(cases) + 1])
        self.assertIn("cannot read 'out/none.json'", out[len(cases) + 2])

    def test_restore_and_verify_of_many_files_fit_a_small_lua_memory_cap(self):
        # A Lua table of 20,000 manifest entries needs far more than 4 MiB; the handle lives in C.
        n = self.make_world(20000)
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": "b1"}, timeout=600)
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(r.result["output"]["files"], n)
        shutil.rmtree(self.ipath("data"))
        for typ in ("VERIFY_BACKUP", "RESTORE_BACKUP"):
            r = self.run_job(typ, params={"backupId": "b1"}, timeout=600, extra=("--memory-limit", "4"))
            self.assertEqual(r.status, "COMPLETED", (typ, r))
            self.assertEqual((r.result["output"]["files"], r.result["output"]["entries"]), (n, n + 1), typ)
        self.assertEqual(len(os.listdir(self.ipath("data/world"))), n)


if __name__ == "__main__":
    unittest.main()
