"""Helpers for the instance/monitor end-to-end tests (stdlib only).

An instance fixture is a real instance directory laid out as DESIGN.md
section 7 describes: builds/b1/server (a copy of the demo server), current ->
builds/b1, data/, instance.json. Monitors are real `jobvisor monitor`
processes and every check goes through their socket, state.json, the console
log or the process table.
"""
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time

JOBVISOR = os.environ.get("JOBVISOR_BIN", "")
DEMO = os.environ.get("JV_DEMO_SERVER_BIN", "")
# The slim monitor executable built beside jobvisor (what the launcher uses).
MONITOR = os.path.join(os.path.dirname(JOBVISOR), "jobvisor-monitor") if JOBVISOR else ""
if not os.access(MONITOR or "/nonexistent", os.X_OK):
    MONITOR = ""


def monitor_argv(via_jobvisor=False):
    """argv[:n] that starts a monitor: jobvisor-monitor, or `jobvisor monitor`."""
    return [JOBVISOR, "monitor"] if via_jobvisor or not MONITOR else [MONITOR]


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Poll pred() until it returns a truthy value; fail after timeout seconds."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def proc_start_time(pid):
    """Field 22 of /proc/PID/stat, or None when the process is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    return int(rest[19])


def proc_alive(pid):
    """True for a live, non-zombie process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(")") + 2] not in "ZX"


def cgroup2_writable():
    """Whether a monitor started from this process can make a cgroup v2 leaf
    below its own cgroup (what the monitor does without cgroup_parent)."""
    path = cgroup2_parent()
    return bool(path) and os.access(path, os.W_OK) and \
        os.path.exists(os.path.join(path, "cgroup.procs"))


def cgroup2_parent():
    mount = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if " - cgroup2 " in line:
                mount = line.split()[4]
                break
    if not mount:
        return None
    with open("/proc/self/cgroup") as f:
        own = next((l.strip()[3:] for l in f if l.startswith("0::")), None)
    if own is None:
        return None
    return mount + ("" if own == "/" else own)


def cgroup_leaf(instance_dir, iid):
    """The leaf path a monitor started from this process would use (see
    supervisor/monitor/monitor_cgroup.c), or None without cgroup v2."""
    parent = cgroup2_parent()
    if not parent:
        return None
    h = 1469598103934665603
    for b in instance_dir.encode():
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return "%s/jobvisor-%s-%08x" % (parent, iid, h & 0xFFFFFFFF)


def default_spec(demo_args=(), **over):
    spec = {
        "command": ["${build}/server", "--port", "0", "--ready-delay-ms", "200",
                    "--autosave-ms", "60000"] + list(demo_args),
        "cwd": "data",
        "stop": {"command": "stop", "signal": "SIGTERM", "timeoutSeconds": 10,
                 "signalTimeoutSeconds": 5},
        "ready": {"logPattern": "Done \\(", "timeoutSeconds": 20},
        "restart": {"policy": "on-failure", "maxRestarts": 5, "windowSeconds": 300,
                    "backoffSeconds": 0.3},
    }
    for k, v in over.items():
        spec[k] = v
    return spec


class MonitorConn:
    """A JSON-line connection to a monitor socket."""

    def __init__(self, inst, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(inst.sock_path)
        self.buf = b""

    def send(self, req):
        self.sock.sendall((json.dumps(req) + "\n").encode())

    def recv(self, timeout=10):
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the monitor within %.1fs" % timeout)
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("monitor closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def reply(self, timeout=10, events=None):
        """Skip events (collected into the list events) until a message with "ok"."""
        end = time.monotonic() + timeout
        while True:
            m = self.recv(max(0.01, end - time.monotonic()))
            if "ok" in m:
                return m
            if events is not None:
                events.append(m)

    def close(self):
        self.sock.close()


def live_status(instance_dir, timeout=10):
    """The instance's status as its monitor answers it now, or state.json when
    no monitor listens. A monitor tells its clients about a new state before
    it writes state.json, so right after a job saw RUNNING the file may still
    say STARTING: checks of what a job just did ask the monitor."""
    sock = os.path.join(instance_dir, ".jobvisor", "monitor.sock")
    holder = type("Sock", (), {"sock_path": sock})
    try:
        c = MonitorConn(holder, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        with open(os.path.join(instance_dir, ".jobvisor", "state.json")) as f:
            return json.load(f)
    try:
        c.send({"op": "status"})
        return c.reply(timeout)["status"]
    finally:
        c.close()


class Instance:
    """One instance directory under a temporary data dir."""

    def __init__(self, test, iid="s1", spec=None, data_dir=None, settings=None):
        self.test = test
        self.own_root = data_dir is None
        self.root = data_dir or tempfile.mkdtemp(prefix="jv-inst-")
        self.id = iid
        self.dir = os.path.join(self.root, "instances", iid)
        self.jv = os.path.join(self.dir, ".jobvisor")
        self.logs = os.path.join(self.dir, "logs")
        self.sock_path = os.path.join(self.jv, "monitor.sock")
        self.settings = settings or {}
        self.monitors = []
        self.extra_pids = []
        build = os.path.join(self.dir, "builds", "b1")
        os.makedirs(build)
        os.makedirs(os.path.join(self.dir, "data"))
        shutil.copy2(DEMO, os.path.join(build, "server"))
        os.symlink("builds/b1", os.path.join(self.dir, "current"))
        self.write_spec(spec if spec is not None else default_spec())
        test.addCleanup(self.cleanup)

    def write_spec(self, spec):
        with open(os.path.join(self.dir, "instance.json"), "w") as f:
            f.write(spec if isinstance(spec, str) else json.dumps(spec))

    # --- monitor processes -------------------------------------------------
    def launch(self, settings=None, adopt_only=False, via_jobvisor=False):
        """Start a monitor (new session, like the real launcher); return
        (Popen, status-pipe read end)."""
        r, w = os.pipe()
        argv = monitor_argv(via_jobvisor) + [
            "--instance-dir", self.dir, "--status-fd", str(w),
            "--settings", json.dumps(settings if settings is not None else self.settings)]
        if adopt_only:
            argv.append("--adopt-only")
        p = subprocess.Popen(argv, pass_fds=(w,), start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        os.close(w)
        self.monitors.append(p)
        return p, r

    @staticmethod
    def read_status(r, timeout=20):
        ready, _, _ = select.select([r], [], [], timeout)
        data = os.read(r, 4096).decode() if ready else ""
        os.close(r)
        return data.strip()

    def start(self, settings=None, timeout=20, via_jobvisor=False):
        p, r = self.launch(settings, via_jobvisor=via_jobvisor)
        line = self.read_status(r, timeout)
        return line

    def conn(self, timeout=10):
        return MonitorConn(self, timeout)

    def call(self, req, timeout=10):
        c = self.conn(timeout)
        try:
            c.send(req)
            return c.reply(timeout)
        finally:
            c.close()

    def status(self):
        return self.call({"op": "status"})["status"]

    def stop(self, timeout=60, **req):
        """Send stop (or kill with force=True); return (final reply, events)."""
        c = self.conn(timeout)
        events = []
        try:
            req = dict(req)
            req["op"] = "stop"
            c.send(req)
            return c.reply(timeout, events), events
        finally:
            c.close()

    def wait_state(self, *states, timeout=20):
        def check():
            st = self.state()
            return st if st and st.get("state") in states else None
        return wait_until(check, timeout, what="state in %s (last: %s)" % (states, self.state()))

    def wait_monitor_exit(self, timeout=20):
        for p in self.monitors:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError("monitor pid %d still running" % p.pid)

    # --- files -------------------------------------------------------------
    def state(self):
        try:
            with open(os.path.join(self.jv, "state.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def console(self, name="console.log"):
        try:
            with open(os.path.join(self.logs, name), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_console(self, needle, timeout=20):
        return wait_until(lambda: needle in self.console(), timeout,
                          what="%r in console.log" % needle)

    def monitor_log(self):
        try:
            with open(os.path.join(self.logs, "monitor.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def child_pids(self, marker="Forked"):
        """pids the demo server reported for its children ("Forked child pid N")."""
        pids = []
        for line in self.console().splitlines():
            if marker in line and " pid " in line:
                pids.append(int(line.rsplit(" pid ", 1)[1].split()[0]))
        return pids

    # --- teardown ----------------------------------------------------------
    def cleanup(self):
        try:
            if os.path.exists(self.sock_path):
                try:
                    self.call({"op": "kill"}, timeout=15)
                except (OSError, ValueError, TimeoutError):
                    pass
        finally:
            for p in self.monitors:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            st = self.state() or {}
            # A server left behind (only after a deliberate monitor kill): end it,
            # but only when pid + start time still match.
            pid, start = st.get("pid"), st.get("startTime")
            if pid and start is not None and proc_start_time(pid) == start:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            # Children the demo server reported, if any survived a failing test:
            # identified by the unique instance path in their command line.
            for pid in self.child_pids():
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        mine = self.dir.encode() in f.read()
                    if mine:
                        os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            for pid, start in self.extra_pids:
                if proc_start_time(pid) == start:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            cg = st.get("cgroup") or cgroup_leaf(self.dir, self.id)
            if cg and os.path.isdir(cg):
                try:
                    with open(os.path.join(cg, "cgroup.kill"), "w") as f:
                        f.write("1")
                    time.sleep(0.1)
                    os.rmdir(cg)
                except OSError:
                    pass
            log = self.monitor_log()
            if self.own_root:
                shutil.rmtree(self.root, ignore_errors=True)
            for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
                if bad in log:
                    raise AssertionError("sanitizer report in monitor.log:\n" + log[-4000:])
