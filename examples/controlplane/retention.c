/* retention.c — delete finished jobs, their runs and events once they are
 * older than --retention-days, keeping the newest --retention-keep jobs of
 * every instance and never touching schedules.
 *
 * A job with many events is deleted a batch of events at a time, each batch
 * its own short transaction, then its runs and the job row. None of it holds
 * cp->mu: the store is thread-safe on both backends (SQLite serialises on
 * its connection's lock, one batch at a time; PostgreSQL needs no lock), and
 * polls, which no longer hold cp->mu across the store either, would otherwise
 * wait for a batch at each of their short memory sections. The batch adapts
 * to what the backend does in BATCH_TARGET_MS: it starts at BATCH_MIN rows,
 * doubles after a quick batch and halves after a slow one, so on SQLite a
 * poll waits for a few tens of milliseconds at most while a
 * fast store drains at its own speed. The main thread spends at most BUDGET_MS per sweep on it, so a
 * backlog of millions of events drains over many sweeps while polls,
 * events and UI calls are answered between the batches. */
#include "cp.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define BATCH_MIN 500
#define BATCH_MAX 32000
#define BATCH_TARGET_MS 20 /* grow below half of it, shrink above twice it */
#define BUDGET_MS 150
#define CHECK_EVERY_MS 10000 /* when there was nothing to delete */

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void adapt_batch(struct cp_retention *rt, int64_t took_ms)
{
	if (took_ms < BATCH_TARGET_MS / 2 && rt->batch < BATCH_MAX)
		rt->batch *= 2;
	else if (took_ms > BATCH_TARGET_MS * 2 && rt->batch > BATCH_MIN)
		rt->batch /= 2;
}

void retention_tick(struct cp *cp)
{
	struct cp_retention *rt = &cp->retention;
	char *current = rt->current;
	if (cp->cfg.retention_days <= 0)
		return;
	int64_t start = mono_ms();
	if (!current[0] && start < rt->next_check)
		return;
	int64_t cutoff = jv_now_real_ms() - (int64_t)cp->cfg.retention_days * 86400 * 1000;
	while (mono_ms() - start < BUDGET_MS) {
		int rc;
		if (!current[0]) {
			rc = store_retention_pick(cp->store, cutoff, cp->cfg.retention_keep, current);
			if (rc <= 0) {
				current[0] = '\0';
				rt->next_check = start + CHECK_EVERY_MS;
				if (rc < 0)
					jv_error(NULL, NULL, "retention: cannot look for expired jobs");
				else if (rt->jobs_total)
					jv_info(NULL, NULL, "retention: deleted %llu jobs with %llu events so far",
					        (unsigned long long)rt->jobs_total, (unsigned long long)rt->events_total);
				return;
			}
		}
		if (rt->batch < BATCH_MIN)
			rt->batch = BATCH_MIN;
		int64_t t0 = mono_ms();
		rc = store_retention_events(cp->store, current, rt->batch);
		adapt_batch(rt, mono_ms() - t0);
		if (rc == 0) {
			rc = store_job_delete(cp->store, current);
			if (rc == 0)
				rt->jobs_total++;
			current[0] = '\0';
		} else if (rc > 0) {
			rt->events_total += (uint64_t)rc;
		}
		if (rc < 0) {
			jv_error(NULL, NULL, "retention: delete failed; trying again later");
			current[0] = '\0';
			rt->next_check = start + CHECK_EVERY_MS;
			return;
		}
	}
}
