"""jobvisor-cp: restarts (clean and kill -9) keep every acknowledged state change.

Also checks the database itself (Python's sqlite3, or psql on PostgreSQL): WAL
mode (SQLite), the schema version, refusal of a newer schema, and recovery of a job stored as CREATED
but never queued (a crash between the two transactions).
"""

import signal
import sqlite3
import subprocess
import time
import unittest

from cp_harness import ControlPlane


class Restart(unittest.TestCase):
    def setUp(self):
        self.cp = ControlPlane(["--lease-seconds", "30"]).start()
        self.addCleanup(self.cp.close)

    def build_state(self):
        cp = self.cp
        agent = cp.agent()
        done = cp.create_job(instance="i-done")
        running = cp.create_job(instance="i-run")
        queued = cp.create_job(instance="i-run")  # waits behind `running`
        cancelled = cp.create_job(instance="i-cancel", agent=cp.second_agent)
        cp.api("POST", "/v1/jobs/%s/cancel" % cancelled["jobId"])
        got = {a["jobId"]: a for a in agent.take(capacity=5)}
        self.assertEqual(set(got), {done["jobId"], running["jobId"]})
        a_done, a_run = got[done["jobId"]], got[running["jobId"]]
        agent.progress(a_done, 50, "half")
        agent.result(a_done["jobRunId"], "COMPLETED", output={"ok": True})
        agent.progress(a_run, 10, "one")
        agent.progress(a_run, 20, "two")
        return agent, done, running, queued, cancelled, a_run

    def check_after_restart(self, agent, done, running, queued, cancelled, a_run):
        cp = self.cp
        d = cp.job(done["jobId"])
        self.assertEqual(d["status"], "COMPLETED")
        self.assertEqual(d["runs"][0]["output"], {"ok": True})
        self.assertEqual(cp.job(cancelled["jobId"])["status"], "CANCELLED")
        self.assertEqual(cp.job(queued["jobId"])["status"], "QUEUED")
        r = cp.job(running["jobId"])
        self.assertEqual(r["status"], "RUNNING")
        self.assertEqual(r["runs"][0]["lastSeq"], 2)
        self.assertEqual(r["runs"][0]["message"], "two")
        events = cp.api("GET", "/v1/runs/%s/events" % a_run["jobRunId"]).json["events"]
        self.assertEqual([e["message"] for e in events], ["one", "two"])
        # The agent carries on where it was: resends are deduplicated, new seqs continue.
        resend = [{"seq": 2, "kind": "progress", "percent": 20, "message": "two"}]
        self.assertEqual(agent.events(a_run["jobRunId"], resend).json["ackSeq"], 2)
        self.assertEqual(agent.poll(running=[a_run["jobRunId"]]).json["jobs"], [])
        agent.progress(a_run, 90, "three")
        self.assertEqual(agent.result(a_run["jobRunId"], "COMPLETED").status, 200)
        [nxt] = agent.take(capacity=5)
        self.assertEqual(nxt["jobId"], queued["jobId"])
        agents = {a["agentId"]: a for a in cp.api("GET", "/v1/agents").json["agents"]}
        self.assertIsNotNone(agents[cp.default_agent]["lastSeen"])

    def test_clean_restart_keeps_state(self):
        state = self.build_state()
        self.cp.restart()
        self.check_after_restart(*state)

    def test_sigterm_stops_an_idle_control_plane_at_once(self):
        # civetweb's master thread polls its socket for 2 s at a time: a stop
        # right after the start used to wait out that poll (~2 s every stop).
        for _ in range(3):
            self.cp.restart()
            self.assertEqual(self.cp.api("GET", "/v1/jobs").status, 200)
            t0 = time.monotonic()
            self.cp.stop()
            took = time.monotonic() - t0
            self.assertLess(took, 1.0, "SIGTERM to exit took %.2f s" % took)
            self.cp.start()

    def test_kill_9_keeps_every_acknowledged_change(self):
        state = self.build_state()
        self.cp.stop(sig=signal.SIGKILL)
        self.cp.start()
        self.check_after_restart(*state)

    def test_database_is_wal_with_a_schema_version(self):
        self.cp.create_job()
        if self.cp.backend == "postgresql":
            self.assertEqual(self.cp.sql("SELECT version FROM schema_version"), [("3",)])
            tables = {r[0] for r in self.cp.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            self.assertTrue({"agents", "jobs", "job_runs", "events", "instances", "instance_events",
                             "ws_head", "ws_log", "run_counters"} <= tables)
            return
        con = sqlite3.connect(self.cp.db, timeout=10)
        try:
            self.assertEqual(con.execute("PRAGMA journal_mode").fetchone()[0], "wal")
            self.assertEqual(con.execute("PRAGMA user_version").fetchone()[0], 8)
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            self.assertTrue({"agents", "jobs", "job_runs", "events", "instances",
                             "instance_events", "run_counters"} <= tables)
        finally:
            con.close()

    def test_a_job_stored_but_never_queued_is_queued_at_start(self):
        self.cp.stop()
        now = int(time.time() * 1000)
        self.cp.sql("INSERT INTO jobs (job_id, type, agent_id, instance_id, params, status, max_attempts,"
                    " created_at, updated_at) VALUES ('crashed-job', 'START_INSTANCE', ?, 'mc', '{}',"
                    " 'CREATED', 1, ?, ?)", (self.cp.default_agent, now, now))
        self.cp.start()
        j = self.cp.job("crashed-job")
        self.assertEqual(j["status"], "QUEUED")
        self.assertEqual(len(j["runs"]), 1)
        self.assertEqual(self.cp.agent().take()[0]["jobId"], "crashed-job")

    def test_a_job_left_created_while_running_is_queued_by_the_sweep(self):
        # A creation is two transactions; one whose second never ran (a
        # database error between them, a replica killed there) must not leave
        # its job CREATED until the next start. The sweep queues it once it is
        # older than the grace (10 s) that keeps clear of creations in flight.
        now = int(time.time() * 1000)
        for job_id, at in (("halfway-job", now - 60000), ("in-flight-job", now)):
            self.cp.sql("INSERT INTO jobs (job_id, type, agent_id, instance_id, params, status, max_attempts,"
                        " created_at, updated_at) VALUES (?, 'START_INSTANCE', ?, ?, '{}', 'CREATED', 1, ?, ?)",
                        (job_id, self.cp.default_agent, job_id, at, at))
        j = self.cp.wait_job("halfway-job", lambda j: j["status"] == "QUEUED", timeout=10,
                             what="the sweep to queue the job left CREATED")
        self.assertEqual(len(j["runs"]), 1)
        self.assertEqual(self.cp.job("in-flight-job")["status"], "CREATED")
        self.assertEqual(self.cp.agent().take()[0]["jobId"], "halfway-job")

    def finished_history(self):
        """One completed run and one run cancelled while queued, as an older
        schema would have stored them (the run counters start from them)."""
        agent = self.cp.agent()
        done = self.cp.create_job(instance="i-done")
        [a] = agent.take()
        self.assertEqual(a["jobId"], done["jobId"])
        agent.result(a["jobRunId"], "COMPLETED", output={})
        gone = self.cp.create_job(instance="i-gone", agent=self.cp.second_agent)
        self.cp.api("POST", "/v1/jobs/%s/cancel" % gone["jobId"])

    def test_an_older_schema_is_migrated_with_data_intact(self):
        self.finished_history()
        job = self.cp.create_job()
        self.cp.stop()
        if self.cp.backend == "postgresql":
            # Back to schema version 1 (before the claim's jobs_active_by_seq
            # index and the run counters).
            self.cp.sql("DROP INDEX jobs_active_by_seq")
            self.cp.sql("DROP TRIGGER run_counters_bump ON job_runs")
            self.cp.sql("DROP FUNCTION run_counters_bump()")
            self.cp.sql("DROP TABLE run_counters")
            self.cp.sql("UPDATE schema_version SET version = 1")
            self.cp.start()
            self.assertIn("schema migrated to version 2", self.cp.stderr_text())
            self.assertIn("schema migrated to version 3", self.cp.stderr_text())
            self.assertEqual(self.cp.job(job["jobId"])["status"], "QUEUED")
            self.assertEqual(self.cp.sql("SELECT version FROM schema_version"), [("3",)])
            self.assertEqual(self.cp.sql("SELECT count(*) FROM pg_indexes WHERE indexname = 'jobs_active_by_seq'"),
                             [("1",)])
            self.assertEqual(self.cp.run_counters(), (1, 1, 0, 1), "the run counters start from the stored runs")
            self.assertEqual([j["jobId"] for j in self.cp.agent().take()], [job["jobId"]])
            self.assertEqual(self.cp.run_counters(), (2, 1, 0, 1), "and count on")
            return
        # Take the database back to schema version 1 (before the jobs_active
        # index and the instance tables).
        con = sqlite3.connect(self.cp.db)
        con.execute("DROP INDEX jobs_active")
        con.execute("DROP INDEX jobs_active_by_seq")
        con.execute("DROP TABLE instances")
        con.execute("DROP TABLE instance_events")
        con.execute("DROP TABLE agent_job_types")
        con.execute("DROP TABLE schedules")
        con.execute("DROP INDEX jobs_by_schedule")
        con.execute("ALTER TABLE jobs DROP COLUMN schedule_id")
        con.execute("DROP TABLE audit_log")
        con.execute("DROP TRIGGER run_counters_started")
        con.execute("DROP TRIGGER run_counters_finished")
        con.execute("DROP TABLE run_counters")
        con.execute("PRAGMA user_version = 1")
        con.commit()
        con.close()
        self.cp.start()
        for v in range(2, 9):
            self.assertIn("schema migrated to version %d" % v, self.cp.stderr_text())
        self.assertEqual(self.cp.job(job["jobId"])["status"], "QUEUED")
        con = sqlite3.connect(self.cp.db, timeout=10)
        try:
            self.assertEqual(con.execute("PRAGMA user_version").fetchone()[0], 8)
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
            self.assertIn("jobs_active", names)
            self.assertIn("jobs_active_by_seq", names)
        finally:
            con.close()
        self.assertEqual(self.cp.run_counters(), (1, 1, 0, 1), "the run counters start from the stored runs")
        self.assertEqual([j["jobId"] for j in self.cp.agent().take()], [job["jobId"]])
        self.assertEqual(self.cp.run_counters(), (2, 1, 0, 1), "and count on")

    def test_a_newer_schema_is_refused(self):
        self.cp.stop()
        if self.cp.backend == "postgresql":
            self.cp.sql("UPDATE schema_version SET version = 99")
        else:
            con = sqlite3.connect(self.cp.db)
            con.execute("PRAGMA user_version = 99")
            con.commit()
            con.close()
        r = subprocess.run(self.cp.command(), capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"newer than this jobvisor-cp", r.stderr)


if __name__ == "__main__":
    unittest.main()
