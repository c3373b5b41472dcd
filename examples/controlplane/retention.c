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

/* One expired job (mu held): 1 found, 0 none, <0 error. */
static int pick_job(struct cp *cp, int64_t cutoff, char job_id[CP_ID_MAX])
{
	sqlite3_stmt *st = db_prepare(cp->db,
	                              "SELECT j.job_id FROM jobs j"
	                              " WHERE j.status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND j.updated_at < ?1"
	                              "   AND (SELECT count(*) FROM jobs k WHERE k.agent_id = j.agent_id"
	                              "        AND k.instance_id = j.instance_id AND k.seq > j.seq) >= ?2"
	                              " ORDER BY j.seq LIMIT 1");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, cutoff);
	sqlite3_bind_int(st, 2, cp->cfg.retention_keep);
	int rc = sqlite3_step(st);
	int ret = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
	if (ret == 1)
		snprintf(job_id, CP_ID_MAX, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return ret;
}

/* Delete up to BATCH events of the job's runs (mu held); rows deleted, or -1. */
static int delete_events(struct cp *cp, const char *job_id)
{
	sqlite3_stmt *st = db_prepare(cp->db,
	                              "DELETE FROM events WHERE (run_id, seq) IN (SELECT e.run_id, e.seq FROM events e"
	                              " JOIN job_runs r ON r.run_id = e.run_id WHERE r.job_id = ? LIMIT " "500" ")");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
	int rc = db_step_done(cp->db, st);
	sqlite3_finalize(st);
	return rc < 0 ? -1 : sqlite3_changes(cp->db);
}

static int delete_job(struct cp *cp, const char *job_id)
{
	sqlite3_stmt *st = db_prepare(cp->db, "DELETE FROM jobs WHERE job_id = ?"); /* runs cascade (few rows) */
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
	int rc = db_step_done(cp->db, st);
	sqlite3_finalize(st);
	return rc;
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
			rc = pick_job(cp, cutoff, current);
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
		rc = delete_events(cp, current);
		if (rc == 0) {
			rc = delete_job(cp, current);
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
