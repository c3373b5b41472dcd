/* store_sqlite_jobs.c — SQLite backend: reading jobs, runs and run events.
 * Rows become protocol JSON through store_json.c. */
#include "store_sqlite_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "jobvisor/util.h"

#define RUN_COLUMNS                                                                             \
	"run_id, job_id, attempt, agent_id, status, percent, message, last_seq, acked,"         \
	" cancel_requested, output, error, finished_by, not_before, created_at, started_at,"     \
	" finished_at"

static cJSON *run_from_row(sqlite3_stmt *st)
{
	struct store_run_row r = {
		.run_id = sq_text(st, 0),
		.job_id = sq_text(st, 1),
		.attempt = sqlite3_column_int(st, 2),
		.agent_id = sq_text(st, 3),
		.status = sq_text(st, 4),
		.has_percent = sqlite3_column_type(st, 5) != SQLITE_NULL,
		.percent = sqlite3_column_double(st, 5),
		.message = sq_text(st, 6),
		.last_seq = sqlite3_column_int64(st, 7),
		.acked = sqlite3_column_int(st, 8) != 0,
		.cancel_requested = sqlite3_column_int(st, 9) != 0,
		.output = sq_text(st, 10),
		.error = sq_text(st, 11),
		.finished_by = sq_text(st, 12),
		.not_before = sqlite3_column_int64(st, 13),
		.created_at = sqlite3_column_int64(st, 14),
		.started_at = sqlite3_column_int64(st, 15),
		.finished_at = sqlite3_column_int64(st, 16),
	};
	return store_run_row_json(&r);
}

static cJSON *run_conv(sqlite3_stmt *st, void *ud)
{
	(void)ud;
	return run_from_row(st);
}

static cJSON *runs_of_job(struct sq *q, const char *job_id)
{
	cJSON *runs = NULL;
	sq_rows(q, sq_query(q, "SELECT " RUN_COLUMNS " FROM job_runs WHERE job_id = ? ORDER BY attempt", "s", job_id),
	        run_conv, NULL, &runs);
	return runs;
}

#define JOB_COLUMNS                                                                      \
	"seq, job_id, type, agent_id, instance_id, params, status, max_attempts, timeout_s," \
	" cancel_grace_s, cancel_requested, created_at, updated_at, schedule_id"

static void job_row(sqlite3_stmt *st, struct store_job_row *j)
{
	*j = (struct store_job_row){
		.seq = sqlite3_column_int64(st, 0),
		.job_id = sq_text(st, 1),
		.type = sq_text(st, 2),
		.agent_id = sq_text(st, 3),
		.instance_id = sq_text(st, 4),
		.params = sq_text(st, 5),
		.status = sq_text(st, 6),
		.max_attempts = sqlite3_column_int(st, 7),
		.timeout_s = sqlite3_column_int(st, 8),
		.cancel_grace_s = sqlite3_column_int(st, 9),
		.cancel_requested = sqlite3_column_int(st, 10) != 0,
		.created_at = sqlite3_column_int64(st, 11),
		.updated_at = sqlite3_column_int64(st, 12),
		.schedule_id = sq_text(st, 13),
	};
}

static cJSON *job_conv(sqlite3_stmt *st, void *ud)
{
	struct sq *q = ud;
	struct store_job_row j;
	job_row(st, &j);
	return store_job_row_json(&j, j.job_id ? runs_of_job(q, j.job_id) : NULL);
}

/* The first row of st converted, -ENOENT when none. */
static int one_json(struct sq *q, sqlite3_stmt *st, cJSON *(*conv)(sqlite3_stmt *, void *), cJSON **out)
{
	if (!st)
		return -EIO;
	int rc = sq_step(q, st);
	*out = rc == 1 ? conv(st, q) : NULL;
	sqlite3_finalize(st);
	if (rc == 1 && !*out)
		return -ENOMEM;
	return rc == 1 ? 0 : rc == 0 ? -ENOENT : rc;
}

int sq_job_json(struct store *s, const char *job_id, cJSON **out)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = one_json(q, sq_query(q, "SELECT " JOB_COLUMNS " FROM jobs WHERE job_id = ?", "s", job_id), job_conv,
	                  out);
	sq_unlock(q);
	return rc;
}

int sq_run_json(struct store *s, const char *run_id, cJSON **out)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = one_json(q, sq_query(q, "SELECT " RUN_COLUMNS " FROM job_runs WHERE run_id = ?", "s", run_id),
	                  run_conv, out);
	sq_unlock(q);
	return rc;
}

static sqlite3_stmt *list_query(struct sq *q, const struct store_filter *f)
{
	struct jv_buf sql;
	jv_buf_init(&sql, 4096);
	jv_buf_printf(&sql, "SELECT " JOB_COLUMNS " FROM jobs WHERE 1");
	if (f->nstatus > 0) {
		jv_buf_printf(&sql, " AND status IN (");
		for (size_t i = 0; i < f->nstatus; i++)
			jv_buf_printf(&sql, "%s?", i ? "," : "");
		jv_buf_printf(&sql, ")");
	}
	if (f->agent_id)
		jv_buf_printf(&sql, " AND agent_id = ?");
	if (f->instance_id)
		jv_buf_printf(&sql, " AND instance_id = ?");
	if (f->type)
		jv_buf_printf(&sql, " AND type = ?");
	if (f->before_seq > 0)
		jv_buf_printf(&sql, " AND seq < ?");
	sqlite3_stmt *st = jv_buf_printf(&sql, " ORDER BY seq DESC LIMIT ?") < 0 ? NULL : sq_prep(q, sql.data);
	jv_buf_free(&sql);
	if (!st)
		return NULL;
	int k = 1;
	for (size_t i = 0; i < f->nstatus; i++)
		sqlite3_bind_text(st, k++, f->status[i], -1, SQLITE_STATIC);
	if (f->agent_id)
		sqlite3_bind_text(st, k++, f->agent_id, -1, SQLITE_STATIC);
	if (f->instance_id)
		sqlite3_bind_text(st, k++, f->instance_id, -1, SQLITE_STATIC);
	if (f->type)
		sqlite3_bind_text(st, k++, f->type, -1, SQLITE_STATIC);
	if (f->before_seq > 0)
		sqlite3_bind_int64(st, k++, f->before_seq);
	/* One more row than asked tells whether another page exists. */
	sqlite3_bind_int(st, k++, f->limit + 1);
	return st;
}

int sq_jobs_list(struct store *s, const struct store_filter *f, cJSON **jobs, int64_t *next_seq)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = list_query(q, f);
	cJSON *arr = st ? cJSON_CreateArray() : NULL;
	int n = 0, rc = arr ? 0 : -EIO;
	int64_t last = 0;
	*next_seq = 0;
	while (rc == 0 && (rc = sq_step(q, st)) == 1) {
		if (n == f->limit) {
			*next_seq = last;
			rc = 0;
			break;
		}
		cJSON *j = job_conv(st, q);
		if (!j) {
			rc = -ENOMEM;
			break;
		}
		cJSON_AddItemToArray(arr, j);
		last = sqlite3_column_int64(st, 0);
		n++;
		rc = 0;
	}
	sqlite3_finalize(st);
	sq_unlock(q);
	if (rc < 0) {
		cJSON_Delete(arr);
		return rc;
	}
	*jobs = arr;
	return 0;
}

static cJSON *body_conv(sqlite3_stmt *st, void *ud)
{
	(void)ud;
	return store_json_parse(sq_text(st, 0));
}

int sq_run_events(struct store *s, const char *run_id, int64_t after, int limit, cJSON **events)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_rows(q,
	                 sq_query(q, "SELECT body FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?", "sii",
	                          run_id, after, (int64_t)limit),
	                 body_conv, NULL, events);
	sq_unlock(q);
	return rc;
}

int sq_run_state(struct store *s, const char *run_id, struct store_run_state *out)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q,
	                            "SELECT r.job_id, r.agent_id, j.instance_id, r.status, coalesce(r.finished_by, ''),"
	                            " r.attempt, r.acked, r.cancel_requested, r.last_seq"
	                            " FROM job_runs r JOIN jobs j ON j.job_id = r.job_id WHERE r.run_id = ?",
	                            "s", run_id);
	int rc = st ? sq_step(q, st) : -EIO;
	if (rc == 1) {
		memset(out, 0, sizeof(*out));
		sq_col(st, 0, out->job_id, sizeof(out->job_id));
		sq_col(st, 1, out->agent_id, sizeof(out->agent_id));
		sq_col(st, 2, out->instance_id, sizeof(out->instance_id));
		sq_col(st, 3, out->status, sizeof(out->status));
		sq_col(st, 4, out->finished_by, sizeof(out->finished_by));
		out->attempt = sqlite3_column_int(st, 5);
		out->acked = sqlite3_column_int(st, 6) != 0;
		out->cancel_requested = sqlite3_column_int(st, 7) != 0;
		out->last_seq = sqlite3_column_int64(st, 8);
	}
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc == 1 ? 0 : rc == 0 ? -ENOENT : rc;
}

int sq_job_info(struct store *s, const char *job_id, struct store_job_info *out)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q,
	                            "SELECT status, agent_id, type, instance_id, max_attempts, cancel_requested,"
	                            " (SELECT coalesce(max(attempt), 0) FROM job_runs r WHERE r.job_id = jobs.job_id)"
	                            " FROM jobs WHERE job_id = ?",
	                            "s", job_id);
	int rc = st ? sq_step(q, st) : -EIO;
	if (rc == 1) {
		memset(out, 0, sizeof(*out));
		sq_col(st, 0, out->status, sizeof(out->status));
		sq_col(st, 1, out->agent_id, sizeof(out->agent_id));
		sq_col(st, 2, out->type, sizeof(out->type));
		sq_col(st, 3, out->instance_id, sizeof(out->instance_id));
		out->max_attempts = sqlite3_column_int(st, 4);
		out->cancel_requested = sqlite3_column_int(st, 5) != 0;
		out->last_attempt = sqlite3_column_int(st, 6);
	}
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc == 1 ? 0 : rc == 0 ? -ENOENT : rc;
}

static cJSON *assignment_conv(sqlite3_stmt *st, void *ud)
{
	(void)ud;
	struct store_job_row j = {
		.job_id = sq_text(st, 1),
		.type = sq_text(st, 3),
		.instance_id = sq_text(st, 4),
		.params = sq_text(st, 5),
		.timeout_s = sqlite3_column_int(st, 6),
		.cancel_grace_s = sqlite3_column_int(st, 7),
		.created_at = sqlite3_column_int64(st, 8),
	};
	return store_assignment_row_json(&j, sq_text(st, 0), sqlite3_column_int(st, 2));
}

int sq_assignment_json(struct store *s, const char *run_id, cJSON **out)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = one_json(q,
	                  sq_query(q,
	                           "SELECT r.run_id, r.job_id, r.attempt, j.type, j.instance_id, j.params,"
	                           " j.timeout_s, j.cancel_grace_s, j.created_at"
	                           " FROM job_runs r JOIN jobs j ON j.job_id = r.job_id WHERE r.run_id = ?",
	                           "s", run_id),
	                  assignment_conv, out);
	sq_unlock(q);
	return rc;
}
