"""Running the real `jobvisor agent` against FakeCP (or the real jobvisor-cp) in tests.

AgentTestCase gives each test a temp dir with data/, jobs/ (a few test job
scripts), a token file, a FakeCP on 127.0.0.1 and helpers to start, signal
and inspect the agent. The agent's stderr goes to a file so a chatty agent can
never block on a full pipe.
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from agent_fakecp import FakeCP
from jv_run import job_run_children, processes_in_group  # noqa: F401 (processes_in_group re-exported for the agent tests)

JOBVISOR = os.environ.get("JOBVISOR_BIN", "jobvisor")

# Test job scripts: type NAME lives in jobs/name.lua.
SCRIPTS = {
    "SLEEPY": """return {
  type = "SLEEPY",
  params = { steps = "integer?", delay = "number?" },
  run = function(job)
    local steps = job.params.steps or 3
    local delay = job.params.delay or 0.05
    for i = 1, steps do
      job.progress(i * 100 / steps, "step " .. i)
      job.sleep(delay)
    end
    return { steps = steps }
  end,
}""",
    "CHATTY": """return {
  type = "CHATTY",
  params = { lines = "integer?" },
  run = function(job)
    for i = 1, (job.params.lines or 20) do
      log.info("line " .. i)
      job.step("step " .. i)
      job.sleep(0.02)
    end
    return { done = true }
  end,
}""",
    # Waits for a file "gate" the test creates in the instance directory, then
    # talks and finishes: what it says happens when the test decides.
    "GATED": """return {
  type = "GATED",
  params = { lines = "integer?" },
  run = function(job)
    job.step("waiting for the gate")
    while not fs.exists("gate") do job.sleep(0.05) end
    for i = 1, (job.params.lines or 20) do
      log.info("line " .. i)
      job.step("step " .. i)
    end
    return { done = true }
  end,
}""",
    "STUBBORN": """return {
  type = "STUBBORN",
  run = function(job)
    job.progress(1, "ignoring cancellation")
    local function spin() while true do end end
    while true do pcall(spin) end -- catches the cancellation error and goes on
  end,
}""",
    "WAITER": """return {
  type = "WAITER",
  run = function(job)
    job.step("waiting for cancel")
    while true do job.sleep(0.05) end
  end,
}""",
    "TICKER": """return {
  type = "TICKER",
  run = function(job)
    local i = 0
    while true do
      i = i + 1
      job.progress(i % 100, "tick " .. i)
      job.sleep(0.3)
    end
  end,
}""",
    "FAILER": """return {
  type = "FAILER",
  run = function(job) job.fail("it went wrong", { retryable = true }) end,
}""",
}


def agent_env(cp_url, token_file, data, jobs, agent_id="agent-1", **overrides):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBVISOR_") or k in ("JOBVISOR_BUILTIN_JOBS_DIR",)}
    env.update({
        "JOBVISOR_URL": cp_url,
        "JOBVISOR_AGENT_ID": agent_id,
        "JOBVISOR_TOKEN_FILE": token_file,
        "JOBVISOR_DATA_DIR": data,
        "JOBVISOR_JOBS_DIR": jobs,
        "JOBVISOR_POLL_INTERVAL": "0.2",
        "JOBVISOR_POLL_JITTER": "0",
        "JOBVISOR_POLL_WAIT": "0",
        "JOBVISOR_CAPACITY": "2",
        "JOBVISOR_LOG_LEVEL": "debug",
        "JOBVISOR_BACKOFF_MAX": "1",
        "JOBVISOR_REQUEST_TIMEOUT": "5",
        "JOBVISOR_CONNECT_TIMEOUT": "2",
        "JOBVISOR_SHUTDOWN_GRACE": "5",
        # Most tests stop the agent mid-job to test something else: cancel at
        # once. test_agent_shutdown.py tests the drain itself.
        "JOBVISOR_DRAIN_TIMEOUT": "0",
    })
    for k, v in overrides.items():
        key = k if k.startswith("JOBVISOR_") else "JOBVISOR_" + k.upper()
        if v is None:
            env.pop(key, None)
        else:
            env[key] = str(v)
    return env


class AgentTestCase(unittest.TestCase):
    TOKEN = "agent-token-123"

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="jv-agent-")
        self.data = os.path.join(self.tmp, "data")
        self.jobs = os.path.join(self.tmp, "jobs")
        os.makedirs(self.data)
        os.makedirs(self.jobs)
        for name, text in SCRIPTS.items():
            with open(os.path.join(self.jobs, name.lower() + ".lua"), "w") as f:
                f.write(text)
        self.token_file = os.path.join(self.tmp, "token")
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (self.TOKEN + "\n").encode())
        os.close(fd)
        self.cp = FakeCP(token=self.TOKEN)
        self.agents = []
        self.log_path = os.path.join(self.tmp, "agent.log")

    def tearDown(self):
        for p in self.agents:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        self.cp.stop()
        log = self.log()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            if bad in log:
                self.fail(f"sanitizer report in the agent log:\n{log[-6000:]}")
        if os.environ.get("JV_KEEP_TMP"):
            print("kept", self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self, **overrides):
        return agent_env(self.cp.url, self.token_file, self.data, self.jobs, **overrides)

    def start_real_cp(self, args, agent_id):
        """Replace the fake with a real jobvisor-cp (cp_harness.ControlPlane in tmp/cp,
        started) and point the token file at agent_id's token. The caller stops it."""
        from cp_harness import AGENT_TOKENS, ControlPlane
        self.cp.stop()  # the fake is not used
        cp_dir = os.path.join(self.tmp, "cp")
        os.makedirs(cp_dir)
        real = ControlPlane(list(args), tmpdir=cp_dir)
        real.start()
        with open(self.token_file, "w") as f:
            f.write(AGENT_TOKENS[agent_id] + "\n")
        os.chmod(self.token_file, 0o600)
        return real

    def start_agent(self, args=(), **overrides):
        env = self.env(**overrides)
        logf = open(self.log_path, "a")
        # Its own session: tests stop agents with SIGSTOP, and a stopped member
        # of an orphaned process group gets the whole group a SIGHUP from the
        # kernel, which would take the test runner (ctest, make) with it.
        p = subprocess.Popen([JOBVISOR, "agent", *args], env=env, stdin=subprocess.DEVNULL,
                             stdout=logf, stderr=logf, start_new_session=True)
        logf.close()
        self.agents.append(p)
        return p

    def run_agent_once(self, args=(), timeout=20, **overrides):
        """Run the agent expecting it to exit by itself (bad config)."""
        p = subprocess.run([JOBVISOR, "agent", *args], env=self.env(**overrides),
                           capture_output=True, text=True, timeout=timeout)
        return p

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, needle, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.log():
                return
            time.sleep(0.05)
        self.fail(f"agent log never showed {needle!r}:\n{self.log()[-4000:]}")

    def stop_agent(self, p, sig=signal.SIGTERM, timeout=30):
        p.send_signal(sig)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            self.fail(f"agent did not exit within {timeout}s after {sig}:\n{self.log()[-4000:]}")

    def job_child(self, agent, timeout=10):
        """Pid of the agent's (first) job-run child."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            kids = job_run_children(agent.pid)
            if kids:
                return kids[0]
            time.sleep(0.02)
        self.fail("no job-run child appeared")

    def spool_runs(self):
        runs = os.path.join(self.data, "runs")
        try:
            return sorted(n for n in os.listdir(runs) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def open_gates(self, instances):
        """Let the GATED jobs on these instances go on."""
        for inst in instances:
            # The job may not have made its instance directory yet.
            d = os.path.join(self.data, "instances", inst)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "gate"), "w"):
                pass

    def wait_spool_results(self, n, timeout=60):
        """Until exactly n runs sit in the spool, each with its result.json."""
        runs = os.path.join(self.data, "runs")
        deadline = time.time() + timeout
        while True:
            names = self.spool_runs()
            if len(names) == n and all(os.path.exists(os.path.join(runs, r, "result.json"))
                                       for r in names):
                return names
            if time.time() > deadline:
                self.fail(f"wanted {n} finished runs in the spool, have {names}")
            time.sleep(0.05)

    def assert_delivered_once(self, run_id, status=None):
        """Every event 1..lastSeq stored, a result whose lastSeq matches, final status."""
        run = self.cp.run(run_id)
        self.assertIsNotNone(run.result, f"no result for {run_id}")
        last = run.result["lastSeq"]
        self.assertEqual(run.seqs(), list(range(1, last + 1)), f"events of {run_id}")
        posted = [s for post in run.event_posts for s in post]
        # Order: within and across POSTs, seqs never go backwards except for resends.
        first_seen = []
        for s in posted:
            if s not in first_seen:
                first_seen.append(s)
        self.assertEqual(first_seen, sorted(first_seen), f"events of {run_id} out of order")
        if status:
            self.assertEqual(run.result["status"], status, json.dumps(run.result))
            final = run.events[last]
            self.assertEqual(final["status"], status)
        for seq, e in run.events.items():
            self.assertEqual(e["jobRunId"], run_id)
            self.assertEqual(e["seq"], seq)
        return run


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2] != "Z"
    except OSError:
        return False
