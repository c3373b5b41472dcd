/* backoff.c — exponential backoff with equal jitter, honouring Retry-After. */
#include "jobvisor/backoff.h"

void backoff_init(struct backoff *b, int64_t base_ms, int64_t max_ms)
{
	b->base_ms = base_ms > 0 ? base_ms : 1;
	b->max_ms = max_ms >= b->base_ms ? max_ms : b->base_ms;
	b->failures = 0;
}

void backoff_reset(struct backoff *b)
{
	b->failures = 0;
}

int64_t backoff_next(struct backoff *b, int64_t retry_after_ms, uint64_t rnd)
{
	int64_t d = b->base_ms;
	for (unsigned i = 0; i < b->failures && d < b->max_ms; i++)
		d *= 2;
	if (d > b->max_ms)
		d = b->max_ms;
	if (b->failures < 64)
		b->failures++;
	int64_t half = d / 2;
	int64_t delay = half + (int64_t)(rnd % (uint64_t)(d - half + 1));
	if (retry_after_ms >= 0) {
		int64_t cap = b->max_ms > BACKOFF_RETRY_AFTER_CAP_MS ? b->max_ms : BACKOFF_RETRY_AFTER_CAP_MS;
		int64_t ra = retry_after_ms > cap ? cap : retry_after_ms;
		/* A little jitter on top, so a crowd told "retry in 5 s" spreads out. */
		ra += (int64_t)((rnd >> 32) % (uint64_t)(ra / 10 + 1));
		if (ra > delay)
			delay = ra;
	}
	return delay;
}
