"""The systemd unit's cgroup layout (examples/cgroup-delegate.sh, run as ExecStart wrapper with
Delegate=yes), on a cgroup standing in for jobvisor.service: the wrapper moves itself and the
command it execs into <service>/agent, prepares <service>/instances with the controllers the
host offers, and points JOBVISOR_CGROUP_PARENT there; a game server started by a monitor with
that parent lands in its own cgroup below it, with its memory limit where the host delegates
the memory controller. Skipped, with the reason printed, where cgroup v2 is not writable."""
import os
import subprocess
import sys
import time
import unittest
import uuid

from instance_helpers import DEMO, JOBVISOR, Instance, cgroup2_parent, cgroup2_writable, default_spec

SCRIPT = os.path.join(os.environ["JV_SOURCE_DIR"], "examples", "cgroup-delegate.sh")
PROBE = 'cat /proc/self/cgroup; echo "parent=$JOBVISOR_CGROUP_PARENT"'


def skip(reason):
    print(f"test_cgroup_delegate: skipped: {reason}", file=sys.stderr, flush=True)
    raise unittest.SkipTest(reason)


def rmdir_tree(path):
    """Remove a cgroup tree bottom-up (cgroup dirs hold only kernel files)."""
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


class CgroupDelegate(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0 and not cgroup2_writable():
            skip("not root and this process's cgroup v2 is not delegated to it")
        if not cgroup2_writable():
            skip("no writable cgroup v2 hierarchy (hybrid/v1 host or not delegated)")
        self.parent = cgroup2_parent()
        self.service = os.path.join(self.parent, f"jv-test-{uuid.uuid4().hex[:8]}.service")
        try:
            os.mkdir(self.service)
        except OSError as e:
            skip(f"cannot create a cgroup below '{self.parent}': {e}")
        self.addCleanup(rmdir_tree, self.service)
        with open("/proc/self/mountinfo") as f:
            self.mount = next(l.split()[4] for l in f if " - cgroup2 " in l)

    def path_of(self, cgroup):
        """The directory of a cgroup named as in /proc/PID/cgroup."""
        return os.path.normpath(self.mount + "/" + cgroup)

    @staticmethod
    def read_words(path):
        with open(path) as f:
            return f.read().split()

    def run_in_service(self, argv, env=None):
        """Start argv as the service's main process: in the service cgroup, like systemd."""
        cgroup_procs = os.path.join(self.service, "cgroup.procs")

        def enter():
            with open(cgroup_procs, "w") as f:
                f.write(str(os.getpid()))
        return subprocess.run(argv, preexec_fn=enter, capture_output=True, text=True, timeout=30,
                              env=env or {k: v for k, v in os.environ.items()
                                          if k != "JOBVISOR_CGROUP_PARENT"})

    def test_wrapper_lays_out_agent_and_instances_then_execs(self):
        p = self.run_in_service(["sh", SCRIPT, "sh", "-c", PROBE])
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        own = next(l[3:] for l in lines if l.startswith("0::"))
        self.assertEqual(self.path_of(own), os.path.join(self.service, "agent"), p.stdout)
        self.assertIn(f"parent={self.service}/instances", lines)
        self.assertTrue(os.path.isdir(os.path.join(self.service, "instances")))
        with open(os.path.join(self.service, "cgroup.procs")) as f:
            self.assertEqual(f.read().strip(), "")  # nothing left at the top: controllers can flow
        offered = self.read_words(os.path.join(self.service, "cgroup.controllers"))
        want = [c for c in ("memory", "cpu", "pids") if c in offered]
        with open(os.path.join(self.service, "instances", "cgroup.subtree_control")) as f:
            self.assertEqual(sorted(f.read().split()), sorted(want))
        self.assertIn(f"game servers below '{self.service}/instances'", p.stderr)

    def test_wrapper_leaves_an_explicit_parent_alone(self):
        env = dict(os.environ, JOBVISOR_CGROUP_PARENT="/somewhere/else")
        p = self.run_in_service(["sh", SCRIPT, "sh", "-c", PROBE], env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("parent=/somewhere/else", p.stdout.splitlines())
        self.assertIn("layout left alone", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.service, "agent")))

    @unittest.skipUnless(JOBVISOR and DEMO, "needs JOBVISOR_BIN and JV_DEMO_SERVER_BIN")
    def test_game_server_gets_its_own_limited_cgroup_below_instances(self):
        p = self.run_in_service(["sh", SCRIPT, "sh", "-c", PROBE])
        self.assertEqual(p.returncode, 0, p.stderr)
        instances = os.path.join(self.service, "instances")
        offered = self.read_words(os.path.join(instances, "cgroup.controllers"))
        limits = {"memoryMB": 96} if "memory" in offered else {}
        inst = Instance(self, spec=default_spec(limits=limits, restart={"policy": "never"}),
                        settings={"cgroup_parent": instances})
        self.assertTrue(inst.start().startswith("ok started"))
        pid = inst.wait_state("RUNNING")["pid"]
        with open(f"/proc/{pid}/cgroup") as f:
            own = next(l.strip()[3:] for l in f if l.startswith("0::"))
        leaf = os.path.basename(own)
        self.assertTrue(leaf.startswith("jobvisor-s1-"), own)
        self.assertEqual(os.path.dirname(self.path_of(own)), instances)
        if "memory" not in offered:
            inst.stop()
            inst.wait_state("STOPPED")
            skip("the host offers no memory controller to delegated cgroups: limits not checked")
        with open(os.path.join(instances, leaf, "memory.max")) as f:
            self.assertEqual(int(f.read()), 96 << 20)
        inst.stop()
        inst.wait_state("STOPPED")
        deadline = time.time() + 10
        while os.path.exists(os.path.join(instances, leaf)) and time.time() < deadline:
            time.sleep(0.1)


if __name__ == "__main__":
    unittest.main()
