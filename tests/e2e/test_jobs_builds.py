"""INSTALL_SERVER, UPDATE_SERVER and ACTIVATE_BUILD end to end: real archives (tar.zst,
tar.gz, zip) served by a loopback HTTP server, the download cache, refusals that touch
nothing, and (with the demo server) restarts and the rollback of a build that does not
start."""
import json
import os
import shutil
import signal
import time
import unittest

from instance_helpers import live_status
from jv_run import JobvisorTestCase
from jobs_fixtures import (FileServer, leftovers, make_tar, make_zip, read_json, sha256_bytes,
                           tree_digest, write_file)

DEMO = os.environ.get("JV_DEMO_SERVER_BIN", "")


def make_build_tree(root, tag, server_bytes=None):
    os.makedirs(root, exist_ok=True)
    write_file(os.path.join(root, "server"),
               server_bytes if server_bytes is not None else "#!/bin/sh\necho %s\n" % tag, 0o755)
    write_file(os.path.join(root, "lib", "engine.so"), os.urandom(2048) + tag.encode())
    write_file(os.path.join(root, "lib", "deep", "x.dat"), tag * 100, 0o600)
    write_file(os.path.join(root, "VERSION"), tag + "\n")
    os.makedirs(os.path.join(root, "empty"), exist_ok=True)
    return tree_digest(root)


class BuildsBase(JobvisorTestCase):
    SPEC = {"command": ["${build}/server", "--port", "0"], "cwd": "data",
            "restart": {"policy": "never"}}

    def setUp(self):
        super().setUp()
        self.inst = self.instance_dir()
        self.www = os.path.join(self.tmp, "www")
        os.makedirs(self.www)
        self.srv = FileServer(self.www)
        self.addCleanup(self.srv.close)
        self.trees = {}
        self.src = {}
        for tag, kind in (("b1", "zst"), ("b2", "gz"), ("b3", "zip")):
            self.add_build(tag, kind)

    def add_build(self, tag, kind, server_bytes=None):
        tree = os.path.join(self.tmp, "trees", tag)
        self.trees[tag] = make_build_tree(tree, tag, server_bytes)
        if kind == "zip":
            name = tag + ".zip"
            sha = make_zip(tree, os.path.join(self.www, name))
        else:
            name = tag + (".tar.zst" if kind == "zst" else ".tar.gz")
            sha = make_tar(tree, os.path.join(self.www, name), compression=kind)
        self.src[tag] = {"url": self.srv.url(name), "sha256": sha}
        return self.src[tag]

    def install(self, build="b1", spec=None, instance="test1", **extra):
        params = {"source": self.src[build], "build": build, "instance": spec or self.SPEC}
        params.update(extra)
        return self.run_job("INSTALL_SERVER", instance=instance, params=params)

    def ok(self, r):
        self.assertEqual(r.status, "COMPLETED", r)
        return r.result["output"]

    def link(self, name="current"):
        p = os.path.join(self.inst, name)
        return os.readlink(p) if os.path.islink(p) else None

    def assert_no_leftovers(self, failed=False):
        """No temp files; no staging after a success. A failed run may leave its own
        (empty) staging directory, removed by the next run; never files in it."""
        left = leftovers(self.inst)
        if failed:
            staging = os.path.join(self.inst, ".jobvisor", "staging")
            self.assertEqual([f for _, _, fs in os.walk(staging) for f in fs], [])
            left = [x for x in left if not x.startswith(".jobvisor/staging/")]
        self.assertEqual(left, [])
        cache = os.path.join(self.data, "cache")
        if os.path.isdir(cache):
            self.assertEqual([n for n in os.listdir(cache) if n.startswith(".") or n.endswith(".part")], [])

    def instance_files(self):
        return sorted(n for n in os.listdir(self.inst) if n != ".jobvisor") if os.path.isdir(self.inst) else []


class Install(BuildsBase):
    def test_fresh_install(self):
        out = self.ok(self.install())
        self.assertEqual(out, {"build": "b1", "alreadyInstalled": False, "previous": None})
        self.assertEqual(tree_digest(os.path.join(self.inst, "builds", "b1")), self.trees["b1"])
        self.assertEqual(self.link(), "builds/b1")
        self.assertEqual(read_json(os.path.join(self.inst, "instance.json")), self.SPEC)
        self.assertEqual(os.listdir(os.path.join(self.inst, "data")), [])
        self.assertTrue(os.path.exists(os.path.join(self.data, "cache", self.src["b1"]["sha256"])))
        self.assert_no_leftovers()
        self.assertEqual(self.srv.requests, ["/b1.tar.zst"])

    def test_same_build_again_is_a_fast_no_op(self):
        self.ok(self.install())
        t0 = time.monotonic()
        r = self.install()
        elapsed = time.monotonic() - t0
        out = self.ok(r)
        self.assertEqual(out, {"build": "b1", "alreadyInstalled": True})
        steps = [e["message"] for e in r.events if e["kind"] == "progress"]
        self.assertIn("build 'b1' is already installed and active: nothing to do", steps)
        self.assertEqual(self.srv.requests, ["/b1.tar.zst"])  # nothing downloaded again
        self.assertLess(elapsed, 5)

    def test_second_instance_is_served_from_the_cache(self):
        self.ok(self.install())
        self.ok(self.install(instance="test2"))
        self.assertEqual(self.srv.requests, ["/b1.tar.zst"])
        self.assertEqual(tree_digest(os.path.join(self.instance_dir("test2"), "builds", "b1")),
                         self.trees["b1"])

    def test_every_archive_format(self):
        for build, fmt in (("b2", "tar.gz"), ("b1", "tar.zst")):
            shutil.rmtree(self.data, ignore_errors=True)
            src = dict(self.src[build], format=fmt)
            r = self.run_job("INSTALL_SERVER", params={"source": src, "build": build, "instance": self.SPEC})
            self.ok(r)
            self.assertEqual(tree_digest(os.path.join(self.inst, "builds", build)), self.trees[build], fmt)
        # format is optional: the archive type is detected
        shutil.rmtree(self.data)
        self.ok(self.install("b2"))
        self.assertEqual(tree_digest(os.path.join(self.inst, "builds", "b2")), self.trees["b2"])

    def test_zip_builds(self):
        # zip files are read as a stream (local headers), which carry no Unix permission
        # bits: contents arrive intact, modes are the defaults (see docs/jobs.md)
        src = dict(self.src["b3"], format="zip")
        out = self.ok(self.run_job("UPDATE_SERVER", params={"source": src, "build": "b3"}))
        self.assertTrue(out["staged"])
        got = tree_digest(os.path.join(self.inst, "builds", "b3"))
        content = lambda d: {k: (v[0], v[1], v[3]) for k, v in d.items()}
        self.assertEqual(content(got), content(self.trees["b3"]))

    def test_checksum_mismatch_changes_nothing(self):
        src = dict(self.src["b1"], sha256=sha256_bytes(b"something else"))
        r = self.run_job("INSTALL_SERVER", params={"source": src, "build": "b1", "instance": self.SPEC})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("cannot download build 'b1'", r.error_message)
        self.assertIn("sha256", r.error_message.lower())
        self.assertEqual(self.instance_files(), [])
        self.assert_no_leftovers(failed=True)
        self.assertFalse(os.path.exists(os.path.join(self.data, "cache", src["sha256"])))

    def test_download_errors_are_clear(self):
        src = dict(self.src["b1"], url=self.srv.url("missing.tar.zst"))
        r = self.run_job("INSTALL_SERVER", params={"source": src, "build": "b1", "instance": self.SPEC})
        self.assertEqual(r.status, "FAILED")
        self.assertIn("cannot download build 'b1'", r.error_message)
        self.assertIn("404", r.error_message)
        self.assertEqual(self.instance_files(), [])
        # an archive that is not one
        write_file(os.path.join(self.www, "junk.tar.zst"), b"this is not an archive")
        src = {"url": self.srv.url("junk.tar.zst"), "sha256": sha256_bytes(b"this is not an archive")}
        r = self.run_job("INSTALL_SERVER", params={"source": src, "build": "b1", "instance": self.SPEC})
        self.assertEqual(r.status, "FAILED")
        self.assertIn("cannot extract build 'b1'", r.error_message)
        self.assertEqual(self.instance_files(), [])
        self.assert_no_leftovers(failed=True)

    def test_invalid_params_touch_nothing(self):
        good = {"source": self.src["b1"], "build": "b1", "instance": self.SPEC}
        cases = [
            (dict(good, build="../b1"), "invalid build '../b1'"),
            (dict(good, build="b/1"), "invalid build"),
            (dict(good, source=dict(self.src["b1"], url="ftp://127.0.0.1/b1.tar.zst")),
             "invalid source.url: must be an http:// or https:// URL"),
            (dict(good, source=dict(self.src["b1"], sha256="abc")), "invalid source.sha256"),
            (dict(good, source=dict(self.src["b1"], format="rar")), "invalid source.format 'rar'"),
            (dict(good, source=dict(self.src["b1"], mirror="x")), "unknown field 'mirror' in source"),
            (dict(good, source={"url": self.src["b1"]["url"]}), "invalid source.sha256"),
            (dict(good, instance={"cwd": "data"}), "instance.command must be a non-empty array"),
            (dict(good, instance={"command": []}), "instance.command must be a non-empty array"),
            (dict(good, instance={"command": ["x", 3]}), "instance.command[2] must be a string"),
            (dict(good, instance=dict(self.SPEC, comand=["x"])), "unknown field 'comand' in instance"),
            (dict(good, instance=dict(self.SPEC, env={"A": 1})), "instance.env must map names to string"),
            ({"source": self.src["b1"], "build": "b1"}, "missing required parameter 'instance'"),
            (dict(good, activate=True), "unknown parameter 'activate'"),
        ]
        for params, want in cases:
            r = self.run_job("INSTALL_SERVER", params=params)
            self.assertEqual(r.status, "FAILED", params)
            self.assertIn(want, r.error_message, params)
            self.assertEqual(self.instance_files(), [], params)
        self.assertEqual(self.srv.requests, [])

    def test_spec_refused_by_the_monitor_parser_is_not_kept(self):
        spec = dict(self.SPEC, stop={"signal": "SIGFOO"})
        r = self.install(spec=spec)
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("the instance spec was refused", r.error_message)
        self.assertIn("SIGFOO", r.error_message)
        self.assertFalse(os.path.exists(os.path.join(self.inst, "instance.json")))
        # fixing the spec completes the install without downloading again
        self.ok(self.install())
        self.assertEqual(self.srv.requests, ["/b1.tar.zst"])

    def test_a_killed_download_is_resumed_by_the_retry(self):
        slow = FileServer(self.www, rate=1 << 20)
        self.addCleanup(slow.close)
        tree = os.path.join(self.tmp, "trees", "big")
        self.trees["big"] = make_build_tree(tree, "big")
        write_file(os.path.join(tree, "blob.bin"), os.urandom(3 << 20))
        self.trees["big"] = tree_digest(tree)
        sha = make_tar(tree, os.path.join(self.www, "big.tar.gz"), compression="gz")
        params = {"source": {"url": slow.url("big.tar.gz"), "sha256": sha}, "build": "big",
                  "instance": self.SPEC}
        p = self.start_job("INSTALL_SERVER", params=params)
        child = self.wait_child(p)
        staging = os.path.join(self.inst, ".jobvisor", "staging")

        def part_sizes():
            return [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(staging)
                    for f in fs if f.endswith(".part")]
        # Kill once some bytes are on disk (the download takes 3 s at 1 MiB/s).
        deadline = time.time() + 30
        while not any(part_sizes()):
            self.assertLess(time.time(), deadline, "no bytes downloaded")
            time.sleep(0.02)
        os.killpg(child, signal.SIGKILL)
        r = self.finish(p)
        self.assertEqual(r.status, "FAILED")
        parts = [f for d, _, fs in os.walk(staging) for f in fs if f.endswith(".part")]
        self.assertEqual(len(parts), 1, parts)
        out = self.ok(self.run_job("INSTALL_SERVER", params=params, timeout=60))
        self.assertEqual(out["build"], "big")
        self.assertEqual(tree_digest(os.path.join(self.inst, "builds", "big")), self.trees["big"])
        self.assertEqual(len(slow.requests), 2)
        self.assertIsNone(slow.ranges[0])
        self.assertRegex(slow.ranges[1] or "", r"^bytes=[1-9]\d*-$")
        self.assert_no_leftovers()

    def test_same_build_id_from_another_archive_is_refused(self):
        self.ok(self.install())
        r = self.run_job("INSTALL_SERVER", params={"source": self.src["b2"], "build": "b1",
                                                   "instance": self.SPEC})
        self.assertEqual(r.status, "FAILED")
        self.assertIn("build 'b1' already exists, made from a different archive", r.error_message)
        self.assertEqual(tree_digest(os.path.join(self.inst, "builds", "b1")), self.trees["b1"])

    def test_changed_spec_is_written_without_downloading_again(self):
        self.ok(self.install())
        spec = dict(self.SPEC, env={"MOTD": "hello"})
        out = self.ok(self.install(spec=spec))
        self.assertFalse(out["alreadyInstalled"])
        self.assertEqual(read_json(os.path.join(self.inst, "instance.json")), spec)
        self.assertEqual(self.srv.requests, ["/b1.tar.zst"])

    def test_installing_another_build_switches_current_and_keeps_data(self):
        self.ok(self.install())
        write_file(os.path.join(self.inst, "data", "world.dat"), "precious")
        out = self.ok(self.install("b2"))
        self.assertEqual(out["previous"], "b1")
        self.assertEqual(self.link(), "builds/b2")
        self.assertEqual(self.link("previous"), "builds/b1")
        with open(os.path.join(self.inst, "data", "world.dat")) as f:
            self.assertEqual(f.read(), "precious")


class Update(BuildsBase):
    def setUp(self):
        super().setUp()
        self.ok(self.install())
        write_file(os.path.join(self.inst, "data", "world.dat"), "precious")
        self.data_digest = tree_digest(os.path.join(self.inst, "data"))

    def update(self, build="b2", **extra):
        return self.run_job("UPDATE_SERVER", params=dict({"source": self.src[build], "build": build}, **extra))

    def test_update_stages_without_touching_data_or_current(self):
        out = self.ok(self.update())
        self.assertEqual(out, {"build": "b2", "staged": True, "activated": False})
        self.assertEqual(tree_digest(os.path.join(self.inst, "builds", "b2")), self.trees["b2"])
        self.assertEqual(self.link(), "builds/b1")
        self.assertEqual(tree_digest(os.path.join(self.inst, "data")), self.data_digest)
        self.assert_no_leftovers()
        out = self.ok(self.update())  # again: nothing to stage
        self.assertEqual(out, {"build": "b2", "staged": False, "activated": False})
        self.assertEqual(self.srv.requests, ["/b1.tar.zst", "/b2.tar.gz"])

    def test_update_with_activate(self):
        out = self.ok(self.update(activate=True))
        self.assertEqual(out, {"build": "b2", "staged": True, "activated": True, "previous": "b1"})
        self.assertEqual(self.link(), "builds/b2")
        self.assertEqual(self.link("previous"), "builds/b1")
        self.assertEqual(tree_digest(os.path.join(self.inst, "data")), self.data_digest)
        out = self.ok(self.update(activate=False))
        self.assertFalse(out["activated"])

    def test_update_failures_change_nothing(self):
        before = tree_digest(self.inst)
        bad = dict(self.src["b2"], sha256="0" * 64)
        r = self.run_job("UPDATE_SERVER", params={"source": bad, "build": "b2"})
        self.assertEqual(r.status, "FAILED")
        self.assertIn("cannot download build 'b2'", r.error_message)
        r = self.run_job("UPDATE_SERVER", params={"source": self.src["b2"], "build": "b2", "activate": "yes"})
        self.assertIn("parameter 'activate' must be boolean", r.error_message)
        r = self.run_job("UPDATE_SERVER", params={"source": self.src["b2"], "build": ".b2"})
        self.assertIn("invalid build '.b2'", r.error_message)
        after = tree_digest(self.inst)
        strip = lambda d: {k: v for k, v in d.items() if not k.startswith(".jobvisor")}
        self.assertEqual(strip(after), strip(before))


class Activate(BuildsBase):
    def setUp(self):
        super().setUp()
        self.ok(self.install())
        self.ok(self.run_job("UPDATE_SERVER", params={"source": self.src["b2"], "build": "b2"}))

    def activate(self, build, **extra):
        return self.run_job("ACTIVATE_BUILD", params=dict({"build": build}, **extra))

    def test_activate_and_back(self):
        out = self.ok(self.activate("b2"))
        self.assertEqual(out, {"build": "b2", "previous": "b1", "changed": True})
        self.assertEqual(self.link(), "builds/b2")
        self.assertEqual(self.link("previous"), "builds/b1")
        out = self.ok(self.activate("b2"))
        self.assertEqual(out, {"build": "b2", "previous": "b1", "changed": False})
        out = self.ok(self.activate("b1"))
        self.assertEqual(out, {"build": "b1", "previous": "b2", "changed": True})
        self.assertEqual(self.link(), "builds/b1")
        self.assertEqual(self.link("previous"), "builds/b2")
        self.assert_no_leftovers()
        markers = os.listdir(os.path.join(self.inst, ".jobvisor", "markers"))
        self.assertNotIn("activate.json", markers)

    def test_restart_on_a_stopped_instance_just_swaps(self):
        out = self.ok(self.activate("b2", restart=True))
        self.assertEqual(out["build"], "b2")
        self.assertFalse(os.path.exists(os.path.join(self.inst, ".jobvisor", "monitor.sock")))

    def test_refusals(self):
        r = self.activate("b9")
        self.assertEqual(r.status, "FAILED")
        self.assertEqual(r.error_message, "build 'b9' does not exist (stage it with UPDATE_SERVER first)")
        r = self.activate("../../etc")
        self.assertIn("invalid build '../../etc'", r.error_message)
        r = self.run_job("ACTIVATE_BUILD", params={})
        self.assertIn("missing required parameter 'build'", r.error_message)
        self.assertEqual(self.link(), "builds/b1")


@unittest.skipUnless(DEMO, "needs JV_DEMO_SERVER_BIN (the demo game server)")
class WithServer(BuildsBase):
    SPEC = {"command": ["${build}/server", "--port", "0", "--ready-delay-ms", "100",
                        "--autosave-ms", "60000"],
            "cwd": "data",
            "stop": {"command": "stop", "timeoutSeconds": 10, "signalTimeoutSeconds": 5},
            "ready": {"logPattern": "Done \\(", "timeoutSeconds": 15},
            "restart": {"policy": "never"}}

    def setUp(self):
        JobvisorTestCase.setUp(self)
        self.inst = self.instance_dir()
        self.www = os.path.join(self.tmp, "www")
        os.makedirs(self.www)
        self.srv = FileServer(self.www)
        self.addCleanup(self.srv.close)
        self.trees, self.src = {}, {}
        with open(DEMO, "rb") as f:
            demo = f.read()
        self.add_build("good1", "zst", demo)
        self.add_build("good2", "zst", demo)
        self.add_build("broken", "zst", "#!/bin/sh\necho 'cannot start: missing library' >&2\nexit 3\n")
        self.addCleanup(self.stop_server)
        self.ok(self.install("good1"))
        self.ok(self.run_job("START_INSTANCE"))

    def stop_server(self):
        if os.path.exists(os.path.join(self.inst, ".jobvisor", "monitor.sock")):
            self.run_job("STOP_INSTANCE", params={"force": True}, timeout=60)

    def server(self):
        st = live_status(self.inst)
        pid = st.get("pid")
        exe = os.readlink(f"/proc/{pid}/exe") if pid and os.path.exists(f"/proc/{pid}") else None
        return st.get("state"), exe

    def test_install_of_another_build_is_refused_while_running(self):
        r = self.install("good2")
        self.assertEqual(r.status, "FAILED")
        self.assertIn("instance 'test1' is running build 'good1': stop it first", r.error_message)
        self.assertEqual(self.link(), "builds/good1")

    def test_update_with_activate_restarts_on_the_new_build(self):
        state, exe = self.server()
        self.assertEqual(state, "RUNNING")
        self.assertTrue(exe.endswith("/builds/good1/server"), exe)
        r = self.run_job("UPDATE_SERVER", params={"source": self.src["good2"], "build": "good2",
                                                  "activate": True}, timeout=120)
        out = self.ok(r)
        self.assertEqual(out, {"build": "good2", "staged": True, "activated": True, "previous": "good1"})
        state, exe = self.server()
        self.assertEqual(state, "RUNNING")
        self.assertTrue(exe.endswith("/builds/good2/server"), exe)

    def test_activate_without_restart_leaves_the_server_alone(self):
        self.ok(self.run_job("UPDATE_SERVER", params={"source": self.src["good2"], "build": "good2"}))
        state, exe = self.server()
        r = self.run_job("ACTIVATE_BUILD", params={"build": "good2"})
        self.ok(r)
        self.assertEqual(self.server(), (state, exe))
        logs = " ".join(e["message"] for e in r.events if e["kind"] == "log")
        self.assertIn("keeps running its current build until it is restarted", logs)

    def test_a_build_that_does_not_start_is_rolled_back(self):
        self.ok(self.run_job("UPDATE_SERVER", params={"source": self.src["broken"], "build": "broken"}))
        r = self.run_job("ACTIVATE_BUILD", params={"build": "broken", "restart": True}, timeout=120)
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("build 'broken' did not start", r.error_message)
        self.assertIn("rolled back to build 'good1', which is running again", r.error_message)
        self.assertEqual(self.link(), "builds/good1")
        state, exe = self.server()
        self.assertEqual(state, "RUNNING")
        self.assertTrue(exe.endswith("/builds/good1/server"), exe)
        self.assertNotIn("activate.json", os.listdir(os.path.join(self.inst, ".jobvisor", "markers")))


if __name__ == "__main__":
    unittest.main()
