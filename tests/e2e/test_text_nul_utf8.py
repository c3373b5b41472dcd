"""NUL never cuts a string and every text emitted is valid UTF-8 (issue 19, item 6).

cJSON's strings are C strings: before the fix "victim\\u0000../../etc" became
"victim", "job1\\u0000x" became "job1" (idempotency keys collided), and a file
named world\\xff.dat reached GET /v1/jobs, event lists and WebSocket frames as
raw bytes. Here the control plane refuses such identifiers (400), the agent
fails such assignments with a clear error, `jobvisor run --params` refuses
them, and a job that meets a file name with \\xff or a NUL in its own strings
leaves only valid UTF-8 behind, with U+FFFD where a byte was invalid."""
import json
import os
import sqlite3
import subprocess
import time
import unittest

from agent_harness import JOBVISOR, AgentTestCase
from cp_harness import ADMIN_TOKEN, AGENT_TOKENS, ControlPlane, http
from cp_ws import WebSocket

CP_BIN = os.environ.get("JOBVISOR_CP_BIN", "")
REPLACEMENT = "\ufffd"

# Meets a file whose name is not UTF-8 and puts it, and a NUL, everywhere a
# job can: logs, steps, progress, output, and (when asked) the error.
BADNAMES = r"""return {
  type = "BADNAMES",
  params = { fail = "boolean?" },
  run = function(job)
    fs.mkdir("data")
    fs.write("data/world\xff.dat", "x")
    local names = {}
    for _, e in ipairs(fs.list("data")) do
      names[#names + 1] = e.name
      log.info("found " .. e.name)
      job.step("saw " .. e.name)
    end
    job.progress(50, "nul\0inside")
    if job.params.fail then error("cannot use " .. names[1]) end
    return { files = names, nul = "a\0b" }
  end,
}"""


def strict(data):
    """Decode as UTF-8 or fail the test with where it broke."""
    if isinstance(data, str):
        return data
    return data.decode("utf-8")  # raises UnicodeDecodeError on any bad byte


@unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN), "needs JOBVISOR_CP_BIN")
class ControlPlaneRefusesCutStrings(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cp = ControlPlane().start()

    @classmethod
    def tearDownClass(cls):
        cls.cp.close()

    def create_raw(self, raw):
        return http(self.cp.url + "/v1/jobs", "POST", raw=raw, token=ADMIN_TOKEN)

    def job_count(self):
        return len(self.cp.api("GET", "/v1/jobs?limit=500").json["jobs"])

    def test_nul_anywhere_in_an_identifier_or_param_is_400(self):
        before = self.job_count()
        cases = [
            ('{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"victim\\u0000../../etc","params":{}}',
             "instanceId"),
            ('{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"i1","jobId":"job1\\u0000x","params":{}}',
             "jobId"),
            ('{"type":"RESTORE_BACKUP","agentId":"agent-1","instanceId":"i1","params":{"backupId":"b0\\u0000x"}}',
             "params.backupId"),
            ('{"type":"BACKUP_INSTANCE","agentId":"agent-1\\u0000","instanceId":"i1","params":{}}', "agentId"),
            ('{"type":"BACKUP_INSTANCE\\u0000","agentId":"agent-1","instanceId":"i1","params":{}}', "type"),
            ('{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"i1","params":{},"instanceId\\u0000":1}',
             "instanceId"),
        ]
        for raw, field in cases:
            r = self.create_raw(raw.encode())
            self.assertEqual(r.status, 400, (raw, r))
            self.assertIn(field, r.json["error"], r)
            self.assertIn("NUL", r.json["error"], r)
        self.assertEqual(self.job_count(), before, "a job was created from a cut string")
        # The uncut id is still free: it names a new job, not one of the above.
        r = self.create_raw(b'{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"i1",'
                            b'"jobId":"job1","params":{}}')
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json["jobId"], "job1")

    def test_invalid_utf8_in_a_body_is_400(self):
        for raw, field in [
            (b'{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"i1","params":{"note":"world\xff.dat"}}',
             "params.note"),
            (b'{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"i\xc0\xaf","params":{}}', "instanceId"),
            (b'{"type":"BACKUP_INSTANCE","agentId":"agent-1","instanceId":"i1","params":{"s":"\\ud800"}}', None),
        ]:
            r = self.create_raw(raw)
            self.assertEqual(r.status, 400, (raw, r))
            if field:
                self.assertIn(field, r.json["error"])
                self.assertIn("not valid UTF-8", r.json["error"])

    def test_agent_events_with_nul_or_bad_bytes_are_400_and_change_nothing(self):
        self.cp.fresh_agents()
        job = self.cp.create_job(params={})
        agent = self.cp.agent()
        a = agent.take()[0]
        self.assertEqual(agent.progress(a, 10, "fine").status, 200)
        ev = {"seq": 2, "kind": "log", "jobId": a["jobId"], "jobRunId": a["jobRunId"],
              "instanceId": a["instanceId"], "status": "RUNNING", "message": "x",
              "timestamp": "2026-01-02T03:04:05.678Z"}
        body = json.dumps({"events": [ev]}).replace('"message": "x"', '"message": "cut\\u0000here"')
        r = http(self.cp.url + "/v1/runs/%s/events" % a["jobRunId"], "POST", raw=body.encode(),
                 token=agent.token)
        self.assertEqual(r.status, 400, r)
        self.assertIn("events[0].message", r.json["error"])
        body = json.dumps({"events": [ev]}).encode().replace(b'"message": "x"', b'"message": "w\xff"')
        r = http(self.cp.url + "/v1/runs/%s/events" % a["jobRunId"], "POST", raw=body, token=agent.token)
        self.assertEqual(r.status, 400, r)
        events = self.cp.api("GET", "/v1/runs/%s/events" % a["jobRunId"]).json["events"]
        self.assertEqual([e["seq"] for e in events], [1])
        self.assertEqual(self.cp.job(job["jobId"])["status"], "RUNNING")

    def test_rows_stored_before_the_fix_are_served_as_valid_utf8(self):
        job = self.cp.create_job(params={"note": "x"})
        con = sqlite3.connect(self.cp.db, timeout=10)
        try:
            with con:  # as an older jobvisor-cp stored it: raw bytes
                con.execute("UPDATE jobs SET params = CAST(? AS TEXT) WHERE job_id = ?",
                            (b'{"note":"old \xff bytes"}', job["jobId"]))
        finally:
            con.close()
        for path in ("/v1/jobs/" + job["jobId"], "/v1/jobs?limit=500"):
            r = self.cp.api("GET", path)
            self.assertEqual(r.status, 200, r)
            self.assertIn("old " + REPLACEMENT + " bytes", strict(r.raw))

    @staticmethod
    def next_error(w):
        """The next {"type":"error"} message (snapshots and changes may come first)."""
        while True:
            m = w.recv_json()
            if m.get("type") == "error":
                return m["error"]

    def test_websocket_frames_with_nul_or_bad_bytes_are_refused(self):
        url = self.cp.url.replace("http://", "ws://") + "/v1/ws"
        w = WebSocket(url, headers={"Authorization": "Bearer " + ADMIN_TOKEN})
        try:
            self.assertEqual(w.recv_json()["type"], "hello")
            w.send_text('{"op":"events\\u0000x","jobRunId":"r1"}')
            self.assertIn("'op' contains a NUL character", self.next_error(w))
            w.send_frame(0x1, b'{"op":"events","jobRunId":"r\xff"}')
            self.assertIn("'jobRunId' is not valid UTF-8", self.next_error(w))
        finally:
            w.close()
        self.assertEqual(self.cp.api("GET", "/v1/agents").status, 200)


class AgentRefusesCutStrings(AgentTestCase):
    def test_assignment_with_nul_fails_with_a_clear_error(self):
        p = self.start_agent(CAPACITY=4)
        cases = {
            "r-inst": ({"instanceId": "victim\x00../../etc"}, "instanceId"),
            "r-param": ({"instanceId": "i2", "params": {"steps": 1, "note": "b0\x00x"}}, "params.note"),
            "r-key": ({"instanceId": "i3", "params": {"steps\x00x": 1}}, "params"),
        }
        for rid, (extra, _) in cases.items():
            a = {"jobId": "j-" + rid, "jobRunId": rid, "attempt": 1, "type": "SLEEPY",
                 "instanceId": "i", "params": {}}
            a.update(extra)
            self.cp.add_raw(a, run_id=rid)
        for rid, (_, field) in cases.items():
            res = self.cp.wait_result(rid, timeout=20)
            self.assertEqual(res["status"], "FAILED", res)
            self.assertIn(field, res["error"]["message"])
            self.assertIn("NUL", res["error"]["message"])
            self.assertFalse(res["error"]["retryable"])
        self.assertFalse(os.path.exists(os.path.join(self.data, "instances", "victim")))
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.assertEqual(self.cp.wait_result(rid)["status"], "COMPLETED")
        self.assertIsNone(p.poll(), "agent died")

    def test_run_params_with_nul_are_refused(self):
        r = subprocess.run([JOBVISOR, "run", "SLEEPY", "--instance", "i1", "--data-dir", self.data,
                            "--jobs-dir", self.jobs, "--params", '{"steps":1,"note":"b0\\u0000x"}'],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("note", r.stderr)
        self.assertIn("NUL", r.stderr)

    def test_run_json_output_is_valid_utf8(self):
        with open(os.path.join(self.jobs, "badnames.lua"), "w") as f:
            f.write(BADNAMES)
        r = subprocess.run([JOBVISOR, "run", "BADNAMES", "--instance", "i1", "--data-dir", self.data,
                            "--jobs-dir", self.jobs, "--json"], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [json.loads(strict(line)) for line in r.stdout.splitlines()]
        self.assertEqual(lines[-1]["output"]["files"], ["world" + REPLACEMENT + ".dat"])
        self.assertEqual(lines[-1]["output"]["nul"], "a" + REPLACEMENT + "b")
        strict(r.stderr)


@unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN), "needs JOBVISOR_CP_BIN")
class EverythingEmittedIsValidUtf8(AgentTestCase):
    AGENT = "agent-1"

    def setUp(self):
        super().setUp()
        self.cp.stop()
        with open(os.path.join(self.jobs, "badnames.lua"), "w") as f:
            f.write(BADNAMES)
        cp_dir = os.path.join(self.tmp, "cp")
        os.makedirs(cp_dir)
        self.real = ControlPlane(["--job-types", "BADNAMES"], tmpdir=cp_dir).start()
        with open(self.token_file, "w") as f:
            f.write(AGENT_TOKENS[self.AGENT] + "\n")

    def tearDown(self):
        for p in self.agents:
            if p.poll() is None:
                self.stop_agent(p)
        try:
            self.real.stop()
        finally:
            super().tearDown()

    def env(self, **overrides):
        env = super().env(**overrides)
        env["JOBVISOR_URL"] = self.real.url
        env["JOBVISOR_AGENT_ID"] = self.AGENT
        return env

    def raw(self, path):
        r = http(self.real.url + path, token=ADMIN_TOKEN)
        self.assertEqual(r.status, 200, r)
        return r.raw

    def test_file_names_with_bad_bytes_reach_api_and_websocket_as_valid_utf8(self):
        w = WebSocket(self.real.url.replace("http://", "ws://") + "/v1/ws",
                      headers={"Authorization": "Bearer " + ADMIN_TOKEN})
        frames = []
        try:
            w.recv(timeout=10)  # hello
            self.start_agent()
            ok = self.real.create_job(agent=self.AGENT, instance="i1", type_="BADNAMES")["jobId"]
            bad = self.real.create_job(agent=self.AGENT, instance="i2", type_="BADNAMES",
                                       params={"fail": True})["jobId"]
            self.real.wait_job(ok, lambda j: j["status"] == "COMPLETED", 60, "COMPLETED")
            self.real.wait_job(bad, lambda j: j["status"] == "FAILED", 60, "FAILED")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    op, data = w.recv(timeout=1)
                except (TimeoutError, OSError):
                    break
                frames.append(data)
        finally:
            w.close()
        self.assertGreater(len(frames), 6)
        for data in frames:
            strict(data)
        texts = b"".join(frames).decode()
        self.assertIn("world" + REPLACEMENT + ".dat", texts)

        listing = json.loads(strict(self.raw("/v1/jobs")))
        job = json.loads(strict(self.raw("/v1/jobs/" + ok)))
        run = job["runs"][0]
        self.assertEqual(run["output"], {"files": ["world" + REPLACEMENT + ".dat"], "nul": "a" + REPLACEMENT + "b"})
        events = json.loads(strict(self.raw("/v1/runs/%s/events" % run["jobRunId"])))["events"]
        messages = [e.get("message") or "" for e in events]
        self.assertIn("found world" + REPLACEMENT + ".dat", messages)
        self.assertIn("nul" + REPLACEMENT + "inside", messages)
        failed = json.loads(strict(self.raw("/v1/jobs/" + bad)))["runs"][0]
        self.assertIn("cannot use world" + REPLACEMENT + ".dat", failed["error"]["message"])
        self.assertTrue(any(j["jobId"] == ok for j in listing["jobs"]))
        # The agent's own log lines too.
        with open(self.log_path, "rb") as f:
            log = strict(f.read())
        self.assertIn("world" + REPLACEMENT + ".dat", log)


if __name__ == "__main__":
    unittest.main()
