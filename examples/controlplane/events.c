/* events.c — progress events of a run: validation, idempotent storage, ack.
 *
 * Each (jobRunId, seq) is kept once: a repeated event (an agent resending
 * after a lost answer) is ignored, never stored twice or published twice. The
 * ack returned to the agent is the highest seq S such that every seq 1..S is
 * stored, so an agent that resends everything above ackSeq loses nothing even
 * when batches arrive out of order. The run's percent and message follow the
 * highest-seq event that carries them (log events do not change them). All
 * functions run with cp->mu held. */
#include "cp.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"

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

static int insert_event(struct cp *cp, sqlite3_stmt *ins, const char *run_id, int64_t seq, const char *body,
                        int64_t now, bool *inserted)
{
	sqlite3_reset(ins);
	sqlite3_bind_text(ins, 1, run_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(ins, 2, seq);
	sqlite3_bind_text(ins, 3, body, -1, SQLITE_STATIC);
	sqlite3_bind_int64(ins, 4, now);
	if (sqlite3_step(ins) != SQLITE_DONE) {
		jv_error(NULL, run_id, "cannot store event %lld: %s", (long long)seq, sqlite3_errmsg(cp->db));
		return -EIO;
	}
	*inserted = sqlite3_changes(cp->db) == 1;
	return 0;
}

/* Highest contiguous seq, walking up from the previous one. */
static int contiguous_seq(struct cp *cp, const char *run_id, int64_t from, int64_t *out)
{
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT seq FROM events WHERE run_id = ? AND seq > ? ORDER BY seq");
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, from);
	int64_t top = from;
	while (sqlite3_step(st) == SQLITE_ROW) {
		int64_t s = sqlite3_column_int64(st, 0);
		if (s != top + 1)
			break;
		top = s;
	}
	sqlite3_finalize(st);
	*out = top;
	return 0;
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

int events_store(struct cp *cp, const char *run_id, const struct store_run_state *rs,
                 const cJSON *events, int64_t *ack_seq)
{
	int64_t now = jv_now_real_ms();
	int n = cJSON_GetArraySize(events);
	cJSON *fresh = cJSON_CreateArray(); /* new events, published after commit */
	sqlite3_stmt *ins = db_prepare(cp->db, "INSERT OR IGNORE INTO events (run_id, seq, body, received_at)"
	                                       " VALUES (?, ?, ?, ?)");
	int64_t progress_seq = 0;
	const cJSON *progress_pct = NULL, *progress_msg = NULL;
	int rc = fresh && ins ? db_begin(cp->db) : -EIO;
	for (int i = 0; rc == 0 && i < n; i++) {
		cJSON *ev = cJSON_Duplicate(cJSON_GetArrayItem(events, i), true);
		if (!ev) {
			rc = -ENOMEM;
			break;
		}
		normalise(ev, run_id, rs, now);
		int64_t seq = jv_json_int(ev, "seq", 0);
		char *body = jv_json_print(ev);
		bool inserted = false;
		rc = body ? insert_event(cp, ins, run_id, seq, body, now, &inserted) : -ENOMEM;
		free(body);
		if (rc < 0 || !inserted) {
			cJSON_Delete(ev);
			continue;
		}
		cJSON_AddItemToArray(fresh, ev);
		/* Log lines do not change the run's progress line. */
		if (strcmp(jv_json_str(ev, "kind", ""), "log") != 0 && seq > progress_seq) {
			const cJSON *p = cJSON_GetObjectItemCaseSensitive(ev, "percent");
			const cJSON *m = cJSON_GetObjectItemCaseSensitive(ev, "message");
			if (cJSON_IsNumber(p) || cJSON_IsString(m)) {
				progress_seq = seq;
				progress_pct = cJSON_IsNumber(p) ? p : NULL;
				progress_msg = cJSON_IsString(m) ? m : NULL;
			}
		}
	}
	sqlite3_finalize(ins);
	int64_t top = rs->last_seq;
	if (rc == 0)
		rc = contiguous_seq(cp, run_id, rs->last_seq, &top);
	if (rc == 0) {
		sqlite3_stmt *up = db_prepare(cp->db, "UPDATE job_runs SET last_seq = ?, acked = 1 WHERE run_id = ?");
		if (up) {
			sqlite3_bind_int64(up, 1, top);
			sqlite3_bind_text(up, 2, run_id, -1, SQLITE_STATIC);
			rc = db_step_done(cp->db, up);
			sqlite3_finalize(up);
		} else {
			rc = -EIO;
		}
	}
	if (rc == 0 && progress_seq > 0) {
		sqlite3_stmt *up = db_prepare(cp->db,
		                              "UPDATE job_runs SET percent = coalesce(?, percent),"
		                              " message = coalesce(?, message), progress_seq = ?"
		                              " WHERE run_id = ? AND progress_seq < ?");
		if (up) {
			if (progress_pct)
				sqlite3_bind_double(up, 1, progress_pct->valuedouble);
			if (progress_msg)
				sqlite3_bind_text(up, 2, progress_msg->valuestring, -1, SQLITE_STATIC);
			sqlite3_bind_int64(up, 3, progress_seq);
			sqlite3_bind_text(up, 4, run_id, -1, SQLITE_STATIC);
			sqlite3_bind_int64(up, 5, progress_seq);
			rc = db_step_done(cp->db, up);
			sqlite3_finalize(up);
		} else {
			rc = -EIO;
		}
	}
	if (rc == 0)
		rc = db_commit(cp->db);
	if (rc < 0) {
		db_rollback(cp->db);
		cJSON_Delete(fresh);
		return rc;
	}
	*ack_seq = top;
	atomic_fetch_add(&cp->metrics.events_stored, (uint64_t)cJSON_GetArraySize(fresh));
	/* Publish in commit order; a first event also changes the run (acknowledged). */
	cJSON *ev;
	while (fresh && (ev = cJSON_DetachItemFromArray(fresh, 0)) != NULL) {
		cJSON *msg = cJSON_CreateObject();
		if (!msg) {
			cJSON_Delete(ev);
			continue;
		}
		cJSON_AddStringToObject(msg, "type", "event");
		cJSON_AddItemToObject(msg, "event", ev);
		ws_publish(cp, msg);
	}
	cJSON_Delete(fresh);
	if (!rs->acked) {
		jv_info(rs->job_id, run_id, "run acknowledged by agent '%s'", rs->agent_id);
		lc_publish_job(cp, rs->job_id);
	}
	return 0;
}
