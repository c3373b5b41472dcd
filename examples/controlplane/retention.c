/* retention.c — delete finished jobs, their runs and events once they are
 * older than --retention-days, keeping the newest --retention-keep jobs of
 * every instance and never touching schedules.
 *
 * A job with many events must not hold cp->mu (and so every poll) while it
 * goes: its events are deleted BATCH rows at a time, each batch its own
 * short transaction with mu released in between, then its runs and the job
 * row. The main thread spends at most BUDGET_MS per sweep on it, so a
 * backlog of millions of events drains over many sweeps while polls,
 * events and UI calls are answered between the batches. */
#include "cp.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define BATCH 500
#define BUDGET_MS 150
#define CHECK_EVERY_MS 10000 /* when there was nothing to delete */

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void retention_tick(struct cp *cp)
{
	static int64_t next_check;
	static char current[CP_ID_MAX]; /* the job being deleted, kept across sweeps */
	static uint64_t events_total, jobs_total;
	if (cp->cfg.retention_days <= 0)
		return;
	int64_t start = mono_ms();
	if (!current[0] && start < next_check)
		return;
	int64_t cutoff = jv_now_real_ms() - (int64_t)cp->cfg.retention_days * 86400 * 1000;
	while (mono_ms() - start < BUDGET_MS) {
		pthread_mutex_lock(&cp->mu);
		int rc;
		if (!current[0]) {
			rc = store_retention_pick(cp->store, cutoff, cp->cfg.retention_keep, current);
			if (rc <= 0) {
				pthread_mutex_unlock(&cp->mu);
				current[0] = '\0';
				next_check = start + CHECK_EVERY_MS;
				if (rc < 0)
					jv_error(NULL, NULL, "retention: cannot look for expired jobs");
				else if (jobs_total)
					jv_info(NULL, NULL, "retention: deleted %llu jobs with %llu events so far",
					        (unsigned long long)jobs_total, (unsigned long long)events_total);
				return;
			}
		}
		rc = store_retention_events(cp->store, current, BATCH);
		if (rc == 0) {
			rc = store_job_delete(cp->store, current);
			if (rc == 0)
				jobs_total++;
			current[0] = '\0';
		} else if (rc > 0) {
			events_total += (uint64_t)rc;
		}
		pthread_mutex_unlock(&cp->mu);
		if (rc < 0) {
			jv_error(NULL, NULL, "retention: delete failed; trying again later");
			current[0] = '\0';
			next_check = start + CHECK_EVERY_MS;
			return;
		}
	}
}
