/* poller.h — asking the control plane for work.
 *
 * POST /v1/agents/{agentId}/poll with {capacity, running, waitSeconds}:
 * capacity is how many runs the agent runs at once (the control plane
 * subtracts those it has assigned and not yet seen finished), running lists
 * every run it holds with its last seq (renewing their leases). The answer's
 * jobs go to the scheduler, its cancel list to the runs. Polls repeat every
 * poll_interval plus up to poll_jitter (the control plane's
 * pollIntervalSeconds can slow that down, not speed it up); with
 * poll_wait > 0 the agent asks for a long poll while it has a free slot and,
 * if the control plane held the request, polls again at once. Failed polls
 * back off exponentially, honouring Retry-After. */
#ifndef JOBVISOR_POLLER_H
#define JOBVISOR_POLLER_H

#include <stdint.h>

#include "agent.h"

void poller_init(struct agent *ag);
/* Send a poll if one is due and none is in flight (never while stopping). */
void poller_tick(struct agent *ag, int64_t now_ms);
/* Monotonic time of the next poll, INT64_MAX while one is in flight or stopping. */
int64_t poller_next_deadline(const struct agent *ag);
/* Abandon a poll in flight (teardown). */
void poller_abort(struct agent *ag);
/* Abandon a parked long poll only; a short poll in flight is let answer (shutdown). */
void poller_abort_parked(struct agent *ag);
bool poller_in_flight(const struct agent *ag);
/* Poll soon (e.g. capacity freed up while idle on a short interval). */
void poller_poll_now(struct agent *ag);

#endif
