"""The job-run child of `jobvisor run` is set up like the agent's, without the second exec.

`jobvisor run` forks and enters the job-run child mode in the forked process (the agent
fork+execs `jobvisor __jobrun`; DESIGN.md section 3, docs/architecture.md). The child must
still get every guarantee of the sandbox: its own process group, no_new_privs, the death
signal (the child dies with its parent), soft rlimits (no core dumps, at most 1024 descriptors),
cwd "/", default signal dispositions (but the SIGPIPE the child mode ignores) and an empty mask, and none of the parent's descriptors
(its signalfd, the spec memfd, the exec pipe). These are read from /proc while the script
sleeps.
"""
import ctypes
import os
import signal
import time

from jv_run import JobvisorTestCase

SLEEPER = 'return { type = "SLEEPER", run = function(job) job.sleep(30) end }'


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def limits(pid, name):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith(name):
                return line[len(name):].split()[0]
    raise AssertionError(f"no {name} in /proc/{pid}/limits")


def ignore_inherited_signals():
    """In the forked test process before exec: ignore SIGUSR1 and glibc's own signals 32 and 33
    (its sigaction refuses those, so the kernel's is called), as some ancestor of a real agent
    may have; an ignored signal survives fork and exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    ign = (ctypes.c_ulong * 5)(1, 0, 0, 0, 0)  # handler SIG_IGN, no flags, empty mask
    for sig in (signal.SIGUSR1, 32, 33):
        if libc.syscall(13, sig, ctypes.byref(ign), None, 8) != 0:  # SYS_rt_sigaction (x86-64)
            raise OSError(ctypes.get_errno(), "rt_sigaction")


class RunChildImage(JobvisorTestCase):
    def start_sleeper(self, preexec_fn=None):
        path = self.script(SLEEPER)
        p = self.start_job(path, preexec_fn=preexec_fn)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.communicate()))
        child = self.wait_child(p)
        # the script is running once the run marker exists
        self.wait_file(os.path.join(self.instance_dir(), ".jobvisor", "markers", "run.SLEEPER.json"))
        return p, child

    def test_signals_an_ancestor_ignored_are_not_inherited(self):
        p, child = self.start_sleeper(preexec_fn=ignore_inherited_signals)
        self.assertNotEqual(int(proc_status(p.pid)["SigIgn"], 16) & (3 << 31), 0, "the parent ignores 32, 33")
        self.assertEqual(int(proc_status(child)["SigIgn"], 16), 1 << (signal.SIGPIPE - 1),
                         proc_status(child)["SigIgn"])

    def test_the_child_is_sandboxed_as_after_an_exec(self):
        p, child = self.start_sleeper()
        st = proc_status(child)
        self.assertEqual(st["NoNewPrivs"], "1")
        self.assertEqual(os.getpgid(child), child, "the child leads its own process group")
        self.assertEqual(int(st["SigBlk"], 16), 0, st["SigBlk"])
        # the child mode ignores SIGPIPE itself (lua/child_main.c); nothing else is ignored
        self.assertEqual(int(st["SigIgn"], 16), 1 << (signal.SIGPIPE - 1), st["SigIgn"])
        self.assertEqual(os.readlink(f"/proc/{child}/cwd"), "/")
        self.assertEqual(limits(child, "Max core file size"), "0")
        self.assertLessEqual(int(limits(child, "Max open files")), 1024)
        fds = {int(n): os.readlink(f"/proc/{child}/fd/{n}") for n in os.listdir(f"/proc/{child}/fd")}
        self.assertEqual(fds[0], "/dev/null")
        self.assertTrue(fds[4].startswith("pipe:"), fds)
        inherited = [t for t in fds.values() if "signalfd" in t or "jobvisor-spec" in t]
        self.assertEqual(inherited, [], f"descriptors of the parent leaked into the child: {fds}")
        os.kill(p.pid, signal.SIGTERM)
        r = self.finish(p)
        self.assertEqual(r.status, "CANCELLED", r)

    def test_the_child_dies_with_its_parent(self):
        p, child = self.start_sleeper()
        os.kill(p.pid, signal.SIGKILL)
        p.communicate(timeout=10)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with open(f"/proc/{child}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except FileNotFoundError:
                break
            time.sleep(0.02)
        else:
            self.fail("the job-run child outlived its parent (no death signal)")
