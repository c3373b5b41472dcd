"""pg_harness — a real PostgreSQL server for tests, from Debian's `postgresql` package.

PgServer runs initdb into a fresh temp directory (under ctest: copies a cluster
initdb made once per build directory), starts `postgres` on a free
127.0.0.1 port with its unix socket in that directory (fsync off: test data
need not survive a power cut; JV_PG_DURABLE=1 in the environment keeps
PostgreSQL's durable defaults instead, for benchmarks that should pay for
WAL flushes as production does), and stops it by PID and removes the directory.
When the test runs as root (CI on a fresh machine) the server runs as an
unprivileged user: `postgres` (created by the Debian package), else `nobody`.
Databases are cheap (`new_database()`), so one server serves a whole test
process (`shared()`), stopped at exit.

Tests skip with a clear message only when the binaries are missing.
Standard library only.
"""

import atexit
import fcntl
import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

PG_USER = "jv"  # the database role tests connect as (trust authentication, loopback only)


def pg_bindir():
    """The newest /usr/lib/postgresql/N/bin holding initdb and postgres, or None."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "postgres"), os.X_OK):
            ver = os.path.basename(os.path.dirname(d))
            found.append((int(ver) if ver.isdigit() else 0, d))
    return max(found)[1] if found else None


def require_pg():
    bindir = pg_bindir()
    if not bindir:
        raise unittest.SkipTest("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin "
                                "(install Debian's postgresql package: `make deps`)")
    return bindir


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user():
    """None when not root; else the unprivileged account the server runs as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise AssertionError("running as root and neither a 'postgres' nor a 'nobody' account exists")


def durability_settings():
    """Server flags: no WAL flushes (tests), or PostgreSQL's durable defaults (JV_PG_DURABLE=1)."""
    if os.environ.get("JV_PG_DURABLE") == "1":
        return ["-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on"]
    return ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]


class PgServer:
    """One PostgreSQL server in a temp directory. start() / stop(); url(dbname)."""

    def __init__(self, settings=()):
        """settings: extra server flags, e.g. ("-c", "log_min_duration_statement=0")."""
        self.bindir = require_pg()
        self.settings = list(settings)
        self.dir = None
        self.proc = None
        self.port = None
        self._ndb = 0
        self._lock = threading.Lock()

    def _run(self, args, timeout=120, check=True):
        user = _server_user()
        kw = {}
        if user:
            kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = dict(os.environ, LC_ALL="C", LANG="C", PGTZ="UTC")
        r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=timeout, env=env, cwd=self.dir, **kw)
        if check and r.returncode != 0:
            raise AssertionError("%s failed (%d):\n%s" % (" ".join(args), r.returncode,
                                                          r.stdout.decode(errors="replace")[-3000:]))
        return r

    def _prepare_dir(self):
        self.dir = tempfile.mkdtemp(prefix="jvpg-")
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "sock")
        os.mkdir(self.sock, 0o700)
        user = _server_user()
        if user:
            for p in (self.dir, self.sock):
                os.chown(p, user.pw_uid, user.pw_gid)

    def start(self, timeout=60):
        self._prepare_dir()
        try:
            self._initdb()
            self._launch(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _initdb(self):
        """A fresh cluster in self.data. initdb takes seconds and every e2e-pg test
        process starts a server, so under ctest (JV_BUILD_DIR set) it runs once per
        build directory and PostgreSQL version, and each server gets a copy."""
        initdb = [os.path.join(self.bindir, "initdb"), "-U", PG_USER, "-A", "trust", "-E", "UTF8",
                  "--no-locale", "--no-sync", "-D"]
        build = os.environ.get("JV_BUILD_DIR")
        if not build or not os.path.isdir(build):
            self._run(initdb + [self.data])
            return
        key = hashlib.sha256(" ".join(initdb).encode()).hexdigest()[:12]
        cache = os.path.join(build, "pg-template")
        template = os.path.join(cache, key)
        os.makedirs(cache, exist_ok=True)
        with open(template + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # other test processes wait for the first one's initdb
            if not os.path.isdir(template):
                work = template + ".new"
                shutil.rmtree(work, ignore_errors=True)
                os.mkdir(work, 0o700)
                user = _server_user()
                if user:
                    os.chown(work, user.pw_uid, user.pw_gid)
                self._run(initdb + [work])
                os.rename(work, template)
        # cp -a keeps the owner (the server's user when running as root) and the modes
        r = subprocess.run(["cp", "-a", template, self.data], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise AssertionError("copying %s failed: %s" % (template, r.stdout.decode(errors="replace")))

    def restart(self, timeout=60):
        """Stop the server (fast shutdown: its sessions end) and start it again on
        the same data directory and port, as after a crash or an upgrade."""
        port = self.port
        self._kill()
        self._launch(timeout, port)

    def _launch(self, timeout, port=None):
        user = _server_user()
        kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        for _attempt in range(5):  # another process may take the free port first
            self.port = port or free_port()
            self.log_path = os.path.join(self.dir, "postgres.log")
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [os.path.join(self.bindir, "postgres"), "-D", self.data, "-p", str(self.port),
                 "-k", self.sock, "-c", "listen_addresses=127.0.0.1"] + durability_settings() +
                ["-c", "max_connections=300", "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning"] +
                self.settings,
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=self.dir, **kw)
            log.close()
            if self._wait_ready(timeout):
                return
            self._kill()
        raise AssertionError("postgres did not start:\n" + self.log_text()[-3000:])

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            r = self._run([os.path.join(self.bindir, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                           "-U", PG_USER, "-d", "postgres"], check=False, timeout=10)
            if r.returncode == 0:
                return True
            time.sleep(0.05)
        return False

    def cpu_seconds(self):
        """CPU seconds (user + system) the server has used: the postmaster, its
        live processes and the ones that exited (from /proc)."""
        tick = os.sysconf("SC_CLK_TCK")

        def stat(pid):
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()
        root = stat(self.proc.pid)
        total = sum(int(x) for x in root[11:15])  # utime stime cutime cstime
        for d in os.listdir("/proc"):
            try:
                if d.isdigit() and int(d) != self.proc.pid:
                    f = stat(int(d))
                    total += int(f[11]) + int(f[12]) if int(f[1]) == self.proc.pid else 0
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
        return total / tick

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except (OSError, AttributeError):
            return ""

    def psql(self, dbname, sql):
        """Run SQL with psql; returns its output (tuples only, unaligned)."""
        r = self._run([os.path.join(self.bindir, "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                       "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", dbname, "-c", sql])
        return r.stdout.decode(errors="replace").strip()

    def session(self, dbname, appname):
        """An interactive psql session (a Popen; write SQL to its stdin), named
        appname in pg_stat_activity: a test's own transaction held open while
        the control plane runs."""
        user = _server_user()
        kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        env = dict(os.environ, LC_ALL="C", LANG="C", PGTZ="UTC", PGAPPNAME=appname)
        return subprocess.Popen([os.path.join(self.bindir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                 "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", dbname],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, cwd=self.dir, **kw)

    def copy_rows(self, dbname, table, columns, rows):
        """Bulk-load rows (tuples; None = NULL) with COPY ... FROM STDIN (CSV)."""
        import csv
        import io
        buf = io.StringIO()
        w = csv.writer(buf)
        for row in rows:
            w.writerow(["\\N" if v is None else v for v in row])
        sql = "COPY %s (%s) FROM STDIN WITH (FORMAT csv, NULL '\\N')" % (table, ", ".join(columns))
        user = _server_user()
        kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        r = subprocess.run([os.path.join(self.bindir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                            "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", dbname, "-c", sql],
                           input=buf.getvalue().encode(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=600, cwd=self.dir, **kw)
        if r.returncode != 0:
            raise AssertionError("COPY into %s failed: %s" % (table, r.stdout.decode(errors="replace")[-2000:]))

    def new_database(self, prefix="jv"):
        """Create an empty database; returns its connection URL."""
        with self._lock:
            self._ndb += 1
            name = "%s_%d_%d" % (prefix, os.getpid(), self._ndb)
        self.psql("postgres", 'CREATE DATABASE "%s"' % name)
        return self.url(name)

    def url(self, dbname):
        return "postgresql://%s@127.0.0.1:%d/%s" % (PG_USER, self.port, dbname)

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def stop(self):
        self._kill()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


_shared = None
_shared_lock = threading.Lock()


def shared():
    """The one server of this test process, started on first use, stopped at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            srv = PgServer().start()
            atexit.register(srv.stop)
            _shared = srv
        return _shared
