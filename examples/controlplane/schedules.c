/* schedules.c — recurring jobs: a job template, a cron expression in a time
 * zone, an enabled flag and an overlap policy.
 *
 * Firing (main thread, every sweep): for each enabled schedule whose
 * next_fire has come, the latest firing time not after now is the one that
 * counts — a schedule that missed several firings while the control plane
 * was down fires at most once, and only when that latest firing is within
 * the catch-up window (--schedule-catch-up, at least FIRE_GRACE_MS);
 * otherwise the firing is recorded as missed. overlap = skip records a skip
 * when the schedule's previous job is still active; queue creates the job
 * anyway (jobs of one instance run one at a time in creation order).
 *
 * Exactly once with several replicas on one database: the job is inserted
 * in the same transaction as `UPDATE schedules SET next_fire = new WHERE
 * schedule_id = ? AND next_fire = old`; a replica whose update changes no
 * row (another one moved next_fire first) rolls back and creates nothing.
 * The job id is derived from the schedule and the firing time as well, so
 * even a replica working from a stale read cannot insert a second one. */
#include "cp.h"

#include <civetweb.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cron.h"
#include "jobvisor/ident.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define FIRE_GRACE_MS 60000 /* a firing this late is on time, whatever the catch-up window */
#define DUE_PER_TICK 32 /* as the LIMIT of the due query */
#define CATCH_UP_STEPS 100000 /* firings walked over to find the latest missed one */

#define SCHED_COLUMNS                                                                              \
	"s.schedule_id, s.cron, s.timezone, s.job, s.enabled, s.overlap, s.next_fire, s.last_fire," \
	" s.last_job_id, s.last_outcome, s.created_at, s.updated_at, j.status"
#define SCHED_FROM " FROM schedules s LEFT JOIN jobs j ON j.job_id = s.last_job_id"

static cJSON *col_str_or_null(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	return t ? cJSON_CreateString((const char *)t) : cJSON_CreateNull();
}

static cJSON *sched_from_row(sqlite3_stmt *st)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "scheduleId", col_str_or_null(st, 0));
	cJSON_AddItemToObject(o, "cron", col_str_or_null(st, 1));
	cJSON_AddItemToObject(o, "timezone", col_str_or_null(st, 2));
	cJSON *job = cJSON_Parse((const char *)sqlite3_column_text(st, 3));
	cJSON_AddItemToObject(o, "job", job ? job : cJSON_CreateObject());
	cJSON_AddBoolToObject(o, "enabled", sqlite3_column_int(st, 4) != 0);
	cJSON_AddItemToObject(o, "overlap", col_str_or_null(st, 5));
	cJSON_AddItemToObject(o, "nextFireAt", store_time(sqlite3_column_int64(st, 6)));
	cJSON_AddItemToObject(o, "lastFireAt", store_time(sqlite3_column_int64(st, 7)));
	cJSON_AddItemToObject(o, "lastJobId", col_str_or_null(st, 8));
	cJSON_AddItemToObject(o, "lastJobStatus", col_str_or_null(st, 12));
	cJSON_AddItemToObject(o, "lastOutcome", col_str_or_null(st, 9));
	cJSON_AddItemToObject(o, "createdAt", store_time(sqlite3_column_int64(st, 10)));
	cJSON_AddItemToObject(o, "updatedAt", store_time(sqlite3_column_int64(st, 11)));
	return o;
}

/* mu held. NULL when unknown or on error (*dberr set). */
static cJSON *sched_json(struct cp *cp, const char *id, bool *dberr)
{
	*dberr = false;
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT " SCHED_COLUMNS SCHED_FROM " WHERE s.schedule_id = ?");
	if (!st) {
		*dberr = true;
		return NULL;
	}
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	cJSON *o = NULL;
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		o = sched_from_row(st);
	else if (rc != SQLITE_DONE)
		*dberr = true;
	sqlite3_finalize(st);
	return o;
}

/* What a schedule is made of, validated. Strings borrow from the body or the stored row. */
struct sched_def {
	const char *cron;
	const char *timezone;
	cJSON *job; /* the normalised template (owned) */
	bool enabled;
	const char *overlap;
	struct cron parsed;
	struct lc_new_job nj; /* borrows from job */
};

/* The template: the create-job body without jobId, normalised. */
static const char *check_job(struct cp *cp, const cJSON *v, struct sched_def *d, char *buf, size_t len)
{
	if (!cJSON_IsObject(v))
		return "'job' must be an object {type, agentId, instanceId, params, maxAttempts, timeoutSeconds, "
		       "cancelGraceSeconds}";
	if (cJSON_GetObjectItemCaseSensitive(v, "jobId"))
		return "'job.jobId' cannot be set: each firing makes a job with its own id";
	cJSON_Delete(d->job);
	d->job = cJSON_Duplicate(v, true);
	if (!d->job)
		return "out of memory";
	char tmp[300];
	const char *why = api_ui_validate_job(cp, d->job, &d->nj, tmp, sizeof(tmp));
	if (why) {
		snprintf(buf, len, "job: %s", why);
		return buf;
	}
	return NULL;
}

static const char *check_fields(struct cp *cp, const cJSON *body, struct sched_def *d, bool creating, char *buf,
                                size_t len)
{
	static const char *const keys[] = {"cron", "timezone", "job", "enabled", "overlap"};
	const cJSON *it;
	cJSON_ArrayForEach(it, body)
	{
		bool ok = false;
		for (size_t i = 0; i < JV_ARRAY_LEN(keys); i++)
			ok = ok || strcmp(it->string, keys[i]) == 0;
		if (!ok) {
			snprintf(buf, len, "unknown field '%.64s' (known: cron, timezone, job, enabled, overlap)", it->string);
			return buf;
		}
	}
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "cron");
	if (v || creating) {
		if (!cJSON_IsString(v))
			return "'cron' must be a string such as \"0 4 * * *\"";
		d->cron = v->valuestring;
	}
	char err[200];
	if (cron_parse(d->cron, &d->parsed, err, sizeof(err)) < 0) {
		snprintf(buf, len, "'cron': %s", err);
		return buf;
	}
	v = cJSON_GetObjectItemCaseSensitive(body, "timezone");
	if (v) {
		if (!cJSON_IsString(v))
			return "'timezone' must be an IANA time zone name such as \"Europe/Berlin\"";
		d->timezone = v->valuestring;
	}
	if (cron_zone_check(d->timezone, err, sizeof(err)) < 0) {
		snprintf(buf, len, "'timezone': %s", err);
		return buf;
	}
	v = cJSON_GetObjectItemCaseSensitive(body, "enabled");
	if (v) {
		if (!cJSON_IsBool(v))
			return "'enabled' must be true or false";
		d->enabled = cJSON_IsTrue(v);
	}
	v = cJSON_GetObjectItemCaseSensitive(body, "overlap");
	if (v) {
		if (!cJSON_IsString(v) || (strcmp(v->valuestring, "skip") != 0 && strcmp(v->valuestring, "queue") != 0))
			return "'overlap' must be \"skip\" (no new job while the previous one is active) or \"queue\"";
		d->overlap = v->valuestring;
	}
	v = cJSON_GetObjectItemCaseSensitive(body, "job");
	if (v || creating) {
		const char *why = check_job(cp, v, d, buf, len);
		if (why)
			return why;
	}
	return NULL;
}

static void send_sched(struct cp *cp, struct mg_connection *conn, const char *id, int status)
{
	bool dberr;
	cJSON *o = sched_json(cp, id, &dberr);
	if (o)
		http_send_json(conn, status, o);
	else if (dberr)
		http_send_error(conn, 500, "database error");
	else
		http_send_error(conn, 404, "no schedule '%s'", id);
	cJSON_Delete(o);
}

void api_sched_create(struct cp *cp, struct mg_connection *conn)
{
	cJSON *body = NULL;
	struct cp_err err;
	if (http_read_json(conn, &body, &err) < 0) {
		http_send_error(conn, err.status, "%s", err.msg);
		return;
	}
	struct sched_def d = {.timezone = "UTC", .enabled = true, .overlap = "skip"};
	char buf[1100];
	const char *why = cJSON_IsObject(body) ? check_fields(cp, body, &d, true, buf, sizeof(buf))
	                                        : "expected a JSON object {cron, timezone, job, enabled, overlap}";
	if (why) {
		http_send_error(conn, 400, "%s", why);
		goto out;
	}
	int64_t now = jv_now_real_ms();
	int64_t next = cron_next(&d.parsed, d.timezone, now);
	if (!next) {
		http_send_error(conn, 400, "'cron': \"%s\" never fires (no matching date in the next 8 years)", d.cron);
		goto out;
	}
	char id[JV_UUID_LEN];
	if (jv_uuid4(id) < 0) {
		http_send_error(conn, 500, "cannot generate an id");
		goto out;
	}
	char *job_text = cJSON_PrintUnformatted(d.job);
	pthread_mutex_lock(&cp->mu);
	int rc = jobtypes_check(cp, d.nj.agent_id, d.nj.type, d.nj.params, &err);
	if (rc < 0) {
		pthread_mutex_unlock(&cp->mu);
		http_send_error(conn, err.status, "job: %s", err.msg);
		free(job_text);
		goto out;
	}
	sqlite3_stmt *st = db_prepare(cp->db, "INSERT INTO schedules (schedule_id, cron, timezone, job, enabled, overlap,"
	                                      " next_fire, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
	rc = -EIO;
	if (st && job_text) {
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, d.cron, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, d.timezone, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, job_text, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 5, d.enabled);
		sqlite3_bind_text(st, 6, d.overlap, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 7, d.enabled ? next : 0);
		sqlite3_bind_int64(st, 8, now);
		sqlite3_bind_int64(st, 9, now);
		rc = db_step_done(cp->db, st);
	}
	sqlite3_finalize(st);
	if (rc < 0)
		http_send_error(conn, 500, "database error");
	else
		send_sched(cp, conn, id, 201);
	pthread_mutex_unlock(&cp->mu);
	free(job_text);
	if (rc == 0)
		jv_info(NULL, NULL, "schedule %s created: '%s' %s, %s for agent '%s' instance '%s'", id, d.cron, d.timezone,
		        d.nj.type, d.nj.agent_id, d.nj.instance_id);
out:
	cJSON_Delete(d.job);
	cJSON_Delete(body);
}

void api_sched_list(struct cp *cp, struct mg_connection *conn)
{
	pthread_mutex_lock(&cp->mu);
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT " SCHED_COLUMNS SCHED_FROM " ORDER BY s.created_at, s.schedule_id"
	                                      " LIMIT 10000");
	cJSON *arr = cJSON_CreateArray();
	int rc = st ? SQLITE_ROW : SQLITE_ERROR;
	while (st && (rc = sqlite3_step(st)) == SQLITE_ROW)
		cJSON_AddItemToArray(arr, sched_from_row(st));
	sqlite3_finalize(st);
	pthread_mutex_unlock(&cp->mu);
	if (rc != SQLITE_DONE) {
		cJSON_Delete(arr);
		http_send_error(conn, 500, "database error");
		return;
	}
	cJSON *ans = cJSON_CreateObject();
	cJSON_AddItemToObject(ans, "schedules", arr);
	http_send_json(conn, 200, ans);
	cJSON_Delete(ans);
}

void api_sched_get(struct cp *cp, struct mg_connection *conn, const char *id)
{
	pthread_mutex_lock(&cp->mu);
	send_sched(cp, conn, id, 200);
	pthread_mutex_unlock(&cp->mu);
}

void api_sched_patch(struct cp *cp, struct mg_connection *conn, const char *id)
{
	cJSON *body = NULL, *cur = NULL;
	struct cp_err err;
	if (http_read_json(conn, &body, &err) < 0) {
		http_send_error(conn, err.status, "%s", err.msg);
		return;
	}
	struct sched_def d = {0};
	char buf[1100];
	pthread_mutex_lock(&cp->mu);
	bool dberr;
	cur = sched_json(cp, id, &dberr);
	if (!cur) {
		if (dberr)
			http_send_error(conn, 500, "database error");
		else
			http_send_error(conn, 404, "no schedule '%s'", id);
		goto out;
	}
	d.cron = jv_json_str(cur, "cron", "");
	d.timezone = jv_json_str(cur, "timezone", "UTC");
	d.enabled = jv_json_bool(cur, "enabled", false);
	d.overlap = jv_json_str(cur, "overlap", "skip");
	const char *why = cJSON_IsObject(body) ? check_fields(cp, body, &d, false, buf, sizeof(buf))
	                                        : "expected a JSON object with some of cron, timezone, job, enabled, overlap";
	if (!why && !d.job)
		why = check_job(cp, cJSON_GetObjectItemCaseSensitive(cur, "job"), &d, buf, sizeof(buf));
	if (why) {
		http_send_error(conn, 400, "%s", why);
		goto out;
	}
	if (jobtypes_check(cp, d.nj.agent_id, d.nj.type, d.nj.params, &err) < 0) {
		http_send_error(conn, err.status, "job: %s", err.msg);
		goto out;
	}
	int64_t now = jv_now_real_ms();
	/* A changed time, or a schedule enabled again, counts from now: no catch-up of the pause. */
	bool retime = cJSON_GetObjectItemCaseSensitive(body, "cron") || cJSON_GetObjectItemCaseSensitive(body, "timezone") ||
	              (d.enabled && !jv_json_bool(cur, "enabled", false));
	int64_t next = cron_next(&d.parsed, d.timezone, now);
	if (!next) {
		http_send_error(conn, 400, "'cron': \"%s\" never fires (no matching date in the next 8 years)", d.cron);
		goto out;
	}
	char *job_text = cJSON_PrintUnformatted(d.job);
	sqlite3_stmt *st = db_prepare(cp->db, "UPDATE schedules SET cron = ?, timezone = ?, job = ?, enabled = ?,"
	                                      " overlap = ?, updated_at = ?,"
	                                      " next_fire = CASE WHEN ?7 = 0 THEN 0 WHEN ?8 = 1 OR next_fire = 0 THEN ?9"
	                                      " ELSE next_fire END WHERE schedule_id = ?10");
	int rc = -EIO;
	if (st && job_text) {
		sqlite3_bind_text(st, 1, d.cron, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, d.timezone, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, job_text, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 4, d.enabled);
		sqlite3_bind_text(st, 5, d.overlap, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 6, now);
		sqlite3_bind_int(st, 7, d.enabled);
		sqlite3_bind_int(st, 8, retime);
		sqlite3_bind_int64(st, 9, next);
		sqlite3_bind_text(st, 10, id, -1, SQLITE_STATIC);
		rc = db_step_done(cp->db, st);
	}
	sqlite3_finalize(st);
	free(job_text);
	if (rc < 0)
		http_send_error(conn, 500, "database error");
	else
		send_sched(cp, conn, id, 200);
out:
	pthread_mutex_unlock(&cp->mu);
	cJSON_Delete(d.job);
	cJSON_Delete(cur);
	cJSON_Delete(body);
}

void api_sched_delete(struct cp *cp, struct mg_connection *conn, const char *id)
{
	pthread_mutex_lock(&cp->mu);
	sqlite3_stmt *st = db_prepare(cp->db, "DELETE FROM schedules WHERE schedule_id = ?");
	int rc = -EIO, n = 0;
	if (st) {
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
		rc = db_step_done(cp->db, st);
		n = sqlite3_changes(cp->db);
	}
	sqlite3_finalize(st);
	pthread_mutex_unlock(&cp->mu);
	if (rc < 0) {
		http_send_error(conn, 500, "database error");
	} else if (n == 0) {
		http_send_error(conn, 404, "no schedule '%s'", id);
	} else {
		cJSON *ans = cJSON_CreateObject();
		cJSON_AddStringToObject(ans, "scheduleId", id);
		cJSON_AddBoolToObject(ans, "deleted", true);
		http_send_json(conn, 200, ans);
		cJSON_Delete(ans);
		jv_info(NULL, NULL, "schedule %s deleted (its jobs are kept)", id);
	}
}

/* GET /v1/cron-preview?cron=&timezone=&after=&count= : the next firings, for panels. */
void api_cron_preview(struct cp *cp, struct mg_connection *conn)
{
	(void)cp;
	char expr[256], tz[160] = "UTC", after_s[64], count_s[16];
	struct cron c;
	char err[300];
	if (http_query(conn, "cron", expr, sizeof(expr)) != 1) {
		http_send_error(conn, 400, "'cron' is required (at most 200 characters)");
		return;
	}
	int q = http_query(conn, "timezone", tz, sizeof(tz));
	if (q < 0 || cron_parse(expr, &c, err, sizeof(err)) < 0 || cron_zone_check(tz, err, sizeof(err)) < 0) {
		http_send_error(conn, 400, "%s", q < 0 ? "'timezone' is too long" : err);
		return;
	}
	int64_t after = jv_now_real_ms(), count = 5;
	if ((q = http_query(conn, "after", after_s, sizeof(after_s))) != 0 &&
	    (q < 0 || jv_iso8601_parse(after_s, &after) < 0)) {
		http_send_error(conn, 400, "'after' must be ISO-8601 UTC like 2026-03-29T00:00:00Z");
		return;
	}
	if ((q = http_query(conn, "count", count_s, sizeof(count_s))) != 0) {
		char *end = NULL;
		count = q > 0 ? strtoll(count_s, &end, 10) : 0;
		if (q < 0 || !end || *end || count < 1 || count > 100) {
			http_send_error(conn, 400, "'count' must be 1..100");
			return;
		}
	}
	cJSON *ans = cJSON_CreateObject();
	cJSON_AddStringToObject(ans, "cron", expr);
	cJSON_AddStringToObject(ans, "timezone", tz);
	cJSON *fires = cJSON_AddArrayToObject(ans, "fires");
	for (int64_t i = 0, t = after; i < count; i++) {
		t = cron_next(&c, tz, t);
		if (!t)
			break;
		cJSON_AddItemToArray(fires, store_time(t));
	}
	http_send_json(conn, 200, ans);
	cJSON_Delete(ans);
}

/* ---- firing ---- */

struct claim {
	const char *id;
	int64_t old_next, new_next, fire_at;
	const char *job_id;
	const char *outcome;
};

/* In the job's transaction: move next_fire on from the value read, or give up. */
static int claim_fire(struct cp *cp, void *ud)
{
	struct claim *c = ud;
	sqlite3_stmt *st = db_prepare(cp->db, "UPDATE schedules SET next_fire = ?, last_fire = ?, last_job_id = ?,"
	                                      " last_outcome = ? WHERE schedule_id = ? AND next_fire = ? AND enabled = 1");
	if (!st)
		return -EIO;
	sqlite3_bind_int64(st, 1, c->new_next);
	sqlite3_bind_int64(st, 2, c->fire_at);
	if (c->job_id)
		sqlite3_bind_text(st, 3, c->job_id, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 3);
	sqlite3_bind_text(st, 4, c->outcome, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, c->id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, c->old_next);
	int rc = db_step_done(cp->db, st);
	sqlite3_finalize(st);
	if (rc < 0)
		return rc;
	return sqlite3_changes(cp->db) == 1 ? 0 : 1;
}

/* Claim without a job (skipped, missed, refused): its own transaction. */
static void claim_only(struct cp *cp, struct claim *c)
{
	c->job_id = NULL;
	if (db_begin(cp->db) < 0)
		return;
	if (claim_fire(cp, c) == 0 && db_commit(cp->db) == 0)
		jv_info(NULL, NULL, "schedule %s: %s", c->id, c->outcome);
	else
		db_rollback(cp->db);
}

static bool has_active_job(struct cp *cp, const char *sched_id)
{
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT 1 FROM jobs WHERE schedule_id = ?"
	                                      " AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED') LIMIT 1");
	if (!st)
		return true; /* cannot tell: do not pile up */
	sqlite3_bind_text(st, 1, sched_id, -1, SQLITE_STATIC);
	bool active = sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	return active;
}

static void fire_one(struct cp *cp, const char *id, const char *cron_s, const char *tz, const char *job_s,
                     const char *overlap, int64_t old_next, int64_t now)
{
	struct cron c;
	char err[300];
	struct claim cl = {.id = id, .old_next = old_next};
	if (cron_parse(cron_s, &c, err, sizeof(err)) < 0 || cron_zone_check(tz, err, sizeof(err)) < 0) {
		cl.new_next = 0;
		cl.fire_at = old_next;
		cl.outcome = "stopped: its cron or time zone is no longer valid here";
		claim_only(cp, &cl);
		return;
	}
	/* The latest firing not after now: missed ones never pile up. */
	int64_t latest = old_next, n = 0;
	for (int i = 0; i < CATCH_UP_STEPS && (n = cron_next(&c, tz, latest)) != 0 && n <= now; i++)
		latest = n;
	if (n != 0 && n <= now)
		n = cron_next(&c, tz, now);
	cl.new_next = n;
	cl.fire_at = latest;
	int64_t window = (int64_t)cp->cfg.catch_up_s * 1000;
	if (window < FIRE_GRACE_MS)
		window = FIRE_GRACE_MS;
	char outcome[400];
	if (now - latest > window) {
		snprintf(outcome, sizeof(outcome), "missed: the control plane was not running (%lld s late, catch-up window %d s)",
		         (long long)((now - latest) / 1000), cp->cfg.catch_up_s);
		cl.outcome = outcome;
		claim_only(cp, &cl);
		return;
	}
	if (strcmp(overlap, "skip") == 0 && has_active_job(cp, id)) {
		cl.outcome = "skipped: the previous job of this schedule is still active";
		claim_only(cp, &cl);
		return;
	}
	cJSON *tmpl = cJSON_Parse(job_s);
	struct lc_new_job nj = {0};
	char buf[1100];
	struct cp_err cerr;
	const char *why = tmpl ? api_ui_validate_job(cp, tmpl, &nj, buf, sizeof(buf)) : "the stored template is unreadable";
	if (!why && jobtypes_check(cp, nj.agent_id, nj.type, nj.params, &cerr) < 0) {
		snprintf(buf, sizeof(buf), "%s", cerr.msg);
		why = buf;
	}
	if (why) {
		snprintf(outcome, sizeof(outcome), "refused: %.300s", why);
		cl.outcome = outcome;
		claim_only(cp, &cl);
		cJSON_Delete(tmpl);
		return;
	}
	char job_id[CP_ID_MAX];
	snprintf(job_id, sizeof(job_id), "sched-%s-%lld", id, (long long)latest);
	nj.job_id = job_id;
	nj.schedule_id = id;
	nj.claim = claim_fire;
	nj.claim_ud = &cl;
	cl.job_id = job_id;
	cl.outcome = "created";
	cJSON *job = NULL;
	bool created = false;
	int rc = lc_job_create(cp, &nj, &job, &created, &cerr);
	if (rc == 0 && created)
		jv_info(job_id, NULL, "schedule %s fired (due %lld ms ago)", id, (long long)(now - latest));
	else if (rc == 0) {
		cl.outcome = "skipped: this firing's job exists already";
		claim_only(cp, &cl); /* a stale read: only move on */
	}
	else if (rc < 0)
		jv_error(NULL, NULL, "schedule %s: cannot create its job: %s", id, cerr.msg);
	cJSON_Delete(job);
	cJSON_Delete(tmpl);
}

void schedules_tick(struct cp *cp)
{
	int64_t now = jv_now_real_ms();
	struct due {
		char id[CP_ID_MAX];
		char cron[256], tz[160], overlap[8];
		char *job;
		int64_t next;
	} due[DUE_PER_TICK];
	size_t n = 0;
	pthread_mutex_lock(&cp->mu);
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT schedule_id, cron, timezone, job, overlap, next_fire FROM schedules"
	                                      " WHERE enabled = 1 AND next_fire > 0 AND next_fire <= ?"
	                                      " ORDER BY next_fire LIMIT 32");
	if (st) {
		sqlite3_bind_int64(st, 1, now);
		while (n < DUE_PER_TICK && sqlite3_step(st) == SQLITE_ROW) {
			struct due *d = &due[n];
			snprintf(d->id, sizeof(d->id), "%s", (const char *)sqlite3_column_text(st, 0));
			snprintf(d->cron, sizeof(d->cron), "%s", (const char *)sqlite3_column_text(st, 1));
			snprintf(d->tz, sizeof(d->tz), "%s", (const char *)sqlite3_column_text(st, 2));
			d->job = strdup((const char *)sqlite3_column_text(st, 3));
			snprintf(d->overlap, sizeof(d->overlap), "%s", (const char *)sqlite3_column_text(st, 4));
			d->next = sqlite3_column_int64(st, 5);
			n += d->job != NULL;
		}
		sqlite3_finalize(st);
	}
	pthread_mutex_unlock(&cp->mu);
	/* One schedule per lock hold: polls get in between. */
	for (size_t i = 0; i < n; i++) {
		pthread_mutex_lock(&cp->mu);
		fire_one(cp, due[i].id, due[i].cron, due[i].tz, due[i].job, due[i].overlap, due[i].next, now);
		pthread_mutex_unlock(&cp->mu);
		free(due[i].job);
	}
}
