"""Ctrl-C on `make demo`, pressed the way a user does: `make demo` runs as the foreground job
of a shell on a pseudo-terminal and the test types ^C, so the kernel sends SIGINT to the whole
foreground process group (make, the demo script, the agent). Once every demo job has run, and
again with a download in flight: within 15 s nothing of the demo runs (nor comes back), and the job in flight was
ended and delivered to the control plane, not left in the agent's spool."""
import os
import shutil
import sqlite3
import tempfile
import time
import unittest

from terminal import Terminal

SOURCE = os.environ["JV_SOURCE_DIR"]
BUILD = os.environ["JV_BUILD_DIR"]
SETTLE_S = 15
REGROW_S = 2


def demo_processes(demo_dir, besides=()):
    """Live processes whose command line or environment names the demo dir."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid() or int(d) in besides:
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                text = f.read()
            with open(f"/proc/{d}/environ", "rb") as f:
                text += f.read()
        except OSError:
            continue
        if demo_dir.encode() in text:
            found.append((int(d), text.split(b"\0")[:4]))
    return found


class DemoCtrlC(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="jv-demo-ctrlc-")
        self.demo_dir = os.path.join(self.tmp, "demo")
        self.term = None

    def tearDown(self):
        if self.term:
            self.term.close()
        for pid, _ in demo_processes(self.demo_dir):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_demo(self, *flags):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBVISOR_", "MAKE"))}
        env["TERM"] = "dumb"
        self.term = Terminal(["make", "--no-print-directory", "demo", f"BUILD={BUILD}",
                              "DEMO_FLAGS=--demo-dir " + " ".join((self.demo_dir,) + flags)],
                             cwd=SOURCE, env=env)

    def press_ctrl_c_and_settle(self):
        t0 = time.time()
        self.term.ctrl_c()
        code = self.term.wait_job(SETTLE_S)

        def left():  # (the terminal's shell names the demo dir too: it stays, as a user's shell does)
            return demo_processes(self.demo_dir, besides=(self.term.shell.pid,))
        # Within SETTLE_S of ^C everything of the demo has ended ...
        while left() and time.time() - t0 < SETTLE_S:
            time.sleep(0.2)
        time.sleep(REGROW_S)  # ... and nothing came back
        out = self.term.output()
        self.assertIsNotNone(code, f"make still running {SETTLE_S} s after ^C:\n{out[-3000:]}")
        self.assertEqual(left(), [], f"left running {SETTLE_S} s after ^C:\n{out[-3000:]}")
        self.assertIn("demo: stopped", out)
        return out

    def runs(self):
        con = sqlite3.connect(os.path.join(self.demo_dir, "controlplane.sqlite"), timeout=10)
        try:
            return con.execute("SELECT j.type, r.status, r.error FROM job_runs r "
                               "JOIN jobs j ON j.job_id = r.job_id ORDER BY r.created_at").fetchall()
        finally:
            con.close()

    def spool(self):
        d = os.path.join(self.demo_dir, "data", "runs")
        return [n for n in os.listdir(d) if not n.startswith(".")] if os.path.isdir(d) else []

    def test_ctrl_c_after_all_jobs_stops_everything(self):
        self.start_demo()
        self.term.wait_output("Ctrl-C stops everything", 300)
        self.assertIn("9 of 9 jobs completed", self.term.output())
        out = self.press_ctrl_c_and_settle()
        self.assertNotIn("Traceback", out)
        self.assertEqual(self.spool(), [])
        self.assertEqual([s for _, s, _ in self.runs()], ["COMPLETED"] * 9)
        with open(os.path.join(self.demo_dir, "agent.log")) as f:
            log = f.read()
        self.assertIn("SIGINT received: shutting down", log)
        self.assertNotIn("killing", log)

    def test_ctrl_c_with_a_download_in_flight_ends_and_delivers_it(self):
        self.start_demo("--slow-downloads", "60")
        self.term.wait_output("[1/9] INSTALL_SERVER", 120)
        # In flight: the download has started and reported progress.
        self.term.wait_output("downloading", 60)
        out = self.press_ctrl_c_and_settle()
        self.assertNotIn("Traceback", out)
        runs = self.runs()
        jtype, status, error = runs[0]
        self.assertEqual(jtype, "INSTALL_SERVER")
        self.assertEqual(status, "FAILED", runs)  # cancelled after the 5 s drain, and delivered
        self.assertIn("shutting down", error)
        # The control plane queued its automatic retry; no agent ever took it.
        self.assertEqual([(t, s) for t, s, _ in runs[1:]], [("INSTALL_SERVER", "QUEUED")], runs)
        self.assertEqual(self.spool(), [])
        with open(os.path.join(self.demo_dir, "agent.log")) as f:
            log = f.read()
        self.assertIn("drain_timeout (5 s) reached: cancelling 1 running runs", log)
        self.assertNotIn("killing", log)


if __name__ == "__main__":
    unittest.main()
