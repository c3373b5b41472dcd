"""End to end: agent configuration — bad settings exit 2 with a clear message,
file and environment both work, logs, systemd notifications."""
import json
import os
import signal
import socket
import subprocess
import time
import unittest

from agent_harness import JOBVISOR, AgentTestCase


class BadConfig(AgentTestCase):
    def expect_exit2(self, needle, args=(), **env):
        r = self.run_agent_once(args, **env)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(needle, r.stderr)
        self.assertNotIn(self.TOKEN, r.stderr + r.stdout)
        self.assertEqual(self.cp.poll_count(), 0, "a bad configuration must not start polling")
        return r

    def test_missing_url(self):
        self.expect_exit2("JOBVISOR_URL", URL=None)

    def test_bad_values(self):
        self.expect_exit2("'poll_interval'", POLL_INTERVAL="often")
        self.expect_exit2("'capacity'", CAPACITY="-1")
        self.expect_exit2("logfmt or json", LOG_FORMAT="yaml")
        self.expect_exit2("http:// or https://", URL="gopher://127.0.0.1/")
        self.expect_exit2("not an identifier", AGENT_ID="a/b")
        self.expect_exit2("tls_insecure_loopback", TLS_INSECURE_LOOPBACK="true")

    def test_token_file_readable_by_others(self):
        os.chmod(self.token_file, 0o644)
        r = self.expect_exit2("accessible by group or others")
        self.assertIn("chmod 600", r.stderr)

    def test_token_file_missing(self):
        self.expect_exit2("cannot", TOKEN_FILE=os.path.join(self.tmp, "nope"))

    def test_config_file_errors(self):
        conf = os.path.join(self.tmp, "agent.conf")
        with open(conf, "w") as f:
            f.write("capacity = 2\npoll_intervl = 3\n")
        self.expect_exit2("agent.conf:2: unknown setting 'poll_intervl'", ["--config", conf])
        self.expect_exit2("cannot read config file", ["--config", conf + ".missing"])

    def test_data_dir_unusable(self):
        path = os.path.join(self.tmp, "afile")
        with open(path, "w") as f:
            f.write("x")
        self.expect_exit2("data_dir", DATA_DIR=path)

    def test_second_agent_on_same_data_dir(self):
        p = self.start_agent()
        self.cp.wait(lambda: self.cp.polls, what="first agent polling")
        r = subprocess.run([JOBVISOR, "agent"], env=self.env(), capture_output=True, text=True,
                           timeout=20)
        self.assertEqual(r.returncode, 2)
        self.assertIn("another agent is using data_dir", r.stderr)
        self.assertEqual(self.stop_agent(p), 0)

    def test_unknown_argument(self):
        r = self.run_agent_once(["--bogus"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("jobvisor agent: unknown option '--bogus'", r.stderr)

    def test_check_config(self):
        r = self.run_agent_once(["--check-config"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration is valid", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.data, "runs")), "check changed the data dir")
        p = self.start_agent()
        self.cp.wait(lambda: self.cp.polls, what="agent polling")
        r = self.run_agent_once(["--check-config"])  # beside a running agent
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.run_agent_once(["--check-config"], CAPACITY="0")
        self.assertEqual(r.returncode, 2)
        self.assertEqual(self.stop_agent(p), 0)


class GoodConfig(AgentTestCase):
    def test_file_only_configuration(self):
        conf = os.path.join(self.tmp, "agent.conf")
        with open(conf, "w") as f:
            f.write(f"""# agent settings
url = {self.cp.url}
agent_id = agent-1
token_file = {self.token_file}
data_dir = {self.data}
jobs_dir = "{self.jobs}"
poll_interval = 200ms
poll_jitter = 0
""")
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBVISOR_")}
        logf = open(self.log_path, "w")
        p = subprocess.Popen([JOBVISOR, "agent", "--config", conf], env=env, stdout=logf,
                             stderr=logf, stdin=subprocess.DEVNULL)
        logf.close()
        self.agents.append(p)
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_result(rid)
        self.assertEqual(self.stop_agent(p), 0)

    def test_json_logs_carry_ids(self):
        p = self.start_agent(LOG_FORMAT="json", LOG_LEVEL="info")
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_result(rid)
        self.assertEqual(self.stop_agent(p), 0)
        lines = [json.loads(l) for l in self.log().splitlines() if l.strip()]
        self.assertTrue(lines)
        for obj in lines:
            for key in ("ts", "level", "job_id", "run_id", "msg"):
                self.assertIn(key, obj)
        self.assertTrue(any(o["run_id"] == rid for o in lines))
        self.assertFalse(any(o["level"] == "debug" for o in lines))

    def test_systemd_notify_ready_watchdog_stopping(self):
        path = os.path.join(self.tmp, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.2)
        try:
            env_extra = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
            env = self.env()
            env.update(env_extra)
            logf = open(self.log_path, "a")
            p = subprocess.Popen([JOBVISOR, "agent"], env=env, stdout=logf, stderr=logf,
                                 stdin=subprocess.DEVNULL)
            logf.close()
            self.agents.append(p)
            got = []
            deadline = time.time() + 3
            while time.time() < deadline:
                try:
                    got.append(sock.recv(4096).decode())
                except socket.timeout:
                    pass
            self.assertTrue(any("READY=1" in m for m in got), got)
            self.assertGreaterEqual(sum("WATCHDOG=1" in m for m in got), 5, got)
            self.assertEqual(self.stop_agent(p), 0)
            rest = []
            try:
                while True:
                    rest.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
            self.assertTrue(any("STOPPING=1" in m for m in rest), rest)
        finally:
            sock.close()


if __name__ == "__main__":
    unittest.main()


class Tls(AgentTestCase):
    def setUp(self):
        super().setUp()
        self.cert = os.path.join(self.tmp, "cert.pem")
        self.key = os.path.join(self.tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", self.key, "-out", self.cert], check=True,
                       capture_output=True, timeout=60)
        self.cp.stop()
        from agent_fakecp import FakeCP
        self.cp = FakeCP(token=self.TOKEN, tls=(self.cert, self.key))

    def test_certificate_is_verified(self):
        p = self.start_agent(BACKOFF_MAX="0.5")
        self.wait_log("cannot reach the control plane", timeout=15)
        self.assertEqual(self.cp.poll_count(), 0, "a poll got through an unverified certificate")
        self.assertEqual(self.stop_agent(p), 0)

    def test_ca_file_makes_it_trusted(self):
        p = self.start_agent(TLS_CA_FILE=self.cert)
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_result(rid)
        self.assertEqual(self.stop_agent(p), 0)

    def test_insecure_loopback_skips_verification(self):
        p = self.start_agent(TLS_INSECURE_LOOPBACK="true")
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_result(rid)
        self.assertEqual(self.stop_agent(p), 0)
