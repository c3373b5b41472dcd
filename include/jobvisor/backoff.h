/* backoff.h — when to try again: exponential backoff with jitter and Retry-After.
 *
 * Pure arithmetic (the caller supplies the random number) so the schedule can
 * be tested exactly. Delays double from base up to max; each delay is drawn
 * from [d/2, d] ("equal jitter") so agents that failed together do not retry
 * together. A Retry-After from the server is a floor, capped so a hostile or
 * confused server cannot park the agent for days. */
#ifndef JOBVISOR_BACKOFF_H
#define JOBVISOR_BACKOFF_H

#include <stdint.h>

/* The longest Retry-After honoured when backoff max is shorter. */
#define BACKOFF_RETRY_AFTER_CAP_MS (300 * 1000)

struct backoff {
	int64_t base_ms;
	int64_t max_ms;
	unsigned failures; /* consecutive failures so far */
};

void backoff_init(struct backoff *b, int64_t base_ms, int64_t max_ms);
/* Record a failure and return the delay before the next attempt.
 * retry_after_ms < 0 means none was given. rnd is any random 64-bit value. */
int64_t backoff_next(struct backoff *b, int64_t retry_after_ms, uint64_t rnd);
void backoff_reset(struct backoff *b);

#endif
