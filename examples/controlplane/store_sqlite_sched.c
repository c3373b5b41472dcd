/* store_sqlite_sched.c — SQLite backend: schedules, the audit log, the
 * counts behind /metrics, and retention's deletes. */
#include "store_sqlite_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define SCHED_COLUMNS                                                                              \
	"s.schedule_id, s.cron, s.timezone, s.job, s.enabled, s.overlap, s.next_fire, s.last_fire," \
	" s.last_job_id, s.last_outcome, s.created_at, s.updated_at, j.status"
#define SCHED_FROM " FROM schedules s LEFT JOIN jobs j ON j.job_id = s.last_job_id"

static cJSON *sched_from_row(sqlite3_stmt *st, void *ud)
{
	(void)ud;
	struct store_schedule_row r = {
		.schedule_id = sq_text(st, 0),
		.cron = sq_text(st, 1),
		.timezone = sq_text(st, 2),
		.job = sq_text(st, 3),
		.enabled = sqlite3_column_int(st, 4) != 0,
		.overlap = sq_text(st, 5),
		.next_fire = sqlite3_column_int64(st, 6),
		.last_fire = sqlite3_column_int64(st, 7),
		.last_job_id = sq_text(st, 8),
		.last_outcome = sq_text(st, 9),
		.created_at = sqlite3_column_int64(st, 10),
		.updated_at = sqlite3_column_int64(st, 11),
		.last_job_status = sq_text(st, 12),
	};
	return store_schedule_row_json(&r);
}

int sq_schedule_create(struct store *s, const struct store_schedule_def *d, int64_t next_fire, int64_t now)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_exec(q,
	                 "INSERT INTO schedules (schedule_id, cron, timezone, job, enabled, overlap, next_fire,"
	                 " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
	                 "ssssisiii", d->schedule_id, d->cron, d->timezone, d->job, (int64_t)d->enabled, d->overlap,
	                 next_fire, now, now);
	sq_unlock(q);
	return rc < 0 ? rc : 0;
}

int sq_schedule_json(struct store *s, const char *schedule_id, cJSON **out)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q, "SELECT " SCHED_COLUMNS SCHED_FROM " WHERE s.schedule_id = ?", "s", schedule_id);
	int rc = st ? sq_step(q, st) : -EIO;
	*out = rc == 1 ? sched_from_row(st, NULL) : NULL;
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc == 1 ? (*out ? 0 : -ENOMEM) : rc == 0 ? -ENOENT : rc;
}

int sq_schedules_list(struct store *s, cJSON **arr)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_rows(q,
	                 sq_query(q, "SELECT " SCHED_COLUMNS SCHED_FROM " ORDER BY s.created_at, s.schedule_id LIMIT 10000",
	                          NULL),
	                 sched_from_row, NULL, arr);
	sq_unlock(q);
	return rc;
}

int sq_schedule_update(struct store *s, const struct store_schedule_def *d, bool retime, int64_t next, int64_t now)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_exec(q,
	                 "UPDATE schedules SET cron = ?1, timezone = ?2, job = ?3, enabled = ?4, overlap = ?5,"
	                 " updated_at = ?6, next_fire = CASE WHEN ?4 = 0 THEN 0 WHEN ?7 = 1 OR next_fire = 0 THEN ?8"
	                 " ELSE next_fire END WHERE schedule_id = ?9",
	                 "sssisiiis", d->cron, d->timezone, d->job, (int64_t)d->enabled, d->overlap, now, (int64_t)retime,
	                 next, d->schedule_id);
	sq_unlock(q);
	return rc < 0 ? rc : rc == 0 ? -ENOENT : 0;
}

int sq_schedule_delete(struct store *s, const char *schedule_id)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_exec(q, "DELETE FROM schedules WHERE schedule_id = ?", "s", schedule_id);
	sq_unlock(q);
	return rc < 0 ? rc : rc == 0 ? -ENOENT : 0;
}

int sq_schedules_due(struct store *s, int64_t now, int max, store_due_fn fn, void *ud)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q,
	                            "SELECT schedule_id, cron, timezone, job, overlap, next_fire FROM schedules"
	                            " WHERE enabled = 1 AND next_fire > 0 AND next_fire <= ? ORDER BY next_fire LIMIT ?",
	                            "ii", now, (int64_t)max);
	int rc = st ? 1 : -EIO;
	while (st && (rc = sq_step(q, st)) == 1) {
		struct store_due_schedule d = {
			.schedule_id = sq_text(st, 0),
			.cron = sq_text(st, 1),
			.timezone = sq_text(st, 2),
			.job = sq_text(st, 3),
			.overlap = sq_text(st, 4),
			.next_fire = sqlite3_column_int64(st, 5),
		};
		if (fn(ud, &d) != 0) {
			rc = 0;
			break;
		}
	}
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc < 0 ? rc : 0;
}

int sq_schedule_claim(struct store *s, const struct store_sched_claim *c)
{
	struct sq *q = sq_of(s);
	int rc = sq_tx_begin(q);
	return rc < 0 ? rc : sq_tx_end(q, sq_sched_claim_locked(q, c));
}

int sq_schedule_active_job(struct store *s, const char *schedule_id)
{
	struct sq *q = sq_of(s);
	int64_t one = 0;
	sq_lock(q);
	int rc = sq_int64(q, &one,
	                  "SELECT 1 FROM jobs WHERE schedule_id = ? AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')"
	                  " LIMIT 1",
	                  "s", schedule_id);
	sq_unlock(q);
	return rc;
}

int sq_audit_append(struct store *s, const struct store_audit *a, int64_t *seq)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_exec(q,
	                 "INSERT INTO audit_log (at, who, role, method, path, status, remote) VALUES (?, ?, ?, ?, ?, ?, ?)",
	                 "issssis", a->at, a->who, a->role, a->method, a->path ? a->path : "", (int64_t)a->status,
	                 a->remote ? a->remote : "");
	*seq = rc < 0 ? 0 : (int64_t)sqlite3_last_insert_rowid(q->db);
	sq_unlock(q);
	return rc < 0 ? rc : 0;
}

int sq_audit_set_status(struct store *s, int64_t seq, int status)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_exec(q, "UPDATE audit_log SET status = ? WHERE seq = ?", "ii", (int64_t)status, seq);
	sq_unlock(q);
	return rc < 0 ? rc : 0;
}

static cJSON *audit_conv(sqlite3_stmt *st, void *ud)
{
	struct store_audit a = {
		.at = sqlite3_column_int64(st, 1),
		.who = sq_text(st, 2),
		.role = sq_text(st, 3),
		.method = sq_text(st, 4),
		.path = sq_text(st, 5),
		.status = sqlite3_column_int(st, 6),
	};
	int64_t *last = ud;
	*last = sqlite3_column_int64(st, 0);
	return store_audit_row_json(*last, &a);
}

int sq_audit_list(struct store *s, int64_t cursor, int limit, cJSON **entries, int64_t *last)
{
	struct sq *q = sq_of(s);
	*last = 0;
	sq_lock(q);
	int rc = sq_rows(q,
	                 sq_query(q,
	                          "SELECT seq, at, who, role, method, path, status, remote FROM audit_log"
	                          " WHERE (?1 = 0 OR seq < ?1) ORDER BY seq DESC LIMIT ?2",
	                          "ii", cursor, (int64_t)limit),
	                 audit_conv, last, entries);
	sq_unlock(q);
	return rc;
}

int sq_metrics_jobs(struct store *s, void (*fn)(void *ud, const char *type, const char *status, int64_t n),
                    void *ud)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q, "SELECT type, status, count(*) FROM jobs GROUP BY type, status ORDER BY 1, 2", NULL);
	int rc = st ? 1 : -EIO;
	while (st && (rc = sq_step(q, st)) == 1)
		fn(ud, sq_text(st, 0), sq_text(st, 1), sqlite3_column_int64(st, 2));
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc < 0 ? rc : 0;
}

/* The run counters (run_counters, kept by triggers: store_sqlite.c, 7 -> 8). */
int sq_metrics_runs(struct store *s, int64_t *started, int64_t *completed, int64_t *failed, int64_t *cancelled)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q,
	                            "SELECT (SELECT value FROM run_counters WHERE name = 'started'),"
	                            " (SELECT value FROM run_counters WHERE name = 'COMPLETED'),"
	                            " (SELECT value FROM run_counters WHERE name = 'FAILED'),"
	                            " (SELECT value FROM run_counters WHERE name = 'CANCELLED')",
	                            NULL);
	int rc = st ? sq_step(q, st) : -EIO;
	if (rc == 1) {
		*started = sqlite3_column_int64(st, 0);
		*completed = sqlite3_column_int64(st, 1);
		*failed = sqlite3_column_int64(st, 2);
		*cancelled = sqlite3_column_int64(st, 3);
	}
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc == 1 ? 0 : -EIO;
}

int sq_retention_pick(struct store *s, int64_t cutoff, int keep, char job_id[CP_ID_MAX])
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q,
	                            "SELECT j.job_id FROM jobs j"
	                            " WHERE j.status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND j.updated_at < ?1"
	                            "   AND (SELECT count(*) FROM jobs k WHERE k.agent_id = j.agent_id"
	                            "        AND k.instance_id = j.instance_id AND k.seq > j.seq) >= ?2"
	                            " ORDER BY j.seq LIMIT 1",
	                            "ii", cutoff, (int64_t)keep);
	int rc = st ? sq_step(q, st) : -EIO;
	if (rc == 1)
		sq_col(st, 0, job_id, CP_ID_MAX);
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc;
}

int sq_retention_events(struct store *s, const char *job_id, int batch)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_exec(q,
	                 "DELETE FROM events WHERE (run_id, seq) IN (SELECT e.run_id, e.seq FROM events e"
	                 " JOIN job_runs r ON r.run_id = e.run_id WHERE r.job_id = ? LIMIT ?)",
	                 "si", job_id, (int64_t)batch);
	sq_unlock(q);
	return rc;
}

int sq_job_delete(struct store *s, const char *job_id)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_exec(q, "DELETE FROM jobs WHERE job_id = ?", "s", job_id); /* runs cascade (few rows) */
	sq_unlock(q);
	return rc < 0 ? rc : 0;
}
