"""Job type schemas end to end: a real agent reports the job types it can run
(built-in scripts and the admin's jobs_dir, with params, description,
cancellable) to a real jobvisor-cp, again when jobs_dir changes; the control
plane serves them at GET /v1/agents/{id}/job-types and checks POST /v1/jobs
against them. An agent whose control plane predates job types (404) keeps
working."""
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from agent_harness import AgentTestCase, agent_env, JOBVISOR
from cp_harness import AGENT_TOKENS, CpTestCase, http

CUSTOM = """return {
  type = "CUSTOM_THING",
  description = "Counts to a number.",
  params = { count = "integer", label = "string?" },
  run = function(job) return { counted = job.params.count, label = job.params.label } end,
}
"""

NOT_CANCELLABLE = """return {
  type = "HOLD_STILL",
  cancellable = false,
  why = "it must finish what it starts",
  run = function(job) return {} end,
}
"""


@unittest.skipUnless(JOBVISOR, "needs JOBVISOR_BIN")
class JobTypes(CpTestCase):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="jv-types-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.data = os.path.join(self.tmp, "data")
        self.jobs = os.path.join(self.tmp, "jobs")
        os.makedirs(self.data)
        os.makedirs(self.jobs)
        self.write("custom_thing.lua", CUSTOM)
        self.write("hold_still.lua", NOT_CANCELLABLE)
        self.agent_id = self.cp.default_agent
        tok = os.path.join(self.tmp, "token")
        fd = os.open(tok, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (AGENT_TOKENS[self.agent_id] + "\n").encode())
        os.close(fd)
        self.log_path = os.path.join(self.tmp, "agent.log")
        env = agent_env(self.cp.url, tok, self.data, self.jobs, agent_id=self.agent_id, LOG_LEVEL="info")
        with open(self.log_path, "w") as logf:
            self.proc = subprocess.Popen([JOBVISOR, "agent"], env=env, stdout=logf, stderr=logf,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.addCleanup(self.stop_agent)

    def stop_agent(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        log = open(self.log_path, errors="replace").read()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, log)

    def write(self, name, text):
        tmp = os.path.join(self.jobs, "." + name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, os.path.join(self.jobs, name))

    def types(self):
        r = self.cp.api("GET", "/v1/agents/%s/job-types" % self.agent_id)
        self.assertEqual(r.status, 200, r)
        return r.json

    def wait_types(self, pred, what, timeout=30):
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.types()
            if got["reported"] and pred({t["type"]: t for t in got["jobTypes"]}, got):
                return got
            time.sleep(0.1)
        self.fail("job types never showed %s: %r\nagent log:\n%s" % (what, got, open(self.log_path).read()[-3000:]))

    def create(self, type_, params):
        return self.cp.api("POST", "/v1/jobs", {"type": type_, "agentId": self.agent_id,
                                                "instanceId": "inst-1", "params": params})

    def test_reported_schemas_and_params_checked_on_create(self):
        got = self.wait_types(lambda t, g: "CUSTOM_THING" in t, "CUSTOM_THING")
        by = {t["type"]: t for t in got["jobTypes"]}
        self.assertIsNotNone(got["reportedAt"])
        self.assertEqual(by["BACKUP_INSTANCE"]["source"], "builtin")
        self.assertTrue(by["BACKUP_INSTANCE"]["cancellable"])
        self.assertIn("manifest", by["BACKUP_INSTANCE"]["description"])
        self.assertEqual(by["BACKUP_INSTANCE"]["params"]["backupId"], {"type": "string", "required": False})
        self.assertEqual(by["VERIFY_BACKUP"]["params"]["backupId"], {"type": "string", "required": True})
        self.assertEqual(by["CUSTOM_THING"], {
            "type": "CUSTOM_THING", "description": "Counts to a number.", "cancellable": True,
            "source": "jobs_dir",
            "params": {"count": {"type": "integer", "required": True},
                       "label": {"type": "string", "required": False}}})
        self.assertEqual(by["HOLD_STILL"]["cancellable"], False)
        self.assertEqual(by["HOLD_STILL"]["why"], "it must finish what it starts")

        r = self.create("BACKUP_INSTANCE", {"bakupId": "nightly"})
        self.assertEqual(r.status, 400, r)
        self.assertIn("unknown parameter 'bakupId' (did you mean 'backupId'?)", r.json["error"])
        r = self.create("VERIFY_BACKUP", {"backupId": 5})
        self.assertEqual(r.status, 400, r)
        self.assertIn("parameter 'backupId' must be string, got number", r.json["error"])
        r = self.create("VERIFY_BACKUP", {})
        self.assertEqual(r.status, 400, r)
        self.assertIn("missing required parameter 'backupId' (string)", r.json["error"])
        r = self.create("CUSTOM_THING", {"count": 2.5})
        self.assertEqual(r.status, 400, r)
        self.assertIn("parameter 'count' must be integer, got number", r.json["error"])
        r = self.create("NO_SUCH_TYPE", {})
        self.assertEqual(r.status, 400, r)
        self.assertIn("agent '%s' has no job type 'NO_SUCH_TYPE'" % self.agent_id, r.json["error"])
        listed = self.cp.api("GET", "/v1/jobs?agentId=" + self.agent_id).json["jobs"]
        self.assertEqual(listed, [], "nothing refused was stored")

        # A type only the admin's jobs_dir has (not a built-in name, no --job-types)
        # is accepted because the agent reported it, and runs there.
        r = self.create("CUSTOM_THING", {"count": 3, "label": "x"})
        self.assertEqual(r.status, 201, r)
        job = self.cp.wait_job(r.json["jobId"], lambda j: j["status"] == "COMPLETED", timeout=60,
                               what="CUSTOM_THING completed")
        self.assertEqual(job["runs"][-1]["output"], {"counted": 3, "label": "x"})

    def test_jobs_dir_changes_are_reported_again(self):
        self.wait_types(lambda t, g: "CUSTOM_THING" in t, "CUSTOM_THING")
        self.write("new_type.lua", 'return { type = "NEW_TYPE", params = { n = "number" }, '
                                   'run = function(job) return {} end }\n')
        self.wait_types(lambda t, g: "NEW_TYPE" in t, "NEW_TYPE after it was added")
        r = self.create("NEW_TYPE", {"m": 1})
        self.assertEqual(r.status, 400, r)
        self.assertIn("unknown parameter 'm' (did you mean 'n'?)", r.json["error"])
        # A changed params table replaces the old schema; a broken script is a problem, not a type.
        self.write("custom_thing.lua", CUSTOM.replace('label = "string?"', 'label = "string"'))
        self.write("broken.lua", "return { type = ")
        got = self.wait_types(lambda t, g: t["CUSTOM_THING"]["params"]["label"]["required"],
                              "the changed CUSTOM_THING")
        self.assertNotIn("BROKEN", [t["type"] for t in got["jobTypes"]])
        self.assertTrue(any("broken.lua" in p for p in got["problems"]), got["problems"])
        os.unlink(os.path.join(self.jobs, "new_type.lua"))
        self.wait_types(lambda t, g: "NEW_TYPE" not in t, "NEW_TYPE gone after its removal")
        r = self.create("NEW_TYPE", {"n": 1})
        self.assertEqual(r.status, 400, r)


class JobTypesApi(CpTestCase):
    """The endpoint itself, with the protocol played by hand."""

    def report(self, body, agent=None, token=None):
        agent = agent or self.cp.default_agent
        return http(self.cp.url + "/v1/agents/%s/job-types" % agent, "POST", body,
                    token or AGENT_TOKENS[agent])

    def test_bad_reports_are_refused_and_nothing_changes(self):
        good = {"jobTypes": [{"type": "X_ONE", "description": "", "cancellable": True, "source": "jobs_dir",
                              "params": {"a": {"type": "string", "required": True}}}], "problems": []}
        self.assertEqual(self.report(good).status, 200)
        bad = [
            ({"jobTypes": [], "extra": 1}, "unknown field 'extra'"),
            ({"jobTypes": {}}, "'jobTypes' must be an array"),
            ({"jobTypes": [{"type": "bad type!", "cancellable": True, "params": {}}]}, "jobTypes[0].type"),
            ({"jobTypes": [{"type": "A", "cancellable": "yes", "params": {}}]}, "cancellable must be a boolean"),
            ({"jobTypes": [{"type": "A", "cancellable": True, "params": {"p": {"type": "strin", "required": True}}}]},
             "jobTypes[0].params['p']"),
            ({"jobTypes": [{"type": "A", "cancellable": True, "params": {"p": {"type": "string?", "required": True}}}]},
             "jobTypes[0].params['p']"),
            ({"jobTypes": [{"type": "A", "cancellable": True, "params": {}, "colour": 1}]}, "unknown field 'colour'"),
            ({"jobTypes": [{"type": "A", "cancellable": True, "params": {}}] * 2}, "listed twice"),
        ]
        for body, msg in bad:
            r = self.report(body)
            self.assertEqual(r.status, 400, (body, r))
            self.assertIn(msg, r.json["error"])
        got = self.cp.api("GET", "/v1/agents/%s/job-types" % self.cp.default_agent).json
        self.assertEqual([t["type"] for t in got["jobTypes"]], ["X_ONE"])
        other = self.cp.second_agent
        r = self.report(good, agent=other, token=AGENT_TOKENS[self.cp.default_agent])
        self.assertEqual(r.status, 403, r)
        self.assertEqual(self.cp.api("GET", "/v1/agents/%s/job-types" % other).json["reported"], False)

    def test_unreported_agent_keeps_the_old_checks(self):
        got = self.cp.api("GET", "/v1/agents/%s/job-types" % self.cp.default_agent).json
        self.assertEqual((got["reported"], got["jobTypes"], got["reportedAt"]), (False, [], None))
        self.cp.create_job(type_="BACKUP_INSTANCE", params={"anything": 1})
        r = self.cp.api("POST", "/v1/jobs", {"type": "CUSTOM_THING", "agentId": self.cp.default_agent,
                                             "instanceId": "i", "params": {}})
        self.assertEqual(r.status, 400, r)
        self.assertIn("unknown job type 'CUSTOM_THING'", r.json["error"])
        self.assertEqual(self.cp.api("GET", "/v1/agents/nobody/job-types").status, 404)
        r = http(self.cp.url + "/v1/agents/%s/job-types" % self.cp.default_agent, "GET",
                 token=AGENT_TOKENS[self.cp.default_agent])
        self.assertEqual(r.status, 403, "an agent token cannot read the panel's view")


class OldControlPlane(AgentTestCase):
    """A control plane without job types answers 404: the agent says so once and works on."""

    def test_agent_keeps_working_after_404(self):
        p = self.start_agent()
        self.wait_log("does not take job types (404)")
        job = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0})
        self.cp.wait_status(job, "COMPLETED", timeout=30)
        self.assertEqual(self.log().count("does not take job types"), 1)
        self.assertEqual(self.stop_agent(p), 0)


if __name__ == "__main__":
    unittest.main()
