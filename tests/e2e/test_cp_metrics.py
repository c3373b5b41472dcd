"""GET /metrics (Prometheus text, admin token) checked by promtool; /healthz and
/readyz without a token; the run counters only go up (retention, give-backs,
restarts)."""
import re
import shutil
import subprocess
import time
import unittest

from cp_harness import ADMIN_TOKEN, ControlPlane, CpTestCase, http

PROMTOOL = shutil.which("promtool")
DAY_MS = 86400 * 1000
NOT_STARTED = {"message": "agent is shutting down", "retryable": True, "reason": "not_started"}


class MetricsMixin:
    def metrics(self):
        r = http(self.cp.url + "/metrics", token=ADMIN_TOKEN)
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"))
        return r.raw.decode()

    def promtool_check(self, text):
        if not PROMTOOL:
            self.skipTest("promtool (Debian package prometheus) is not installed")
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())


class Metrics(MetricsMixin, CpTestCase):

    def value(self, text, pattern):
        m = re.search("^" + pattern + r" ([0-9.e+-]+)$", text, re.M)
        self.assertIsNotNone(m, "no %s in:\n%s" % (pattern, text[:3000]))
        return float(m.group(1))

    def test_health_and_ready_need_no_token(self):
        for path, body in (("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})):
            r = http(self.cp.url + path)
            self.assertEqual((r.status, r.json), (200, body))
        self.assertEqual(http(self.cp.url + "/healthz", "POST", {}).status, 405)
        self.assertEqual(http(self.cp.url + "/healthzz").status, 404)

    def test_metrics_need_the_admin_token(self):
        self.assertEqual(http(self.cp.url + "/metrics").status, 401)
        agent = self.cp.agent()
        self.assertEqual(http(self.cp.url + "/metrics", token=agent.token).status, 403)

    def test_metrics_count_what_happened_and_promtool_accepts_them(self):
        before = self.metrics()
        polls0 = self.value(before, r"jobvisor_poll_request_seconds_count")
        events0 = self.value(before, r"jobvisor_events_stored_total")
        job = self.cp.create_job(type_="BACKUP_INSTANCE")
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 10, "one")
        agent.progress(a, 20, "two")
        agent.result(a["jobRunId"], "COMPLETED", output={})
        # An instance with a state and a stats sample.
        base = self.cp.url + "/v1/agents/%s" % agent.id
        ev = {"seq": 1, "kind": "state", "state": "RUNNING", "pid": 4242, "restarts": 0,
              "timestamp": "2026-01-02T03:04:05.678Z"}
        self.assertEqual(http(base + "/instances/mc-1/events", "POST", {"events": [ev]}, agent.token).status, 200)
        st = {"instanceId": "mc-1", "at": "2026-01-02T03:04:10.000Z", "cpuCores": 0.25,
              "memoryBytes": 123456789, "processes": 3, "dataBytes": None, "uptimeSeconds": 5}
        r = http(base + "/stats", "POST", {"instances": [st]}, agent.token)
        self.assertEqual((r.status, r.json), (200, {"instances": 1}))
        text = self.metrics()
        self.assertEqual(self.value(text, r'jobvisor_jobs\{type="BACKUP_INSTANCE",state="COMPLETED"\}'), 1)
        self.assertGreaterEqual(self.value(text, r"jobvisor_poll_request_seconds_count"), polls0 + 1)
        self.assertEqual(self.value(text, r"jobvisor_events_stored_total"), events0 + 2)
        self.assertGreaterEqual(self.value(text, r'jobvisor_runs_finished_total\{state="COMPLETED"\}'), 1)
        self.assertGreaterEqual(self.value(text, r"jobvisor_agents_online"), 1)
        lbl = r'\{agent="%s",instance="mc-1"' % agent.id
        self.assertEqual(self.value(text, r'jobvisor_instance_state' + lbl + r',state="RUNNING"\}'), 1)
        self.assertEqual(self.value(text, r'jobvisor_instance_cpu_cores' + lbl + r'\}'), 0.25)
        self.assertEqual(self.value(text, r'jobvisor_instance_memory_bytes' + lbl + r'\}'), 123456789)
        self.assertGreaterEqual(self.value(text, r'jobvisor_events_request_seconds_bucket\{le="\+Inf"\}'), 2)
        self.assertIn(job["jobId"], self.cp.api("GET", "/v1/jobs/" + job["jobId"]).raw.decode())
        self.promtool_check(text)


class RunCounters(MetricsMixin, unittest.TestCase):
    """jobvisor_runs_started_total and jobvisor_runs_finished_total are counters
    kept in the database: they count what happened, and neither retention
    deleting the runs, nor a run given back unstarted, nor a restart lowers
    them (Prometheus would read any decrease as a reset)."""

    def setUp(self):
        self.cp = ControlPlane(["--retry-backoff", "0", "--retention-days", "30", "--retention-keep", "0"])
        self.addCleanup(self.cp.close)
        self.cp.start()

    def jobs_left(self):
        return int(self.cp.sql("SELECT count(*) FROM jobs")[0][0])

    def assertCounters(self, want, when):
        self.assertEqual(self.cp.run_counters(), want, "(started, completed, failed, cancelled) " + when)

    def run_the_jobs(self):
        cp, agent = self.cp, self.cp.agent()
        cp.create_job(instance="i-done")
        [a] = agent.take()
        agent.result(a["jobRunId"], "COMPLETED", output={})
        self.assertCounters((1, 1, 0, 0), "after a run completed")
        cp.create_job(instance="i-back", maxAttempts=1)
        [b] = agent.take()
        self.assertCounters((2, 1, 0, 0), "after a second run was given out")
        self.assertEqual(agent.result(b["jobRunId"], "FAILED", error=NOT_STARTED).status, 200)
        self.assertEqual(cp.job(b["jobId"])["status"], "QUEUED")
        self.assertCounters((2, 1, 0, 0), "after the run was given back unstarted")
        [b2] = agent.take()
        self.assertEqual(b2["jobRunId"], b["jobRunId"])
        self.assertCounters((3, 1, 0, 0), "after the run given back was given out again")
        agent.result(b["jobRunId"], "FAILED", error={"message": "disk full", "retryable": False})
        cp.create_job(instance="i-retry", maxAttempts=2)
        [c] = agent.take()
        agent.result(c["jobRunId"], "FAILED", error={"message": "flaky", "retryable": True})
        [c2] = agent.take()
        self.assertEqual(c2["attempt"], 2)
        agent.result(c2["jobRunId"], "COMPLETED", output={})
        self.assertCounters((5, 2, 2, 0), "after a failed run, and a retried one")
        queued = cp.create_job(instance="i-cancel", agent=cp.second_agent)
        self.assertIn(cp.api("POST", "/v1/jobs/%s/cancel" % queued["jobId"]).status, (200, 202))
        cp.create_job(instance="i-stop")
        [d] = agent.take()
        self.assertIn(cp.api("POST", "/v1/jobs/%s/cancel" % d["jobId"]).status, (200, 202))
        agent.result(d["jobRunId"], "CANCELLED")
        self.assertCounters((6, 2, 2, 2), "after a queued and a running run were cancelled")

    def test_counters_only_go_up(self):
        self.run_the_jobs()
        want = self.cp.run_counters()
        # Retention deletes the finished jobs once they are old enough.
        self.cp.sql("UPDATE jobs SET updated_at = updated_at - ?", (40 * DAY_MS,))
        deadline = time.monotonic() + 60
        while self.jobs_left() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.jobs_left(), 0, "retention deleted every job")
        self.assertCounters(want, "after retention deleted every run")
        self.cp.restart()
        self.assertCounters(want, "after a restart")
        self.cp.create_job(instance="i-after")
        agent = self.cp.agent()
        [e] = agent.take()
        agent.result(e["jobRunId"], "COMPLETED", output={})
        self.assertEqual(self.cp.run_counters(), (want[0] + 1, want[1] + 1, want[2], want[3]))
        self.promtool_check(self.metrics())


if __name__ == "__main__":
    unittest.main()
