/* api_ui.c — the UI/panel side: create, list, get, cancel, retry jobs; runs,
 * run events, agents. All calls need the admin token (checked in http.c).
 *
 * Create is strict: unknown fields, wrong types, unknown job types, unknown
 * agents and bad identifiers are refused with 400 before anything is stored,
 * so a panel's typo never becomes a job that fails later on a game host. */
#include "cp.h"

#include <civetweb.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"

#define MAX_ATTEMPTS_DEFAULT 3
#define MAX_ATTEMPTS_MAX 100
#define TIMEOUT_MAX (7 * 24 * 3600)
#define GRACE_MAX 3600
#define EVENTS_PAGE_MAX 1000

/* An optional integer member in [lo, hi]: 0 ok (absent/null leaves *out), -1 bad. */
static int opt_int(const cJSON *body, const char *key, int lo, int hi, int *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi ||
	    v->valuedouble != (double)(int)v->valuedouble)
		return -1;
	*out = (int)v->valuedouble;
	return 0;
}

const char *api_ui_validate_job(struct cp *cp, const cJSON *body, struct lc_new_job *nj, char *why, size_t len)
{
	static const char *const known[] = {"jobId", "type", "agentId", "instanceId", "params",
	                                    "maxAttempts", "timeoutSeconds", "cancelGraceSeconds"};
	const cJSON *it;
	cJSON_ArrayForEach(it, body)
	{
		bool ok = false;
		for (size_t i = 0; i < JV_ARRAY_LEN(known); i++)
			ok = ok || strcmp(it->string, known[i]) == 0;
		if (!ok) {
			snprintf(why, len, "unknown field '%.64s'", it->string);
			return why;
		}
	}
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "jobId");
	if (v && !cJSON_IsNull(v) && (!cJSON_IsString(v) || !jv_run_id_valid(v->valuestring)))
		return "'jobId' must be 1-128 characters of letters, digits, '.', '_', ':', '-'";
	nj->job_id = cJSON_IsString(v) ? v->valuestring : NULL;
	nj->type = jv_json_str(body, "type", NULL);
	if (!nj->type || !jv_job_type_valid(nj->type))
		return "'type' must be a job type like BACKUP_INSTANCE";
	nj->agent_id = jv_json_str(body, "agentId", NULL);
	if (!nj->agent_id || !jv_ident_valid(nj->agent_id))
		return "'agentId' must be an agent id";
	if (!tokens_agent_find(cp, nj->agent_id)) {
		snprintf(why, len, "unknown agent '%s'", nj->agent_id);
		return why;
	}
	nj->instance_id = jv_json_str(body, "instanceId", NULL);
	if (!nj->instance_id || !jv_ident_valid(nj->instance_id))
		return "'instanceId' must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
	v = cJSON_GetObjectItemCaseSensitive(body, "params");
	if (v && !cJSON_IsNull(v) && !cJSON_IsObject(v))
		return "'params' must be an object";
	nj->params = cJSON_IsObject(v) ? v : NULL;
	if (nj->params) {
		/* Params travel in every assignment and every pushed job message: keep them small. */
		char *text = cJSON_PrintUnformatted(nj->params);
		size_t plen = text ? strlen(text) : 0;
		free(text);
		if (plen > CP_PARAMS_MAX) {
			snprintf(why, len, "'params' is %zu bytes as JSON; at most %d", plen, CP_PARAMS_MAX);
			return why;
		}
	}
	nj->max_attempts = MAX_ATTEMPTS_DEFAULT;
	if (opt_int(body, "maxAttempts", 1, MAX_ATTEMPTS_MAX, &nj->max_attempts) < 0)
		return "'maxAttempts' must be an integer from 1 to 100";
	if (opt_int(body, "timeoutSeconds", 1, TIMEOUT_MAX, &nj->timeout_s) < 0)
		return "'timeoutSeconds' must be an integer from 1 to 604800";
	if (opt_int(body, "cancelGraceSeconds", 1, GRACE_MAX, &nj->cancel_grace_s) < 0)
		return "'cancelGraceSeconds' must be an integer from 1 to 3600";
	return NULL;
}

void api_ui_create_job(struct cp *cp, struct mg_connection *conn)
{
	cJSON *body = NULL;
	struct cp_err err;
	if (http_read_body(conn, &body) < 0)
		return;
	struct lc_new_job nj = {0};
	char why_buf[200];
	const char *why = api_ui_validate_job(cp, body, &nj, why_buf, sizeof(why_buf));
	if (why) {
		http_send_error(conn, 400, "%s", why);
		cJSON_Delete(body);
		return;
	}
	cJSON *job = NULL;
	bool created = false;
	/* No cp->mu: both are store calls (thread-safe); lc_job_create takes it for its wake-up. */
	int rc = jobtypes_check(cp, nj.agent_id, nj.type, nj.params, &err);
	if (rc == 0)
		rc = lc_job_create(cp, &nj, &job, &created, &err);
	if (rc < 0)
		http_send_error(conn, err.status, "%s", err.msg);
	else
		http_send_json(conn, created ? 201 : 200, job);
	cJSON_Delete(job);
	cJSON_Delete(body);
}

/* Parse an optional non-negative integer query parameter. 0 ok, -1 bad. */
static int query_int(struct mg_connection *conn, const char *name, int64_t lo, int64_t hi, int64_t *out)
{
	char buf[32];
	int q = http_query(conn, name, buf, sizeof(buf));
	if (q == 0)
		return 0;
	if (q < 0 || !buf[0])
		return -1;
	char *end = NULL;
	long long v = strtoll(buf, &end, 10);
	if (*end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

void api_ui_list_jobs(struct cp *cp, struct mg_connection *conn)
{
	struct store_filter f = {.limit = CP_LIST_DEFAULT};
	char status[160], agent[JV_IDENT_MAX + 1], inst[JV_IDENT_MAX + 1], type[72];
	int q = http_query(conn, "status", status, sizeof(status));
	if (q < 0) {
		http_send_error(conn, 400, "'status' is too long");
		return;
	}
	if (q > 0) {
		char *save = NULL;
		for (char *s = strtok_r(status, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
			if (!lc_status_valid(s) || f.nstatus == JV_ARRAY_LEN(f.status)) {
				http_send_error(conn, 400, "'status' must be a comma-separated list of job states");
				return;
			}
			f.status[f.nstatus++] = s;
		}
	}
	if ((q = http_query(conn, "agentId", agent, sizeof(agent))) != 0) {
		if (q < 0 || !jv_ident_valid(agent)) {
			http_send_error(conn, 400, "bad 'agentId'");
			return;
		}
		f.agent_id = agent;
	}
	if ((q = http_query(conn, "instanceId", inst, sizeof(inst))) != 0) {
		if (q < 0 || !jv_ident_valid(inst)) {
			http_send_error(conn, 400, "bad 'instanceId'");
			return;
		}
		f.instance_id = inst;
	}
	if ((q = http_query(conn, "type", type, sizeof(type))) != 0) {
		if (q < 0 || !jv_job_type_valid(type)) {
			http_send_error(conn, 400, "bad 'type'");
			return;
		}
		f.type = type;
	}
	int64_t limit = CP_LIST_DEFAULT, cursor = 0;
	if (query_int(conn, "limit", 1, CP_LIST_MAX, &limit) < 0 ||
	    query_int(conn, "cursor", 1, INT64_MAX, &cursor) < 0) {
		http_send_error(conn, 400, "'limit' must be 1..%d and 'cursor' a value of nextCursor", CP_LIST_MAX);
		return;
	}
	f.limit = (int)limit;
	f.before_seq = cursor;
	cJSON *jobs = NULL;
	int64_t next = 0;
	int rc = store_jobs_list(cp->store, &f, &jobs, &next); /* a store call: no cp->mu */
	if (rc < 0) {
		http_send_error(conn, 500, "database error");
		return;
	}
	http_send_page(conn, "jobs", jobs, next);
}

static void answer_job(struct cp *cp, struct http_answer *a, const char *job_id, int status)
{
	cJSON *job = NULL;
	if (store_job_json(cp->store, job_id, &job) == 0)
		http_answer_json(a, status, job);
	else
		http_answer_error(a, 404, "no job '%s'", job_id);
}

void api_ui_get_job(struct cp *cp, struct mg_connection *conn, const char *job_id)
{
	struct http_answer ans = {0};
	answer_job(cp, &ans, job_id, 200);
	http_send_answer(conn, &ans);
}

/* Cancel or retry: the job as it is after, or why not. Without cp->mu: the
 * store decides races (conditional updates), and the action takes the mutex
 * for its publication only, so a slow database never stalls the polls. */
static void job_action(struct cp *cp, struct mg_connection *conn, const char *job_id,
                       int (*act)(struct cp *, const char *, struct cp_err *))
{
	struct cp_err err;
	struct http_answer ans = {0};
	if (act(cp, job_id, &err) < 0)
		http_answer_error(&ans, err.status, "%s", err.msg);
	else
		answer_job(cp, &ans, job_id, 200);
	http_send_answer(conn, &ans);
}

void api_ui_cancel_job(struct cp *cp, struct mg_connection *conn, const char *job_id)
{
	job_action(cp, conn, job_id, lc_job_cancel);
}

void api_ui_retry_job(struct cp *cp, struct mg_connection *conn, const char *job_id)
{
	job_action(cp, conn, job_id, lc_job_retry);
}

void api_ui_get_run(struct cp *cp, struct mg_connection *conn, const char *run_id)
{
	cJSON *run = NULL;
	if (store_run_json(cp->store, run_id, &run) == 0)
		http_send_json(conn, 200, run);
	else
		http_send_error(conn, 404, "no run '%s'", run_id);
	cJSON_Delete(run);
}

void api_ui_run_events(struct cp *cp, struct mg_connection *conn, const char *run_id)
{
	int64_t after = 0, limit = EVENTS_PAGE_MAX;
	if (query_int(conn, "after", 0, INT64_MAX, &after) < 0 || query_int(conn, "limit", 1, EVENTS_PAGE_MAX, &limit) < 0) {
		http_send_error(conn, 400, "'after' must be an integer >= 0 and 'limit' 1..%d", EVENTS_PAGE_MAX);
		return;
	}
	struct store_run_state rs;
	int rc = store_run_state(cp->store, run_id, &rs);
	cJSON *events = NULL;
	if (rc == 0)
		rc = store_run_events(cp->store, run_id, after, (int)limit, &events);
	if (rc == -ENOENT) {
		http_send_error(conn, 404, "no run '%s'", run_id);
		return;
	}
	if (rc < 0) {
		http_send_error(conn, 500, "database error");
		return;
	}
	cJSON *ans = cJSON_CreateObject();
	cJSON_AddItemToObject(ans, "events", events);
	cJSON_AddNumberToObject(ans, "lastSeq", (double)rs.last_seq);
	http_send_json(conn, 200, ans);
	cJSON_Delete(ans);
}

void api_ui_agents(struct cp *cp, struct mg_connection *conn)
{
	cJSON *agents = agents_list_json(cp);
	http_send_list(conn, "agents", agents ? agents : cJSON_CreateArray());
}
