"""INSTALL_SERVER / UPDATE_SERVER against bombs and broken builds (issue 19.4).

- the instance spec is checked by the monitor's parser before anything is downloaded;
- extraction stops a decompression bomb (default total-size cap, compression-ratio guard,
  both agent settings), or follows the unpacked size the control plane declares;
- a build that cannot run the spec (its server missing) is refused before it is published;
- a failing run leaves the instance as it was: no build, no `current`, no data/ it created,
  no instance.json; and the same build can be installed afterwards."""
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import unittest

from jobs_fixtures import FileServer, make_tar, sha256_file, write_file
from jv_run import JOBVISOR, RunResult

MIB = 1 << 20
SPEC = {"command": ["${build}/server"], "cwd": "data", "restart": {"policy": "never"}}


class ZeroReader:
    """n zero bytes as a file object, without holding them in memory."""

    def __init__(self, n):
        self.left = n

    def read(self, k=-1):
        k = self.left if k < 0 else min(k, self.left)
        self.left -= k
        return b"\0" * k


class InstallGuards(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="jv-guard-")
        self.data = os.path.join(self.tmp, "data")
        self.inst = os.path.join(self.data, "instances", "i1")
        os.makedirs(self.inst)
        self.www = os.path.join(self.tmp, "www")
        os.makedirs(self.www)
        self.srv = FileServer(self.www)
        self.addCleanup(self.srv.close)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_job(self, what, params, env=None):
        e = dict(os.environ)
        e.update(env or {})
        p = subprocess.run([JOBVISOR, "run", what, "--instance", "i1", "--data-dir", self.data,
                            "--params", json.dumps(params), "--json"],
                           capture_output=True, text=True, timeout=300, env=e)
        return RunResult(p.returncode, p.stdout, p.stderr)

    def good_build(self, name, server="server"):
        tree = os.path.join(self.tmp, "tree-" + name)
        write_file(os.path.join(tree, server), "#!/bin/sh\nexit 0\n", 0o755)
        write_file(os.path.join(tree, "assets", "a.dat"), os.urandom(4096))
        sha = make_tar(tree, os.path.join(self.www, name + ".tar.zst"))
        return {"url": self.srv.url(name + ".tar.zst"), "sha256": sha}

    def bomb(self, name, zeros):
        """A tar.zst holding a server and `zeros` bytes of zeros: a few hundred KiB."""
        raw = os.path.join(self.tmp, name + ".tar")
        with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tf:
            ti = tarfile.TarInfo("server")
            body = b"#!/bin/sh\nexit 0\n"
            ti.size, ti.mode = len(body), 0o755
            tf.addfile(ti, __import__("io").BytesIO(body))
            ti = tarfile.TarInfo("world.pak")
            ti.size = zeros
            tf.addfile(ti, ZeroReader(zeros))
        out = os.path.join(self.www, name + ".tar.zst")
        subprocess.run(["zstd", "-q", "-19", "--rm", "-o", out, raw], check=True)
        return {"url": self.srv.url(name + ".tar.zst"), "sha256": sha256_file(out)}

    def assert_untouched(self):
        """Nothing the failed install made is left: the instance dir holds only .jobvisor."""
        self.assertEqual(sorted(n for n in os.listdir(self.inst) if n != ".jobvisor"), [])
        staging = os.path.join(self.inst, ".jobvisor", "staging")
        self.assertEqual([f for _, _, fs in os.walk(staging) for f in fs], [])

    def test_bomb_stopped_by_the_ratio_guard_and_nothing_left(self):
        src = self.bomb("bomb", 300 * MIB)
        self.assertLess(os.path.getsize(os.path.join(self.www, "bomb.tar.zst")), 1 * MIB)
        r = self.run_job("INSTALL_SERVER", {"source": src, "build": "b1", "instance": SPEC})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("refusing a possible decompression bomb", r.error_message)
        self.assertIn("times its own size", r.error_message)
        self.assertFalse(r.result["error"]["retryable"])
        self.assert_untouched()

    def test_declared_unpacked_size_replaces_the_guards(self):
        src = self.bomb("big", 100 * MIB)
        src["unpackedSize"] = 100 * MIB + 64
        r = self.run_job("INSTALL_SERVER", {"source": src, "build": "b1", "instance": SPEC})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(os.path.getsize(os.path.join(self.inst, "builds", "b1", "world.pak")), 100 * MIB)
        # declared too small: the cap is the declared size
        src2 = self.bomb("big2", 100 * MIB)
        src2["unpackedSize"] = 10 * MIB
        r = self.run_job("INSTALL_SERVER", {"source": src2, "build": "b2", "instance": SPEC})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("beyond the size cap of 10.0 MiB", r.error_message)
        self.assertEqual(os.readlink(os.path.join(self.inst, "current")), "builds/b1")
        self.assertFalse(os.path.exists(os.path.join(self.inst, "builds", "b2")))

    def test_default_size_cap_is_an_agent_setting(self):
        src = self.good_build("g")
        tree_big = os.path.join(self.tmp, "tree-cap")
        write_file(os.path.join(tree_big, "server"), "#!/bin/sh\n", 0o755)
        write_file(os.path.join(tree_big, "blob"), os.urandom(3 * MIB))
        sha = make_tar(tree_big, os.path.join(self.www, "cap.tar.zst"))
        src = {"url": self.srv.url("cap.tar.zst"), "sha256": sha}
        r = self.run_job("INSTALL_SERVER", {"source": src, "build": "b1", "instance": SPEC},
                         env={"JOBVISOR_EXTRACT_MAX_BYTES": "1M"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("beyond the size cap of 1.0 MiB", r.error_message)
        self.assert_untouched()
        r = self.run_job("INSTALL_SERVER", {"source": src, "build": "b1", "instance": SPEC})
        self.assertEqual(r.status, "COMPLETED", r)

    def test_spec_refused_before_any_download(self):
        bad = dict(SPEC, ready={"logPattern": "Done (", "timeoutSeconds": 10})
        # nothing listens on this port: a download attempt would fail differently and slowly
        src = {"url": "http://127.0.0.1:9/never.tar.zst", "sha256": "a" * 64}
        r = self.run_job("INSTALL_SERVER", {"source": src, "build": "b1", "instance": bad})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("the instance spec was refused", r.error_message)
        self.assertIn("ready.logPattern", r.error_message)
        self.assertNotIn("download", r.stderr.lower().replace("downloads", ""))
        self.assert_untouched()

    def test_build_without_its_server_is_not_published_and_can_be_reinstalled(self):
        src = self.good_build("noserver", server="bin/server")  # the spec wants ${build}/server
        r = self.run_job("INSTALL_SERVER", {"source": src, "build": "b1", "instance": SPEC})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("build 'b1' cannot run this instance spec", r.error_message)
        self.assertIn("not found", r.error_message)
        self.assert_untouched()
        # the same build with the spec that fits it installs
        spec = dict(SPEC, command=["${build}/bin/server"])
        r = self.run_job("INSTALL_SERVER", {"source": src, "build": "b1", "instance": spec})
        self.assertEqual(r.status, "COMPLETED", r)
        self.assertEqual(os.readlink(os.path.join(self.inst, "current")), "builds/b1")

    def test_failed_second_install_keeps_the_first(self):
        good = self.good_build("good")
        r = self.run_job("INSTALL_SERVER", {"source": good, "build": "b1", "instance": SPEC})
        self.assertEqual(r.status, "COMPLETED", r)
        with open(os.path.join(self.inst, "instance.json")) as f:
            spec_before = f.read()
        write_file(os.path.join(self.inst, "data", "save.dat"), b"world")
        broken = self.good_build("broken", server="other")
        r = self.run_job("INSTALL_SERVER", {"source": broken, "build": "b2", "instance": SPEC})
        self.assertEqual(r.status, "FAILED", r)
        self.assertEqual(os.readlink(os.path.join(self.inst, "current")), "builds/b1")
        self.assertFalse(os.path.exists(os.path.join(self.inst, "builds", "b2")))
        self.assertFalse(os.path.exists(os.path.join(self.inst, "previous")))
        with open(os.path.join(self.inst, "instance.json")) as f:
            self.assertEqual(f.read(), spec_before)
        with open(os.path.join(self.inst, "data", "save.dat"), "rb") as f:
            self.assertEqual(f.read(), b"world")

    def test_update_with_activate_refuses_a_build_without_the_server(self):
        good = self.good_build("good")
        self.assertEqual(self.run_job("INSTALL_SERVER", {"source": good, "build": "b1",
                                                         "instance": SPEC}).status, "COMPLETED")
        broken = self.good_build("broken", server="other")
        r = self.run_job("UPDATE_SERVER", {"source": broken, "build": "b2", "activate": True})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("build 'b2' cannot run this instance's spec", r.error_message)
        self.assertEqual(os.readlink(os.path.join(self.inst, "current")), "builds/b1")
        self.assertFalse(os.path.exists(os.path.join(self.inst, "builds", "b2")))

    def test_update_bomb_stopped(self):
        good = self.good_build("good")
        self.assertEqual(self.run_job("INSTALL_SERVER", {"source": good, "build": "b1",
                                                         "instance": SPEC}).status, "COMPLETED")
        src = self.bomb("ubomb", 300 * MIB)
        r = self.run_job("UPDATE_SERVER", {"source": src, "build": "b2"})
        self.assertEqual(r.status, "FAILED", r)
        self.assertIn("refusing a possible decompression bomb", r.error_message)
        self.assertFalse(os.path.exists(os.path.join(self.inst, "builds", "b2")))
        self.assertEqual(os.readlink(os.path.join(self.inst, "current")), "builds/b1")


if __name__ == "__main__":
    unittest.main()
