/* store_pg_misc.c — PostgreSQL backend: schedules, the audit log, metrics,
 * retention. Schedules fire through claims (store_pg_jobs.c,
 * pgs_sched_claim_c): a conditional UPDATE of next_fire, so whichever
 * replica gets there first fires and the others find it moved on. */
#include "store_pg_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHED_COLUMNS                                                                              \
	"s.schedule_id, s.cron, s.timezone, s.job, s.enabled, s.overlap, s.next_fire, s.last_fire," \
	" s.last_job_id, s.last_outcome, s.created_at, s.updated_at, j.status"
#define SCHED_FROM " FROM schedules s LEFT JOIN jobs j ON j.job_id = s.last_job_id"

static const char *nul(const PGresult *r, int i, int col)
{
	return PQgetisnull(r, i, col) ? NULL : PQgetvalue(r, i, col);
}

static cJSON *sched_from_row(const PGresult *r, int i)
{
	struct store_schedule_row row = {
		.schedule_id = nul(r, i, 0), .cron = nul(r, i, 1), .timezone = nul(r, i, 2), .job = nul(r, i, 3),
		.enabled = pg_i64(r, i, 4) != 0, .overlap = nul(r, i, 5), .next_fire = pg_i64(r, i, 6),
		.last_fire = pg_i64(r, i, 7), .last_job_id = nul(r, i, 8), .last_outcome = nul(r, i, 9),
		.created_at = pg_i64(r, i, 10), .updated_at = pg_i64(r, i, 11), .last_job_status = nul(r, i, 12),
	};
	return store_schedule_row_json(&row);
}

int pgs_schedule_create(struct store *s, const struct store_schedule_def *d, int64_t next_fire, int64_t now)
{
	struct pg_params p = {0};
	pg_p_str(&p, d->schedule_id);
	pg_p_str(&p, d->cron);
	pg_p_str(&p, d->timezone);
	pg_p_str(&p, d->job);
	pg_p_i64(&p, d->enabled);
	pg_p_str(&p, d->overlap);
	pg_p_i64(&p, next_fire);
	pg_p_i64(&p, now);
	int n = pgs_cmd(s,
	                "INSERT INTO schedules (schedule_id, cron, timezone, job, enabled, overlap, next_fire,"
	                " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
	                " ON CONFLICT (schedule_id) DO NOTHING",
	                &p);
	return n < 0 ? n : n == 0 ? -EEXIST : 0;
}

int pgs_schedule_json(struct store *s, const char *schedule_id, cJSON **out)
{
	struct pg_params p = {0};
	pg_p_str(&p, schedule_id);
	PGresult *r = pgs_query(s, "SELECT " SCHED_COLUMNS SCHED_FROM " WHERE s.schedule_id = $1", &p);
	if (!r)
		return -EIO;
	int rc = PQntuples(r) == 1 ? 0 : -ENOENT;
	if (rc == 0 && !(*out = sched_from_row(r, 0)))
		rc = -ENOMEM;
	PQclear(r);
	return rc;
}

int pgs_schedules_list(struct store *s, cJSON **arr)
{
	PGresult *r = pgs_query(s, "SELECT " SCHED_COLUMNS SCHED_FROM " ORDER BY s.created_at, s.schedule_id LIMIT 10000",
	                        NULL);
	if (!r)
		return -EIO;
	cJSON *a = cJSON_CreateArray();
	for (int i = 0; a && i < PQntuples(r); i++) {
		cJSON *o = sched_from_row(r, i);
		if (o)
			cJSON_AddItemToArray(a, o);
	}
	PQclear(r);
	if (!a)
		return -ENOMEM;
	*arr = a;
	return 0;
}

int pgs_schedule_update(struct store *s, const struct store_schedule_def *d, bool retime, int64_t next,
                        int64_t now)
{
	struct pg_params p = {0};
	pg_p_str(&p, d->cron);
	pg_p_str(&p, d->timezone);
	pg_p_str(&p, d->job);
	pg_p_i64(&p, d->enabled);
	pg_p_str(&p, d->overlap);
	pg_p_i64(&p, now);
	pg_p_i64(&p, retime);
	pg_p_i64(&p, next);
	pg_p_str(&p, d->schedule_id);
	int n = pgs_cmd(s,
	                "UPDATE schedules SET cron = $1, timezone = $2, job = $3, enabled = $4, overlap = $5,"
	                " updated_at = $6, next_fire = CASE WHEN $4 = 0 THEN 0 WHEN $7 = 1 OR next_fire = 0 THEN $8"
	                " ELSE next_fire END WHERE schedule_id = $9",
	                &p);
	return n < 0 ? n : n == 0 ? -ENOENT : 0;
}

int pgs_schedule_delete(struct store *s, const char *schedule_id)
{
	struct pg_params p = {0};
	pg_p_str(&p, schedule_id);
	int n = pgs_cmd(s, "DELETE FROM schedules WHERE schedule_id = $1", &p);
	return n < 0 ? n : n == 0 ? -ENOENT : 0;
}

int pgs_schedules_due(struct store *s, int64_t now, int max, store_due_fn fn, void *ud)
{
	struct pg_params p = {0};
	pg_p_i64(&p, now);
	pg_p_i64(&p, max);
	PGresult *r = pgs_query(s,
	                        "SELECT schedule_id, cron, timezone, job, overlap, next_fire FROM schedules"
	                        " WHERE enabled = 1 AND next_fire > 0 AND next_fire <= $1 ORDER BY next_fire LIMIT $2",
	                        &p);
	if (!r)
		return -EIO;
	for (int i = 0; i < PQntuples(r); i++) {
		struct store_due_schedule d = {
			.schedule_id = pg_str(r, i, 0), .cron = pg_str(r, i, 1), .timezone = pg_str(r, i, 2),
			.job = pg_str(r, i, 3), .overlap = pg_str(r, i, 4), .next_fire = pg_i64(r, i, 5),
		};
		if (fn(ud, &d) != 0)
			break;
	}
	PQclear(r);
	return 0;
}

int pgs_schedule_claim(struct store *s, const struct store_sched_claim *cl)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	int rc = pgs_sched_claim_c(c, cl); /* one statement: its own transaction */
	pgs_done(s, c);
	return rc < 0 ? rc : rc == 1 ? 0 : 1;
}

int pgs_schedule_active_job(struct store *s, const char *schedule_id)
{
	struct pg_params p = {0};
	pg_p_str(&p, schedule_id);
	PGresult *r = pgs_query(s,
	                        "SELECT 1 FROM jobs WHERE schedule_id = $1 AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')"
	                        " LIMIT 1",
	                        &p);
	if (!r)
		return -EIO;
	int n = PQntuples(r) > 0;
	PQclear(r);
	return n;
}

int pgs_audit_append(struct store *s, const struct store_audit *a, int64_t *seq)
{
	struct pg_params p = {0};
	pg_p_i64(&p, a->at);
	pg_p_str(&p, a->who);
	pg_p_str(&p, a->role);
	pg_p_str(&p, a->method);
	pg_p_str(&p, a->path ? a->path : "");
	pg_p_i64(&p, a->status);
	pg_p_str(&p, a->remote ? a->remote : "");
	PGresult *r = pgs_query(s,
	                        "INSERT INTO audit_log (at, who, role, method, path, status, remote)"
	                        " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
	                        &p);
	*seq = r && PQntuples(r) == 1 ? pg_i64(r, 0, 0) : 0;
	PQclear(r);
	return r ? 0 : -EIO;
}

int pgs_audit_set_status(struct store *s, int64_t seq, int status)
{
	struct pg_params p = {0};
	pg_p_i64(&p, status);
	pg_p_i64(&p, seq);
	return pgs_cmd(s, "UPDATE audit_log SET status = $1 WHERE seq = $2", &p) < 0 ? -EIO : 0;
}

int pgs_audit_list(struct store *s, int64_t cursor, int limit, cJSON **entries, int64_t *last)
{
	struct pg_params p = {0};
	pg_p_i64(&p, cursor);
	pg_p_i64(&p, limit);
	PGresult *r = pgs_query(s,
	                        "SELECT seq, at, who, role, method, path, status, remote FROM audit_log"
	                        " WHERE ($1 = 0 OR seq < $1) ORDER BY seq DESC LIMIT $2",
	                        &p);
	if (!r)
		return -EIO;
	cJSON *arr = cJSON_CreateArray();
	*last = 0;
	for (int i = 0; arr && i < PQntuples(r); i++) {
		struct store_audit a = {
			.at = pg_i64(r, i, 1), .who = pg_str(r, i, 2), .role = pg_str(r, i, 3),
			.method = pg_str(r, i, 4), .path = pg_str(r, i, 5), .status = (int)pg_i64(r, i, 6),
		};
		*last = pg_i64(r, i, 0);
		cJSON *e = store_audit_row_json(*last, &a);
		if (e)
			cJSON_AddItemToArray(arr, e);
	}
	PQclear(r);
	if (!arr)
		return -ENOMEM;
	*entries = arr;
	return 0;
}

int pgs_metrics_jobs(struct store *s, void (*fn)(void *ud, const char *type, const char *status, int64_t n),
                     void *ud)
{
	PGresult *r = pgs_query(s, "SELECT type, status, count(*) FROM jobs GROUP BY type, status ORDER BY 1, 2", NULL);
	if (!r)
		return -EIO;
	for (int i = 0; i < PQntuples(r); i++)
		fn(ud, pg_str(r, i, 0), pg_str(r, i, 1), pg_i64(r, i, 2));
	PQclear(r);
	return 0;
}

/* The run counters: the sum of run_counters' shards (store_pg_schema.c, 2 -> 3). */
int pgs_metrics_runs(struct store *s, int64_t *started, int64_t *completed, int64_t *failed, int64_t *cancelled)
{
	PGresult *r = pgs_query(s,
	                        "SELECT coalesce(sum(value) FILTER (WHERE name = 'started'), 0),"
	                        " coalesce(sum(value) FILTER (WHERE name = 'COMPLETED'), 0),"
	                        " coalesce(sum(value) FILTER (WHERE name = 'FAILED'), 0),"
	                        " coalesce(sum(value) FILTER (WHERE name = 'CANCELLED'), 0) FROM run_counters",
	                        NULL);
	if (!r)
		return -EIO;
	*started = pg_i64(r, 0, 0);
	*completed = pg_i64(r, 0, 1);
	*failed = pg_i64(r, 0, 2);
	*cancelled = pg_i64(r, 0, 3);
	PQclear(r);
	return 0;
}

int pgs_retention_pick(struct store *s, int64_t cutoff, int keep, char job_id[CP_ID_MAX])
{
	struct pg_params p = {0};
	pg_p_i64(&p, cutoff);
	pg_p_i64(&p, keep);
	PGresult *r = pgs_query(s,
	                        "SELECT j.job_id FROM jobs j"
	                        " WHERE j.status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND j.updated_at < $1"
	                        "   AND (SELECT count(*) FROM jobs k WHERE k.agent_id = j.agent_id"
	                        "        AND k.instance_id = j.instance_id AND k.seq > j.seq) >= $2"
	                        " ORDER BY j.seq LIMIT 1",
	                        &p);
	if (!r)
		return -EIO;
	int n = PQntuples(r) == 1;
	if (n)
		pgs_copy(job_id, CP_ID_MAX, r, 0, 0);
	PQclear(r);
	return n;
}

int pgs_retention_events(struct store *s, const char *job_id, int batch)
{
	struct pg_params p = {0};
	pg_p_str(&p, job_id);
	pg_p_i64(&p, batch);
	return pgs_cmd(s,
	               /* by row address: one TID scan, whatever plan the join gets */
	               "DELETE FROM events WHERE ctid = ANY(ARRAY(SELECT e.ctid FROM events e"
	               " WHERE e.run_id IN (SELECT r.run_id FROM job_runs r WHERE r.job_id = $1) LIMIT $2))",
	               &p);
}

int pgs_job_delete(struct store *s, const char *job_id)
{
	struct pg_params p = {0};
	pg_p_str(&p, job_id);
	int n = pgs_cmd(s, "DELETE FROM jobs WHERE job_id = $1", &p); /* runs cascade (few rows) */
	                return n < 0 ? n : 0;
}
