"""The container, checked without a container engine: the build context .dockerignore lets
through (Docker's matching rules), the agent configured only by JOBVISOR_* environment
variables (no config file) with JSON log lines, a job through the real jobvisor-cp, a clean
exit 0 on SIGTERM (what `docker stop` sends), the HEALTHCHECK command, and the entrypoint
stopping the game servers gracefully once the agent has drained."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from cp_harness import AGENT_TOKENS, ControlPlane

JOBVISOR = os.environ["JOBVISOR_BIN"]
SOURCE = os.environ["JV_SOURCE_DIR"]
CONTAINER = os.path.join(SOURCE, "examples", "container")
DOCKERFILE = os.path.join(CONTAINER, "Dockerfile")


def dockerignore_rules(path):
    """[(negated, regex)] from a .dockerignore, as moby/patternmatcher reads it."""
    rules = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            pat = os.path.normpath(line[1:] if neg else line).lstrip("/")
            rx = ""
            i = 0
            while i < len(pat):
                if pat.startswith("**", i):
                    rx += ".*"
                    i += 2
                    if pat.startswith("/", i):
                        rx = rx[:-2] + "(.*/)?"
                        i += 1
                elif pat[i] == "*":
                    rx += "[^/]*"
                    i += 1
                elif pat[i] == "?":
                    rx += "[^/]"
                    i += 1
                else:
                    rx += re.escape(pat[i])
                    i += 1
            rules.append((neg, re.compile(rx + r"\Z")))
    return rules


def excluded(rules, rel):
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    out = False
    for neg, rx in rules:
        if any(rx.match(p) for p in prefixes):
            out = not neg
    return out


def build_context(source, rules):
    """Every file of the directory that `docker build` would send."""
    files = []
    for root, dirs, names in os.walk(source):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), source)
            if not excluded(rules, rel):
                files.append(rel)
    return sorted(files)


class Sidecar(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="jv-sidecar-")
        self.cp = ControlPlane(args=["--job-types", "SIDECAR_JOB"])
        self.cp.start()
        self.addCleanup(self.cp.close)
        self.jobs = os.path.join(self.tmp.name, "jobs")
        os.makedirs(self.jobs)
        with open(os.path.join(self.jobs, "sidecar_job.lua"), "w") as f:
            f.write('return { type = "SIDECAR_JOB", run = function(job) job.progress(50, "half"); '
                    'log.info("from the sidecar") return { ok = true } end }\n')
        token = os.path.join(self.tmp.name, "token")
        fd = os.open(token, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (AGENT_TOKENS["agent-1"] + "\n").encode())
        os.close(fd)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "JOBVISOR_URL": self.cp.url,
            "JOBVISOR_AGENT_ID": "agent-1",
            "JOBVISOR_TOKEN_FILE": token,
            "JOBVISOR_DATA_DIR": os.path.join(self.tmp.name, "data"),
            "JOBVISOR_JOBS_DIR": self.jobs,
            "JOBVISOR_LOG_FORMAT": "json",
            "JOBVISOR_POLL_INTERVAL": "1",
        }
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                self.env[k] = os.environ[k]

    def tearDown(self):
        self.tmp.cleanup()

    def test_env_only_json_logs_and_clean_sigterm(self):
        log_path = os.path.join(self.tmp.name, "agent.log")
        with open(log_path, "w") as log:
            agent = subprocess.Popen([JOBVISOR, "agent"], env=self.env, stdout=log, stderr=log)
        try:
            job = self.cp.create_job(agent="agent-1", instance="sc1", type_="SIDECAR_JOB")
            done = self.cp.wait_job(job["jobId"], lambda j: j["status"] in ("COMPLETED", "FAILED"),
                                    timeout=30, what="job finished")
            self.assertEqual(done["status"], "COMPLETED", done)
            agent.send_signal(signal.SIGTERM)
            self.assertEqual(agent.wait(timeout=30), 0)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        with open(log_path) as f:
            lines = [l for l in f.read().splitlines() if l.strip()]
        self.assertTrue(lines)
        records = [json.loads(l) for l in lines]  # every line is a JSON object
        for r in records:
            for key in ("ts", "level", "job_id", "run_id", "msg"):
                self.assertIn(key, r)
        run_id = done["runs"][-1]["jobRunId"]
        mine = [r for r in records if r["run_id"] == run_id]
        self.assertTrue(any("from the sidecar" in r["msg"] for r in mine), mine)
        self.assertTrue(all(r["job_id"] == done["jobId"] for r in mine))
        self.assertFalse(any(AGENT_TOKENS["agent-1"] in l for l in lines))

    def test_dockerfile_uses_debian_packages_one_init_and_a_real_healthcheck(self):
        with open(DOCKERFILE) as f:
            text = f.read()
        self.assertIn("FROM debian:", text)
        self.assertIn("JOBVISOR_LOG_FORMAT=json", text)
        self.assertNotIn("curl -", text)  # nothing fetched outside the package archive
        self.assertIn('CMD ["jobvisor", "health"]', text)
        self.assertIn('ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/jobvisor-entrypoint"]', text)
        # The monitor binary ships next to jobvisor.
        self.assertRegex(text, r"COPY --from=build \S*/bin/jobvisor \S*/bin/jobvisor-monitor /usr/local/bin/")
        self.assertIn("COPY examples/container/entrypoint.sh /usr/local/bin/jobvisor-entrypoint", text)
        # One init: tini in the image, and no instruction to add docker's --init on top.
        for name in ("Dockerfile", "README.md", "compose.yaml"):
            with open(os.path.join(CONTAINER, name)) as f:
                doc = f.read()
            self.assertNotRegex(doc, r"docker run[^\n]*--init", name)
            self.assertNotRegex(doc, r"\n\s*init:\s*true", name)

    def test_healthcheck_command_tells_a_live_agent_from_none(self):
        env = dict(self.env)  # what the image sets: JOBVISOR_DATA_DIR, no options
        p = subprocess.run([JOBVISOR, "health"], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("no agent is running", p.stdout)
        with open(os.path.join(self.tmp.name, "agent.log"), "w") as log:
            agent = subprocess.Popen([JOBVISOR, "agent"], env=self.env, stdout=log, stderr=log)
        try:
            deadline = time.time() + 20
            while True:
                p = subprocess.run([JOBVISOR, "health"], env=env, capture_output=True, text=True,
                                   timeout=30)
                if p.returncode == 0:
                    break
                self.assertLess(time.time(), deadline, p.stdout)
                time.sleep(0.2)
            self.assertIn("healthy: agent agent-1", p.stdout)
            agent.send_signal(signal.SIGTERM)
            self.assertEqual(agent.wait(timeout=30), 0)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        p = subprocess.run([JOBVISOR, "health"], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1)


    @unittest.skipUnless(os.environ.get("JV_DEMO_SERVER_BIN"), "needs the demo game server")
    def test_entrypoint_stops_the_game_servers_after_the_agent_drained(self):
        from instance_helpers import Instance
        data = self.env["JOBVISOR_DATA_DIR"]
        os.makedirs(data)
        inst = Instance(self, iid="srv1", data_dir=data)
        self.assertTrue(inst.start().startswith("ok started"))
        server_pid = inst.wait_state("RUNNING")["pid"]
        env = dict(self.env, PATH=os.path.dirname(JOBVISOR) + ":" + self.env["PATH"],
                   JOBVISOR_DRAIN_TIMEOUT="30")
        log_path = os.path.join(self.tmp.name, "entrypoint.log")
        with open(log_path, "w") as log:
            ep = subprocess.Popen(["sh", os.path.join(CONTAINER, "entrypoint.sh")], env=env,
                                  stdout=log, stderr=log, start_new_session=True)
        try:
            job = self.cp.create_job(agent="agent-1", instance="sc1", type_="SIDECAR_JOB")
            self.cp.wait_job(job["jobId"], lambda j: j["status"] == "COMPLETED", timeout=30,
                             what="job completed")
            self.assertTrue(os.path.exists(f"/proc/{server_pid}"))
            ep.send_signal(signal.SIGTERM)  # docker stop -> tini -> the entrypoint
            self.assertEqual(ep.wait(timeout=60), 0)
        finally:
            if ep.poll() is None:
                os.killpg(ep.pid, signal.SIGKILL)
                ep.wait()
        with open(log_path) as f:
            log = f.read()
        self.assertIn("SIGTERM received: shutting down", log)
        self.assertIn("stopping instance 'srv1'", log)
        final = inst.state()
        self.assertEqual(final["state"], "STOPPED", final)
        self.assertEqual(final["lastExit"]["code"], 0, final)  # its stop command, not a kill
        self.assertTrue(final["lastExit"]["requested"])
        deadline = time.time() + 10
        while os.path.exists(f"/proc/{server_pid}") and time.time() < deadline:
            time.sleep(0.05)
        self.assertFalse(os.path.exists(f"/proc/{server_pid}"))


class BuildContext(unittest.TestCase):
    def setUp(self):
        self.rules = dockerignore_rules(os.path.join(SOURCE, ".dockerignore"))

    def test_secrets_and_build_trees_stay_out(self):
        for path in (".git/config", ".git", "build/jobvisor", "build-asan/CMakeCache.txt",
                     "demo/admin.token", "demo/agents", "demo/controlplane.sqlite",
                     "demo/data/runs/x/result.json", "token", "agent.token", "node_modules/x",
                     "examples/controlplane/cp.sqlite", "examples/controlplane/cp.sqlite-wal",
                     "supervisor/build/x.o", "tests/e2e/test_demo.py", "my.log"):
            self.assertTrue(excluded(self.rules, path), path)
        for path in ("CMakeLists.txt", "supervisor/agent/agent.c", "include/jobvisor/health.h",
                     "lua/sandbox.c", "jobs/backup_instance.lua", "jobs/lib/builds.lua",
                     "examples/container/entrypoint.sh", "examples/controlplane/main.c",
                     "docs/operations.md", "README.md"):
            self.assertFalse(excluded(self.rules, path), path)

    def test_the_real_context_has_no_secrets_and_configures_alone(self):
        files = build_context(SOURCE, self.rules)
        self.assertIn("examples/container/entrypoint.sh", files)
        bad = [f for f in files if f.startswith((".git", "build", "demo/", "tests/"))
               or f.endswith((".token", ".sqlite")) or os.path.basename(f) == "token"]
        self.assertEqual(bad, [])
        # Build from a clean context: a copy of exactly what docker would send must configure
        # (every directory, source glob and install rule CMake needs is there).
        tmp = tempfile.mkdtemp(prefix="jv-context-")
        try:
            for rel in files:
                dst = os.path.join(tmp, "src", rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy2(os.path.join(SOURCE, rel), dst)
            p = subprocess.run(["cmake", "-S", os.path.join(tmp, "src"), "-B", os.path.join(tmp, "b"),
                                "-DCMAKE_BUILD_TYPE=Release", "-DJV_TESTS=OFF"],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(p.returncode, 0, p.stdout[-3000:] + p.stderr[-3000:])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
