"""The example custom jobs in examples/jobs/, run as an admin would: `jobvisor run TYPE --jobs-dir examples/jobs`."""
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import unittest

from instance_helpers import Instance, default_spec, wait_until

JOBVISOR = os.environ["JOBVISOR_BIN"]
EXAMPLES = os.path.join(os.environ["JV_SOURCE_DIR"], "examples", "jobs")


def run(inst, what, params=None, timeout=120):
    argv = [JOBVISOR, "run", what, "--jobs-dir", EXAMPLES, "--instance", inst.id,
            "--data-dir", inst.root, "--json"]
    if params is not None:
        argv += ["--params", json.dumps(params)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    result = next((l for l in reversed(lines) if "seq" not in l), None)
    return p.returncode, result, [l for l in lines if "seq" in l], p.stderr


def sha(data):
    return hashlib.sha256(data).hexdigest()


class FileServer:
    def __init__(self, test):
        self.dir = tempfile.mkdtemp(prefix="jv-www-")
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=self.dir)
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        test.addCleanup(self.close)

    def put(self, name, data):
        with open(os.path.join(self.dir, name), "wb") as f:
            f.write(data)
        return f"{self.url}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)


class DepotUpdate(unittest.TestCase):
    def test_downloads_verifies_commits_and_activates(self):
        inst = Instance(self)
        www = FileServer(self)
        server_bin, cfg = b"#!/bin/sh\necho server 2.0\n", b"motd=hello\n"
        manifest = json.dumps({"files": [
            {"path": "server", "url": www.put("server", server_bin), "sha256": sha(server_bin)},
            {"path": "config/server.properties", "url": www.put("props", cfg), "sha256": sha(cfg)},
        ]}).encode()
        murl = www.put("depot.json", manifest)
        code, res, events, err = run(inst, "DEPOT_UPDATE", {"manifestUrl": murl, "manifestSha256": sha(manifest),
                                                             "build": "2.0", "activate": True})
        self.assertEqual(code, 0, (res, err))
        self.assertEqual(res["output"], {"build": "2.0", "activated": True})
        with open(os.path.join(inst.dir, "builds", "2.0", "config", "server.properties"), "rb") as f:
            self.assertEqual(f.read(), cfg)
        self.assertEqual(os.readlink(os.path.join(inst.dir, "current")), "builds/2.0")
        self.assertTrue(any(e["kind"] == "progress" for e in events))
        code, res, events, err = run(inst, "DEPOT_UPDATE", {"manifestUrl": murl, "manifestSha256": sha(manifest),
                                                             "build": "2.0"})
        self.assertEqual(code, 0, err)
        self.assertTrue(any("already installed" in (e.get("message") or "") for e in events))

    def test_a_corrupt_file_leaves_no_build(self):
        inst = Instance(self)
        www = FileServer(self)
        good = b"server bytes"
        manifest = json.dumps({"files": [
            {"path": "server", "url": www.put("server", b"tampered bytes"), "sha256": sha(good)},
        ]}).encode()
        code, res, _, err = run(inst, "DEPOT_UPDATE", {"manifestUrl": www.put("m.json", manifest),
                                                        "manifestSha256": sha(manifest), "build": "3.0"})
        self.assertEqual(code, 1, err)
        self.assertIn("server", res["error"]["message"])
        self.assertFalse(os.path.exists(os.path.join(inst.dir, "builds", "3.0")))
        self.assertEqual(os.readlink(os.path.join(inst.dir, "current")), "builds/b1")


class WorldResetAndAnnounce(unittest.TestCase):
    def test_world_reset_keeps_old_world_and_restarts(self):
        inst = Instance(self)
        code, res, _, err = run(inst, "START_INSTANCE", {"waitReady": True})
        self.assertEqual(code, 0, (res, err))
        os.makedirs(os.path.join(inst.dir, "data", "world"), exist_ok=True)
        with open(os.path.join(inst.dir, "data", "world", "player-build.txt"), "w") as f:
            f.write("old world")
        code, res, _, err = run(inst, "WORLD_RESET", {"seed": 42, "warnSeconds": 0})
        self.assertEqual(code, 0, (res, err))
        self.assertEqual(res["output"], {"world": "world", "seed": 42, "restarted": True})
        data = os.path.join(inst.dir, "data")
        olds = [d for d in os.listdir(data) if d.startswith("world.old-")]
        self.assertEqual(len(olds), 1)
        with open(os.path.join(data, olds[0], "player-build.txt")) as f:
            self.assertEqual(f.read(), "old world")
        with open(os.path.join(data, "world", "seed.txt")) as f:
            self.assertEqual(f.read().strip(), "42")
        self.assertEqual(inst.status()["state"], "RUNNING")
        run(inst, "STOP_INSTANCE")

    def test_announce_sends_lines_and_refuses_a_stopped_server(self):
        inst = Instance(self)
        code, res, _, err = run(inst, "ANNOUNCE", {"message": "restart soon"})
        self.assertEqual(code, 1)
        self.assertIn("not running", res["error"]["message"])
        code, res, _, err = run(inst, "START_INSTANCE", {"waitReady": True})
        self.assertEqual(code, 0, err)
        code, res, _, err = run(inst, "ANNOUNCE", {"message": "restart in 5 minutes", "count": 2,
                                                   "intervalSeconds": 0.2})
        self.assertEqual(code, 0, (res, err))
        self.assertEqual(res["output"], {"sent": 2})
        wait_until(lambda: inst.console().count("[Server] restart in 5 minutes") == 2, 10,
                   what="two announcements in the console log")
        code, res, _, err = run(inst, "ANNOUNCE", {"message": "two\nlines"})
        self.assertEqual(code, 1)
        self.assertIn("one non-empty line", res["error"]["message"])
        run(inst, "STOP_INSTANCE")


class EveryExampleThenStart(unittest.TestCase):
    """Issue 17: every script in examples/jobs/ runs through `jobvisor run`, and the instance
    starts afterwards, so an example can never silently rot (depot_update once activated a build
    whose server was mode 0644, and the next start failed). A new example without a scenario
    here fails the test."""

    def scenario_announce(self, inst):
        self.must(run(inst, "START_INSTANCE", {"waitReady": True}))
        out = self.must(run(inst, "ANNOUNCE", {"message": "hello", "count": 1}))
        self.assertEqual(out, {"sent": 1})
        self.must(run(inst, "STOP_INSTANCE"))

    def scenario_world_reset(self, inst):
        self.must(run(inst, "START_INSTANCE", {"waitReady": True}))
        out = self.must(run(inst, "WORLD_RESET", {"seed": 7, "warnSeconds": 0}))
        self.assertEqual(out["seed"], 7)
        self.must(run(inst, "STOP_INSTANCE"))

    def scenario_depot_update(self, inst):
        www = FileServer(self)
        demo = os.environ["JV_DEMO_SERVER_BIN"]
        with open(demo, "rb") as f:
            server = f.read()
        manifest = json.dumps({"files": [
            {"path": "server", "url": www.put("server", server), "sha256": sha(server), "mode": 0o755},
        ]}).encode()
        out = self.must(run(inst, "DEPOT_UPDATE", {"manifestUrl": www.put("m.json", manifest),
                                                   "manifestSha256": sha(manifest), "build": "2.0",
                                                   "activate": True}))
        self.assertEqual(out, {"build": "2.0", "activated": True})
        self.assertEqual(os.readlink(os.path.join(inst.dir, "current")), "builds/2.0")

    def must(self, r):
        code, res, _, err = r
        self.assertEqual(code, 0, (res, err[-2000:]))
        return res["output"]

    def run_then_start(self, name):
        inst = Instance(self)
        getattr(self, "scenario_" + name)(inst)
        code, res, _, err = run(inst, "START_INSTANCE", {"waitReady": True})
        self.assertEqual(code, 0, (res, err[-2000:]))
        self.assertEqual(res["output"]["state"], "RUNNING")
        self.assertEqual(inst.status()["state"], "RUNNING")
        run(inst, "STOP_INSTANCE")

    def test_every_example_has_a_scenario(self):
        names = sorted(f[:-4] for f in os.listdir(EXAMPLES) if f.endswith(".lua"))
        self.assertEqual(names, sorted(["announce", "depot_update", "world_reset"]),
                         "a new example in examples/jobs/ needs a scenario_<name> and a test here")
        for n in names:
            self.assertTrue(hasattr(self, "scenario_" + n), n)

    def test_announce_then_start(self):
        self.run_then_start("announce")

    def test_world_reset_then_start(self):
        self.run_then_start("world_reset")

    # Issue 15 (the `proc` engineer's file modes: fs.chmod / the manifest's `mode`): until
    # depot_update.lua applies the mode, the activated server is 0644 and this start fails.
    @unittest.expectedFailure
    def test_depot_update_then_start(self):
        self.run_then_start("depot_update")


if __name__ == "__main__":
    unittest.main()
