#!/usr/bin/env bash
# bench_cp.sh — jobvisor-cp under simulated agents (tests/bench/cp_load.c).
#
#   500 and 2000 agents polling every 3 s with 20 jobs/s (about 400 events/s),
#   then 500 agents with 100 jobs/s (about 2000 events/s); 30 s each.
#
# usage: tests/bench/bench_cp.sh [BUILD_DIR] [--update docs/performance.md]
# Use a build without sanitizers. Prints a Markdown table; --update replaces
# the block between the cp_load:latest markers in the given file (the curated
# runs and their discussion above it are left alone).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
UPDATE=""
if [ "${2:-}" = "--update" ]; then UPDATE=${3:?file to update}; fi
BUILD=$(cd "$BUILD" && pwd)
CP="$BUILD/examples/controlplane/jobvisor-cp"
LOAD="$BUILD/examples/controlplane/cp_load"
[ -x "$CP" ] && [ -x "$LOAD" ] || { echo "build $BUILD first (jobvisor-cp and cp_load)" >&2; exit 2; }
DURATION=${JV_BENCH_CP_DURATION:-30}

OUT=$("$LOAD" --cp "$CP" --agents 500,2000 --duration "$DURATION")
OUT="$OUT
$("$LOAD" --cp "$CP" --agents 500 --jobs-per-sec 100 --duration "$DURATION" | tail -n 1)"
echo "$OUT"

if [ -n "$UPDATE" ]; then
  python3 - "$UPDATE" "$OUT" <<'PY'
import datetime, sys
path, table = sys.argv[1], sys.argv[2]
text = open(path).read()
begin, end = "<!-- cp_load:latest:begin -->", "<!-- cp_load:latest:end -->"
i, j = text.index(begin) + len(begin), text.index(end)
block = "\nLatest `make bench` run (%s):\n\n%s\n" % (datetime.date.today().isoformat(), table)
open(path, "w").write(text[:i] + block + text[j:])
PY
fi
