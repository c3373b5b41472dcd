"""GET /metrics (Prometheus text, admin token) checked by promtool; /healthz and
/readyz without a token."""
import re
import shutil
import subprocess
import unittest

from cp_harness import ADMIN_TOKEN, CpTestCase, http

PROMTOOL = shutil.which("promtool")


class Metrics(CpTestCase):
    def metrics(self):
        r = http(self.cp.url + "/metrics", token=ADMIN_TOKEN)
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"))
        return r.raw.decode()

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
        if not PROMTOOL:
            self.skipTest("promtool (Debian package prometheus) is not installed")
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())


if __name__ == "__main__":
    unittest.main()
