"""`cmake --install` to a temporary prefix: the installed agent finds its built-in jobs."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest


class Install(unittest.TestCase):
    def test_installed_binary_runs_builtin_jobs(self):
        build = os.environ["JV_BUILD_DIR"]
        prefix = tempfile.mkdtemp(prefix="jv-install-")
        try:
            subprocess.run(["cmake", "--install", build, "--prefix", prefix], check=True,
                           capture_output=True)
            jv = os.path.join(prefix, "bin", "jobvisor")
            self.assertTrue(os.access(jv, os.X_OK))
            jobs = os.path.join(prefix, "share", "jobvisor", "jobs")
            self.assertTrue(os.path.exists(os.path.join(jobs, "stop_instance.lua")))
            src_jobs = os.path.join(os.environ["JV_SOURCE_DIR"], "jobs")
            for name in os.listdir(src_jobs):
                if name.endswith(".lua"):
                    self.assertTrue(os.path.exists(os.path.join(jobs, name)), name)
            examples = os.path.join(prefix, "share", "doc", "jobvisor", "examples")
            for name in ("agent.conf.example", "jobvisor.service", "jobs/depot_update.lua"):
                self.assertTrue(os.path.exists(os.path.join(examples, name)), name)
            self.assertTrue(os.access(os.path.join(prefix, "bin", "jobvisor-monitor"), os.X_OK))
            data = os.path.join(prefix, "data")
            p = subprocess.run([jv, "run", "STOP_INSTANCE", "--instance", "i1", "--data-dir", data, "--json"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            result = json.loads(p.stdout.splitlines()[-1])
            self.assertEqual(result["status"], "COMPLETED")
        finally:
            shutil.rmtree(prefix, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
