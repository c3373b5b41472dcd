/* store_pg.c — the PostgreSQL backend: opening, the operations table, reads.
 *
 * --db postgresql://user@host/dbname (any libpq URI). At open: a pool of
 * connections (store_options.connections; each call holds one for its duration, never
 * two), then the schema migrated under the migration lock (store_pg_schema.c).
 * The SQL mirrors the SQLite backend's; where several replicas race, the
 * PostgreSQL-specific locking is described at the call (store_pg_jobs.c,
 * store_pg_dispatch.c). docs/scaling.md has the picture. */
#include "store_pg_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define PG_POOL_SIZE 8 /* when the caller does not say */

int pgs_array_add(struct jv_buf *b, const char *s, bool first)
{
	int rc = jv_buf_append(b, first ? "\"" : ",\"", first ? 1 : 2);
	while (rc == 0 && *s) {
		size_t run = strcspn(s, "\"\\"); /* copied as is, up to the next '"' or '\\' */
		rc = jv_buf_append(b, s, run);
		s += run;
		if (rc == 0 && *s) {
			char esc[2] = {'\\', *s++};
			rc = jv_buf_append(b, esc, 2);
		}
	}
	return rc == 0 ? jv_buf_append(b, "\"", 1) : rc;
}

void pgs_batch_init(struct pgs_batch *b)
{
	jv_buf_init(&b->seqs, 1024u * 1024);
	jv_buf_init(&b->bodies, 64u * 1024 * 1024);
	b->n = 0;
	b->rc = jv_buf_append(&b->seqs, "{", 1) | jv_buf_append(&b->bodies, "{", 1);
}

void pgs_batch_add(struct pgs_batch *b, int64_t seq, const char *body)
{
	if (b->rc == 0)
		b->rc = jv_buf_printf(&b->seqs, "%s%" PRId64, b->n ? "," : "", seq) < 0 ? -ENOMEM : 0;
	if (b->rc == 0)
		b->rc = pgs_array_add(&b->bodies, body, b->n == 0);
	b->n++;
}

int pgs_batch_end(struct pgs_batch *b)
{
	if (b->rc == 0)
		b->rc = jv_buf_append(&b->seqs, "}", 2) | jv_buf_append(&b->bodies, "}", 2);
	return b->rc ? -ENOMEM : 0;
}

void pgs_batch_free(struct pgs_batch *b)
{
	jv_buf_free(&b->seqs);
	jv_buf_free(&b->bodies);
}

int pgs_fail(struct store *s, PGconn *c, int rc)
{
	if (c)
		pgs_done(s, c); /* pg_release rolls back an open transaction */
	return rc;
}

void pgs_copy(char *dst, size_t len, const PGresult *r, int row, int col)
{
	snprintf(dst, len, "%s", pg_str(r, row, col));
}

const char PGS_SQL_LOCK[] = "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2 || '/' || $3, 0))";

int pgs_lock_key(PGconn *c, const char *kind, const char *a, const char *b)
{
	struct pg_params p = {0};
	pg_p_str(&p, kind);
	pg_p_str(&p, a);
	pg_p_str(&p, b ? b : "");
	return pg_cmd(c, PGS_SQL_LOCK, &p) < 0
	               ? -EIO
	               : 0;
}

PGresult *pgs_query(struct store *s, const char *sql, const struct pg_params *p)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return NULL;
	PGresult *r = pg_exec(c, sql, p);
	pgs_done(s, c);
	return r;
}

PGresult *pgs_query_prepared(struct store *s, const char *sql, const struct pg_params *p)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return NULL;
	const struct pg_stmt st = {sql, p};
	PGresult *r = NULL;
	pg_pipeline(c, &st, 1, &r); /* r stays NULL when it failed */
	pgs_done(s, c);
	return r;
}

int pgs_cmd(struct store *s, const char *sql, const struct pg_params *p)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	int n = pg_cmd(c, sql, p);
	pgs_done(s, c);
	return n;
}

/* ---- runs and jobs: rows -> JSON ---- */

static const char *nullable(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

cJSON *pgs_run_json_row(const PGresult *r, int i)
{
	struct store_run_row row = {
		.run_id = nullable(r, i, 0), .job_id = nullable(r, i, 1), .attempt = (int)pg_i64(r, i, 2),
		.agent_id = nullable(r, i, 3), .status = nullable(r, i, 4), .has_percent = !PQgetisnull(r, i, 5),
		.percent = PQgetisnull(r, i, 5) ? 0 : strtod(PQgetvalue(r, i, 5), NULL),
		.message = nullable(r, i, 6), .last_seq = pg_i64(r, i, 7), .acked = pg_i64(r, i, 8) != 0,
		.cancel_requested = pg_i64(r, i, 9) != 0, .output = nullable(r, i, 10), .error = nullable(r, i, 11),
		.finished_by = nullable(r, i, 12), .not_before = pg_i64(r, i, 13), .created_at = pg_i64(r, i, 14),
		.started_at = pg_i64(r, i, 15), .finished_at = pg_i64(r, i, 16),
	};
	return store_run_row_json(&row);
}

static int run_json(struct store *s, const char *run_id, cJSON **out)
{
	struct pg_params p = {0};
	pg_p_str(&p, run_id);
	PGresult *r = pgs_query(s, "SELECT " RUN_COLUMNS " FROM job_runs WHERE run_id = $1", &p);
	if (!r)
		return -EIO;
	int rc = PQntuples(r) == 1 ? 0 : -ENOENT;
	if (rc == 0 && !(*out = pgs_run_json_row(r, 0)))
		rc = -ENOMEM;
	PQclear(r);
	return rc;
}

static cJSON *runs_of_job(PGconn *c, const char *job_id)
{
	struct pg_params p = {0};
	pg_p_str(&p, job_id);
	PGresult *r = pg_exec(c, "SELECT " RUN_COLUMNS " FROM job_runs WHERE job_id = $1 ORDER BY attempt", &p);
	cJSON *runs = r ? cJSON_CreateArray() : NULL;
	for (int i = 0; runs && i < PQntuples(r); i++) {
		cJSON *o = pgs_run_json_row(r, i);
		if (o)
			cJSON_AddItemToArray(runs, o);
	}
	PQclear(r);
	return runs;
}

void pgs_job_row(const PGresult *r, int i, struct store_job_row *j)
{
	*j = (struct store_job_row){
		.seq = pg_i64(r, i, 0), .job_id = nullable(r, i, 1), .type = nullable(r, i, 2),
		.agent_id = nullable(r, i, 3), .instance_id = nullable(r, i, 4), .params = nullable(r, i, 5),
		.status = nullable(r, i, 6), .max_attempts = (int)pg_i64(r, i, 7), .timeout_s = (int)pg_i64(r, i, 8),
		.cancel_grace_s = (int)pg_i64(r, i, 9), .cancel_requested = pg_i64(r, i, 10) != 0,
		.created_at = pg_i64(r, i, 11), .updated_at = pg_i64(r, i, 12), .schedule_id = nullable(r, i, 13),
	};
}

#define SNAPSHOT_BEGIN "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

static cJSON *job_json_row(PGconn *c, const PGresult *r, int i)
{
	struct store_job_row j;
	pgs_job_row(r, i, &j);
	return store_job_row_json(&j, runs_of_job(c, j.job_id));
}

static int job_json(struct store *s, const char *job_id, cJSON **out)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	struct pg_params p = {0};
	pg_p_str(&p, job_id);
	/* The job row and its runs from one snapshot: a run finishing meanwhile
	 * (lost, RETRIED with a new run) is seen whole or not at all. */
	bool snap = pg_cmd(c, SNAPSHOT_BEGIN, NULL) >= 0;
	PGresult *r = snap ? pg_exec(c, "SELECT " JOB_COLUMNS " FROM jobs WHERE job_id = $1", &p) : NULL;
	int rc = !r ? -EIO : PQntuples(r) == 1 ? 0 : -ENOENT;
	if (rc == 0 && !(*out = job_json_row(c, r, 0)))
		rc = -ENOMEM;
	PQclear(r);
	if (snap)
		pg_commit(c);
	pgs_done(s, c);
	return rc;
}

static int jobs_list(struct store *s, const struct store_filter *f, cJSON **jobs, int64_t *next_seq)
{
	struct jv_buf sql;
	jv_buf_init(&sql, 4096);
	struct pg_params p = {0};
	jv_buf_printf(&sql, "SELECT " JOB_COLUMNS " FROM jobs WHERE true");
	for (size_t i = 0; i < f->nstatus; i++) {
		pg_p_str(&p, f->status[i]);
		jv_buf_printf(&sql, "%s$%d", i ? "," : " AND status IN (", p.n);
	}
	if (f->nstatus)
		jv_buf_printf(&sql, ")");
	const char *cols[] = {"agent_id", "instance_id", "type"};
	const char *vals[] = {f->agent_id, f->instance_id, f->type};
	for (size_t i = 0; i < 3; i++) {
		if (!vals[i])
			continue;
		pg_p_str(&p, vals[i]);
		jv_buf_printf(&sql, " AND %s = $%d", cols[i], p.n);
	}
	if (f->before_seq > 0) {
		pg_p_i64(&p, f->before_seq);
		jv_buf_printf(&sql, " AND seq < $%d", p.n);
	}
	pg_p_i64(&p, f->limit + 1); /* one more row than asked tells whether another page exists */
	if (jv_buf_printf(&sql, " ORDER BY seq DESC LIMIT $%d", p.n) < 0) {
		jv_buf_free(&sql);
		return -ENOMEM;
	}
	PGconn *c = pgs_conn(s);
	bool snap = c && pg_cmd(c, SNAPSHOT_BEGIN, NULL) >= 0; /* jobs and their runs as of one instant */
	PGresult *r = snap ? pg_exec(c, sql.data, &p) : NULL;
	jv_buf_free(&sql);
	cJSON *arr = r ? cJSON_CreateArray() : NULL;
	int n = r ? PQntuples(r) : 0;
	*next_seq = 0;
	for (int i = 0; arr && i < n && i < f->limit; i++) {
		cJSON *j = job_json_row(c, r, i);
		if (j)
			cJSON_AddItemToArray(arr, j);
		if (n > f->limit && i == f->limit - 1)
			*next_seq = pg_i64(r, i, 0);
	}
	PQclear(r);
	if (snap)
		pg_commit(c);
	if (c)
		pgs_done(s, c);
	if (!arr)
		return r || !c ? -EIO : -ENOMEM;
	*jobs = arr;
	return 0;
}

static int run_events(struct store *s, const char *run_id, int64_t after, int limit, cJSON **events)
{
	struct pg_params p = {0};
	pg_p_str(&p, run_id);
	pg_p_i64(&p, after);
	pg_p_i64(&p, limit);
	PGresult *r = pgs_query(s, "SELECT body FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3", &p);
	if (!r)
		return -EIO;
	cJSON *arr = cJSON_CreateArray();
	for (int i = 0; arr && i < PQntuples(r); i++)
		cJSON_AddItemToArray(arr, store_json_parse(PQgetvalue(r, i, 0)));
	PQclear(r);
	if (!arr)
		return -ENOMEM;
	*events = arr;
	return 0;
}

int pgs_run_state(struct store *s, const char *run_id, struct store_run_state *out)
{
	struct pg_params p = {0};
	pg_p_str(&p, run_id);
	PGresult *r = pgs_query(s,
	                        "SELECT r.job_id, r.agent_id, j.instance_id, r.status, coalesce(r.finished_by, ''),"
	                        " r.attempt, r.acked, r.cancel_requested, r.last_seq"
	                        " FROM job_runs r JOIN jobs j ON j.job_id = r.job_id WHERE r.run_id = $1",
	                        &p);
	if (!r)
		return -EIO;
	int rc = PQntuples(r) == 1 ? 0 : -ENOENT;
	if (rc == 0) {
		memset(out, 0, sizeof(*out));
		pgs_copy(out->job_id, sizeof(out->job_id), r, 0, 0);
		pgs_copy(out->agent_id, sizeof(out->agent_id), r, 0, 1);
		pgs_copy(out->instance_id, sizeof(out->instance_id), r, 0, 2);
		pgs_copy(out->status, sizeof(out->status), r, 0, 3);
		pgs_copy(out->finished_by, sizeof(out->finished_by), r, 0, 4);
		out->attempt = (int)pg_i64(r, 0, 5);
		out->acked = pg_i64(r, 0, 6) != 0;
		out->cancel_requested = pg_i64(r, 0, 7) != 0;
		out->last_seq = pg_i64(r, 0, 8);
	}
	PQclear(r);
	return rc;
}

int pgs_job_info_c(PGconn *c, const char *job_id, bool lock, struct store_job_info *out)
{
	struct pg_params p = {0};
	pg_p_str(&p, job_id);
	PGresult *r = pg_exec(c,
	                      lock ? "SELECT status, agent_id, type, instance_id, max_attempts, cancel_requested,"
	                             " (SELECT coalesce(max(attempt), 0) FROM job_runs r WHERE r.job_id = jobs.job_id)"
	                             " FROM jobs WHERE job_id = $1 FOR NO KEY UPDATE"
	                           : "SELECT status, agent_id, type, instance_id, max_attempts, cancel_requested,"
	                             " (SELECT coalesce(max(attempt), 0) FROM job_runs r WHERE r.job_id = jobs.job_id)"
	                             " FROM jobs WHERE job_id = $1",
	                      &p);
	if (!r)
		return -EIO;
	int rc = PQntuples(r) == 1 ? 0 : -ENOENT;
	if (rc == 0 && out) {
		memset(out, 0, sizeof(*out));
		pgs_copy(out->status, sizeof(out->status), r, 0, 0);
		pgs_copy(out->agent_id, sizeof(out->agent_id), r, 0, 1);
		pgs_copy(out->type, sizeof(out->type), r, 0, 2);
		pgs_copy(out->instance_id, sizeof(out->instance_id), r, 0, 3);
		out->max_attempts = (int)pg_i64(r, 0, 4);
		out->cancel_requested = pg_i64(r, 0, 5) != 0;
		out->last_attempt = (int)pg_i64(r, 0, 6);
	}
	PQclear(r);
	return rc;
}

int pgs_job_info(struct store *s, const char *job_id, struct store_job_info *out)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	int rc = pgs_job_info_c(c, job_id, false, out);
	pgs_done(s, c);
	return rc;
}

int pgs_assignment_json(struct store *s, const char *run_id, cJSON **out)
{
	struct pg_params p = {0};
	pg_p_str(&p, run_id);
	PGresult *r = pgs_query(s,
	                        "SELECT j.seq, j.job_id, j.type, j.agent_id, j.instance_id, j.params, j.status,"
	                        " j.max_attempts, j.timeout_s, j.cancel_grace_s, j.cancel_requested, j.created_at,"
	                        " j.updated_at, j.schedule_id, r.attempt"
	                        " FROM job_runs r JOIN jobs j ON j.job_id = r.job_id WHERE r.run_id = $1",
	                        &p);
	if (!r)
		return -EIO;
	int rc = PQntuples(r) == 1 ? 0 : -ENOENT;
	if (rc == 0) {
		struct store_job_row j;
		pgs_job_row(r, 0, &j);
		if (!(*out = store_assignment_row_json(&j, run_id, (int)pg_i64(r, 0, 14))))
			rc = -ENOMEM;
	}
	PQclear(r);
	return rc;
}

/* ---- opening and housekeeping ---- */

static void pg_close_store(struct store *s)
{
	struct store_pg *sp = pgs(s);
	pgs_bus_stop(sp);
	pg_pool_close(sp->pool);
	pgs_evq_destroy(&sp->evq);
	free(sp->url);
	free(sp);
}

static void maintain(struct store *s, bool final)
{
	(void)final; /* checkpoints and vacuum are PostgreSQL's own work */
	pgs_bus_maintain(pgs(s));
}

static int ping(struct store *s, char *why, size_t len)
{
	/* The session setup (store_pg_conn.c) is checked too: a connection
	 * without it after a reconnect is a bug to see, not to run on. */
	PGconn *c = pgs_conn(s);
	PGresult *r = c ? pg_exec(c, "SELECT current_setting('TimeZone')", NULL) : NULL;
	int rc = r && PQntuples(r) == 1 ? 0 : -EIO;
	if (rc < 0)
		snprintf(why, len, "PostgreSQL does not answer: %s", c ? PQerrorMessage(c) : "no connection");
	else if (strcmp(pg_str(r, 0, 0), "UTC") != 0) {
		snprintf(why, len, "PostgreSQL session time zone is '%s', not UTC: the session setup was lost",
		         pg_str(r, 0, 0));
		rc = -EPROTO;
	}
	PQclear(r);
	if (c)
		pgs_done(s, c);
	return rc;
}

static int schema_version(struct store *s)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	int v = pg_schema_version(c);
	pgs_done(s, c);
	return v;
}

static const char *backend_name(const struct store *s)
{
	(void)s;
	return "postgresql";
}

static const struct store_ops pg_ops = {
	.close = pg_close_store, .maintain = maintain, .ping = ping, .schema_version = schema_version,
	.backend_name = backend_name, .job_json = job_json, .run_json = run_json, .jobs_list = jobs_list,
	.run_events = run_events, .run_state = pgs_run_state, .job_info = pgs_job_info,
	.assignment_json = pgs_assignment_json, .job_create = pgs_job_create, .job_enqueue = pgs_job_enqueue,
	.jobs_created = pgs_jobs_created, .job_cancel = pgs_job_cancel, .job_retry = pgs_job_retry,
	.run_finish = pgs_run_finish, .agents_register = pgs_agents_register,
	.agents_each = pgs_agents_each, .agent_running = pgs_agent_running,
	.agents_running = pgs_agents_running, .agent_runs = pgs_agent_runs, .runs_lost = pgs_runs_lost,
	.retry_agents = pgs_retry_agents, .runs_refresh = pgs_runs_refresh, .events_append = pgs_events_append,
	.instance_events_append = pgs_instance_events_append, .instances_snapshot = pgs_instances_snapshot,
	.instances_list = pgs_instances_list, .instance_get = pgs_instance_get,
	.instance_history = pgs_instance_history, .jobtypes_put = pgs_jobtypes_put, .jobtypes_get = pgs_jobtypes_get,
	.schedule_create = pgs_schedule_create, .schedule_json = pgs_schedule_json,
	.schedules_list = pgs_schedules_list, .schedule_update = pgs_schedule_update,
	.schedule_delete = pgs_schedule_delete, .schedules_due = pgs_schedules_due,
	.schedule_claim = pgs_schedule_claim, .schedule_active_job = pgs_schedule_active_job,
	.audit_append = pgs_audit_append, .audit_set_status = pgs_audit_set_status, .audit_list = pgs_audit_list,
	.metrics_jobs = pgs_metrics_jobs, .metrics_runs = pgs_metrics_runs, .retention_pick = pgs_retention_pick,
	.retention_events = pgs_retention_events, .job_delete = pgs_job_delete, .poll = pgs_poll,
	.job_submit = pgs_job_submit,
};

bool store_is_pg(const struct store *s)
{
	return s && s->ops == &pg_ops;
}

int store_pg_open(const char *conninfo, const struct store_options *o, struct store **out, char *err, size_t errlen)
{
	struct store_pg *sp = calloc(1, sizeof(*sp));
	if (!sp || !(sp->url = strdup(conninfo))) {
		free(sp);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	sp->base.ops = &pg_ops;
	pgs_evq_init(&sp->evq);
	int rc = pg_pool_open(conninfo, o && o->connections > 0 ? o->connections : PG_POOL_SIZE, &sp->pool, err,
	                      errlen);
	if (rc < 0) {
		pgs_evq_destroy(&sp->evq);
		free(sp->url);
		free(sp);
		return rc;
	}
	*out = &sp->base;
	return 0;
}
