/* delivery.h — sending each run's events and result to the control plane.
 *
 * Per run there is at most one request in flight, so events arrive in seq
 * order; they go in batches of the oldest unacknowledged ones, and the result
 * goes only once every event is acknowledged. Failures are retried with
 * exponential backoff and jitter (honouring Retry-After) while the spool
 * keeps everything. What an answer asks of the run's owner (the scheduler)
 * is a verdict it takes after the answers are in: 409 drops the run; other
 * 4xx answers are logged as errors and, after a few, the run is given up (its
 * record kept aside); an events answer may ask for the run to be cancelled.
 * Delivery never calls back into its owner. */
#ifndef JOBVISOR_DELIVERY_H
#define JOBVISOR_DELIVERY_H

#include <stdbool.h>
#include <stdint.h>

#include "agent.h"

#define DELIVERY_BATCH_EVENTS 100
#define DELIVERY_BATCH_BYTES (256 * 1024)
#define DELIVERY_MAX_REJECTS 5

void delivery_init(struct srun *run);
/* The verdict of the answers since the last call, and whether one of them
 * asked to cancel the run; resets both. *why (for DROP and REJECT) is
 * borrowed from run until the next answer. */
enum delivery_verdict delivery_take_verdict(struct srun *run, bool *cancel, const char **why);
void delivery_abort(struct srun *run);
/* Something to send: unacknowledged events, or the result after them. */
bool delivery_has_work(const struct srun *run);
/* Start the next request for every run that has work and is not waiting. */
void delivery_kick_all(struct agent *ag, int64_t now_ms);
/* Earliest retry time among waiting runs, INT64_MAX if none. */
int64_t delivery_next_deadline(const struct agent *ag);
/* True when no request is in flight and nothing more will be tried now
 * (during shutdown a failed run is not retried: its spool waits for the
 * next start). */
bool delivery_settled(const struct agent *ag);

#endif
