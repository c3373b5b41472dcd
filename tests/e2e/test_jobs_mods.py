"""SYNC_MODS end to end: mods served over loopback HTTP, added/updated/unchanged/removed,
removeUnlisted both ways, custom targets, the download cache, refusals that touch nothing."""
import os
import unittest

from jv_run import JobvisorTestCase
from jobs_fixtures import FileServer, leftovers, sha256_bytes, tree_digest, write_file


class Mods(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.inst = self.instance_dir()
        self.datadir = os.path.join(self.inst, "data")
        self.www = os.path.join(self.tmp, "www")
        os.makedirs(self.www)
        self.srv = FileServer(self.www)
        self.addCleanup(self.srv.close)
        self.content = {}
        for name in ("alpha.jar", "beta.jar", "gamma-1.2.jar", "alpha-v2.jar"):
            data = os.urandom(3000) + name.encode()
            write_file(os.path.join(self.www, name), data)
            self.content[name] = data
        # live mods: an old alpha, a hand-installed mod, a config subdirectory with a symlink
        self.mods = os.path.join(self.datadir, "mods")
        write_file(os.path.join(self.mods, "alpha.jar"), b"old alpha")
        write_file(os.path.join(self.mods, "beta.jar"), self.content["beta.jar"])
        write_file(os.path.join(self.mods, "handmade.jar"), b"by hand", 0o600)
        write_file(os.path.join(self.mods, "config", "alpha.toml"), b"x = 1")
        os.symlink("alpha.toml", os.path.join(self.mods, "config", "current.toml"))
        write_file(os.path.join(self.datadir, "world", "level.dat"), b"world")
        self.world = tree_digest(os.path.join(self.datadir, "world"))

    def mod(self, name, served=None):
        served = served or name
        return {"name": name, "url": self.srv.url(served), "sha256": sha256_bytes(self.content[served])}

    def sync(self, mods, **extra):
        return self.run_job("SYNC_MODS", params=dict({"mods": mods}, **extra))

    def ok(self, r):
        self.assertEqual(r.status, "COMPLETED", r)
        return r.result["output"]

    def read(self, *parts):
        with open(os.path.join(self.mods, *parts), "rb") as f:
            return f.read()

    def test_sync_keeps_unlisted_by_default(self):
        out = self.ok(self.sync([self.mod("alpha.jar"), self.mod("beta.jar"), self.mod("gamma-1.2.jar")]))
        self.assertEqual(out, {"target": "mods", "added": ["gamma-1.2.jar"], "updated": ["alpha.jar"],
                               "unchanged": ["beta.jar"], "removed": [],
                               "keptUnlisted": ["config", "handmade.jar"]})
        for name in ("alpha.jar", "beta.jar", "gamma-1.2.jar"):
            self.assertEqual(self.read(name), self.content[name])
        self.assertEqual(self.read("handmade.jar"), b"by hand")
        self.assertEqual(os.stat(os.path.join(self.mods, "handmade.jar")).st_mode & 0o777, 0o600)
        self.assertEqual(os.readlink(os.path.join(self.mods, "config", "current.toml")), "alpha.toml")
        self.assertEqual(tree_digest(os.path.join(self.datadir, "world")), self.world)
        self.assertEqual(leftovers(self.inst), [])
        self.assertEqual(os.listdir(os.path.join(self.inst, ".jobvisor", "markers")), [])
        self.assertEqual(sorted(self.srv.requests), ["/alpha.jar", "/beta.jar", "/gamma-1.2.jar"])

    def test_second_sync_is_a_no_op(self):
        mods = [self.mod("alpha.jar"), self.mod("beta.jar")]
        self.ok(self.sync(mods))
        before = tree_digest(self.mods)
        n = len(self.srv.requests)
        out = self.ok(self.sync(mods))
        self.assertEqual(out["unchanged"], ["alpha.jar", "beta.jar"])
        self.assertEqual((out["added"], out["updated"], out["removed"]), ([], [], []))
        self.assertEqual(tree_digest(self.mods), before)
        self.assertEqual(len(self.srv.requests), n)

    def test_remove_unlisted(self):
        out = self.ok(self.sync([self.mod("beta.jar"), self.mod("gamma-1.2.jar")], removeUnlisted=True))
        self.assertEqual(out["removed"], ["alpha.jar", "config", "handmade.jar"])
        self.assertEqual(out["keptUnlisted"], [])
        self.assertEqual(sorted(os.listdir(self.mods)), ["beta.jar", "gamma-1.2.jar"])
        out = self.ok(self.sync([], removeUnlisted=True))
        self.assertEqual(out["removed"], ["beta.jar", "gamma-1.2.jar"])
        self.assertEqual(os.listdir(self.mods), [])
        self.assertEqual(tree_digest(os.path.join(self.datadir, "world")), self.world)

    def test_remove_unlisted_false_is_the_default(self):
        out = self.ok(self.sync([self.mod("gamma-1.2.jar")], removeUnlisted=False))
        self.assertEqual(out["keptUnlisted"], ["alpha.jar", "beta.jar", "config", "handmade.jar"])
        self.assertEqual(self.read("alpha.jar"), b"old alpha")

    def test_a_renamed_download_and_a_custom_nested_target(self):
        out = self.ok(self.sync([self.mod("alpha.jar", served="alpha-v2.jar")], target="BepInEx/plugins"))
        self.assertEqual(out["added"], ["alpha.jar"])
        self.assertEqual(out["target"], "BepInEx/plugins")
        with open(os.path.join(self.datadir, "BepInEx", "plugins", "alpha.jar"), "rb") as f:
            self.assertEqual(f.read(), self.content["alpha-v2.jar"])
        self.assertEqual(self.read("alpha.jar"), b"old alpha")  # the default target untouched

    def test_downloads_come_from_the_cache(self):
        mods = [self.mod("gamma-1.2.jar")]
        self.ok(self.sync(mods))
        os.makedirs(os.path.join(self.instance_dir("other"), "data"))
        self.ok(self.run_job("SYNC_MODS", instance="other", params={"mods": mods}))
        self.assertEqual(self.srv.requests, ["/gamma-1.2.jar"])
        with open(os.path.join(self.instance_dir("other"), "data", "mods", "gamma-1.2.jar"), "rb") as f:
            self.assertEqual(f.read(), self.content["gamma-1.2.jar"])

    def test_a_bad_download_leaves_the_live_mods_alone(self):
        before = tree_digest(self.mods)
        bad = dict(self.mod("gamma-1.2.jar"), sha256="1" * 64)
        r = self.sync([self.mod("alpha.jar"), bad])
        self.assertEqual(r.status, "FAILED")
        self.assertIn("cannot download mod 'gamma-1.2.jar'", r.error_message)
        self.assertEqual(tree_digest(self.mods), before)
        staging = os.path.join(self.inst, ".jobvisor", "staging")
        self.assertEqual([f for _, _, fs in os.walk(staging) for f in fs], [])
        r = self.sync([{"name": "x.jar", "url": self.srv.url("nope.jar"), "sha256": "2" * 64}])
        self.assertIn("404", r.error_message)
        self.assertEqual(tree_digest(self.mods), before)

    def test_invalid_params_touch_nothing(self):
        before = tree_digest(self.datadir)
        good = self.mod("alpha.jar")
        cases = [
            ({"mods": [dict(good, name="../evil.jar")]}, "invalid mods[1].name '../evil.jar'"),
            ({"mods": [dict(good, name="a/b.jar")]}, "invalid mods[1].name"),
            ({"mods": [dict(good, name=".hidden")]}, "invalid mods[1].name"),
            ({"mods": [good, dict(good)]}, "mod 'alpha.jar' is listed twice"),
            ({"mods": [dict(good, url="file:///etc/passwd")]}, "invalid mods[1].url"),
            ({"mods": [dict(good, sha256="xyz")]}, "invalid mods[1].sha256"),
            ({"mods": [dict(good, version="1")]}, "unknown field 'version' in mods[1]"),
            ({"mods": ["alpha.jar"]}, "mods[1] must be an object"),
            ({"mods": [good], "target": "../outside"}, "invalid target '../outside'"),
            ({"mods": [good], "target": "/abs"}, "invalid target"),
            ({"mods": [good], "target": "a//b"}, "invalid target"),
            ({"mods": [good], "target": ""}, "invalid target"),
            ({"mods": {"name": "x"}}, "parameter 'mods' must be array"),
            ({"mods": [good], "removeUnlisted": 1}, "parameter 'removeUnlisted' must be boolean"),
            ({}, "missing required parameter 'mods'"),
        ]
        for params, want in cases:
            r = self.run_job("SYNC_MODS", params=params)
            self.assertEqual(r.status, "FAILED", params)
            self.assertIn(want, r.error_message, params)
        self.assertEqual(tree_digest(self.datadir), before)
        self.assertEqual(self.srv.requests, [])

    def test_target_that_is_a_file_or_no_data_dir(self):
        write_file(os.path.join(self.datadir, "plugins"), b"a file")
        r = self.sync([self.mod("alpha.jar")], target="plugins")
        self.assertEqual(r.error_message, "'data/plugins' exists and is not a directory")
        r = self.run_job("SYNC_MODS", instance="bare", params={"mods": [self.mod("alpha.jar")]})
        self.assertEqual(r.error_message, "instance 'bare' has no data/ directory")


if __name__ == "__main__":
    unittest.main()
