/* scheduler.h — admitting assignments and tracking the agent's job runs.
 *
 * The scheduler checks every assignment before anything runs (identifiers,
 * job type, params, limits), enforces the global capacity and one run per
 * instance, starts accepted runs through jobrun, and records refused ones as
 * FAILED so the control plane hears about them. It owns the list of struct
 * srun in struct agent: children, their pipes and timers, cancellation, 409
 * drops, and the restart replay of the spool. */
#ifndef JOBVISOR_SCHEDULER_H
#define JOBVISOR_SCHEDULER_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "agent.h"
#include "jobvisor/jobrun.h"

/* An assignment after validation; strings borrowed from the JSON. */
struct assignment {
	const char *job_id;
	const char *run_id;   /* set whenever the id itself is valid, even if the rest is not */
	const char *type;
	const char *instance_id;
	const char *created_at;
	const cJSON *params;  /* an object, or NULL for {} */
	int attempt;
	int timeout_s;
	int cancel_grace_s;
};

/* Check one assignment against the protocol and the agent's limits (job
 * timeout and cancel grace are defaulted and capped). Returns 0, or -EINVAL
 * with a one-line reason in err. Does not look at the job scripts. */
int scheduler_parse_assignment(const cJSON *a, const struct config *cfg, struct assignment *out,
                               char *err, size_t errlen);

/* Take one assignment from a poll answer (borrowed). Never fails: refused
 * assignments are logged and, when they carry a usable run id, reported
 * FAILED. Returns false for a repeat of a run already held. */
bool scheduler_assign(struct agent *ag, const cJSON *assignment);
/* The control plane asked to cancel run_id. Returns true when this is news
 * (a live run not yet asked to stop). */
bool scheduler_cancel(struct agent *ag, const char *run_id);
/* Act on what delivery asked since the last call (delivery_take_verdict):
 * 409 stops the child and drops the record; a run the control plane keeps
 * refusing (other 4xx) is stopped and its record moved to runs/.rejected/;
 * cancelRequested cancels it. */
void scheduler_take_verdicts(struct agent *ag);

/* Free slots for new runs (0 while stopping). */
int scheduler_free_slots(const struct agent *ag);
size_t scheduler_live_children(const struct agent *ag);
size_t scheduler_held(const struct agent *ag); /* runs with a record (running or undelivered) */
/* [{jobRunId, lastSeq}] for every run held; returned-owned (cJSON_Delete). */
cJSON *scheduler_running_json(const struct agent *ag);

/* For the event loop (agent.c wires them): child pipes, SIGCHLD, timers, housekeeping. */
size_t scheduler_pollfds(struct agent *ag, struct pollfd *fds, struct srun **owners, size_t max);
void scheduler_on_readable(struct srun *run);
void scheduler_reap(struct agent *ag);
int64_t scheduler_next_deadline(const struct agent *ag);
void scheduler_on_timers(struct agent *ag, int64_t now_ms);
/* Free finished children and delivered runs. Returns how many slots it freed. */
size_t scheduler_housekeeping(struct agent *ag);

/* Cancel every live run (why: JOBRUN_SHUTDOWN) / SIGKILL them all. */
void scheduler_cancel_all(struct agent *ag, enum jobrun_stop why);
void scheduler_kill_all(struct agent *ag);
void scheduler_free_all(struct agent *ag);

/* Load the spool after a start: runs without a result were cut short by the
 * restart and are reported FAILED (retryable). Returns the number of runs. */
size_t scheduler_replay(struct agent *ag);

#endif
