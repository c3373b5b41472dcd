"""The code's shape, kept: no function in the non-test C code is longer than 100 lines
(issue 16; STYLE.md: split by responsibility)."""
import os
import subprocess
import sys
import unittest

SRC = os.environ.get("JV_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class CodeShape(unittest.TestCase):
    def test_no_function_over_100_lines(self):
        tool = os.path.join(SRC, "tests", "tools", "long_functions.py")
        r = subprocess.run([sys.executable, tool, "--max", "100"], cwd=SRC, capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("0 function(s) over 100 lines", r.stdout)

    def test_the_counter_finds_a_long_function(self):
        # The check can fail: a 120-line function in a scratch tree is reported.
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            body = "\n".join("\tx += %d;" % i for i in range(120))
            with open(os.path.join(d, "long.c"), "w") as f:
                f.write("static int f(int x)\n{\n%s\n\treturn x;\n}\n" % body)
            tool = os.path.join(SRC, "tests", "tools", "long_functions.py")
            r = subprocess.run([sys.executable, tool, "--max", "100", d], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("long.c", r.stdout)


if __name__ == "__main__":
    unittest.main()
