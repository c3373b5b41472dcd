"""`make demo` end to end (with --exit): control plane + agent + demo server, every job COMPLETED,
twice in a row, and nothing left running afterwards."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from jv_run import processes_in_group

SOURCE = os.environ["JV_SOURCE_DIR"]
BUILD = os.environ["JV_BUILD_DIR"]


def demo_processes(demo_dir):
    """Processes whose command line mentions the demo dir (monitor, server, agent, cp)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if demo_dir in cmd and state != "Z":
            found.append((int(d), cmd))
    return found


class Demo(unittest.TestCase):
    def test_demo_runs_every_job_twice_and_cleans_up(self):
        tmp = tempfile.mkdtemp(prefix="jv-demo-")
        demo_dir = os.path.join(tmp, "demo")
        try:
            for attempt in (1, 2):
                p = subprocess.run([sys.executable, os.path.join(SOURCE, "examples", "demo", "demo.py"),
                                    "--build-dir", BUILD, "--demo-dir", demo_dir, "--exit"],
                                   capture_output=True, text=True, timeout=400)
                self.assertEqual(p.returncode, 0, f"attempt {attempt}:\n{p.stdout[-4000:]}\n{p.stderr[-2000:]}")
                self.assertIn("9 of 9 jobs completed", p.stdout)
                for jtype in ("INSTALL_SERVER", "START_INSTANCE", "BACKUP_INSTANCE", "VERIFY_BACKUP",
                              "SYNC_MODS", "RESTORE_BACKUP", "PRUNE_BACKUPS", "STOP_INSTANCE"):
                    self.assertIn(jtype, p.stdout)
                self.assertIn("Web UI: http://127.0.0.1:", p.stdout)
                self.assertEqual(demo_processes(demo_dir), [])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
