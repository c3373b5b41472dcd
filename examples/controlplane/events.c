/* events.c — progress events of a run: validation, idempotent storage, ack.
 *
 * Each (jobRunId, seq) is kept once: a repeated event (an agent resending
 * after a lost answer) is ignored, never stored twice or published twice. The
 * ack returned to the agent is the highest seq S such that every seq 1..S is
 * stored, so an agent that resends everything above ackSeq loses nothing even
 * when batches arrive out of order. The run's percent and message follow the
 * highest-seq event that carries them (log events do not change them).
 * Called without cp->mu: the store is thread-safe, and only the publishing
 * into the in-memory WebSocket ring (SQLite) takes cp->mu. On PostgreSQL
 * the store publishes the new events itself (ws_log, in the transaction
 * that stores them), and concurrent requests share one commit
 * (store_pg_evgroup.c). */
#include "cp.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "store_pg.h"

#define KIND_MAX 32

static bool kind_valid(const char *s)
{
	if (!(s[0] >= 'a' && s[0] <= 'z'))
		return false;
	size_t n = 0;
	for (const char *p = s; *p; p++, n++) {
		if (n >= KIND_MAX)
			return false;
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
			return false;
	}
	return true;
}

static bool one_of(const char *s, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(s, list[i]) == 0)
			return true;
	return false;
}

/* False when the member exists with a type other than string or null; *out is the string or NULL. */
static bool opt_string(const cJSON *ev, const char *key, const cJSON **out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(ev, key);
	*out = NULL;
	if (!v || cJSON_IsNull(v))
		return true;
	if (!cJSON_IsString(v) || !v->valuestring)
		return false;
	*out = v;
	return true;
}

const char *events_validate(const cJSON *ev, const char *run_id, const struct store_run_state *rs)
{
	static const char *const statuses[] = {"RUNNING", "COMPLETED", "FAILED", "CANCELLED"};
	static const char *const levels[] = {"debug", "info", "warn", "error"};
	const cJSON *v;
	if (!cJSON_IsObject(ev))
		return "each event must be an object";
	if (!jv_json_has_num(ev, "seq") || jv_json_int(ev, "seq", -1) < 1)
		return "event 'seq' must be an integer >= 1";
	if (!opt_string(ev, "kind", &v) || !v || !kind_valid(v->valuestring))
		return "event 'kind' must be a lower-case word (e.g. \"progress\", \"log\")";
	if (!opt_string(ev, "jobRunId", &v) || (v && strcmp(v->valuestring, run_id) != 0))
		return "event 'jobRunId' does not match the run in the URL";
	if (!opt_string(ev, "jobId", &v) || (v && strcmp(v->valuestring, rs->job_id) != 0))
		return "event 'jobId' does not match the run's job";
	if (!opt_string(ev, "instanceId", &v) || (v && strcmp(v->valuestring, rs->instance_id) != 0))
		return "event 'instanceId' does not match the run's job";
	if (!opt_string(ev, "status", &v) || (v && !one_of(v->valuestring, statuses, JV_ARRAY_LEN(statuses))))
		return "event 'status' must be RUNNING, COMPLETED, FAILED or CANCELLED";
	if (!opt_string(ev, "level", &v) || (v && !one_of(v->valuestring, levels, JV_ARRAY_LEN(levels))))
		return "event 'level' must be debug, info, warn or error";
	if (!opt_string(ev, "message", &v) || (v && strlen(v->valuestring) > CP_MESSAGE_MAX))
		return "event 'message' must be a string of at most 4096 bytes";
	int64_t ms;
	if (!opt_string(ev, "timestamp", &v) || (v && jv_iso8601_parse(v->valuestring, &ms) < 0))
		return "event 'timestamp' must be ISO-8601 UTC like 2026-01-02T03:04:05.678Z";
	const cJSON *pct = cJSON_GetObjectItemCaseSensitive(ev, "percent");
	if (pct && !cJSON_IsNull(pct) &&
	    (!cJSON_IsNumber(pct) || !isfinite(pct->valuedouble) || pct->valuedouble < 0 || pct->valuedouble > 100))
		return "event 'percent' must be a number from 0 to 100, or null";
	return NULL;
}

/* Fill the ids an agent may leave out, so every stored event is self-describing. */
static void normalise(cJSON *ev, const char *run_id, const struct store_run_state *rs, int64_t now)
{
	if (!cJSON_GetObjectItemCaseSensitive(ev, "jobRunId"))
		cJSON_AddStringToObject(ev, "jobRunId", run_id);
	if (!cJSON_GetObjectItemCaseSensitive(ev, "jobId"))
		cJSON_AddStringToObject(ev, "jobId", rs->job_id);
	if (!cJSON_GetObjectItemCaseSensitive(ev, "instanceId"))
		cJSON_AddStringToObject(ev, "instanceId", rs->instance_id);
	cJSON_DeleteItemFromObjectCaseSensitive(ev, "receivedAt");
	cJSON_AddItemToObject(ev, "receivedAt", store_time(now));
}

/* Fill ev (n slots) from the normalised copies in fresh (the same order). */
static int to_store_events(cJSON *fresh, struct store_event *ev, char **texts)
{
	int i = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, fresh)
	{
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "percent");
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
		texts[i] = jv_json_print(e);
		if (!texts[i])
			return -ENOMEM;
		ev[i] = (struct store_event){
			.seq = jv_json_int(e, "seq", 0),
			.body = texts[i],
			/* Log lines do not change the run's progress line. */
			.progress = strcmp(jv_json_str(e, "kind", ""), "log") != 0,
			.has_percent = cJSON_IsNumber(p),
			.percent = cJSON_IsNumber(p) ? p->valuedouble : 0,
			.message = cJSON_IsString(m) ? m->valuestring : NULL,
		};
		i++;
	}
	return 0;
}

/* Publish the stored ones in commit order (consumes fresh). */
static void publish_inserted(struct cp *cp, cJSON *fresh, const struct store_event *ev)
{
	int n = fresh ? cJSON_GetArraySize(fresh) : 0;
	cJSON **msgs = n ? calloc((size_t)n, sizeof(*msgs)) : NULL;
	cJSON *e;
	for (int i = 0; msgs && (e = cJSON_DetachItemFromArray(fresh, 0)) != NULL; i++) {
		cJSON *msg = ev[i].inserted ? cJSON_CreateObject() : NULL;
		if (!msg) {
			cJSON_Delete(e);
			continue;
		}
		cJSON_AddStringToObject(msg, "type", "event");
		cJSON_AddItemToObject(msg, "event", e);
		msgs[i] = msg;
	}
	if (msgs)
		ws_publish_many(cp, msgs, (size_t)n);
	free(msgs);
	cJSON_Delete(fresh);
}

int events_store(struct cp *cp, const char *run_id, const struct store_run_state *rs,
                 const cJSON *events, int64_t *ack_seq)
{
	int64_t now = jv_now_real_ms();
	int n = cJSON_GetArraySize(events);
	cJSON *fresh = cJSON_CreateArray(); /* normalised copies, the stored ones published after commit */
	struct store_event *ev = calloc((size_t)n + 1, sizeof(*ev));
	char **texts = calloc((size_t)n + 1, sizeof(*texts));
	int rc = fresh && ev && texts ? 0 : -ENOMEM;
	const cJSON *item = events ? events->child : NULL;
	for (int i = 0; rc == 0 && i < n; i++, item = item->next) {
		cJSON *e = cJSON_Duplicate(item, true);
		if (!e)
			rc = -ENOMEM;
		else
			normalise(e, run_id, rs, now);
		if (e)
			cJSON_AddItemToArray(fresh, e);
	}
	if (rc == 0)
		rc = to_store_events(fresh, ev, texts);
	bool was_acked = rs->acked;
	if (rc == 0)
		rc = store_events_append(cp->store, run_id, ev, (size_t)n, now, ack_seq, &was_acked);
	for (int i = 0; texts && i < n; i++)
		free(texts[i]);
	free(texts);
	if (rc < 0) {
		cJSON_Delete(fresh);
		free(ev);
		return rc;
	}
	uint64_t stored = 0;
	for (int i = 0; i < n; i++)
		stored += ev[i].inserted;
	atomic_fetch_add(&cp->metrics.events_stored, stored);
	/* SQLite: the ring is in memory, under cp->mu; publish in commit order.
	 * PostgreSQL: the store appended the new events to ws_log in their
	 * transaction (store_pg_events.c), with no lock of ours. */
	if (!store_is_pg(cp->store)) {
		pthread_mutex_lock(&cp->mu);
		publish_inserted(cp, fresh, ev);
		pthread_mutex_unlock(&cp->mu);
	} else {
		cJSON_Delete(fresh);
	}
	free(ev);
	/* A first event also changes the run (acknowledged): the job's message
	 * after its events, read from the store without cp->mu. */
	if (!was_acked) {
		jv_info(rs->job_id, run_id, "run acknowledged by agent '%s'", rs->agent_id);
		lc_publish_job_wake(cp, rs->job_id, NULL);
	}
	return 0;
}
