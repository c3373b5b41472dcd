"""`jobvisor run` and repeated signals: SIGINT and SIGTERM arriving together (Ctrl-C plus a
wrapper's SIGTERM) are one cancel request; only a signal 2 s or more after the one that took
effect kills the job."""
import os
import signal
import time
import unittest

from jv_run import JobvisorTestCase, processes_in_group

# Cancelled at job.sleep, the script spends ~1.5 s cleaning up, then marks that it finished.
SLOW_CLEANUP = """return { type = "SLOW_CLEANUP", run = function(job)
  job.mark("up", {})
  local ok, err = pcall(function() while true do job.sleep(0.05) end end)
  local t0 = os.clock()
  while os.clock() - t0 < 1.5 do end
  job.mark("cleaned", {})
  error(err, 0)
end }"""


class RunSignals(JobvisorTestCase):
    def marker(self, name):
        return os.path.join(self.instance_dir(), ".jobvisor", "markers", name + ".json")

    def test_sigint_and_sigterm_together_cancel_once_and_let_cleanup_finish(self):
        p = self.start_job(self.script(SLOW_CLEANUP), extra=["--cancel-grace", "30"])
        self.wait_file(self.marker("up"))
        p.send_signal(signal.SIGINT)
        p.send_signal(signal.SIGTERM)
        r = self.finish(p)
        self.assertEqual(r.code, 3, r)
        self.assertEqual(r.status, "CANCELLED")
        self.assertTrue(os.path.exists(self.marker("cleaned")), "the cleanup was cut short")
        self.assertNotIn("killing", r.stderr)

    def test_signal_repeated_after_the_window_kills(self):
        # Truly stubborn: it catches the cancellation error and goes on spinning.
        path = self.script("""return { type = "STUBBORN", run = function(job)
  job.mark("up", {})
  local function spin() while true do end end
  while true do pcall(spin) end
end }""")
        p = self.start_job(path, extra=["--cancel-grace", "60"])
        child = self.wait_child(p)
        self.wait_file(self.marker("up"))
        p.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)  # inside the window: the same request
        time.sleep(2.2)
        self.assertIsNone(p.poll())
        self.assertTrue(processes_in_group(child))
        t0 = time.time()
        p.send_signal(signal.SIGINT)
        r = self.finish(p)
        self.assertLess(time.time() - t0, 5)
        self.assertEqual(r.code, 3, r)
        self.assertIn("SIGINT again: killing the job", r.stderr)
        self.assertEqual(r.error_message, "job cancelled; killed on request before it had stopped")
        self.assertEqual(processes_in_group(child), [])


if __name__ == "__main__":
    unittest.main()
