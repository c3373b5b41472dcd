/* protocol.h — the wire objects of docs/protocol.md that several places build:
 * a run's events, its result and the error inside it.
 *
 * The agent's job-run parent (jobrun.c) and scheduler (runs it ends itself),
 * and the job-run child (lua/child_main.c, for the error it hands its
 * parent), all build them here, so a field added to the protocol is added
 * once. Every constructor returns a returned-owned object (cJSON_Delete), or
 * NULL when out of memory. */
#ifndef JOBVISOR_PROTOCOL_H
#define JOBVISOR_PROTOCOL_H

#include <stdbool.h>
#include <stdint.h>
#include <cjson/cJSON.h>

/* error.reason of a FAILED result for a run the agent gave back without
 * starting it (it was shutting down): the control plane queues the run again
 * and does not count the attempt (docs/protocol.md section 5). */
#define JV_REASON_NOT_STARTED "not_started"

/* {message, stack, retryable[, reason]}; stack NULL is "", reason NULL is left out. */
cJSON *jv_proto_error(const char *message, const char *stack, bool retryable, const char *reason);

/* {status, output, error, finishedAt (now), lastSeq}. output and error are
 * consumed; NULL writes null. */
cJSON *jv_proto_result(const char *status, cJSON *output, cJSON *error, uint64_t last_seq);

/* One event. instance_id NULL or "" writes null; percent < 0 writes null
 * (else rounded to 0.1); message NULL writes null; level NULL is left out;
 * ts_ms <= 0 is now. */
struct jv_proto_event {
	uint64_t seq;
	const char *kind; /* "status", "progress", "log" */
	const char *job_id;
	const char *run_id;
	const char *instance_id;
	const char *status;
	double percent;
	const char *message;
	const char *level;
	int64_t ts_ms;
};
cJSON *jv_proto_event(const struct jv_proto_event *e);

#endif
