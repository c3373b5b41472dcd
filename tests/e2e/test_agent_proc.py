"""proc.run under the real `jobvisor agent` and the real `jobvisor-cp`: the agent hands
job_executables (from its environment) to the job run, a cancel from the control plane ends the
program and everything it started (SIGTERM-ignoring members included), and the run is
CANCELLED; a program not in job_executables fails the job with a clear message."""
import os
import signal
import time
import unittest
import uuid

from agent_harness import AgentTestCase
from cp_harness import AGENT_TOKENS, ControlPlane

CP_BIN = os.environ.get("JOBVISOR_CP_BIN", "")
PY = "/usr/bin/python3"

SCRIPT = '''return {
  type = "PROC_SLEEP",
  params = { tag = "string", code = "string" },
  run = function(job)
    local r, err = proc.run({ "/usr/bin/python3", "-c", job.params.code, job.params.tag }, { kill_grace = 1 })
    return { code = r and r.code, err = err }
  end,
}
'''

PROGRAM = ("import os, signal, time\n"
           "if os.fork() == 0:\n"
           "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
           "    time.sleep(600); os._exit(0)\n"
           "print('ready', flush=True)\n"
           "time.sleep(600)\n")


def tagged(tag):
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        if cmd.startswith(PY.encode()) and tag.encode() in cmd and st[st.rindex(")") + 2] not in "ZX":
            found.append(int(d))
    return found


@unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN), "needs JOBVISOR_CP_BIN")
class ProcUnderTheAgent(AgentTestCase):
    AGENT = "agent-1"

    def setUp(self):
        super().setUp()
        self.cp.stop()
        with open(os.path.join(self.jobs, "proc_sleep.lua"), "w") as f:
            f.write(SCRIPT)
        cp_dir = os.path.join(self.tmp, "cp")
        os.makedirs(cp_dir)
        self.real = ControlPlane(["--job-types", "PROC_SLEEP", "--poll-interval", "1"], tmpdir=cp_dir)
        self.real.start()
        with open(self.token_file, "w") as f:
            f.write(AGENT_TOKENS[self.AGENT] + "\n")
        os.chmod(self.token_file, 0o600)
        self.tag = "jvagent-" + uuid.uuid4().hex[:10]

    def tearDown(self):
        for pid in tagged(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for p in self.agents:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except Exception:
                    p.kill()
        try:
            self.real.stop()
        finally:
            super().tearDown()

    def env(self, **overrides):
        env = super().env(**overrides)
        env["JOBVISOR_URL"] = self.real.url
        env["JOBVISOR_AGENT_ID"] = self.AGENT
        return env

    def create(self):
        return self.real.create_job(agent=self.AGENT, instance="inst-1", type_="PROC_SLEEP",
                                    params={"tag": self.tag, "code": PROGRAM})["jobId"]

    def wait_job(self, job_id, status, timeout=30):
        return self.real.wait_job(job_id, lambda j: j["status"] == status, timeout, f"job {job_id} {status}")

    def test_a_cancel_from_the_control_plane_ends_the_whole_program(self):
        p = self.start_agent(JOB_EXECUTABLES=PY, POLL_INTERVAL=1, POLL_WAIT=0)
        jid = self.create()
        self.wait_job(jid, "RUNNING")
        deadline = time.time() + 20
        while len(tagged(self.tag)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        progs = tagged(self.tag)
        self.assertEqual(len(progs), 2, "the program and its SIGTERM-ignoring child")
        self.assertEqual(self.real.api("POST", f"/v1/jobs/{jid}/cancel").status, 200)
        self.wait_job(jid, "CANCELLED", timeout=20)
        self.assertEqual(tagged(self.tag), [])
        self.assertEqual(self.stop_agent(p), 0)

    def test_a_program_not_in_job_executables_fails_the_job(self):
        p = self.start_agent(JOB_EXECUTABLES="/bin/true", POLL_INTERVAL=1, POLL_WAIT=0)
        jid = self.create()
        job = self.wait_job(jid, "FAILED")
        self.assertIn("is not allowed", job["runs"][0]["error"]["message"])
        self.assertEqual(tagged(self.tag), [])
        self.assertEqual(self.stop_agent(p), 0)


if __name__ == "__main__":
    unittest.main()
