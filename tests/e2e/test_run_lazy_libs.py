"""Libraries a job run does not need are not loaded, and are there once it does.

jobvisor links only libc and cJSON; libm, libcurl, libarchive and libcrypto are loaded
on first use (supervisor/core/math_lazy.c, curl_lazy.c, lua/archive_lazy.c, crypto_lazy.c;
docs/performance.md). Mapping and relocating one of them costs about 0.09 ms of a no-op
run. What the loader does is read from its own trace (LD_DEBUG=files) of both processes
of `jobvisor run`; what a script computes with math is checked value by value.
"""
import os
import re
import subprocess

from jv_run import JOBVISOR, JobvisorTestCase, RunResult

LAZY = ("libm.so", "libcurl.so", "libarchive.so", "libcrypto.so")


def startup_libs():
    """Libraries the process has at exec (a sanitizer build's runtime needs libm itself)."""
    return subprocess.run(["ldd", JOBVISOR], capture_output=True, text=True, check=True).stdout


class LazyLibraries(JobvisorTestCase):
    def traced(self, path):
        env = dict(os.environ, LD_DEBUG="files")
        p = subprocess.run(self.cmd(path), capture_output=True, text=True, timeout=60, env=env)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        return p, RunResult(p.returncode, p.stdout, p.stderr).result["output"]

    def needed_by_jobvisor(self, trace, lib):
        """A dependency of the binary itself (not of a sanitizer runtime)."""
        return re.search(r"file=[^ ]*%s[^ ]* \[0\];\s+needed by [^ ]*/jobvisor \[0\]" % re.escape(lib),
                         trace)

    def loaded_later(self, trace, lib):
        """dlopen()ed during the run (not needed at exec)."""
        return re.search(r"file=[^ ]*%s[^ ]* \[0\];\s+dynamically loaded by" % re.escape(lib), trace)

    def test_a_noop_run_loads_none_of_them(self):
        path = self.script('return { type = "NOOP", run = function(job) return { n = 3.0, x = 2.5 } end }')
        p, out = self.traced(path)
        self.assertIn("generating link map", p.stderr)  # the trace is there at all
        for lib in LAZY:
            self.assertIsNone(self.needed_by_jobvisor(p.stderr, lib), lib)
            self.assertIsNone(self.loaded_later(p.stderr, lib), lib)
        # JSON numbers without libm: a whole float is an integer, the rest stays a float
        self.assertEqual(out, {"n": 3, "x": 2.5})
        self.assertIsInstance(out["n"], int)

    def test_math_in_a_script_loads_libm_and_computes_exactly(self):
        path = self.script("""
return { type = "MATH", run = function(job)
  local f = function(x) return string.format("%.12g", x) end
  return {
    floor = math.floor(3.7), ceil = math.ceil(3.2), sqrt = f(math.sqrt(2)),
    pow = f(2 ^ 0.5), mod = f(7.5 % 2), fmod = f(math.fmod(-7.5, 2)),
    sin = f(math.sin(1)), cos = f(math.cos(1)), tan = f(math.tan(1)),
    asin = f(math.asin(0.5)), acos = f(math.acos(0.5)), atan = f(math.atan(1, 2)),
    exp = f(math.exp(1)), log = f(math.log(10)), log2 = f(math.log(8, 2)),
    log10 = f(math.log(1000, 10)), idiv = f(7.5 // 2), big = f(1e300 * 1e10),
  }
end }""")
        p, out = self.traced(path)
        if "libm.so" not in startup_libs():
            self.assertIsNotNone(self.loaded_later(p.stderr, "libm.so"), p.stderr[-2000:])
        self.assertEqual(out, {
            "floor": 3, "ceil": 4, "sqrt": "1.41421356237", "pow": "1.41421356237",
            "mod": "1.5", "fmod": "-1.5", "sin": "0.841470984808", "cos": "0.540302305868",
            "tan": "1.55740772465", "asin": "0.523598775598", "acos": "1.0471975512",
            "atan": "0.463647609001", "exp": "2.71828182846", "log": "2.30258509299",
            "log2": "3", "log10": "3", "idiv": "3", "big": "inf",
        })
