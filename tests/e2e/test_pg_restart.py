"""jobvisor-cp on PostgreSQL: prepared statements survive a server restart (issue 14).

Always PostgreSQL (a server of its own, started by the test from Debian's
postgresql package, tests/lib/pg_harness.py; skipped only when the binaries
are missing), logging every statement it runs. The control plane prepares
the statements of its hot pipelines (poll, job creation, events) once per
pool connection and executes them by name; a restart of PostgreSQL ends the
sessions and their prepared statements with them. The test checks that:
  - the poll's statements run prepared: the claim is parsed at most once per
    pool connection and server session, however many polls;
  - after PostgreSQL restarts under a running control plane, no request
    fails (a pooled connection the server ended is reset before use), polls,
    job creation, claims, events and results work at once, the statements
    are prepared again on the new session, and no request ever fails with
    "prepared statement ... does not exist";
  - every pool connection keeps the session setup (time zone UTC, though the
    server's default is another) after the restart: /readyz checks it on
    the connection it gets, and stays ready.
"""

import re
import threading
import unittest

import pg_harness
from cp_harness import ControlPlane

POLLS = 30  # more than the 5 custom plans PostgreSQL makes before it may keep a generic one
CONNECTIONS = 4  # the pool of --threads 8


class PgRestartTest(unittest.TestCase):
    def setUp(self):
        # A default time zone other than UTC: a session without the cp's setup shows.
        self.pg = pg_harness.PgServer(settings=["-c", "log_min_duration_statement=0",
                                                "-c", "timezone=Pacific/Chatham"]).start()
        self.addCleanup(self.pg.stop)
        # --threads 8: a pool of 4 connections
        self.cp = ControlPlane(args=["--threads", "8"], db=self.pg.new_database())
        self.cp.start()
        self.addCleanup(self.cp.close)
        self.agent = self.cp.agent("a01")

    def parses_of_claim(self):
        """How many times the server parsed the claim as a named statement (its log)."""
        return len(re.findall(r"parse jv_[0-9a-f]{16}: WITH RECURSIVE busy AS", self.pg.log_text()))

    def run_one_job(self, instance):
        """Create a job, claim it by a poll, post an event and the result: every call answered at once."""
        job = self.cp.create_job(self.agent.id, instance)
        jobs = self.agent.take(capacity=1)
        self.assertEqual([j["jobId"] for j in jobs], [job["jobId"]])
        r = self.agent.progress(jobs[0], 50, "half")
        self.assertEqual(r.status, 200, r)
        r = self.agent.result(jobs[0]["jobRunId"])
        self.assertEqual(r.status, 200, r)
        self.cp.wait_job(job["jobId"], lambda j: j["status"] == "COMPLETED", what="the job COMPLETED")

    def polls_ok(self, n):
        for _ in range(n):
            r = self.agent.poll(capacity=1)
            self.assertEqual(r.status, 200, r)

    def test_statements_are_prepared_again_after_a_server_restart(self):
        self.run_one_job("inst-1")
        self.polls_ok(POLLS)
        before = self.parses_of_claim()
        self.assertTrue(1 <= before <= CONNECTIONS, "the claim is parsed once per connection, not once per poll "
                        "(%d parses for %d polls)" % (before, POLLS + 1))
        self.assertRegex(self.pg.log_text(), r"execute jv_[0-9a-f]{16}: WITH RECURSIVE busy AS")

        self.pg.restart()
        r = self.agent.poll(capacity=1)
        self.assertEqual(r.status, 200, "the first poll after the restart: %r\n%s" % (r, self.cp.stderr_text()[-3000:]))
        self.run_one_job("inst-2")
        self.polls_ok(POLLS)
        after = self.parses_of_claim() - before
        self.assertTrue(1 <= after <= CONNECTIONS, "the claim is prepared again on the new session, once per "
                        "connection (%d parses)" % after)
        err = self.cp.stderr_text()
        self.assertNotRegex(err, r"prepared statement .* (does not exist|already exists)")
        self.assertNotIn("lost its prepared statements", err)

    def readyz_on_every_connection(self):
        """/readyz from 8 clients at once, a few rounds (a pool of 4: each
        connection answers some); returns the answers that were not ready."""
        bad = []

        def one():
            for _ in range(5):
                r = self.cp.api("GET", "/readyz")
                if r.status != 200:
                    bad.append(r)
        ts = [threading.Thread(target=one) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return bad

    def test_session_setup_survives_a_server_restart(self):
        self.assertEqual(self.readyz_on_every_connection(), [])
        self.pg.restart()
        r = self.agent.poll(capacity=1)
        self.assertEqual(r.status, 200, "the first poll after the restart: %r" % r)
        self.run_one_job("inst-3")
        bad = self.readyz_on_every_connection()
        self.assertEqual(bad, [], "a reconnected pool connection lost the session time zone: %r" % bad[:1])
        self.assertNotIn("session setup was lost", self.cp.stderr_text())


if __name__ == "__main__":
    unittest.main()
