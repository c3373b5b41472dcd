"""Several control-plane replicas: the real agent with `url = A,B` fails over.

Two real `jobvisor-cp` processes share one database on different ports (the
reference control plane's replicas): a SQLite file, or with
JV_CP_BACKEND=postgresql (the e2e-pg.test_agent_failover copy ctest
registers) one PostgreSQL database; a replica is killed with SIGKILL while
jobs run and wait, and everything is checked through the survivor's API and
the shared database. A tiny http.server stands in for a replica that
answers 503 (fail over) or 401 (do not: a refused token is not a replica
problem)."""
import datetime
import http.server
import json
import os
import re
import signal
import subprocess
import threading
import time
import unittest

from agent_harness import JOBVISOR, AgentTestCase
from cp_harness import AGENT_TOKENS, ControlPlane

CP_BIN = os.environ.get("JOBVISOR_CP_BIN", "")
TYPES = "SLEEPY,CHATTY,GATED,WAITER"
POLL_INTERVAL = 1.0  # the agent's poll_interval in these tests, seconds


class StatusServer:
    """Answers every request with one fixed status and counts the requests."""

    def __init__(self, status, body=b'{"error":"unavailable"}'):
        self.requests = 0
        self.paths = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                outer.requests += 1
                outer.paths.append((time.time(), self.path))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def log_time(line):
    """Wall-clock seconds of one agent log line (logfmt ts=...Z)."""
    m = re.search(r"ts=(\S+)Z", line)
    return datetime.datetime.fromisoformat(m.group(1)).replace(
        tzinfo=datetime.timezone.utc).timestamp()


@unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN), "needs JOBVISOR_CP_BIN")
class Failover(AgentTestCase):
    AGENT = "agent-1"
    CP_ARGS = ["--job-types", TYPES, "--poll-interval", "1", "--retry-backoff", "1",
               "--ack-seconds", "10", "--max-wait", "20"]

    def setUp(self):
        super().setUp()
        self.cp.stop()  # the fake is not used here
        self.a = ControlPlane(self.CP_ARGS).start()
        self.addCleanup(self.a.close)
        with open(self.token_file, "w") as f:
            f.write(AGENT_TOKENS[self.AGENT] + "\n")
        os.chmod(self.token_file, 0o600)

    def replica(self):
        """A second jobvisor-cp on the same database and token files, another port."""
        b = ControlPlane(self.CP_ARGS, tmpdir=None)
        b.db, b.admin_file, b.agents_file = self.a.db, self.a.admin_file, self.a.agents_file
        b.start()
        self.addCleanup(b.close)
        return b

    def status_server(self, status, body=b'{"error":"unavailable"}'):
        s = StatusServer(status, body)
        self.addCleanup(s.close)
        return s

    def agent(self, *urls, args=(), **overrides):
        env = dict(URL=",".join(urls), AGENT_ID=self.AGENT, POLL_INTERVAL=POLL_INTERVAL,
                   POLL_JITTER=0, BACKOFF_MAX=5)
        env.update(overrides)
        return self.start_agent(args, **env)

    def state(self):
        with open(os.path.join(self.data, "agent-state.json")) as f:
            return json.load(f)

    def health_json(self):
        p = subprocess.run([JOBVISOR, "health", "--data-dir", self.data, "--json"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        return json.loads(p.stdout)

    def wait_for(self, pred, what, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(0.05)
        self.fail(f"timed out waiting for {what}\n{self.log()[-3000:]}")

    def events(self, run_id):
        """The run's stored events, read from the shared database (either backend)."""
        return [json.loads(row[0]) for row in self.a.sql(
            "SELECT body FROM events WHERE run_id = ? ORDER BY seq", (run_id,))]

    def started_runs(self):
        """run_id -> how many times the agent started it."""
        seen = {}
        for line in self.log().splitlines():
            m = re.search(r"run_id=(\S+) msg=\"starting ", line)
            if m:
                seen[m.group(1)] = seen.get(m.group(1), 0) + 1
        return seen

    def assert_complete_once(self, cp, job_id, lines):
        """One COMPLETED run; its events 1..lastSeq stored once each, with every log line.
        A run the agent never saw (an assignment lost with the killed replica's
        answer) may precede it: the ack deadline gives the job a new run."""
        job = cp.job(job_id)
        self.assertEqual(job["status"], "COMPLETED", json.dumps(job))
        done = [r for r in job["runs"] if r["status"] == "COMPLETED"]
        self.assertEqual(len(done), 1, json.dumps(job))
        started = self.started_runs()
        for r in job["runs"]:
            if r is not done[0]:
                self.assertNotIn(r["jobRunId"], started, "a second run of a job the agent ran")
        run = done[0]
        events = self.events(run["jobRunId"])
        seqs = [e["seq"] for e in events]
        self.assertEqual(seqs, list(range(1, run["lastSeq"] + 1)), run["jobRunId"])
        self.assertEqual(events[-1]["status"], "COMPLETED")
        self.assertEqual(sum(1 for e in events if e["kind"] == "log"), lines, run["jobRunId"])
        self.assertEqual(run["output"], {"done": True})
        return len(job["runs"])

    def test_kill9_one_replica_under_load_loses_nothing(self):
        b = self.replica()
        p = self.agent(self.a.url, b.url, CAPACITY=2, POLL_WAIT=10)
        lines = 25
        jobs = [self.a.create_job(agent=self.AGENT, instance=f"k{n}", type_="CHATTY",
                                  params={"lines": lines})["jobId"] for n in range(10)]
        # Work is under way through A: some done, some running, some queued.
        self.wait_for(lambda: sum(self.a.job(j)["status"] == "COMPLETED" for j in jobs) >= 2,
                      "two jobs completed through A")
        self.assertEqual(self.state()["url"], self.a.url)
        statuses = [self.a.job(j)["status"] for j in jobs]
        kill_at = time.time()
        self.a.stop(signal.SIGKILL, check=False)
        print("at the kill:", {st: statuses.count(st) for st in set(statuses)})
        # Under load: runs in flight and jobs still waiting for the agent.
        self.assertGreaterEqual(statuses.count("QUEUED"), 1, statuses)
        self.assertGreaterEqual(len(jobs) - statuses.count("COMPLETED"), 3, statuses)
        self.wait_log("switching to " + b.url)
        # The first poll answered after the kill came from B (A is dead).
        answered = self.wait_for(lambda: [log_time(ln) for ln in self.log().splitlines()
                                          if "poll answered in" in ln and log_time(ln) > kill_at],
                                 "a poll answered by B")
        took = answered[0] - kill_at
        print("switch-over: first poll answered by B %.3f s after A was killed" % took)
        self.assertLess(took, 2 * POLL_INTERVAL)
        runs = [b.wait_job(j, lambda job: job["status"] == "COMPLETED", 90, f"{j} COMPLETED")
                for j in jobs]
        self.assertEqual(len(runs), len(jobs))
        total_runs = sum(self.assert_complete_once(b, j, lines) for j in jobs)
        print("runs for %d jobs: %d" % (len(jobs), total_runs))
        self.assertTrue(all(n == 1 for n in self.started_runs().values()), self.started_runs())
        self.assertEqual(self.state()["url"], b.url)
        self.assertEqual(self.health_json()["url"], b.url)
        self.assertEqual(self.stop_agent(p), 0)

    def test_parked_long_poll_on_a_killed_replica_moves_at_once(self):
        b = self.replica()
        p = self.agent(self.a.url, b.url, POLL_WAIT=20)
        # Idle: the agent's long poll is parked on A.
        self.wait_log("started: url=")
        time.sleep(1.5)
        kill_at = time.time()
        self.a.stop(signal.SIGKILL, check=False)
        self.wait_log("switching to " + b.url, timeout=5)
        jid = b.create_job(agent=self.AGENT, instance="lp", type_="SLEEPY",
                           params={"steps": 1, "delay": 0.01})["jobId"]
        b.wait_job(jid, lambda j: j["status"] in ("RUNNING", "COMPLETED"), 10, "job taken")
        took = time.time() - kill_at
        print("parked long poll: job created on B taken %.3f s after A was killed" % took)
        self.assertLess(took, 2 * POLL_INTERVAL)
        b.wait_job(jid, lambda j: j["status"] == "COMPLETED", 20, "job completed")
        self.assertEqual(self.stop_agent(p), 0)

    def test_short_polls_move_at_the_next_poll(self):
        b = self.replica()
        p = self.agent(self.a.url, b.url, POLL_WAIT=0)
        self.wait_log("poll answered in")
        kill_at = time.time()
        self.a.stop(signal.SIGKILL, check=False)
        # The next poll finds A refusing connections and goes straight on to B.
        answered = self.wait_for(lambda: [log_time(ln) for ln in self.log().splitlines()
                                          if "poll answered in" in ln and log_time(ln) > kill_at],
                                 "a poll answered by B", timeout=10)
        took = answered[0] - kill_at
        print("short polls: first poll answered by B %.3f s after A was killed" % took)
        self.assertLess(took, 2 * POLL_INTERVAL)
        self.assertIn("switching to " + b.url, self.log())
        self.assertEqual(self.stop_agent(p), 0)

    def test_a_replica_answering_503_is_passed_over_and_not_retried(self):
        bad = self.status_server(503)
        p = self.agent(bad.url, self.a.url)
        jid = self.a.create_job(agent=self.AGENT, instance="s1", type_="SLEEPY",
                                params={"steps": 2, "delay": 0.05})["jobId"]
        self.a.wait_job(jid, lambda j: j["status"] == "COMPLETED", 30, "job completed")
        self.assertGreaterEqual(bad.requests, 1)
        self.assertIn(f"control plane {bad.url} failed (HTTP 503); switching to {self.a.url}",
                      self.log())
        self.wait_for(lambda: self.health_json()["url"] == self.a.url, "health shows the replica")
        # Sticky: the healthy replica stays in use, the 503 one is not tried again.
        before = bad.requests
        time.sleep(4 * POLL_INTERVAL)
        self.assertEqual(bad.requests, before)
        self.assertEqual(self.state()["url"], self.a.url)
        self.assertEqual(self.stop_agent(p), 0)

    def test_4xx_is_not_a_replica_failure(self):
        refusing = self.status_server(401, b'{"error":"unknown agent or wrong token"}')
        other = self.status_server(503)
        p = self.agent(refusing.url, other.url)
        self.wait_for(lambda: refusing.requests >= 3, "three polls to the first URL")
        self.assertIn("HTTP 401", self.log())
        self.assertEqual(other.requests, 0, self.log()[-2000:])
        self.assertNotIn("switching to", self.log())
        self.assertEqual(self.wait_for(self.state, "the state file")["url"], refusing.url)
        self.assertEqual(self.stop_agent(p), 0)

    def test_every_url_failing_alternates_at_the_backoff_pace(self):
        down1, down2 = self.status_server(503), self.status_server(503)
        p = self.agent(down1.url, down2.url, BACKOFF_MAX=2)
        self.wait_for(lambda: down2.requests >= 1, "the second URL tried")
        start = time.time()
        time.sleep(6)
        window = [(t, path) for s in (down1, down2) for t, path in s.paths if start <= t < start + 6]
        polls = [t for t, path in window if path.endswith("/poll")]
        # One immediate move per round; after that every poll waits at least
        # poll_interval (1 s) and backs off towards backoff_max (2 s), and the
        # other request kinds (job types, instance reports) back off too: no spinning.
        self.assertGreaterEqual(len(polls), 2, window)
        self.assertLessEqual(len(polls), 7, window)
        self.assertLessEqual(len(window), 21, window)
        self.assertGreaterEqual(down1.requests, 2)
        self.assertGreaterEqual(down2.requests, 2)
        self.assertEqual(self.stop_agent(p), 0)

    def test_reload_with_a_new_list_keeps_the_url_in_use(self):
        bad = self.status_server(503)
        conf = os.path.join(self.tmp, "agent.conf")
        with open(conf, "w") as f:
            f.write(f"url = {bad.url},{self.a.url}\n")
        p = self.agent(URL=None, args=["--config", conf])
        self.wait_log("switching to " + self.a.url)
        b = self.replica()
        # A reordered list that still holds A: the agent stays on A, B is next.
        with open(conf, "w") as f:
            f.write(f"url = {bad.url}, {self.a.url}, {b.url}\n")
        p.send_signal(signal.SIGHUP)
        self.wait_log("configuration reloaded")
        before = bad.requests
        time.sleep(2 * POLL_INTERVAL)
        self.assertEqual(bad.requests, before)
        self.a.stop(signal.SIGKILL, check=False)
        self.wait_log("switching to " + b.url, timeout=10)
        jid = b.create_job(agent=self.AGENT, instance="rl", type_="SLEEPY",
                           params={"steps": 1, "delay": 0.01})["jobId"]
        b.wait_job(jid, lambda j: j["status"] == "COMPLETED", 20, "job completed on B")
        self.assertEqual(self.stop_agent(p), 0)

    def test_bad_url_lists_are_configuration_errors(self):
        cases = {
            f"{self.a.url},,{self.a.url}x": "'url': URL 2 of the list: empty (a stray ',')",
            f"{self.a.url},": "'url': URL 2 of the list: empty",
            f"{self.a.url},ftp://127.0.0.1:21": "URL 2 of the list: 'ftp://127.0.0.1:21' must start with",
            f"{self.a.url},{self.a.url}/": "URL 2 of the list ('%s') repeats URL 1" % self.a.url,
        }
        for url, needle in cases.items():
            r = self.run_agent_once(["--check-config"], URL=url, AGENT_ID=self.AGENT)
            self.assertEqual(r.returncode, 2, url + "\n" + r.stderr)
            self.assertIn(needle, r.stderr)
        conf = os.path.join(self.tmp, "agent.conf")
        with open(conf, "w") as f:
            f.write(f"url = {self.a.url} , http://127.0.0.1:1\n")
        r = self.run_agent_once(["--config", conf, "--check-config"], URL=None, AGENT_ID=self.AGENT)
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
