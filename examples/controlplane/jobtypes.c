/* jobtypes.c — the job types each agent reports (params schema, description,
 * cancellable), kept per agent, shown to panels and used to check new jobs.
 *
 * An agent posts its whole list at start and whenever its jobs directory
 * changes (POST /v1/agents/{id}/job-types); the list replaces the previous
 * one. Until an agent has reported, jobs for it are checked as before (a
 * known type name, no params check), so old agents keep working. */
#include "cp.h"

#include <civetweb.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/params.h"
#include "jobvisor/util.h"

#define TYPES_MAX 256
#define TEXT_MAX 1024
#define PROBLEMS_MAX 256

static bool only_keys(const cJSON *o, const char *const *keys, const char **bad)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, o)
	{
		bool ok = false;
		for (const char *const *k = keys; *k && !ok; k++)
			ok = strcmp(it->string, *k) == 0;
		if (!ok) {
			*bad = it->string;
			return false;
		}
	}
	return true;
}

static bool short_string(const cJSON *v, size_t max)
{
	return cJSON_IsString(v) && strlen(v->valuestring) <= max;
}

/* One reported type; NULL when fine, else why (in buf). */
static const char *validate_type(const cJSON *t, int i, char *buf, size_t len)
{
	static const char *const keys[] = {"type", "description", "cancellable", "why", "source", "params", NULL};
	const char *bad = NULL;
	if (!cJSON_IsObject(t)) {
		snprintf(buf, len, "jobTypes[%d] must be an object", i);
		return buf;
	}
	if (!only_keys(t, keys, &bad)) {
		snprintf(buf, len, "jobTypes[%d]: unknown field '%.64s'", i, bad);
		return buf;
	}
	const char *type = jv_json_str(t, "type", NULL);
	if (!type || !jv_job_type_valid(type)) {
		snprintf(buf, len, "jobTypes[%d].type must be a job type like BACKUP_INSTANCE", i);
		return buf;
	}
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, "description");
	if (v && !short_string(v, TEXT_MAX)) {
		snprintf(buf, len, "jobTypes[%d].description must be a string of at most %d bytes", i, TEXT_MAX);
		return buf;
	}
	v = cJSON_GetObjectItemCaseSensitive(t, "why");
	if (v && !short_string(v, TEXT_MAX)) {
		snprintf(buf, len, "jobTypes[%d].why must be a string of at most %d bytes", i, TEXT_MAX);
		return buf;
	}
	v = cJSON_GetObjectItemCaseSensitive(t, "source");
	if (v && !short_string(v, 32)) {
		snprintf(buf, len, "jobTypes[%d].source must be a short string", i);
		return buf;
	}
	if (!cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(t, "cancellable"))) {
		snprintf(buf, len, "jobTypes[%d].cancellable must be a boolean", i);
		return buf;
	}
	const cJSON *params = cJSON_GetObjectItemCaseSensitive(t, "params");
	if (!cJSON_IsObject(params) || cJSON_GetArraySize(params) > JV_MAX_PARAMS) {
		snprintf(buf, len, "jobTypes[%d].params must be an object of at most %d {type, required}", i,
		         JV_MAX_PARAMS);
		return buf;
	}
	const cJSON *p;
	cJSON_ArrayForEach(p, params)
	{
		static const char *const pkeys[] = {"type", "required", NULL};
		struct jv_param_decl d;
		const char *pt = jv_json_str(p, "type", "");
		if (!cJSON_IsObject(p) || !only_keys(p, pkeys, &bad) || !p->string[0] ||
		    strlen(p->string) >= sizeof(d.name) || strchr(pt, '?') || !jv_param_type_parse(pt, &d) ||
		    !cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(p, "required"))) {
			snprintf(buf, len, "jobTypes[%d].params['%.64s'] must be {type: string|number|integer|"
			         "boolean|table|array|object|any, required: boolean}", i, p->string);
			return buf;
		}
	}
	return NULL;
}

void api_jobtypes_report(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id)
{
	cJSON *body = NULL;
	if (http_read_agent_json(conn, agent, agent_id, &body) < 0)
		return;
	static const char *const keys[] = {"jobTypes", "problems", NULL};
	const char *bad = NULL;
	char why[300];
	const cJSON *types = cJSON_GetObjectItemCaseSensitive(body, "jobTypes");
	const cJSON *problems = cJSON_GetObjectItemCaseSensitive(body, "problems");
	if (!cJSON_IsObject(body) || !only_keys(body, keys, &bad)) {
		http_send_error(conn, 400, bad ? "unknown field '%.64s'" : "expected {jobTypes, problems}", bad);
		goto out;
	}
	if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) > TYPES_MAX) {
		http_send_error(conn, 400, "'jobTypes' must be an array of at most %d types", TYPES_MAX);
		goto out;
	}
	if (problems && (!cJSON_IsArray(problems) || cJSON_GetArraySize(problems) > PROBLEMS_MAX)) {
		http_send_error(conn, 400, "'problems' must be an array of at most %d strings", PROBLEMS_MAX);
		goto out;
	}
	const cJSON *it;
	cJSON_ArrayForEach(it, problems)
	{
		if (!short_string(it, 4 * TEXT_MAX)) {
			http_send_error(conn, 400, "'problems' must hold strings of at most %d bytes", 4 * TEXT_MAX);
			goto out;
		}
	}
	int i = 0;
	cJSON_ArrayForEach(it, types)
	{
		const char *w = validate_type(it, i, why, sizeof(why));
		if (w) {
			http_send_error(conn, 400, "%s", w);
			goto out;
		}
		for (const cJSON *o = types->child; o != it; o = o->next)
			if (strcmp(jv_json_str(o, "type", ""), jv_json_str(it, "type", "")) == 0) {
				http_send_error(conn, 400, "job type '%s' is listed twice", jv_json_str(it, "type", ""));
				goto out;
			}
		i++;
	}
	cJSON *stored = cJSON_CreateObject();
	cJSON_AddItemToObject(stored, "jobTypes", cJSON_Duplicate(types, true));
	cJSON_AddItemToObject(stored, "problems", problems ? cJSON_Duplicate(problems, true) : cJSON_CreateArray());
	char *text = cJSON_PrintUnformatted(stored);
	cJSON_Delete(stored);
	int rc = -ENOMEM;
	if (text)
		rc = store_jobtypes_put(cp->store, agent->id, text, jv_now_real_ms());
	free(text);
	if (rc < 0) {
		http_send_error(conn, 500, "database error");
		goto out;
	}
	cJSON *ans = cJSON_CreateObject();
	cJSON_AddNumberToObject(ans, "jobTypes", cJSON_GetArraySize(types));
	http_send_json(conn, 200, ans);
	cJSON_Delete(ans);
out:
	cJSON_Delete(body);
}

/* The stored report of an agent: -ENOENT when it never reported. */
static int load(struct cp *cp, const char *agent_id, cJSON **report, int64_t *at)
{
	return store_jobtypes_get(cp->store, agent_id, report, at);
}

void api_jobtypes_get(struct cp *cp, struct mg_connection *conn, const char *agent_id)
{
	if (!tokens_agent_find(cp, agent_id)) {
		http_send_error(conn, 404, "no agent '%s'", agent_id);
		return;
	}
	cJSON *report = NULL;
	int64_t at = 0;
	int rc = load(cp, agent_id, &report, &at);
	if (rc == -EIO) {
		http_send_error(conn, 500, "database error");
		return;
	}
	cJSON *ans = cJSON_CreateObject();
	cJSON_AddStringToObject(ans, "agentId", agent_id);
	cJSON_AddBoolToObject(ans, "reported", rc == 0);
	cJSON_AddItemToObject(ans, "reportedAt", store_time(rc == 0 ? at : 0));
	cJSON *types = cJSON_DetachItemFromObjectCaseSensitive(report, "jobTypes");
	cJSON *problems = cJSON_DetachItemFromObjectCaseSensitive(report, "problems");
	cJSON_AddItemToObject(ans, "jobTypes", types ? types : cJSON_CreateArray());
	cJSON_AddItemToObject(ans, "problems", problems ? problems : cJSON_CreateArray());
	cJSON_Delete(report);
	http_send_json(conn, 200, ans);
	cJSON_Delete(ans);
}

int jobtypes_check(struct cp *cp, const char *agent_id, const char *type, const cJSON *params,
                   struct cp_err *err)
{
	cJSON *report = NULL;
	int rc = load(cp, agent_id, &report, NULL);
	if (rc == -ENOENT) {
		if (lc_job_type_allowed(cp, type))
			return 0;
		cp_err_set(err, 400, "unknown job type '%s' (allow custom types with --job-types)", type);
		return -EINVAL;
	}
	if (rc < 0) {
		cp_err_set(err, 500, "database error");
		return rc;
	}
	const cJSON *types = cJSON_GetObjectItemCaseSensitive(report, "jobTypes");
	const cJSON *t = NULL, *it;
	char names[200] = "";
	cJSON_ArrayForEach(it, types)
	{
		const char *name = jv_json_str(it, "type", "");
		if (strcmp(name, type) == 0)
			t = it;
		size_t used = strlen(names);
		if (used + strlen(name) + 3 < sizeof(names))
			snprintf(names + used, sizeof(names) - used, "%s%s", used ? ", " : "", name);
	}
	if (!t) {
		cp_err_set(err, 400, "agent '%s' has no job type '%s' (it reported: %s)", agent_id, type,
		           names[0] ? names : "none");
		cJSON_Delete(report);
		return -EINVAL;
	}
	struct jv_param_decl decls[JV_MAX_PARAMS];
	size_t n = 0;
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(t, "params"))
	{
		if (n == JV_MAX_PARAMS || !jv_param_type_parse(jv_json_str(it, "type", "any"), &decls[n]))
			continue;
		snprintf(decls[n].name, sizeof(decls[n].name), "%s", it->string);
		decls[n].optional = !jv_json_bool(it, "required", false);
		n++;
	}
	cJSON_Delete(report);
	char why[1024];
	if (jv_params_check(decls, n, params, why, sizeof(why)) == 0)
		return 0;
	cp_err_set(err, 400, "params of %s: %s", type, why);
	return -EINVAL;
}
