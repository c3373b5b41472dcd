/* store.c — reads: database rows turned into the JSON shapes of docs/protocol.md.
 *
 * Everything here only reads; state changes live in lifecycle.c, events.c and
 * dispatch.c. All functions run with cp->mu held. JSON stored in TEXT columns
 * (params, output, error, event bodies) was produced by cJSON from validated
 * input, so it is parsed back without a size cap. */
#include "cp.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"

cJSON *store_time(int64_t ms)
{
	if (ms <= 0)
		return cJSON_CreateNull();
	char buf[JV_ISO8601_LEN];
	jv_iso8601(ms, buf);
	return cJSON_CreateString(buf);
}

static cJSON *column_json(sqlite3_stmt *st, int col)
{
	const char *text = (const char *)sqlite3_column_text(st, col);
	if (!text)
		return cJSON_CreateNull();
	cJSON *v = cJSON_Parse(text);
	return v ? v : cJSON_CreateNull();
}

static cJSON *column_str(sqlite3_stmt *st, int col)
{
	const char *text = (const char *)sqlite3_column_text(st, col);
	return text ? cJSON_CreateString(text) : cJSON_CreateNull();
}

#define RUN_COLUMNS                                                                             \
	"run_id, job_id, attempt, agent_id, status, percent, message, last_seq, acked,"         \
	" cancel_requested, output, error, finished_by, not_before, created_at, started_at,"     \
	" finished_at"

static cJSON *run_from_row(sqlite3_stmt *st)
{
	cJSON *r = cJSON_CreateObject();
	if (!r)
		return NULL;
	cJSON_AddItemToObject(r, "jobRunId", column_str(st, 0));
	cJSON_AddItemToObject(r, "jobId", column_str(st, 1));
	cJSON_AddNumberToObject(r, "attempt", sqlite3_column_int(st, 2));
	cJSON_AddItemToObject(r, "agentId", column_str(st, 3));
	cJSON_AddItemToObject(r, "status", column_str(st, 4));
	if (sqlite3_column_type(st, 5) == SQLITE_NULL)
		cJSON_AddNullToObject(r, "percent");
	else
		cJSON_AddNumberToObject(r, "percent", sqlite3_column_double(st, 5));
	cJSON_AddItemToObject(r, "message", column_str(st, 6));
	cJSON_AddNumberToObject(r, "lastSeq", (double)sqlite3_column_int64(st, 7));
	cJSON_AddBoolToObject(r, "acknowledged", sqlite3_column_int(st, 8) != 0);
	cJSON_AddBoolToObject(r, "cancelRequested", sqlite3_column_int(st, 9) != 0);
	cJSON_AddItemToObject(r, "output", column_json(st, 10));
	cJSON_AddItemToObject(r, "error", column_json(st, 11));
	cJSON_AddItemToObject(r, "finishedBy", column_str(st, 12));
	cJSON_AddItemToObject(r, "notBefore", store_time(sqlite3_column_int64(st, 13)));
	cJSON_AddItemToObject(r, "createdAt", store_time(sqlite3_column_int64(st, 14)));
	cJSON_AddItemToObject(r, "startedAt", store_time(sqlite3_column_int64(st, 15)));
	cJSON_AddItemToObject(r, "finishedAt", store_time(sqlite3_column_int64(st, 16)));
	return r;
}

cJSON *store_run_json(struct cp *cp, const char *run_id)
{
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT " RUN_COLUMNS " FROM job_runs WHERE run_id = ?");
	if (!st)
		return NULL;
	sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC);
	cJSON *r = NULL;
	if (sqlite3_step(st) == SQLITE_ROW)
		r = run_from_row(st);
	sqlite3_finalize(st);
	return r;
}

static cJSON *runs_of_job(struct cp *cp, const char *job_id)
{
	cJSON *runs = cJSON_CreateArray();
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT " RUN_COLUMNS " FROM job_runs WHERE job_id = ?"
	                                      " ORDER BY attempt");
	if (!runs || !st) {
		sqlite3_finalize(st);
		cJSON_Delete(runs);
		return NULL;
	}
	sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW) {
		cJSON *r = run_from_row(st);
		if (r)
			cJSON_AddItemToArray(runs, r);
	}
	sqlite3_finalize(st);
	return runs;
}

#define JOB_COLUMNS                                                                      \
	"seq, job_id, type, agent_id, instance_id, params, status, max_attempts, timeout_s," \
	" cancel_grace_s, cancel_requested, created_at, updated_at, schedule_id"

static cJSON *job_from_row(struct cp *cp, sqlite3_stmt *st)
{
	cJSON *j = cJSON_CreateObject();
	if (!j)
		return NULL;
	const char *job_id = (const char *)sqlite3_column_text(st, 1);
	cJSON_AddItemToObject(j, "jobId", column_str(st, 1));
	cJSON_AddNumberToObject(j, "seq", (double)sqlite3_column_int64(st, 0));
	cJSON_AddItemToObject(j, "type", column_str(st, 2));
	cJSON_AddItemToObject(j, "agentId", column_str(st, 3));
	cJSON_AddItemToObject(j, "instanceId", column_str(st, 4));
	cJSON_AddItemToObject(j, "params", column_json(st, 5));
	cJSON_AddItemToObject(j, "status", column_str(st, 6));
	cJSON_AddNumberToObject(j, "maxAttempts", sqlite3_column_int(st, 7));
	int t = sqlite3_column_int(st, 8), g = sqlite3_column_int(st, 9);
	if (t > 0)
		cJSON_AddNumberToObject(j, "timeoutSeconds", t);
	else
		cJSON_AddNullToObject(j, "timeoutSeconds");
	if (g > 0)
		cJSON_AddNumberToObject(j, "cancelGraceSeconds", g);
	else
		cJSON_AddNullToObject(j, "cancelGraceSeconds");
	cJSON_AddBoolToObject(j, "cancelRequested", sqlite3_column_int(st, 10) != 0);
	cJSON_AddItemToObject(j, "createdAt", store_time(sqlite3_column_int64(st, 11)));
	cJSON_AddItemToObject(j, "updatedAt", store_time(sqlite3_column_int64(st, 12)));
	if (sqlite3_column_type(st, 13) == SQLITE_TEXT)
		cJSON_AddItemToObject(j, "scheduleId", column_str(st, 13));
	else
		cJSON_AddNullToObject(j, "scheduleId");
	cJSON *runs = job_id ? runs_of_job(cp, job_id) : NULL;
	cJSON_AddItemToObject(j, "runs", runs ? runs : cJSON_CreateArray());
	return j;
}

cJSON *store_job_json(struct cp *cp, const char *job_id)
{
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT " JOB_COLUMNS " FROM jobs WHERE job_id = ?");
	if (!st)
		return NULL;
	sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
	cJSON *j = NULL;
	if (sqlite3_step(st) == SQLITE_ROW)
		j = job_from_row(cp, st);
	sqlite3_finalize(st);
	return j;
}

int store_list_jobs(struct cp *cp, const struct store_filter *f, cJSON **jobs, int64_t *next_seq)
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
	if (jv_buf_printf(&sql, " ORDER BY seq DESC LIMIT ?") < 0) {
		jv_buf_free(&sql);
		return -ENOMEM;
	}
	sqlite3_stmt *st = db_prepare(cp->db, sql.data);
	jv_buf_free(&sql);
	if (!st)
		return -EIO;
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

	cJSON *arr = cJSON_CreateArray();
	int n = 0, rc;
	int64_t last = 0;
	*next_seq = 0;
	while (arr && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (n == f->limit) {
			*next_seq = last;
			break;
		}
		cJSON *j = job_from_row(cp, st);
		if (!j)
			break;
		cJSON_AddItemToArray(arr, j);
		last = sqlite3_column_int64(st, 0);
		n++;
	}
	sqlite3_finalize(st);
	if (!arr)
		return -ENOMEM;
	*jobs = arr;
	return 0;
}

cJSON *store_agent_json(struct cp *cp, const struct cp_agent *a)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "agentId", a->id);
	cJSON_AddItemToObject(o, "lastSeen", store_time(a->last_seen_ms));
	cJSON_AddNumberToObject(o, "capacity", a->capacity);
	int running = 0;
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT count(*) FROM job_runs WHERE agent_id = ? AND status = 'RUNNING'");
	if (st) {
		sqlite3_bind_text(st, 1, a->id, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW)
			running = sqlite3_column_int(st, 0);
		sqlite3_finalize(st);
	}
	cJSON_AddNumberToObject(o, "running", running);
	/* Online: seen within three poll intervals plus the longest long poll. */
	int64_t window = (int64_t)(3 * cp->cfg.poll_interval_s + cp->cfg.max_wait_s) * 1000;
	cJSON_AddBoolToObject(o, "online", a->last_seen_ms > 0 && jv_now_real_ms() - a->last_seen_ms <= window);
	return o;
}

cJSON *store_agents_json(struct cp *cp)
{
	cJSON *arr = cJSON_CreateArray();
	for (size_t i = 0; arr && i < cp->nagents; i++) {
		cJSON *o = store_agent_json(cp, &cp->agents[i]);
		if (o)
			cJSON_AddItemToArray(arr, o);
	}
	return arr;
}

int store_events(struct cp *cp, const char *run_id, int64_t after, int limit, cJSON **events)
{
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT body FROM events WHERE run_id = ? AND seq > ?"
	                                      " ORDER BY seq LIMIT ?");
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, after);
	sqlite3_bind_int(st, 3, limit);
	cJSON *arr = cJSON_CreateArray();
	while (arr && sqlite3_step(st) == SQLITE_ROW) {
		cJSON *ev = column_json(st, 0);
		if (ev)
			cJSON_AddItemToArray(arr, ev);
	}
	sqlite3_finalize(st);
	if (!arr)
		return -ENOMEM;
	*events = arr;
	return 0;
}

int store_run_state(struct cp *cp, const char *run_id, struct store_run_state *out)
{
	sqlite3_stmt *st = db_prepare(cp->db,
	                              "SELECT r.job_id, r.agent_id, j.instance_id, r.status,"
	                              " coalesce(r.finished_by, ''), r.attempt, r.acked, r.cancel_requested, r.last_seq"
	                              " FROM job_runs r JOIN jobs j ON j.job_id = r.job_id WHERE r.run_id = ?");
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		sqlite3_finalize(st);
		return rc == SQLITE_DONE ? -ENOENT : -EIO;
	}
	memset(out, 0, sizeof(*out));
	snprintf(out->job_id, sizeof(out->job_id), "%s", (const char *)sqlite3_column_text(st, 0));
	snprintf(out->agent_id, sizeof(out->agent_id), "%s", (const char *)sqlite3_column_text(st, 1));
	snprintf(out->instance_id, sizeof(out->instance_id), "%s", (const char *)sqlite3_column_text(st, 2));
	snprintf(out->status, sizeof(out->status), "%s", (const char *)sqlite3_column_text(st, 3));
	snprintf(out->finished_by, sizeof(out->finished_by), "%s", (const char *)sqlite3_column_text(st, 4));
	out->attempt = sqlite3_column_int(st, 5);
	out->acked = sqlite3_column_int(st, 6) != 0;
	out->cancel_requested = sqlite3_column_int(st, 7) != 0;
	out->last_seq = sqlite3_column_int64(st, 8);
	sqlite3_finalize(st);
	return 0;
}
