"""A pseudo-terminal with a job-control shell, to press Ctrl-C the way a user does.

Terminal(argv) opens a pty and starts a small "shell" on it: the session leader, owning the
pty as its controlling terminal. The shell starts argv in a new process group and hands it the
terminal's foreground, exactly as an interactive shell runs a foreground job. ctrl_c() writes
^C to the pty's master side, so the kernel's line discipline sends SIGINT to every process of
the foreground group, whatever they are. When the job's leader exits, the shell takes the
foreground back and stays, as an interactive shell does: processes the job left behind get no
SIGHUP and stay visible to the test.
"""
import os
import select
import signal
import subprocess
import sys
import threading
import time

SHELL = r"""
import fcntl, os, signal, sys, termios
os.setsid()
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpid())
    os.close(w)
    for s in (signal.SIGINT, signal.SIGTTOU):
        signal.signal(s, signal.SIG_DFL)
    os.execvp(sys.argv[2], sys.argv[2:])
os.close(w)
try:
    os.setpgid(pid, pid)
except OSError:
    pass  # the job did it already (or has exec'd)
os.read(r, 1)  # the job owns the foreground before the test may press ^C
report = int(sys.argv[1])
os.write(report, b"%d\n" % pid)
_, status = os.waitpid(pid, 0)
os.tcsetpgrp(0, os.getpgrp())
os.write(report, b"exit %d\n" % os.waitstatus_to_exitcode(status))
signal.pause()
"""


class Terminal:
    def __init__(self, argv, cwd=None, env=None):
        self.master, slave = os.openpty()
        rep_r, rep_w = os.pipe()
        self.shell = subprocess.Popen([sys.executable, "-c", SHELL, str(rep_w), *argv], cwd=cwd,
                                      env=env, stdin=slave, stdout=slave, stderr=slave,
                                      pass_fds=(rep_w,), preexec_fn=_default_sigint)
        os.close(slave)
        os.close(rep_w)
        self._rep = os.fdopen(rep_r, "rb", buffering=0)
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self._rep.readline()
        if not line:
            raise AssertionError("the terminal's shell did not start the job:\n" + self.output())
        self.job_pid = int(line)  # also the job's process group
        self.exit_code = None

    def _read(self):
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._buf += data

    def output(self):
        with self._lock:
            return self._buf.decode(errors="replace")

    def wait_output(self, needle, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.output():
                return
            time.sleep(0.1)
        raise AssertionError(f"terminal never showed {needle!r}:\n{self.output()[-4000:]}")

    def ctrl_c(self):
        os.write(self.master, b"\x03")

    def wait_job(self, timeout):
        """The job's exit code (negative: killed by that signal), or None if still running."""
        if self.exit_code is None:
            r, _, _ = select.select([self._rep], [], [], timeout)
            if r:
                line = self._rep.readline()
                if line.startswith(b"exit "):
                    self.exit_code = int(line.split()[1])
        return self.exit_code

    def close(self):
        if self.shell.poll() is None:
            self.shell.kill()
            self.shell.wait(10)
        os.close(self.master)
        self._rep.close()


def _default_sigint():
    # The shell must not inherit the test's disposition for SIGINT (a test runner may ignore it).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
