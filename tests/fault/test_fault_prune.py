"""Crash consistency of PRUNE_BACKUPS: SIGKILL at random instants, then a retry (see tests/lib/jobs_fault.py)."""
import unittest

from jv_run import JobvisorTestCase
from jobs_fault import KILLS, FaultRunner
from jobs_scenarios import PruneScenario


class Fault(JobvisorTestCase):
    def test_kill_at_any_instant_then_retry(self):
        trials, interrupted, violations = FaultRunner(self, PruneScenario()).run()
        self.assertEqual(violations, [])
        self.assertEqual(trials, KILLS)
        self.assertGreater(interrupted, 0, "no trial killed the job mid-run")


if __name__ == "__main__":
    unittest.main()
