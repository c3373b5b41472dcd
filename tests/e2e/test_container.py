"""The container sidecar, checked without a container engine: the agent configured only by
JOBVISOR_* environment variables (no config file), JSON log lines, a job through the real
jobvisor-cp, and a clean exit 0 on SIGTERM (what `docker stop` sends)."""
import json
import os
import signal
import subprocess
import tempfile
import time
import unittest

from cp_harness import AGENT_TOKENS, ControlPlane

JOBVISOR = os.environ["JOBVISOR_BIN"]
DOCKERFILE = os.path.join(os.environ["JV_SOURCE_DIR"], "examples", "container", "Dockerfile")


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

    def test_dockerfile_uses_debian_packages_and_env_configuration(self):
        with open(DOCKERFILE) as f:
            text = f.read()
        self.assertIn("FROM debian:", text)
        self.assertIn("JOBVISOR_LOG_FORMAT=json", text)
        self.assertIn("HEALTHCHECK", text)
        self.assertIn('"jobvisor", "agent"', text)
        self.assertNotIn("curl -", text)  # nothing fetched outside the package archive
        # the health check command works against a fresh (empty) data volume
        os.makedirs(self.env["JOBVISOR_DATA_DIR"])
        p = subprocess.run([JOBVISOR, "status", "--json", "--data-dir", self.env["JOBVISOR_DATA_DIR"]],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        json.loads(p.stdout)


if __name__ == "__main__":
    unittest.main()
