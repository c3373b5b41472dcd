#!/usr/bin/env python3
"""Whole-process wall time of `jobvisor run` on a no-op script, side by side with
/bin/true and `lua5.4 -e ''` in the same run. Prints a Markdown table.

usage: bench_run.py JOBVISOR_BIN [RUNS] [--update docs/performance.md]
With --update, the table replaces what stands between <!-- bench_run:begin -->
and <!-- bench_run:end --> in that file.
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


def update(path, table):
    with open(path) as f:
        text = f.read()
    begin, end = "<!-- bench_run:begin -->", "<!-- bench_run:end -->"
    i, j = text.index(begin) + len(begin), text.index(end)
    with open(path, "w") as f:
        f.write(text[:i] + "\n" + table + text[j:])


def main():
    args = sys.argv[1:]
    target = None
    if "--update" in args:
        k = args.index("--update")
        target = args[k + 1]
        del args[k:k + 2]
    jv = args[0]
    runs = int(args[1]) if len(args) > 1 else 300
    tmp = tempfile.mkdtemp(prefix="jv-bench-")
    shm = None
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
        # The same with the data dir on tmpfs: what the run costs without the disk's
        # fsync latency (the run marker is written and removed durably every run).
        shm = None
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            shm = tempfile.mkdtemp(prefix="jv-bench-", dir="/dev/shm")
            cases.append(("jobvisor run noop.lua (data dir on tmpfs)",
                          [jv, "run", script, "--instance", "bench", "--data-dir", shm]))
        # warm up caches once each
        for _, argv in cases:
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = []
        for name, argv in cases:
            med, p90 = measure(argv, runs)
            rows.append((name, med, p90))
        base = rows[0][1]
        out = [f"runs per command: {runs}", "",
               "| command | median ms | p90 ms | median / /bin/true |", "| --- | --- | --- | --- |"]
        for name, med, p90 in rows:
            out.append(f"| `{name}` | {med:.2f} | {p90:.2f} | {med / base:.1f}x |")
        table = "\n".join(out) + "\n"
        print(table)
        if target:
            update(target, table)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if shm:
            shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    main()
