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
 * in the same transaction as the claim (store_job_create with a
 * store_sched_claim: next_fire moves on only from the value read); a replica
 * whose claim changes nothing (another one moved next_fire first) creates
 * nothing.
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

/* NULL when unknown or on error (*dberr set). */
static cJSON *sched_json(struct cp *cp, const char *id, bool *dberr)
{
	cJSON *o = NULL;
	int rc = store_schedule_json(cp->store, id, &o);
	*dberr = rc < 0 && rc != -ENOENT;
	return rc == 0 ? o : NULL;
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

/* What the store keeps of a checked definition. */
static struct store_schedule_def stored_def(const char *id, const struct sched_def *d, const char *job_text)
{
	return (struct store_schedule_def){.schedule_id = id, .cron = d->cron, .timezone = d->timezone,
	                                   .job = job_text, .enabled = d->enabled, .overlap = d->overlap};
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
	if (http_read_body(conn, &body) < 0)
		return;
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
	/* No cp->mu in the schedule handlers: store calls, each one transaction
	 * (a concurrent patch on another replica was never under this mutex). */
	char *job_text = cJSON_PrintUnformatted(d.job);
	int rc = jobtypes_check(cp, d.nj.agent_id, d.nj.type, d.nj.params, &err);
	if (rc < 0) {
		http_send_error(conn, err.status, "job: %s", err.msg);
		free(job_text);
		goto out;
	}
	struct store_schedule_def def = stored_def(id, &d, job_text);
	rc = job_text ? store_schedule_create(cp->store, &def, d.enabled ? next : 0, now) : -ENOMEM;
	if (rc < 0)
		http_send_error(conn, 500, "database error");
	else
		send_sched(cp, conn, id, 201);
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
	cJSON *arr = NULL;
	if (store_schedules_list(cp->store, &arr) < 0)
		arr = NULL;
	http_send_list(conn, "schedules", arr);
}

void api_sched_get(struct cp *cp, struct mg_connection *conn, const char *id)
{
	send_sched(cp, conn, id, 200);
}

void api_sched_patch(struct cp *cp, struct mg_connection *conn, const char *id)
{
	cJSON *body = NULL, *cur = NULL;
	struct cp_err err;
	if (http_read_body(conn, &body) < 0)
		return;
	struct sched_def d = {0};
	char buf[1100];
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
	struct store_schedule_def def = stored_def(id, &d, job_text);
	int rc = job_text ? store_schedule_update(cp->store, &def, retime, next, now) : -ENOMEM;
	free(job_text);
	if (rc < 0)
		http_send_error(conn, 500, "database error");
	else
		send_sched(cp, conn, id, 200);
out:
	cJSON_Delete(d.job);
	cJSON_Delete(cur);
	cJSON_Delete(body);
}

void api_sched_delete(struct cp *cp, struct mg_connection *conn, const char *id)
{
	int rc = store_schedule_delete(cp->store, id);
	if (rc < 0 && rc != -ENOENT) {
		http_send_error(conn, 500, "database error");
	} else if (rc == -ENOENT) {
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

/* Claim a firing without a job (skipped, missed, refused). */
static void claim_only(struct cp *cp, struct store_sched_claim *c)
{
	c->job_id = NULL;
	if (store_schedule_claim(cp->store, c) == 0)
		jv_info(NULL, NULL, "schedule %s: %s", c->schedule_id, c->outcome);
}

static void fire_one(struct cp *cp, const char *id, const char *cron_s, const char *tz, const char *job_s,
                     const char *overlap, int64_t old_next, int64_t now)
{
	struct cron c;
	char err[300];
	struct store_sched_claim cl = {.schedule_id = id, .old_next = old_next};
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
	if (strcmp(overlap, "skip") == 0 && store_schedule_active_job(cp->store, id) != 0) {
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
	nj.claim = &cl;
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
	else if (rc < 0 && rc != -EAGAIN) /* -EAGAIN: another replica fired it first */
		jv_error(NULL, NULL, "schedule %s: cannot create its job: %s", id, cerr.msg);
	cJSON_Delete(job);
	cJSON_Delete(tmpl);
}

struct due {
	char id[CP_ID_MAX];
	char cron[256], tz[160], overlap[8];
	char *job;
	int64_t next;
};
struct due_list {
	struct due d[DUE_PER_TICK];
	size_t n;
};

static int take_due(void *ud, const struct store_due_schedule *s)
{
	struct due_list *l = ud;
	struct due *d = &l->d[l->n];
	snprintf(d->id, sizeof(d->id), "%s", s->schedule_id);
	snprintf(d->cron, sizeof(d->cron), "%s", s->cron);
	snprintf(d->tz, sizeof(d->tz), "%s", s->timezone);
	snprintf(d->overlap, sizeof(d->overlap), "%s", s->overlap);
	d->job = strdup(s->job ? s->job : "");
	d->next = s->next_fire;
	l->n += d->job != NULL;
	return l->n == DUE_PER_TICK;
}

void schedules_tick(struct cp *cp)
{
	int64_t now = jv_now_real_ms();
	struct due_list *l = calloc(1, sizeof(*l));
	if (!l || store_schedules_due(cp->store, now, DUE_PER_TICK, take_due, l) < 0)
		jv_error(NULL, NULL, "schedules: cannot read the due ones");
	/* Without cp->mu: firing is store calls and lc_job_create, which takes it itself. */
	for (size_t i = 0; l && i < l->n; i++) {
		struct due *d = &l->d[i];
		fire_one(cp, d->id, d->cron, d->tz, d->job, d->overlap, d->next, now);
		free(d->job);
	}
	free(l);
}
