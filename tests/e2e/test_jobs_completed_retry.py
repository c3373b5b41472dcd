"""A finished job whose result was lost completes on the retry of the same job (issue 19.3).

The window: the run did all its work (published, markers removed) but its result never
reached the control plane, which then retries the same job. The retry must COMPLETE with
the output the finished run produced, redoing nothing, for every built-in job type; a
different job that collides with what the first one made is still refused.

`jobvisor run --job-id J` twice is the retry of job J after a lost result (the first
run's result was printed, but nothing tells the agent side it was acknowledged); one
end-to-end test drives the same window through the real agent and jobvisor-cp."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from jobs_fault import run_cmd
from jobs_scenarios import (INST, ActivateScenario, BackupScenario, InstallScenario,
                            PruneScenario, RestoreScenario, SyncModsScenario, UpdateScenario,
                            VerifyScenario, complete_backups, inst_dir)
from jobs_fixtures import tree_digest, write_file
from jv_run import JOBVISOR, RunResult


def run_as(data_dir, what, params, job_id=None, instance=INST, timeout=120):
    argv = run_cmd(data_dir, what, instance, params)
    if job_id:
        argv += ["--job-id", job_id]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return RunResult(p.returncode, p.stdout, p.stderr)


def record(data_dir, job_id, instance=INST):
    return os.path.join(data_dir, "instances", instance, ".jobvisor", "completed", job_id + ".json")


class CompletedJobRetry(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="jv-done-")
        self.data = os.path.join(self.tmp, "data")
        os.makedirs(self.data)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def twice(self, what, params, job_id="job-1", same_tree=None):
        """Run job_id to completion, then its retry; both COMPLETED with equal outputs, the
        retry redoing nothing (same_tree: the part of the instance that must not change)."""
        first = run_as(self.data, what, params, job_id)
        self.assertEqual(first.status, "COMPLETED", first)
        self.assertTrue(os.path.exists(record(self.data, job_id)), "no completion record kept")
        before = tree_digest(same_tree) if same_tree else None
        retry = run_as(self.data, what, params, job_id)
        self.assertEqual(retry.status, "COMPLETED", retry)
        self.assertEqual(retry.result["output"], first.result["output"])
        self.assertIn("already completed in run", retry.stderr)
        if same_tree:
            self.assertEqual(tree_digest(same_tree), before, "the retry changed the instance")
        # nothing of the retry is left behind (no run marker, no staging)
        jv = os.path.join(inst_dir(self.data), ".jobvisor")
        self.assertEqual([n for n in os.listdir(os.path.join(jv, "markers")) if n.startswith("run.")], [])
        self.assertEqual(os.listdir(os.path.join(jv, "staging")), [])
        return first.result["output"]

    def prepare(self, scenario):
        scenario.tmp = self.tmp
        scenario.prepare(self.data, self)
        return scenario

    def test_backup_with_an_id(self):
        s = self.prepare(BackupScenario())
        out = self.twice("BACKUP_INSTANCE", {"backupId": "nightly"},
                         same_tree=os.path.join(inst_dir(self.data), "backups"))
        self.assertEqual(out["backupId"], "nightly")
        self.assertEqual(complete_backups(inst_dir(self.data)), ["base", "nightly"])
        # another job naming the same backup is still refused
        other = run_as(self.data, "BACKUP_INSTANCE", {"backupId": "nightly"}, "job-2")
        self.assertEqual(other.status, "FAILED", other)
        self.assertEqual(other.error_message, "backup 'nightly' already exists")
        self.assertFalse(other.result["error"]["retryable"])
        del s

    def test_backup_without_an_id_makes_one_backup(self):
        self.prepare(BackupScenario())
        out = self.twice("BACKUP_INSTANCE", {}, same_tree=os.path.join(inst_dir(self.data), "backups"))
        self.assertEqual(complete_backups(inst_dir(self.data)), sorted(["base", out["backupId"]]))

    def test_backup_manifest_of_the_same_job_completes_without_a_record(self):
        """Killed after the manifest and its marker removal, before the completion record: the
        manifest names the job, so the retry completes instead of refusing its own backup."""
        self.prepare(BackupScenario())
        first = run_as(self.data, "BACKUP_INSTANCE", {"backupId": "nightly"}, "job-1")
        self.assertEqual(first.status, "COMPLETED", first)
        os.remove(record(self.data, "job-1"))
        retry = run_as(self.data, "BACKUP_INSTANCE", {"backupId": "nightly"}, "job-1")
        self.assertEqual(retry.status, "COMPLETED", retry)
        self.assertEqual(retry.result["output"], first.result["output"])

    def test_verify(self):
        self.prepare(VerifyScenario())
        self.twice("VERIFY_BACKUP", {"backupId": "b1"}, same_tree=inst_dir(self.data))

    def test_restore_does_not_restore_again(self):
        self.prepare(RestoreScenario())
        first = run_as(self.data, "RESTORE_BACKUP", {"backupId": "b1"}, "job-1")
        self.assertEqual(first.status, "COMPLETED", first)
        # the server wrote into the restored data before the retry came
        write_file(os.path.join(inst_dir(self.data), "data", "after-restore.dat"), b"new save")
        retry = run_as(self.data, "RESTORE_BACKUP", {"backupId": "b1"}, "job-1")
        self.assertEqual(retry.status, "COMPLETED", retry)
        self.assertEqual(retry.result["output"], first.result["output"])
        self.assertTrue(os.path.exists(os.path.join(inst_dir(self.data), "data", "after-restore.dat")),
                        "the retry restored the backup a second time")

    def test_prune_reports_the_same_removals(self):
        s = self.prepare(PruneScenario())
        out = self.twice("PRUNE_BACKUPS", s.params, same_tree=os.path.join(inst_dir(self.data), "backups"))
        self.assertEqual(len(out["removed"]), len(s.all) - len(s.keep))

    def test_sync_mods(self):
        s = self.prepare(SyncModsScenario())
        out = self.twice("SYNC_MODS", s.params, same_tree=os.path.join(inst_dir(self.data), "data"))
        self.assertEqual(out["added"], ["delta.jar", "gamma.jar"])

    def test_install(self):
        s = self.prepare(InstallScenario())
        out = self.twice("INSTALL_SERVER", s.params, same_tree=inst_dir(self.data) + "/builds")
        self.assertFalse(out["alreadyInstalled"])

    def test_update_with_activate(self):
        s = self.prepare(UpdateScenario())
        out = self.twice("UPDATE_SERVER", s.params, same_tree=inst_dir(self.data) + "/builds")
        self.assertEqual((out["staged"], out["activated"], out["previous"]), (True, True, "b1"))

    def test_activate(self):
        s = self.prepare(ActivateScenario())
        out = self.twice("ACTIVATE_BUILD", s.params)
        self.assertEqual((out["changed"], out["previous"]), (True, "b1"))

    def test_another_job_id_or_other_params_run_as_new_work(self):
        self.prepare(VerifyScenario())
        first = run_as(self.data, "VERIFY_BACKUP", {"backupId": "b1"}, "job-1")
        self.assertEqual(first.status, "COMPLETED", first)
        again = run_as(self.data, "VERIFY_BACKUP", {"backupId": "nope"}, "job-1")
        self.assertEqual(again.status, "FAILED", again)
        self.assertIn("with other parameters", again.stderr)

    def test_run_without_job_id_keeps_no_record(self):
        self.prepare(VerifyScenario())
        r = run_as(self.data, "VERIFY_BACKUP", {"backupId": "b1"})
        self.assertEqual(r.status, "COMPLETED", r)
        cdir = os.path.join(inst_dir(self.data), ".jobvisor", "completed")
        self.assertEqual(os.listdir(cdir) if os.path.isdir(cdir) else [], [])

    def test_invalid_job_id_is_refused(self):
        r = subprocess.run([JOBVISOR, "run", "VERIFY_BACKUP", "--instance", INST, "--data-dir",
                            self.data, "--job-id", "../x", "--params", '{"backupId":"b1"}'],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("invalid job id '../x'", r.stderr)


try:
    from instance_helpers import DEMO, Instance, proc_alive, wait_until
except ImportError:  # pragma: no cover
    DEMO = ""


@unittest.skipUnless(JOBVISOR and DEMO, "needs JOBVISOR_BIN and JV_DEMO_SERVER_BIN")
class CompletedInstanceJobRetry(unittest.TestCase):
    def setUp(self):
        self.inst = Instance(self)

        def stop():
            if os.path.exists(self.inst.sock_path):
                try:
                    self.inst.call({"op": "kill"}, timeout=20)
                except (OSError, ValueError, TimeoutError):
                    pass
        self.addCleanup(stop)

    def run_as(self, what, params, job_id):
        return run_as(self.inst.root, what, params, job_id, instance=self.inst.id)

    def test_start_stop_restart(self):
        outs = {}
        for what in ("START_INSTANCE", "RESTART_INSTANCE", "STOP_INSTANCE"):
            job = "job-" + what.lower()
            first = self.run_as(what, {}, job)
            self.assertEqual(first.status, "COMPLETED", first)
            pid = self.inst.state().get("pid") if what != "STOP_INSTANCE" else None
            retry = self.run_as(what, {}, job)
            self.assertEqual(retry.status, "COMPLETED", retry)
            self.assertEqual(retry.result["output"], first.result["output"])
            self.assertIn("already completed in run", retry.stderr)
            if pid:
                # the retry of a START or RESTART does not start or restart the server again
                self.assertEqual(self.inst.state().get("pid"), pid)
                self.assertTrue(proc_alive(pid))
            outs[what] = first.result["output"]
        self.assertEqual(outs["STOP_INSTANCE"]["state"], "STOPPED")


CP_BIN = os.environ.get("JOBVISOR_CP_BIN", "")


@unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN), "needs JOBVISOR_CP_BIN")
class LostResultThroughTheAgent(unittest.TestCase):
    """The reproduction of issue 19.3: BACKUP_INSTANCE nightly through jobvisor-cp; the agent
    is stopped while the child runs, the child publishes the backup and exits, the agent is
    killed and started again. The retry completes with the same output."""

    def setUp(self):
        from agent_harness import AgentTestCase  # noqa: F401 (path check)
        from cp_harness import AGENT_TOKENS, ControlPlane
        self.tmp = tempfile.mkdtemp(prefix="jv-done-cp-")
        self.data = os.path.join(self.tmp, "data")
        os.makedirs(os.path.join(self.data, "instances", "srv1", "data"))
        cp_dir = os.path.join(self.tmp, "cp")
        os.makedirs(cp_dir)
        os.makedirs(os.path.join(self.tmp, "jobs"))
        self.cp = ControlPlane(["--job-types", "BACKUP_INSTANCE", "--poll-interval", "1",
                                "--retry-backoff", "1"], tmpdir=cp_dir)
        self.cp.start()
        self.token_file = os.path.join(self.tmp, "token")
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (AGENT_TOKENS["agent-1"] + "\n").encode())
        os.close(fd)
        self.agents = []

    def tearDown(self):
        for p in self.agents:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(10)
        self.cp.stop(check=False)
        log_path = os.path.join(self.tmp, "agent.log")
        log = open(log_path, errors="replace").read() if os.path.exists(log_path) else ""
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, log, f"sanitizer report in the agent log:\n{log[-6000:]}")
        if os.environ.get("JV_KEEP_TMP"):
            print("kept", self.tmp)
            return
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_agent(self):
        from agent_harness import agent_env
        env = agent_env(self.cp.url, self.token_file, self.data, os.path.join(self.tmp, "jobs"),
                        agent_id="agent-1")
        log = open(os.path.join(self.tmp, "agent.log"), "a")
        p = subprocess.Popen([JOBVISOR, "agent"], env=env, stdout=log, stderr=log)
        log.close()
        self.agents.append(p)
        return p

    def catch_child(self, agent, deadline):
        from jv_run import job_run_children
        while time.time() < deadline:
            for c in job_run_children(agent.pid):
                try:
                    os.kill(c, signal.SIGSTOP)  # hold it before it publishes anything
                    return c
                except ProcessLookupError:
                    pass
            time.sleep(0.001)
        return None

    def test_backup_result_lost_then_retry_completes(self):
        from jobs_fixtures import populate
        from jv_run import children_of
        populate(os.path.join(self.data, "instances", "srv1", "data"), seed=5, files=30,
                 big=24 << 20)
        bdir = os.path.join(self.data, "instances", "srv1", "backups")
        for trial in range(5):
            bid = f"nightly{trial}"
            p = self.start_agent()
            job = self.cp.create_job(agent="agent-1", instance="srv1", type_="BACKUP_INSTANCE",
                                     params={"backupId": bid}, maxAttempts=3)
            child = self.catch_child(p, time.time() + 20)
            self.assertIsNotNone(child, "the agent started no job-run child")
            if os.path.exists(os.path.join(bdir, bid + ".json")):
                # caught too late (the backup was already published): try again
                os.kill(child, signal.SIGCONT)
                self.cp.wait_job(job["jobId"], lambda j: j["status"] == "COMPLETED", 30, "completed")
                p.send_signal(signal.SIGTERM)
                p.wait(30)
                continue
            # The window: the agent stops, the child finishes all its work and exits.
            p.send_signal(signal.SIGSTOP)
            os.kill(child, signal.SIGCONT)
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    with open(f"/proc/{child}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                            break
                except OSError:
                    break
                time.sleep(0.02)
            self.assertTrue(os.path.exists(os.path.join(bdir, bid + ".json")))
            markers = os.listdir(os.path.join(self.data, "instances", "srv1", ".jobvisor", "markers"))
            self.assertEqual([m for m in markers if m.endswith(".json")], [], "markers left")
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            self.assertEqual(children_of(p.pid), [])
            p2 = self.start_agent()
            done = self.cp.wait_job(job["jobId"], lambda j: j["status"] in ("COMPLETED", "FAILED"),
                                    60, "a final state")
            self.assertEqual(done["status"], "COMPLETED", json.dumps(done, indent=1))
            runs = sorted(done["runs"], key=lambda r: r["attempt"])
            self.assertEqual([r["status"] for r in runs], ["FAILED", "COMPLETED"])
            self.assertEqual(runs[1]["output"]["backupId"], bid)
            with open(os.path.join(bdir, bid + ".json")) as f:
                manifest = json.load(f)
            self.assertEqual(runs[1]["output"]["sha256"], manifest["sha256"])
            self.assertEqual(sorted(n for n in os.listdir(bdir) if n.startswith(bid)),
                             [bid + ".json", bid + ".tar.zst"])
            markers = os.listdir(os.path.join(self.data, "instances", "srv1", ".jobvisor", "markers"))
            self.assertEqual([m for m in markers if m.endswith(".json")], [], "the retry left a marker")
            # the control plane acknowledged the result: the completion record is gone
            rec = os.path.join(self.data, "instances", "srv1", ".jobvisor", "completed",
                               job["jobId"] + ".json")
            deadline = time.time() + 10
            while os.path.exists(rec) and time.time() < deadline:
                time.sleep(0.05)
            self.assertFalse(os.path.exists(rec), "completion record kept after the acknowledgement")
            p2.send_signal(signal.SIGTERM)
            self.assertEqual(p2.wait(30), 0)
            return
        self.fail("could not stop the job-run child before it published the backup in 5 trials")


if __name__ == "__main__":
    unittest.main()
