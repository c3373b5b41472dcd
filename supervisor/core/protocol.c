/* protocol.c — events, results and errors in the wire format (docs/protocol.md). */
#include "jobvisor/protocol.h"

#include <math.h>

#include "jobvisor/util.h"

cJSON *jv_proto_error(const char *message, const char *stack, bool retryable, const char *reason)
{
	cJSON *e = cJSON_CreateObject();
	if (!e)
		return NULL;
	cJSON_AddStringToObject(e, "message", message ? message : "");
	cJSON_AddStringToObject(e, "stack", stack ? stack : "");
	cJSON_AddBoolToObject(e, "retryable", retryable);
	if (reason)
		cJSON_AddStringToObject(e, "reason", reason);
	return e;
}

static void add_or_null(cJSON *o, const char *key, cJSON *v)
{
	if (v)
		cJSON_AddItemToObject(o, key, v);
	else
		cJSON_AddNullToObject(o, key);
}

cJSON *jv_proto_result(const char *status, cJSON *output, cJSON *error, uint64_t last_seq)
{
	cJSON *r = cJSON_CreateObject();
	if (!r) {
		cJSON_Delete(output);
		cJSON_Delete(error);
		return NULL;
	}
	char ts[JV_ISO8601_LEN];
	jv_iso8601(jv_now_real_ms(), ts);
	cJSON_AddStringToObject(r, "status", status);
	add_or_null(r, "output", output);
	add_or_null(r, "error", error);
	cJSON_AddStringToObject(r, "finishedAt", ts);
	cJSON_AddNumberToObject(r, "lastSeq", (double)last_seq);
	return r;
}

cJSON *jv_proto_event(const struct jv_proto_event *e)
{
	cJSON *ev = cJSON_CreateObject();
	if (!ev)
		return NULL;
	char ts[JV_ISO8601_LEN];
	jv_iso8601(e->ts_ms > 0 ? e->ts_ms : jv_now_real_ms(), ts);
	cJSON_AddNumberToObject(ev, "seq", (double)e->seq);
	cJSON_AddStringToObject(ev, "kind", e->kind);
	cJSON_AddStringToObject(ev, "jobId", e->job_id);
	cJSON_AddStringToObject(ev, "jobRunId", e->run_id);
	if (e->instance_id && *e->instance_id)
		cJSON_AddStringToObject(ev, "instanceId", e->instance_id);
	else
		cJSON_AddNullToObject(ev, "instanceId");
	cJSON_AddStringToObject(ev, "status", e->status);
	if (e->percent >= 0) /* 0..100 (callers clamp; so does this, for the integer rounding) */
		cJSON_AddNumberToObject(ev, "percent",
		                        (double)jv_round_nonneg((e->percent > 100 ? 100 : e->percent) * 10) / 10);
	else
		cJSON_AddNullToObject(ev, "percent");
	if (e->message)
		cJSON_AddStringToObject(ev, "message", e->message);
	else
		cJSON_AddNullToObject(ev, "message");
	if (e->level)
		cJSON_AddStringToObject(ev, "level", e->level);
	cJSON_AddStringToObject(ev, "timestamp", ts);
	return ev;
}
