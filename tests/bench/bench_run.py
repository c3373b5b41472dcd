#!/usr/bin/env python3
"""Whole-process wall time of `jobvisor run` on a no-op script, side by side with
/bin/true and `lua5.4 -e ''` in the same run. Prints a Markdown table.

usage: bench_run.py JOBVISOR_BIN [RUNS] [--update docs/performance.md] [--also LABEL=BIN]
The commands take turns: each round runs every command once, in an order that rotates
from round to round, so a noisy neighbour slows all of them alike. --also adds the no-op
rows for another jobvisor binary (e.g. the previous build, to measure a change side by side).
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


def measure(cases, runs):
    """{name: [ms...]}: every case once per round, the order rotating."""
    times = {name: [] for name, _ in cases}
    for rnd in range(runs):
        k = rnd % len(cases)
        for name, argv in cases[k:] + cases[:k]:
            t0 = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append((time.perf_counter() - t0) * 1000)
    out = {}
    for name, v in times.items():
        v.sort()
        out[name] = (statistics.median(v), v[int(len(v) * 0.9)])
    return out


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
    also = []
    while "--also" in args:
        k = args.index("--also")
        label, _, binary = args[k + 1].partition("=")
        also.append((label, binary))
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
        # The same with the data dir on tmpfs: what the run costs without the disk (a
        # no-op run makes no fsync; a run that marks or lasts a second does).
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            shm = tempfile.mkdtemp(prefix="jv-bench-", dir="/dev/shm")
        for label, binary in [("", jv)] + [(f" ({lb})", b) for lb, b in also]:
            cases.append((f"jobvisor run noop.lua{label}", [binary, "run", script, "--instance", "bench",
                                                             "--data-dir", os.path.join(tmp, "data")]))
            if shm:
                cases.append((f"jobvisor run noop.lua{label} (data dir on tmpfs)",
                              [binary, "run", script, "--instance", "bench", "--data-dir", shm]))
        # warm up caches once each
        for _, argv in cases:
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = measure(cases, runs)
        rows = [(name, res[name][0], res[name][1]) for name, _ in cases]
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
