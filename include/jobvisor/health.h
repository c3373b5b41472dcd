/* health.h — the liveness file the agent writes and `jobvisor health` reads.
 *
 * <data_dir>/agent-state.json, rewritten (rename, no fsync) every
 * JV_HEALTH_BEAT_MS by the agent's loop and at once when its shutdown phase
 * changes; removed on a clean exit. Fields (times also as epoch ms in the
 * "...Ms" twin): agentId, version, pid, pidStartTime (clock ticks since boot),
 * bootId, state (running | draining | cancelling | delivering), url (the
 * control-plane URL requests go to now), startedAt,
 * heartbeatAt, heartbeatIntervalSeconds, lastPollAt (null before the first
 * answered poll), pollFailures, pollIntervalSeconds, runsRunning, runsHeld. */
#ifndef JOBVISOR_HEALTH_H
#define JOBVISOR_HEALTH_H

#define JV_HEALTH_STATE_FILE "agent-state.json"
#define JV_HEALTH_BEAT_MS 5000

#endif
