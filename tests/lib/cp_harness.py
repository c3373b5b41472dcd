"""cp_harness — run the real jobvisor-cp on 127.0.0.1 and talk to it over HTTP.

ControlPlane starts the binary (JOBVISOR_CP_BIN) with a temp database and
token files (mode 0600), an OS-assigned port read from its "listening on"
line, and stops it with SIGTERM, failing the test if it does not exit 0 or if
a sanitizer reported anything. Agent plays the agent side of the protocol.
Standard library only; every call has a timeout.

Backends: JV_CP_BACKEND=postgresql (set by ctest for the e2e-pg.* copies of
the control-plane tests) gives each ControlPlane a fresh database on one
PostgreSQL server per test process (pg_harness), instead of a SQLite file.
"""

import json
import os
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import pg_harness

ADMIN_TOKEN = "admin-token-0123456789abcdef"
AGENT_TOKENS = {
    "agent-1": "agent-1-token-0123456789abcdef",
    "agent-2": "agent-2-token-0123456789abcdef",
}
# Spare agents so tests sharing one control plane never see each other's jobs.
for _n in range(1, 81):
    AGENT_TOKENS["a%02d" % _n] = "a%02d-token-0123456789abcdef" % _n

# Proxies from the environment must never see loopback test traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def cp_bin():
    path = os.environ.get("JOBVISOR_CP_BIN")
    if not path or not os.path.exists(path):
        raise unittest.SkipTest("JOBVISOR_CP_BIN is not set (run through ctest)")
    return path


def backend():
    """'sqlite' (the default) or 'postgresql', from JV_CP_BACKEND."""
    b = os.environ.get("JV_CP_BACKEND", "sqlite")
    if b not in ("sqlite", "postgresql"):
        raise AssertionError("JV_CP_BACKEND must be 'sqlite' or 'postgresql', not %r" % b)
    if b == "postgresql":
        pg_harness.require_pg()
    return b


def _pg_literal(v):
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float)):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"


class Response:
    def __init__(self, status, body, headers):
        self.status = status
        self.raw = body
        self.headers = headers
        try:
            self.json = json.loads(body.decode()) if body else None
        except ValueError:
            self.json = None

    def __repr__(self):
        return "<%d %s>" % (self.status, self.raw[:300])


def http(url, method="GET", body=None, token=None, raw=None, headers=None, timeout=30, context=None):
    """One HTTP request; returns Response for any status (never raises on 4xx/5xx).
    context: the ssl.SSLContext for an https:// URL (a test CA)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", "Bearer " + token)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    opener = _OPENER
    if context is not None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(req, timeout=timeout) as r:
            return Response(r.status, r.read(), dict(r.headers))
    except urllib.error.HTTPError as e:
        return Response(e.code, e.read(), dict(e.headers))


class ControlPlane:
    """A jobvisor-cp process in a temp directory."""

    def __init__(self, args=(), tmpdir=None, agents=None, db=None):
        """db: share another ControlPlane's database (a second replica)."""
        self._own_tmp = None
        if tmpdir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="jvcp-")
            tmpdir = self._own_tmp.name
        self.dir = tmpdir
        self.args = list(args)
        self.agents = dict(agents or AGENT_TOKENS)
        self.backend = backend()
        if db is not None:
            self.backend = "postgresql" if db.startswith("postgresql://") else "sqlite"
            self.db = db
        elif self.backend == "postgresql":
            self.db = pg_harness.shared().new_database()
        else:
            self.db = os.path.join(tmpdir, "cp.sqlite")
        self.admin_file = os.path.join(tmpdir, "admin.token")
        self.agents_file = os.path.join(tmpdir, "agents")
        self.proc = None
        self.url = None
        self.default_agent = "agent-1"
        self.second_agent = "agent-2"
        self._spare = iter(sorted(k for k in self.agents if k.startswith("a") and k[1:].isdigit()))
        self.port = None
        self.ssl_context = None  # for https:// (--tls-cert): an ssl.SSLContext trusting its CA
        self.stderr_path = os.path.join(tmpdir, "cp.stderr")
        self._write_secret(self.admin_file, ADMIN_TOKEN + "\n")
        lines = ["# test agents"] + ["%s %s" % kv for kv in self.agents.items()]
        self._write_secret(self.agents_file, "\n".join(lines) + "\n")

    @staticmethod
    def _write_secret(path, text):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def command(self, listen="127.0.0.1:0"):
        return [cp_bin(), "--listen", listen, "--db", self.db,
                "--admin-token-file", self.admin_file, "--agents-file", self.agents_file] + self.args

    def start(self, timeout=15):
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL)
        line = self._read_line(timeout)
        scheme = "https" if "--tls-cert" in self.args else "http"
        prefix = "listening on %s://127.0.0.1:" % scheme
        if not line.startswith(prefix):
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("jobvisor-cp did not start: %r\n%s" % (line, self.stderr_text()))
        self.port = int(line[len(prefix):])
        self.url = "%s://127.0.0.1:%d" % (scheme, self.port)
        return self

    def _read_line(self, timeout):
        out = []

        def reader():
            out.append(self.proc.stdout.readline().decode(errors="replace").strip())

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(timeout)
        return out[0] if out else ""

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=20, check=True):
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("jobvisor-cp did not stop within %d s" % timeout)
        self.proc.stdout.close()
        self._stderr.close()
        self.proc = None
        if check:
            err = self.stderr_text()
            for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:", "ThreadSanitizer"):
                if bad in err:
                    raise AssertionError("sanitizer report from jobvisor-cp:\n" + err[-6000:])
            if sig in (signal.SIGTERM, signal.SIGINT) and rc != 0:
                raise AssertionError("jobvisor-cp exited %d:\n%s" % (rc, err[-3000:]))
        return rc

    def restart(self):
        self.stop()
        return self.start()

    def close(self):
        try:
            self.stop()
        finally:
            if self._own_tmp:
                self._own_tmp.cleanup()

    # --- the database itself, whichever backend (tests that poke at rows) ---
    def sql(self, query, params=()):
        """Run one statement ('?' placeholders); returns its rows as tuples
        (PostgreSQL: of strings)."""
        if self.backend == "sqlite":
            con = sqlite3.connect(self.db, timeout=30)
            try:
                rows = con.execute(query, params).fetchall()
                con.commit()
                return rows
            finally:
                con.close()
        parts = query.split("?")
        if len(parts) != len(params) + 1:
            raise AssertionError("placeholders and params differ in %r" % query)
        text = parts[0] + "".join(_pg_literal(v) + rest for v, rest in zip(params, parts[1:]))
        out = pg_harness.shared().psql(self.db.rsplit("/", 1)[1], text)
        return [tuple(line.split("|")) for line in out.splitlines() if line]

    def insert_rows(self, table, columns, rows):
        """Bulk insert (tuples, None = NULL)."""
        if self.backend == "sqlite":
            con = sqlite3.connect(self.db, timeout=30)
            try:
                con.execute("PRAGMA synchronous=OFF")
                con.executemany("INSERT INTO %s (%s) VALUES (%s)" % (table, ", ".join(columns),
                                                                    ",".join("?" * len(columns))), rows)
                con.commit()
            finally:
                con.close()
        else:
            pg_harness.shared().copy_rows(self.db.rsplit("/", 1)[1], table, columns, rows)

    # --- UI / panel calls (admin token) ---
    def api(self, method, path, body=None, token=ADMIN_TOKEN, **kw):
        kw.setdefault("context", self.ssl_context)
        return http(self.url + path, method, body, token, **kw)

    def fresh_agents(self):
        """Give the next test two agents nobody has used yet."""
        self.default_agent = next(self._spare)
        self.second_agent = next(self._spare)

    def create_job(self, agent=None, instance="inst-1", type_="BACKUP_INSTANCE", params=None, **extra):
        body = {"type": type_, "agentId": agent or self.default_agent, "instanceId": instance,
                "params": params or {}}
        body.update(extra)
        r = self.api("POST", "/v1/jobs", body)
        if r.status != 201:
            raise AssertionError("create failed: %r" % r)
        return r.json

    def job(self, job_id):
        r = self.api("GET", "/v1/jobs/" + job_id)
        if r.status != 200:
            raise AssertionError("get job failed: %r" % r)
        return r.json

    def wait_job(self, job_id, pred, timeout=15, what="condition"):
        deadline = time.monotonic() + timeout
        job = None
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if pred(job):
                return job
            time.sleep(0.1)
        raise AssertionError("timed out waiting for %s; job is %s" % (what, json.dumps(job)))

    def agent(self, agent_id=None):
        agent_id = agent_id or self.default_agent
        return Agent(self, agent_id, self.agents[agent_id])

    def run_counters(self):
        """(runs started, finished COMPLETED, FAILED, CANCELLED) from /metrics."""
        r = http(self.url + "/metrics", token=ADMIN_TOKEN, context=self.ssl_context)
        if r.status != 200:
            raise AssertionError("metrics failed: %r" % r)
        values = dict(line.rsplit(" ", 1) for line in r.raw.decode().splitlines() if not line.startswith("#"))
        names = ["jobvisor_runs_started_total"] + ['jobvisor_runs_finished_total{state="%s"}' % s
                                                   for s in ("COMPLETED", "FAILED", "CANCELLED")]
        return tuple(int(values[n]) for n in names)


class Agent:
    """The agent side of the protocol, by hand."""

    def __init__(self, cp, agent_id, token):
        self.cp = cp
        self.id = agent_id
        self.token = token
        self.seq = {}

    def poll(self, capacity=1, running=(), wait=0, token=None, timeout=60):
        body = {"capacity": capacity, "waitSeconds": wait,
                "running": [{"jobRunId": r, "lastSeq": self.seq.get(r, 0)} for r in running]}
        return http(self.cp.url + "/v1/agents/%s/poll" % self.id, "POST", body,
                    token or self.token, timeout=timeout, context=self.cp.ssl_context)

    def take(self, capacity=1, running=()):
        """Poll once and return the assignments (asserting 200)."""
        r = self.poll(capacity, running)
        if r.status != 200:
            raise AssertionError("poll failed: %r" % r)
        return r.json["jobs"]

    def events(self, run_id, events, token=None):
        return http(self.cp.url + "/v1/runs/%s/events" % run_id, "POST", {"events": events},
                    token or self.token, context=self.cp.ssl_context)

    def progress(self, assignment, percent, message, status="RUNNING", kind="progress"):
        run_id = assignment["jobRunId"]
        seq = self.seq.get(run_id, 0) + 1
        self.seq[run_id] = seq
        ev = {"seq": seq, "kind": kind, "jobId": assignment["jobId"], "jobRunId": run_id,
              "instanceId": assignment["instanceId"], "status": status, "percent": percent,
              "message": message, "timestamp": "2026-01-02T03:04:05.678Z"}
        return self.events(run_id, [ev])

    def result(self, run_id, status="COMPLETED", output=None, error=None, token=None):
        body = {"status": status, "output": output, "error": error,
                "finishedAt": "2026-01-02T03:04:06.000Z", "lastSeq": self.seq.get(run_id, 0)}
        return http(self.cp.url + "/v1/runs/%s/result" % run_id, "POST", body, token or self.token,
                    context=self.cp.ssl_context)


class CpTestCase(unittest.TestCase):
    """One control plane per test class (a start and a stop cost ~0.5 s), with
    fresh agents per test so tests cannot see each other's jobs. Subclasses
    set CP_ARGS. tearDownClass stops it with SIGTERM and fails on a non-zero
    exit or any sanitizer report (leaks included)."""

    CP_ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.cp = ControlPlane(cls.CP_ARGS).start()

    @classmethod
    def tearDownClass(cls):
        cls.cp.close()

    def setUp(self):
        self.cp.fresh_agents()
