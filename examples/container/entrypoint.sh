#!/bin/sh
# jobvisor-entrypoint — the agent's container: run the agent; once it has exited, stop the
# game servers gracefully; exit with the agent's status.
#
# Game servers started by jobs run inside this container: each instance's monitor fork-execs
# its server from the build on the data volume. When the container stops, the kernel SIGKILLs
# every process still in it as soon as PID 1 (tini) exits, and a server would lose what it had
# not saved. So this script, tini's only child, forwards SIGTERM, SIGINT and SIGQUIT to the
# agent (SIGTERM: it drains, see docs/operations.md), waits for it, then stops every instance
# the way a STOP_INSTANCE job does (the spec's stop command, then its signal) before it exits.
# Set JOBVISOR_STOP_INSTANCES_ON_EXIT=false to leave them to the kernel.
set -u
data="${JOBVISOR_DATA_DIR:-/var/lib/jobvisor}"

jobvisor agent "$@" &
agent=$!
trap 'kill -TERM "$agent" 2>/dev/null' TERM
trap 'kill -INT "$agent" 2>/dev/null' INT
trap 'kill -QUIT "$agent" 2>/dev/null' QUIT
rc=0
# `wait` also returns when a trapped signal arrives: wait again while the agent lives.
while kill -0 "$agent" 2>/dev/null; do
	wait "$agent"
	rc=$?
done

if [ "${JOBVISOR_STOP_INSTANCES_ON_EXIT:-true}" != false ] && [ -d "$data/instances" ]; then
	pids=""
	for dir in "$data"/instances/*/; do
		[ -f "$dir/instance.json" ] || continue
		id=$(basename "$dir")
		echo "jobvisor-entrypoint: stopping instance '$id'" >&2
		jobvisor run STOP_INSTANCE --instance "$id" --data-dir "$data" >&2 &
		pids="$pids $!"
	done
	for pid in $pids; do
		wait "$pid" || echo "jobvisor-entrypoint: a STOP_INSTANCE failed (see above)" >&2
	done
fi
exit "$rc"
