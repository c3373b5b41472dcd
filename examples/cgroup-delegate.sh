#!/bin/sh
# jobvisor cgroup-delegate — systemd ExecStart wrapper: lay out the delegated cgroup, then exec.
#
#   ExecStart=<libexecdir>/jobvisor/cgroup-delegate <bindir>/jobvisor agent --config FILE
#
# With Delegate=yes systemd hands the service its cgroup (/sys/fs/cgroup/system.slice/
# jobvisor.service) to manage. cgroup v2 lets a cgroup give controllers (memory, cpu, pids) to
# its children only while it holds no process itself, so the agent cannot stay at the top of
# it. This script moves itself (and the agent it becomes) one level down and prepares a sibling
# for the game servers:
#
#   jobvisor.service/          no processes; subtree_control: +memory +cpu +pids
#   |-- agent/                 the agent, its job runs and the instance monitors
#   `-- instances/             subtree_control: +memory +cpu +pids
#       `-- jobvisor-<id>-<hash>/   one game server each, with its instance.json "limits"
#
# and exports JOBVISOR_CGROUP_PARENT=<service>/instances, where the monitors create the
# per-server cgroups. Without cgroup v2, without write access to its cgroup (no Delegate=yes),
# or with JOBVISOR_CGROUP_PARENT already set, it changes nothing and says why on stderr (the
# journal); the agent then runs as it would without it. Needs root (or the cgroup's owner).
set -u
say() { echo "jobvisor cgroup-delegate: $*" >&2; }

if [ "$#" -eq 0 ]; then
	say "usage: cgroup-delegate COMMAND [ARG...]"
	exit 2
fi
if [ -n "${JOBVISOR_CGROUP_PARENT:-}" ]; then
	say "JOBVISOR_CGROUP_PARENT is set ($JOBVISOR_CGROUP_PARENT): layout left alone"
	exec "$@"
fi
mnt=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
own=$(sed -n 's/^0:://p' /proc/self/cgroup)
if [ -z "$mnt" ] || [ -z "$own" ]; then
	say "no cgroup v2 hierarchy here: game servers get no cgroup limits"
	exec "$@"
fi
base="$mnt${own%/}"
case "$base" in
*/agent) base=${base%/agent} ;; # already moved (a restart of this script in place)
esac
if [ ! -w "$base/cgroup.procs" ] || [ ! -w "$base/cgroup.subtree_control" ]; then
	say "cgroup '$base' is not delegated to this service (Delegate=yes?): game servers get no cgroup limits"
	exec "$@"
fi
if ! mkdir -p "$base/agent" "$base/instances" || ! echo $$ >"$base/agent/cgroup.procs"; then
	say "cannot set up '$base/agent' and '$base/instances': game servers get no cgroup limits"
	exec "$@"
fi
ctrls=""
for c in memory cpu pids; do
	if tr ' ' '\n' <"$base/cgroup.controllers" | grep -qx "$c"; then
		ctrls="$ctrls +$c"
	fi
done
if [ -n "$ctrls" ]; then
	if ! echo "$ctrls" >"$base/cgroup.subtree_control" ||
		! echo "$ctrls" >"$base/instances/cgroup.subtree_control"; then
		say "cannot enable$ctrls below '$base' (a process left in it?): limits will not apply"
		ctrls=""
	fi
fi
export JOBVISOR_CGROUP_PARENT="$base/instances"
say "agent in '$base/agent', game servers below '$base/instances' (controllers:${ctrls:- none})"
exec "$@"
