"""Instance monitor: limits, the unprivileged user, OOM classification, and a
job run's rlimits not leaking into the server."""
import json
import os
import pwd
import resource
import shutil
import unittest

from instance_helpers import (DEMO, JOBVISOR, Instance, cgroup2_parent, cgroup2_writable,
                              default_spec, wait_until)


def limits_of(pid):
    out = {}
    with open("/proc/%d/limits" % pid) as f:
        for line in f.readlines()[1:]:
            name = line[:26].strip()
            out[name] = line[26:].split()[:2]
    return out


@unittest.skipUnless(JOBVISOR and DEMO, "needs JOBVISOR_BIN and JV_DEMO_SERVER_BIN")
class Limits(unittest.TestCase):
    def test_rlimits_from_the_spec(self):
        inst = Instance(self, spec=default_spec(limits={"nofile": 4096, "core": 0}))
        inst.start()
        pid = inst.wait_state("RUNNING")["pid"]
        lim = limits_of(pid)
        self.assertEqual(lim["Max open files"], ["4096", "4096"])
        self.assertEqual(lim["Max core file size"], ["0", "0"])

    def test_rlimits_of_the_starter_do_not_reach_the_server(self):
        # The monitor is launched with a low soft CPU limit (as a job run might
        # have); it lifts it back to the hard limit before starting the server.
        inst = Instance(self)
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_CPU, (30, hard))
        try:
            inst.start()
        finally:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        pid = inst.wait_state("RUNNING")["pid"]
        self.assertEqual(limits_of(pid)["Max cpu time"][0], "unlimited")

    @unittest.skipUnless(os.geteuid() == 0, "needs root to switch users")
    def test_server_runs_as_the_configured_user(self):
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user 'nobody'")
        inst = Instance(self, settings={"user": "nobody"})
        os.chmod(inst.root, 0o755)
        for dirpath, dirs, files in os.walk(os.path.join(inst.dir, "data")):
            os.chown(dirpath, nobody.pw_uid, nobody.pw_gid)
        inst.start()
        st = inst.wait_state("RUNNING")
        with open("/proc/%d/status" % st["pid"]) as f:
            uids = next(l for l in f if l.startswith("Uid:")).split()[1:]
        self.assertEqual(set(uids), {str(nobody.pw_uid)})
        self.assertTrue(inst.call({"op": "send", "line": "save-all"})["ok"])
        inst.wait_console("Saved the game (save-all")
        world = os.path.join(inst.dir, "data", "world", "level.dat")
        self.assertEqual(os.stat(world).st_uid, nobody.pw_uid)
        reply, _ = inst.stop()
        self.assertEqual(reply["status"]["lastExit"]["code"], 0)

    def test_unknown_user_is_refused(self):
        if os.geteuid() != 0:
            self.skipTest("the user setting only applies to root")
        inst = Instance(self, settings={"user": "no-such-user-jv"})
        line = inst.start()
        self.assertIn("user 'no-such-user-jv' (setting 'user') does not exist", line)

    def test_oom_kill_is_reported_as_oom(self):
        parent = cgroup2_parent()
        if not (cgroup2_writable() and parent):
            self.skipTest("no writable cgroup v2")
        with open(os.path.join(parent, "cgroup.controllers")) as f:
            if "memory" not in f.read().split():
                self.skipTest("the memory controller is not available to instance cgroups")
        inst = Instance(self, spec=default_spec(limits={"memoryMB": 64},
                                                restart={"policy": "never"}))
        inst.start()
        inst.wait_state("RUNNING")
        inst.call({"op": "send", "line": "alloc 512"})
        st = inst.wait_state("CRASHED", timeout=60)
        self.assertTrue(st["lastExit"]["oom"], st)
        self.assertEqual(st["lastExit"]["signal"], "SIGKILL")
        self.assertIn("out of memory", st["lastExit"]["reason"])


if __name__ == "__main__":
    unittest.main()
