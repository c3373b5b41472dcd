/* store_json.c — rows turned into the JSON shapes of docs/protocol.md,
 * shared by every storage backend so they answer identically.
 *
 * JSON stored in TEXT columns (params, output, error, event bodies) was
 * produced by cJSON from validated input, so it is parsed back without a
 * size cap. */
#include "store_backend.h"

#include <stdio.h>
#include <string.h>

#include "jobvisor/util.h"

cJSON *store_time(int64_t ms)
{
	if (ms <= 0)
		return cJSON_CreateNull();
	char buf[JV_ISO8601_LEN];
	jv_iso8601(ms, buf);
	return cJSON_CreateString(buf);
}

cJSON *store_json_parse(const char *text)
{
	cJSON *v = text ? cJSON_Parse(text) : NULL;
	return v ? v : cJSON_CreateNull();
}

static cJSON *str_or_null(const char *s)
{
	return s ? cJSON_CreateString(s) : cJSON_CreateNull();
}

cJSON *store_run_row_json(const struct store_run_row *r)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddItemToObject(o, "jobRunId", str_or_null(r->run_id));
	cJSON_AddItemToObject(o, "jobId", str_or_null(r->job_id));
	cJSON_AddNumberToObject(o, "attempt", r->attempt);
	cJSON_AddItemToObject(o, "agentId", str_or_null(r->agent_id));
	cJSON_AddItemToObject(o, "status", str_or_null(r->status));
	if (r->has_percent)
		cJSON_AddNumberToObject(o, "percent", r->percent);
	else
		cJSON_AddNullToObject(o, "percent");
	cJSON_AddItemToObject(o, "message", str_or_null(r->message));
	cJSON_AddNumberToObject(o, "lastSeq", (double)r->last_seq);
	cJSON_AddBoolToObject(o, "acknowledged", r->acked);
	cJSON_AddBoolToObject(o, "cancelRequested", r->cancel_requested);
	cJSON_AddItemToObject(o, "output", store_json_parse(r->output));
	cJSON_AddItemToObject(o, "error", store_json_parse(r->error));
	cJSON_AddItemToObject(o, "finishedBy", str_or_null(r->finished_by));
	cJSON_AddItemToObject(o, "notBefore", store_time(r->not_before));
	cJSON_AddItemToObject(o, "createdAt", store_time(r->created_at));
	cJSON_AddItemToObject(o, "startedAt", store_time(r->started_at));
	cJSON_AddItemToObject(o, "finishedAt", store_time(r->finished_at));
	return o;
}

static void add_seconds(cJSON *o, const char *key, int s)
{
	if (s > 0)
		cJSON_AddNumberToObject(o, key, s);
	else
		cJSON_AddNullToObject(o, key);
}

cJSON *store_job_row_json(const struct store_job_row *j, cJSON *runs)
{
	cJSON *o = cJSON_CreateObject();
	if (!o) {
		cJSON_Delete(runs);
		return NULL;
	}
	cJSON_AddItemToObject(o, "jobId", str_or_null(j->job_id));
	cJSON_AddNumberToObject(o, "seq", (double)j->seq);
	cJSON_AddItemToObject(o, "type", str_or_null(j->type));
	cJSON_AddItemToObject(o, "agentId", str_or_null(j->agent_id));
	cJSON_AddItemToObject(o, "instanceId", str_or_null(j->instance_id));
	cJSON_AddItemToObject(o, "params", store_json_parse(j->params));
	cJSON_AddItemToObject(o, "status", str_or_null(j->status));
	cJSON_AddNumberToObject(o, "maxAttempts", j->max_attempts);
	add_seconds(o, "timeoutSeconds", j->timeout_s);
	add_seconds(o, "cancelGraceSeconds", j->cancel_grace_s);
	cJSON_AddBoolToObject(o, "cancelRequested", j->cancel_requested);
	cJSON_AddItemToObject(o, "createdAt", store_time(j->created_at));
	cJSON_AddItemToObject(o, "updatedAt", store_time(j->updated_at));
	cJSON_AddItemToObject(o, "scheduleId", str_or_null(j->schedule_id));
	cJSON_AddItemToObject(o, "runs", runs ? runs : cJSON_CreateArray());
	return o;
}

cJSON *store_assignment_row_json(const struct store_job_row *j, const char *run_id, int attempt)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "jobId", j->job_id);
	cJSON_AddStringToObject(o, "jobRunId", run_id);
	cJSON_AddNumberToObject(o, "attempt", attempt);
	cJSON_AddStringToObject(o, "type", j->type);
	cJSON_AddStringToObject(o, "instanceId", j->instance_id);
	cJSON *params = j->params ? cJSON_Parse(j->params) : NULL;
	cJSON_AddItemToObject(o, "params", params ? params : cJSON_CreateObject());
	if (j->timeout_s > 0)
		cJSON_AddNumberToObject(o, "timeoutSeconds", j->timeout_s);
	if (j->cancel_grace_s > 0)
		cJSON_AddNumberToObject(o, "cancelGraceSeconds", j->cancel_grace_s);
	cJSON_AddItemToObject(o, "createdAt", store_time(j->created_at));
	return o;
}

cJSON *store_schedule_row_json(const struct store_schedule_row *r)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddItemToObject(o, "scheduleId", str_or_null(r->schedule_id));
	cJSON_AddItemToObject(o, "cron", str_or_null(r->cron));
	cJSON_AddItemToObject(o, "timezone", str_or_null(r->timezone));
	cJSON *job = r->job ? cJSON_Parse(r->job) : NULL;
	cJSON_AddItemToObject(o, "job", job ? job : cJSON_CreateObject());
	cJSON_AddBoolToObject(o, "enabled", r->enabled);
	cJSON_AddItemToObject(o, "overlap", str_or_null(r->overlap));
	cJSON_AddItemToObject(o, "nextFireAt", store_time(r->next_fire));
	cJSON_AddItemToObject(o, "lastFireAt", store_time(r->last_fire));
	cJSON_AddItemToObject(o, "lastJobId", str_or_null(r->last_job_id));
	cJSON_AddItemToObject(o, "lastJobStatus", str_or_null(r->last_job_status));
	cJSON_AddItemToObject(o, "lastOutcome", str_or_null(r->last_outcome));
	cJSON_AddItemToObject(o, "createdAt", store_time(r->created_at));
	cJSON_AddItemToObject(o, "updatedAt", store_time(r->updated_at));
	return o;
}

cJSON *store_audit_row_json(int64_t seq, const struct store_audit *a)
{
	cJSON *e = cJSON_CreateObject();
	if (!e)
		return NULL;
	cJSON_AddNumberToObject(e, "seq", (double)seq);
	cJSON_AddItemToObject(e, "at", store_time(a->at));
	cJSON_AddStringToObject(e, "who", a->who ? a->who : "");
	cJSON_AddStringToObject(e, "role", a->role ? a->role : "");
	cJSON_AddStringToObject(e, "method", a->method ? a->method : "");
	cJSON_AddStringToObject(e, "path", a->path ? a->path : "");
	cJSON_AddNumberToObject(e, "status", a->status);
	return e;
}

int64_t store_backoff_ms(int64_t base_ms, int64_t cap_ms, int attempt)
{
	int64_t v = base_ms;
	for (int i = 1; i < attempt && v < cap_ms; i++)
		v *= 2;
	return v > cap_ms ? cap_ms : v;
}
