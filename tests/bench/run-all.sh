#!/usr/bin/env bash
# make bench: every benchmark, side by side with its peers, rewriting the
# tables in docs/performance.md. Needs a build without sanitizers (BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
DOC=docs/performance.md
[ -x "$BUILD/jobvisor" ] || { echo "bench: build first ($BUILD/jobvisor missing)"; exit 2; }

python3 - "$DOC" <<'PY'
import os, platform, subprocess, sys, datetime
doc = sys.argv[1]
cpu = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
mem = int(open("/proc/meminfo").readline().split()[1]) // 1024 // 1024
kernel = platform.release()
table = (f"Measured {datetime.date.today().isoformat()} on: {os.cpu_count()} cores ({cpu}), "
         f"{mem} GiB, Linux {kernel}.\n")
text = open(doc).read()
b, e = "<!-- machine:begin -->", "<!-- machine:end -->"
i, j = text.index(b) + len(b), text.index(e)
open(doc, "w").write(text[:i] + "\n" + table + text[j:])
PY

run() { echo "== $*"; "$@"; }
run python3 tests/bench/bench_run.py "$BUILD/jobvisor" 300 --update "$DOC"
run python3 tests/bench/bench_jobs.py "$BUILD/jobvisor" --update "$DOC"
run python3 tests/bench/bench_remote.py "$BUILD/jobvisor" --update "$DOC"
run python3 tests/bench/bench_agent_rss.py "$BUILD" --update "$DOC"
for b in tests/bench/bench_*.sh; do
  run "$b" "$BUILD" --update "$DOC"
done
# The control plane at fleet scale (issue 14): SQLite, PostgreSQL x1 and x2;
# bounded (about 9 x 30 s + 2 x 13 s); tables in docs/scaling.md.
run python3 tests/bench/bench_cp_events.py "$BUILD" --update docs/scaling.md
run python3 tests/bench/bench_cp_fleet.py "$BUILD" --update docs/scaling.md
# One replica at connection scale: 10,000 parked long polls + 200 WebSocket
# clients, new-poll p50/p99, RSS per parked poll and per client (about 90 s).
run python3 tests/bench/bench_cp_parked.py "$BUILD/examples/controlplane/jobvisor-cp" --label "make bench" \
  --update docs/scaling.md
echo "bench: $DOC and docs/scaling.md updated"
