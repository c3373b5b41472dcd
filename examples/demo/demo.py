#!/usr/bin/env python3
"""The jobvisor demo: the reference control plane (SQLite) + one agent + a demo game server.

Starts `jobvisor-cp` and `jobvisor agent` on 127.0.0.1 with state under ./demo/, packages the
demo game server as a tar.zst served over local HTTP with its SHA-256, then submits the standard
jobs one after another through the control plane's API and prints each job's progress live.
It leaves everything running until Ctrl-C (or exits at once with --exit), then stops, in this
order: the agent (it drains: a job in flight gets JOBVISOR_DRAIN_TIMEOUT, 5 s here, to finish,
then it is cancelled and its result delivered), the game server, and the control plane last, so
it hears every result. Running it again starts afresh.

Ctrl-C in a terminal signals the whole foreground process group: make, this script and the agent
(the control plane runs in its own process group so that it outlives the agent's drain). The
agent takes the terminal's SIGINT and this script's SIGTERM as one request. If this script dies
without cleaning up, the kernel sends the agent and the control plane SIGTERM
(PR_SET_PDEATHSIG).

usage: demo.py [--build-dir DIR] [--demo-dir DIR] [--exit] [--slow-downloads SECONDS]
"""
import ctypes
import argparse
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTANCE = "demo"
AGENT_ID = "demo-agent"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


DRAIN_TIMEOUT = 5  # seconds a job in flight gets to finish when the demo stops


def log(msg):
    print(f"demo: {msg}", flush=True)


def die_with_parent():
    """In the child before exec: SIGTERM when the demo process goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def slow_handler(directory, seconds):
    """A file server that spreads every answer over `seconds` (a slow mirror)."""
    class Slow(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=directory, **kw)

        def log_message(self, *a):
            pass

        def copyfile(self, source, outputfile):
            data = source.read()
            steps = 100
            chunk = max(1, -(-len(data) // steps))
            try:
                for i in range(0, len(data), chunk):
                    outputfile.write(data[i:i + chunk])
                    outputfile.flush()
                    time.sleep(seconds / steps)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the download was cancelled
    return Slow


class Demo:
    def __init__(self, args):
        self.build = os.path.abspath(args.build_dir)
        self.dir = os.path.abspath(args.demo_dir)
        self.jobvisor = os.path.join(self.build, "jobvisor")
        self.cp_bin = os.path.join(self.build, "examples", "controlplane", "jobvisor-cp")
        self.server_bin = os.path.join(self.build, "examples", "demo-server", "demo-server")
        self.data = os.path.join(self.dir, "data")
        self.procs = {}
        self.tty = sys.stdout.isatty()
        self.slow = args.slow_downloads
        self.admin_token = None
        self.url = None

    # ---- setup ----

    def stop_leftovers(self):
        """A previous demo may have left a game server running under its monitor."""
        if os.path.isdir(os.path.join(self.data, "instances", INSTANCE)):
            subprocess.run([self.jobvisor, "run", "STOP_INSTANCE", "--instance", INSTANCE,
                            "--data-dir", self.data, "--params", '{"force": true}'],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        pidfile = os.path.join(self.dir, "pids.json")
        if os.path.exists(pidfile):
            with open(pidfile) as f:
                for pid in json.load(f).values():
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            time.sleep(0.5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def write_secret(self, name, text):
        path = os.path.join(self.dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def package_server(self, www):
        """demo-server as a build archive: server + a README, tar + zstd."""
        tar_path = os.path.join(www, "demo-server-1.0.tar")
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(self.server_bin, arcname="server")
            readme = b"jobvisor demo game server 1.0\n"
            info = tarfile.TarInfo("README")
            info.size = len(readme)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(readme))
        subprocess.run(["zstd", "-q", "-f", "--rm", tar_path, "-o", tar_path + ".zst"], check=True)
        return tar_path + ".zst"

    def make_mod(self, www, name, text):
        path = os.path.join(www, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def serve_files(self, www):
        if self.slow:
            handler = slow_handler(www, self.slow)
        else:
            handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=www, **kw)
            http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    def start_control_plane(self):
        self.admin_token = hashlib.sha256(os.urandom(32)).hexdigest()
        agent_token = hashlib.sha256(os.urandom(32)).hexdigest()
        admin_file = self.write_secret("admin.token", self.admin_token + "\n")
        agents_file = self.write_secret("agents", f"# agentId token\n{AGENT_ID} {agent_token}\n")
        self.write_secret("agent.token", agent_token + "\n")
        cp_log = open(os.path.join(self.dir, "controlplane.log"), "w")
        # Its own process group: the terminal's Ctrl-C must not stop it before the agent
        # has delivered its last results; the demo stops it last.
        p = subprocess.Popen([self.cp_bin, "--listen", "127.0.0.1:0", "--db",
                              os.path.join(self.dir, "controlplane.sqlite"),
                              "--admin-token-file", admin_file, "--agents-file", agents_file],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=cp_log,
                             text=True, process_group=0, preexec_fn=die_with_parent)
        self.procs["controlplane"] = p
        line = p.stdout.readline()
        if "listening on " not in line:
            raise SystemExit(f"demo: jobvisor-cp did not start (see {cp_log.name})")
        self.url = line.split("listening on ", 1)[1].strip()
        log(f"control plane at {self.url} (log: demo/controlplane.log)")

    def start_agent(self):
        env = dict(os.environ)
        env.update({
            "JOBVISOR_URL": self.url,
            "JOBVISOR_AGENT_ID": AGENT_ID,
            "JOBVISOR_TOKEN_FILE": os.path.join(self.dir, "agent.token"),
            "JOBVISOR_DATA_DIR": self.data,
            "JOBVISOR_POLL_INTERVAL": "3",
            "JOBVISOR_POLL_WAIT": "20",
            "JOBVISOR_CAPACITY": "2",
            "JOBVISOR_LOG_FORMAT": "logfmt",
            "JOBVISOR_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
            "JOBVISOR_SHUTDOWN_GRACE": "3",
        })
        agent_log = open(os.path.join(self.dir, "agent.log"), "w")
        self.procs["agent"] = subprocess.Popen([self.jobvisor, "agent"], env=env,
                                               stdin=subprocess.DEVNULL, stdout=agent_log,
                                               stderr=agent_log, preexec_fn=die_with_parent)
        log(f"agent '{AGENT_ID}' polling it (log: demo/agent.log, data: demo/data)")

    def save_pids(self):
        with open(os.path.join(self.dir, "pids.json"), "w") as f:
            json.dump({k: p.pid for k, p in self.procs.items()}, f)

    # ---- control plane API ----

    def api(self, method, path, body=None):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.admin_token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def bar(self, pct):
        width = 24
        if pct is None:
            return " " * width
        n = int(pct * width / 100)
        return "#" * n + "." * (width - n)

    def run_job(self, index, total, jtype, params):
        job = self.api("POST", "/v1/jobs", {"type": jtype, "agentId": AGENT_ID,
                                            "instanceId": INSTANCE, "params": params})
        job_id = job["jobId"]
        label = f"[{index}/{total}] {jtype:<16}"
        last_line = ""
        seen = {}
        deadline = time.time() + 600
        while time.time() < deadline:
            job = self.api("GET", f"/v1/jobs/{job_id}")
            runs = job.get("runs") or []
            run = runs[-1] if runs else None
            if run:
                after = seen.get(run["jobRunId"], 0)
                evs = self.api("GET", f"/v1/runs/{run['jobRunId']}/events?after={after}").get("events", [])
                for ev in evs:
                    seen[run["jobRunId"]] = max(seen.get(run["jobRunId"], 0), ev["seq"])
                    if ev.get("kind") == "log" and not self.tty:
                        print(f"      log {ev.get('level', 'info')}: {ev.get('message')}", flush=True)
                pct = run.get("percent")
                msg = run.get("message") or job["status"].lower()
                line = f"{label} [{self.bar(pct)}] {('%3d%%' % pct) if pct is not None else '   ?'}  {msg[:60]}"
            else:
                line = f"{label} [{self.bar(None)}]    {job['status'].lower()}"
            if line != last_line:
                if self.tty:
                    sys.stdout.write("\r\033[K" + line)
                    sys.stdout.flush()
                else:
                    print(line, flush=True)
                last_line = line
            if job["status"] in TERMINAL:
                break
            time.sleep(0.2)
        if self.tty:
            sys.stdout.write("\n")
        status = job["status"]
        run = (job.get("runs") or [{}])[-1]
        if status == "COMPLETED":
            print(f"      -> COMPLETED {json.dumps(run.get('output'))[:160]}", flush=True)
        else:
            err = (run.get("error") or {}).get("message", "")
            print(f"      -> {status}: {err}", flush=True)
        return status

    # ---- the whole show ----

    def run(self, exit_at_end):
        for path in (self.jobvisor, self.cp_bin, self.server_bin):
            if not os.access(path, os.X_OK):
                raise SystemExit(f"demo: {path} is missing: build first (make demo builds it)")
        self.stop_leftovers()
        www = os.path.join(self.dir, "www")
        os.makedirs(www)
        archive = self.package_server(www)
        mods = [self.make_mod(www, "worldedit-7.3.jar", "demo mod: worldedit 7.3\n"),
                self.make_mod(www, "essentials-2.20.jar", "demo mod: essentials 2.20\n")]
        # The processes first, the file server's thread after (fork + preexec_fn in a
        # threaded process is unsafe).
        self.start_control_plane()
        self.start_agent()
        self.save_pids()
        files = self.serve_files(www)
        log(f"serving the demo server build and mods at {files}"
            + (f" (slowly: {self.slow:g} s per file)" if self.slow else ""))
        print(f"\n  Web UI: {self.url}/#token={self.admin_token}\n", flush=True)

        sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
        spec = {
            "command": ["${build}/server", "--port", "0", "--ready-delay-ms", "500", "--autosave-ms", "2000"],
            "cwd": "data",
            "stop": {"command": "stop", "signal": "SIGTERM", "timeoutSeconds": 10},
            "ready": {"logPattern": "Done \\(", "timeoutSeconds": 30},
            "restart": {"policy": "on-failure", "maxRestarts": 3, "windowSeconds": 60},
        }
        quiesce = {"before": ["save-off", "save-all"], "after": ["save-on"]}
        jobs = [
            ("INSTALL_SERVER", {"source": {"url": f"{files}/{os.path.basename(archive)}", "sha256": sha(archive)},
                                "build": "1.0", "instance": spec}),
            ("START_INSTANCE", {"waitReady": True}),
            ("BACKUP_INSTANCE", {"backupId": "before-mods", "quiesce": quiesce}),
            ("VERIFY_BACKUP", {"backupId": "before-mods"}),
            ("SYNC_MODS", {"mods": [{"name": os.path.basename(m), "url": f"{files}/{os.path.basename(m)}",
                                     "sha256": sha(m)} for m in mods]}),
            ("BACKUP_INSTANCE", {"backupId": "with-mods", "quiesce": quiesce}),
            ("RESTORE_BACKUP", {"backupId": "before-mods", "restart": True}),
            ("PRUNE_BACKUPS", {"keepLast": 1}),
            ("STOP_INSTANCE", {}),
        ]
        results = []
        for i, (jtype, params) in enumerate(jobs, 1):
            results.append((jtype, self.run_job(i, len(jobs), jtype, params)))
        failed = [t for t, s in results if s != "COMPLETED"]
        print()
        log(f"{len(results) - len(failed)} of {len(results)} jobs completed"
            + (f"; failed: {', '.join(failed)}" if failed else ""))
        if not exit_at_end:
            print(f"\n  Web UI: {self.url}/#token={self.admin_token}\n  Ctrl-C stops everything.\n",
                  flush=True)
            try:
                while all(p.poll() is None for p in self.procs.values()):
                    time.sleep(1)
                log("a demo process exited on its own; stopping")
            except KeyboardInterrupt:
                print()
        return 1 if failed else 0

    def agent_state(self):
        """The agent's shutdown phase from its state file ("running", "draining", ...)."""
        try:
            with open(os.path.join(self.data, "agent-state.json")) as f:
                return json.load(f).get("state")
        except (OSError, ValueError):
            return None

    def shutdown(self):
        # From here on a repeated Ctrl-C must not cut the cleanup short (the agent, in the
        # terminal's process group, still gets it: 2 s or more after the first, it cancels
        # the job in flight instead of waiting for it).
        def still_stopping(signum, frame):
            print("demo: still stopping, please wait", flush=True)
        signal.signal(signal.SIGINT, still_stopping)
        signal.signal(signal.SIGTERM, still_stopping)
        log("stopping: agent, game server, control plane")
        agent = self.procs.get("agent")
        if agent and agent.poll() is None:
            # A terminal's Ctrl-C reached it already; one request is enough.
            time.sleep(0.3)
            if self.agent_state() in (None, "running") and agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=DRAIN_TIMEOUT + 25)
            except subprocess.TimeoutExpired:
                log("the agent did not stop in time; killing it")
                agent.kill()
                agent.wait()
        if os.path.isdir(os.path.join(self.data, "instances", INSTANCE)):
            try:
                subprocess.run([self.jobvisor, "run", "STOP_INSTANCE", "--instance", INSTANCE,
                                "--data-dir", self.data], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60)
            except subprocess.TimeoutExpired:
                log("stopping the game server timed out")
        cp = self.procs.get("controlplane")
        if cp and cp.poll() is None:
            cp.send_signal(signal.SIGTERM)
            try:
                cp.wait(timeout=15)
            except subprocess.TimeoutExpired:
                cp.kill()
                cp.wait()
        try:
            os.unlink(os.path.join(self.dir, "pids.json"))
        except OSError:
            pass
        log("stopped")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--demo-dir", default=os.path.join(ROOT, "demo"))
    ap.add_argument("--exit", action="store_true", help="stop everything when the jobs are done")
    ap.add_argument("--slow-downloads", type=float, default=0, metavar="SECONDS",
                    help="serve every file over SECONDS, to watch download progress")
    args = ap.parse_args()
    demo = Demo(args)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    code = 1
    try:
        code = demo.run(args.exit)
    except KeyboardInterrupt:
        print()
    finally:
        demo.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
