/* instwatch.h — the agent watches every instance monitor and reports state.
 *
 * The agent subscribes to the monitor of every instance under
 * <data_dir>/instances (found by a scan at start, an inotify watch on the
 * directory and on each instance's .jobvisor/, and a slow periodic rescan).
 * A subscription that ends while state.json says the monitor should still be
 * there means the monitor died (OOM killer, kill -9): the agent starts a new
 * monitor at once, which adopts the running server (and takes over its console
 * FIFOs, so the server never blocks on a full stdout), or, when the server
 * died too, starts it again as its restart policy says.
 *
 * Every state change an instance goes through becomes one event in the
 * instance's durable stream (spool.c, runs/.instances/<id>/, seq per
 * instance), delivered at once and in order to
 * POST /v1/agents/{agentId}/instances/{instanceId}/events; a full snapshot
 * goes to POST /v1/agents/{agentId}/instances at start and whenever the
 * control plane asks for it (poll answer "sendInstances": true). A control
 * plane that answers 404 does not know instances: reporting is turned off
 * for this run of the agent (logged once); watching and re-adoption go on.
 *
 * The loop feeds this module its descriptors (inotify, monitor sockets,
 * launch status pipes) and timers; nothing here blocks for long: socket
 * connects are to local Unix sockets, requests go through the transport. */
#ifndef JOBVISOR_INSTWATCH_H
#define JOBVISOR_INSTWATCH_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <limits.h>

#include "jobvisor/ident.h"

#include "agent.h"

#define INSTWATCH_MAX 200 /* instances watched; more are logged and left alone */
#define INSTWATCH_MAX_FDS (1 + 2 * INSTWATCH_MAX)

/* Scan and subscribe. Returns 0 or -errno (the agent runs on without it). */
int instwatch_start(struct agent *ag);
void instwatch_free(struct agent *ag); /* NULL-safe; leaves monitors running */

size_t instwatch_pollfds(struct agent *ag, struct pollfd *fds, size_t max);
void instwatch_on_fd(struct agent *ag, int fd, short revents);
int64_t instwatch_next_deadline(const struct agent *ag);
void instwatch_tick(struct agent *ag, int64_t now_ms);

/* The control plane answered a poll and asked for (or may need) a full
 * snapshot; reports waiting out a backoff are sent now too. */
void instwatch_want_snapshot(struct agent *ag);
/* A job run ended: instances may have appeared or gone. */
void instwatch_rescan_soon(struct agent *ag);
/* Instances present now: for a live server (pid > 0) its pid, start time,
 * start (wall clock ms) and cgroup ("" when none). Returns how many. */
struct instwatch_live {
	char id[JV_IDENT_MAX + 1];
	char dir[PATH_MAX];
	int64_t pid;
	uint64_t start_time;
	int64_t started_ms;
	char cgroup[PATH_MAX];
};
size_t instwatch_live(const struct agent *ag, struct instwatch_live *out, size_t max);
/* The control plane takes instance reports (no 404 seen). */
bool instwatch_reporting(const struct agent *ag);
/* A delivery or snapshot request is in flight (shutdown waits for it). */
bool instwatch_busy(const struct agent *ag);

#endif
