"""A poll that PostgreSQL picks as a deadlock victim is answered, not failed.

Always PostgreSQL (tests/lib/pg_harness.py; skipped only when Debian's
postgresql binaries are missing). PostgreSQL breaks a deadlock by rolling
one transaction back (SQLSTATE 40P01) and expects the client to send it
again. The control plane's own statements lock runs in one order, so among
themselves they do not deadlock (test_pg_replicas hammers that); another
client of the database still can, and an agent must not see a 500 for it.

The test makes one deterministically: its own psql session locks the run's
row, the agent's poll takes the agent's advisory lock and waits for that
row, then the session asks for the agent's advisory lock. The poll, which
waited first, is the one PostgreSQL rolls back after deadlock_timeout (1 s);
the control plane sends it again, it waits for the session to commit, and
the agent gets its answer with the run's lease renewed.
"""

import threading
import time
import unittest

import pg_harness
from cp_harness import ControlPlane

APP = "jv-deadlock-test"


def wait_for(pred, what, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


class DeadlockVictim(unittest.TestCase):
    def test_a_poll_rolled_back_as_deadlock_victim_is_sent_again(self):
        srv = pg_harness.shared()
        cp = ControlPlane(db=srv.new_database())
        self.addCleanup(cp.close)
        cp.start()
        dbname = cp.db.rsplit("/", 1)[1]
        agent = cp.agent()
        job = cp.create_job(agent=agent.id)
        (a,) = agent.take()
        run_id = a["jobRunId"]
        self.assertEqual(agent.progress(a, 10, "started").status, 200)
        lease0 = int(cp.sql("SELECT lease_until FROM job_runs WHERE run_id = ?", (run_id,))[0][0])

        def state():
            rows = srv.psql(dbname, "SELECT state, wait_event_type FROM pg_stat_activity"
                                    " WHERE application_name = '%s'" % APP)
            return rows.split("|") if rows else ["", ""]

        def poll_waiting():
            return srv.psql(dbname, "SELECT count(*) FROM pg_locks WHERE NOT granted"
                                    " AND locktype = 'transactionid'") != "0"

        session = srv.session(dbname, APP)
        self.addCleanup(session.stdout.close)
        self.addCleanup(session.kill)
        session.stdin.write(("BEGIN; SELECT 1 FROM job_runs WHERE run_id = '%s' FOR UPDATE;\n" % run_id).encode())
        session.stdin.flush()
        wait_for(lambda: state()[0] == "idle in transaction", "the session to hold the run's row")

        answer = {}
        t = threading.Thread(target=lambda: answer.setdefault("r", agent.poll(running=[run_id], timeout=60)))
        t.start()
        wait_for(poll_waiting, "the poll to wait for the run's row")
        # The agent's advisory lock (store_pg.c PGS_SQL_LOCK), held by the waiting poll: a circle.
        session.stdin.write(("SELECT pg_advisory_xact_lock(hashtextextended('agent' || '/' || '%s' || '/' || '', 0));\n"
                             % agent.id).encode())
        session.stdin.flush()
        wait_for(lambda: state()[0] == "idle in transaction" and not poll_waiting() or "r" in answer,
                 "PostgreSQL to break the deadlock", timeout=30)
        self.assertNotIn("r", answer, "the poll was answered while the session held the agent's lock")
        time.sleep(0.3)  # the poll, sent again, now waits for the session
        session.stdin.write(b"COMMIT;\n")
        session.stdin.close()
        t.join(60)
        self.assertEqual(session.wait(30), 0, session.stdout.read().decode(errors="replace"))

        r = answer.get("r")
        self.assertIsNotNone(r, "the poll never came back")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["cancel"], [], r.json)
        log = cp.stderr_text()
        self.assertIn("deadlock detected", log)
        self.assertIn("sending the transaction again", log)
        lease1 = int(cp.sql("SELECT lease_until FROM job_runs WHERE run_id = ?", (run_id,))[0][0])
        self.assertGreater(lease1, lease0, "the resent poll did not renew the run's lease")
        # The run goes on as if nothing happened.
        self.assertEqual(agent.result(run_id).status, 200)
        self.assertEqual(cp.job(job["jobId"])["status"], "COMPLETED")


if __name__ == "__main__":
    unittest.main()
