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


class DepotUpdateModes(unittest.TestCase):
    """The manifest's modes reach the disk, so the activated build starts."""

    def test_activated_depot_build_starts_with_its_executable_mode(self):
        inst = Instance(self)
        www = FileServer(self)
        with open(os.environ["JV_DEMO_SERVER_BIN"], "rb") as f:
            server_bin = f.read()
        cfg, tool = b"motd=hello\n", b"#!/bin/sh\necho tool\n"
        manifest = json.dumps({"files": [
            {"path": "server", "url": www.put("server", server_bin), "sha256": sha(server_bin), "mode": 0o755},
            {"path": "config/server.properties", "url": www.put("props", cfg), "sha256": sha(cfg)},
            # setuid + setgid + sticky asked for: only the permission bits are kept
            {"path": "bin/tool", "url": www.put("tool", tool), "sha256": sha(tool), "mode": "7750"},
        ]}).encode()
        code, res, _, err = run(inst, "DEPOT_UPDATE", {"manifestUrl": www.put("depot.json", manifest),
                                                        "manifestSha256": sha(manifest), "build": "2.0"})
        self.assertEqual(code, 0, (res, err))
        build = os.path.join(inst.dir, "builds", "2.0")
        self.assertEqual(os.stat(os.path.join(build, "server")).st_mode & 0o7777, 0o755)
        self.assertEqual(os.stat(os.path.join(build, "config", "server.properties")).st_mode & 0o7777, 0o644)
        self.assertEqual(os.stat(os.path.join(build, "bin", "tool")).st_mode & 0o7777, 0o750)
        # the content cache keeps its own copy's mode: a later download without a mode gets 0644
        code, res, _, err = run(inst, "ACTIVATE_BUILD", {"build": "2.0"})
        self.assertEqual(code, 0, (res, err))
        self.assertEqual(os.readlink(os.path.join(inst.dir, "current")), "builds/2.0")
        code, res, _, err = run(inst, "START_INSTANCE", {"waitReady": True})
        self.assertEqual(code, 0, (res, err))
        self.assertEqual(res["output"]["state"], "RUNNING")
        exe = os.readlink(f"/proc/{res['output']['pid']}/exe")
        self.assertEqual(os.path.realpath(exe), os.path.realpath(os.path.join(build, "server")))
        code, res, _, err = run(inst, "STOP_INSTANCE")
        self.assertEqual(code, 0, (res, err))

    def test_a_bad_mode_in_the_manifest_fails_before_anything_is_installed(self):
        inst = Instance(self)
        www = FileServer(self)
        data = b"x"
        manifest = json.dumps({"files": [{"path": "server", "url": www.put("server", data),
                                          "sha256": sha(data), "mode": "rwx"}]}).encode()
        code, res, _, err = run(inst, "DEPOT_UPDATE", {"manifestUrl": www.put("m.json", manifest),
                                                        "manifestSha256": sha(manifest), "build": "4.0"})
        self.assertEqual(code, 1, err)
        self.assertIn("bad mode", res["error"]["message"])
        self.assertFalse(os.path.exists(os.path.join(inst.dir, "builds", "4.0")))


MC_MAIN = r"""
import java.io.*;
import java.nio.file.*;

/* A stand-in for a Minecraft server jar (the real one cannot be fetched offline):
 * the same files, flags and console lines the job and the monitor rely on. */
public class Main {
    public static void main(String[] args) throws Exception {
        boolean init = false;
        for (String a : args) if (a.equals("--initSettings")) init = true;
        Path props = Paths.get("server.properties"), eula = Paths.get("eula.txt");
        if (!Files.exists(props))
            Files.write(props, "#Minecraft server properties\nmotd=A Minecraft Server\nserver-port=25565\nmax-players=20\n".getBytes());
        if (!Files.exists(eula))
            Files.write(eula, "eula=false\n".getBytes());
        System.out.println("[main/INFO]: Initialized 'server.properties' and 'eula.txt'");
        if (init) return;
        if (!new String(Files.readAllBytes(eula)).contains("eula=true")) {
            System.out.println("[main/INFO]: You need to agree to the EULA in order to run the server.");
            System.exit(1);
        }
        System.out.println("[Server thread/INFO]: Done (0.42s)! For help, type \"help\"");
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        for (String l; (l = in.readLine()) != null; )
            if (l.trim().equals("stop")) { System.out.println("[Server thread/INFO]: Stopping server"); return; }
    }
}
"""


def build_jar(tmp):
    src = os.path.join(tmp, "mcsrc")
    os.makedirs(src)
    with open(os.path.join(src, "Main.java"), "w") as f:
        f.write(MC_MAIN)
    subprocess.run(["javac", "-d", src, os.path.join(src, "Main.java")], check=True, capture_output=True)
    jar = os.path.join(tmp, "server.jar")
    subprocess.run(["jar", "--create", "--file", jar, "--main-class", "Main", "-C", src, "Main.class"],
                   check=True, capture_output=True)
    with open(jar, "rb") as f:
        return f.read()


@unittest.skipUnless(shutil.which("javac") and os.path.exists("/usr/bin/java"), "needs a JDK")
class MinecraftInstall(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="jv-mc-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.conf = os.path.join(self.tmp, "agent.conf")
        with open(self.conf, "w") as f:
            f.write("job_executables = /usr/bin/java\nallowed_executables = /usr/bin/java\n")

    def run_mc(self, inst, what, params=None, conf=None):
        argv = [JOBVISOR, "run", what, "--jobs-dir", EXAMPLES, "--instance", inst.id, "--data-dir", inst.root,
                "--json", "--config", conf or self.conf]
        if params is not None:
            argv += ["--params", json.dumps(params)]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
        return p.returncode, next((l for l in reversed(lines) if "seq" not in l), None), p.stderr

    def test_installs_generates_settings_accepts_eula_and_starts(self):
        inst = Instance(self)
        os.unlink(os.path.join(inst.dir, "instance.json"))
        www = FileServer(self)
        jar = build_jar(self.tmp)
        params = {"jarUrl": www.put("server.jar", jar), "jarSha256": sha(jar), "build": "1.21",
                  "acceptEula": True, "memory": "256M", "properties": {"motd": "jobvisor test", "max-players": 8}}
        code, res, err = self.run_mc(inst, "MINECRAFT_INSTALL", dict(params, acceptEula=False))
        self.assertEqual(code, 1, err)
        self.assertIn("EULA", res["error"]["message"])
        self.assertFalse(os.path.exists(os.path.join(inst.dir, "builds", "1.21")))
        code, res, err = self.run_mc(inst, "MINECRAFT_INSTALL", params)
        self.assertEqual(code, 0, (res, err))
        self.assertEqual(res["output"]["build"], "1.21")
        self.assertEqual(os.readlink(os.path.join(inst.dir, "current")), "builds/1.21")
        with open(os.path.join(inst.dir, "data", "server.properties")) as f:
            props = f.read()
        self.assertIn("motd=jobvisor test\n", props)         # override replaced the generated line
        self.assertIn("max-players=8\n", props)
        self.assertIn("server-port=25565\n", props)          # generated by --initSettings, kept
        with open(os.path.join(inst.dir, "data", "eula.txt")) as f:
            self.assertIn("eula=true", f.read())
        with open(os.path.join(inst.dir, "instance.json")) as f:
            spec = json.load(f)
        self.assertEqual(spec["command"][:4], ["/usr/bin/java", "-Xms256M", "-Xmx256M", "-jar"])
        code, res, err = self.run_mc(inst, "START_INSTANCE", {"waitReady": True})
        self.assertEqual(code, 0, (res, err))
        self.assertEqual(res["output"]["state"], "RUNNING")
        code, res, err = self.run_mc(inst, "STOP_INSTANCE")
        self.assertEqual(code, 0, (res, err))
        self.assertIn("Stopping server", inst.console())
        # again: nothing downloaded or regenerated, the world's settings stay
        code, res, err = self.run_mc(inst, "MINECRAFT_INSTALL", params)
        self.assertEqual(code, 0, (res, err))

    def test_java_must_be_allowed_for_jobs(self):
        inst = Instance(self)
        www = FileServer(self)
        jar = build_jar(self.tmp)
        conf = os.path.join(self.tmp, "nojava.conf")
        with open(conf, "w") as f:
            f.write("allowed_executables = /usr/bin/java\n")
        code, res, err = self.run_mc(inst, "MINECRAFT_INSTALL", {"jarUrl": www.put("s.jar", jar), "jarSha256": sha(jar),
                                                                 "build": "x", "acceptEula": True}, conf=conf)
        self.assertEqual(code, 1, err)
        self.assertIn("is not allowed", res["error"]["message"])
        self.assertFalse(os.path.exists(os.path.join(inst.dir, "data", "server.properties")))


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

    def scenario_minecraft_install(self, inst):
        # java runs twice: --initSettings from the job (job_executables) and the server
        # itself (allowed_executables); `run` passes the environment on as the agent would.
        for k in ("JOBVISOR_JOB_EXECUTABLES", "JOBVISOR_ALLOWED_EXECUTABLES"):
            self.addCleanup(lambda k=k, v=os.environ.get(k): os.environ.pop(k, None) if v is None
                            else os.environ.__setitem__(k, v))
            os.environ[k] = "/usr/bin/java"
        tmp = tempfile.mkdtemp(prefix="jv-mcjar-")
        self.addCleanup(shutil.rmtree, tmp, True)
        jar = build_jar(tmp)
        www = FileServer(self)
        os.unlink(os.path.join(inst.dir, "instance.json"))
        out = self.must(run(inst, "MINECRAFT_INSTALL", {"jarUrl": www.put("server.jar", jar), "jarSha256": sha(jar),
                                                         "build": "mc1", "acceptEula": True, "memory": "256M"}))
        self.assertEqual(out["build"], "mc1")
        self.assertEqual(os.readlink(os.path.join(inst.dir, "current")), "builds/mc1")

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
        self.assertEqual(names, sorted(["announce", "depot_update", "minecraft_install", "world_reset"]),
                         "a new example in examples/jobs/ needs a scenario_<name> and a test here")
        for n in names:
            self.assertTrue(hasattr(self, "scenario_" + n), n)

    def test_announce_then_start(self):
        self.run_then_start("announce")

    def test_world_reset_then_start(self):
        self.run_then_start("world_reset")

    # Issue 15: depot_update.lua keeps the manifest's `mode` (http.download's mode option),
    # so the activated server is executable and starts.
    def test_depot_update_then_start(self):
        self.run_then_start("depot_update")

    @unittest.skipUnless(shutil.which("javac") and os.path.exists("/usr/bin/java"), "needs a JDK")
    def test_minecraft_install_then_start(self):
        self.run_then_start("minecraft_install")


if __name__ == "__main__":
    unittest.main()
