#!/usr/bin/env python3
"""Whole-process wall time of `jobvisor run` on a no-op script, side by side with
/bin/true and `lua5.4 -e ''` in the same run. Prints a Markdown table.

usage: bench_run.py JOBVISOR_BIN [RUNS]
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def measure(argv, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9)]


def main():
    jv = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    tmp = tempfile.mkdtemp(prefix="jv-bench-")
    try:
        script = os.path.join(tmp, "noop.lua")
        with open(script, "w") as f:
            f.write('return { type = "NOOP", run = function(job) end }\n')
        lua = shutil.which("lua5.4") or shutil.which("lua")
        cases = [("/bin/true", ["/bin/true"])]
        if lua:
            cases.append(("lua5.4 -e ''", [lua, "-e", ""]))
        cases.append(("jobvisor run noop.lua", [jv, "run", script, "--instance", "bench",
                                                 "--data-dir", os.path.join(tmp, "data")]))
        # warm up caches once each
        for _, argv in cases:
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = []
        for name, argv in cases:
            med, p90 = measure(argv, runs)
            rows.append((name, med, p90))
        base = rows[0][1]
        print(f"runs per command: {runs}\n")
        print("| command | median ms | p90 ms | median / /bin/true |")
        print("| --- | --- | --- | --- |")
        for name, med, p90 in rows:
            print(f"| `{name}` | {med:.2f} | {p90:.2f} | {med / base:.1f}x |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
