/* instances.c — game-server instances as their agents report them.
 *
 * Agents send every state change of an instance as an event with a seq per
 * (agent, instance): each seq is stored once (a resend after a lost answer is
 * ignored) and the answer's ackSeq is the highest seq stored. The current
 * state follows the highest-seq state event, or a snapshot (POST
 * /v1/agents/{a}/instances) whose seq is newer: after this control plane lost
 * its database, the snapshot is what it knows again, and events still on
 * their way are kept as history without turning the state back. Instances a
 * snapshot no longer lists, and those reported REMOVED, disappear from the
 * lists (their row stays, so seq numbers keep deduplicating). Every change
 * is pushed to WebSocket clients as {"type":"instance"}. History is capped
 * per instance. All database work runs with cp->mu held. */
#include "cp.h"

#include <civetweb.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define INST_EVENTS_PER_POST 1000
#define INST_SNAPSHOT_MAX 1000
#define INST_HISTORY_KEEP 200
#define INST_HISTORY_SHOWN 50

static const char *const states[] = {"STARTING", "RUNNING", "STOPPING", "STOPPED",
                                     "CRASHED",  "BACKOFF", "REMOVED"};

static bool state_valid(const char *s)
{
	for (size_t i = 0; s && i < JV_ARRAY_LEN(states); i++)
		if (strcmp(s, states[i]) == 0)
			return true;
	return false;
}

static bool kind_valid(const char *s)
{
	static const char *const kinds[] = {"state", "monitor"};
	for (size_t i = 0; s && i < JV_ARRAY_LEN(kinds); i++)
		if (strcmp(s, kinds[i]) == 0)
			return true;
	return false;
}

static bool is_seq(const cJSON *v, int64_t lo)
{
	return cJSON_IsNumber(v) && v->valuedouble >= (double)lo && v->valuedouble <= 9007199254740992.0 &&
	       v->valuedouble == (double)(int64_t)v->valuedouble;
}

/* NULL when the event (from the agent) is fine, else why not. */
static const char *validate_event(const cJSON *ev, const char *instance_id, bool snapshot)
{
	if (!cJSON_IsObject(ev))
		return "each entry must be an object";
	if (!is_seq(cJSON_GetObjectItemCaseSensitive(ev, "seq"), snapshot ? 0 : 1))
		return snapshot ? "'seq' must be an integer >= 0" : "'seq' must be an integer >= 1";
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(ev, "instanceId");
	if (snapshot && (!cJSON_IsString(v) || !jv_ident_valid(v->valuestring)))
		return "'instanceId' must be an instance id";
	if (!snapshot && v && !cJSON_IsNull(v) && (!cJSON_IsString(v) || strcmp(v->valuestring, instance_id) != 0))
		return "'instanceId' does not match the instance in the URL";
	const char *kind = snapshot ? "state" : jv_json_str(ev, "kind", NULL);
	if (!kind_valid(kind))
		return "'kind' must be \"state\" or \"monitor\"";
	v = cJSON_GetObjectItemCaseSensitive(ev, "state");
	if (strcmp(kind, "state") == 0 && (!cJSON_IsString(v) || !state_valid(v->valuestring)))
		return "'state' must be STARTING, RUNNING, STOPPING, STOPPED, CRASHED, BACKOFF or REMOVED";
	v = cJSON_GetObjectItemCaseSensitive(ev, "message");
	if (v && !cJSON_IsNull(v) && (!cJSON_IsString(v) || strlen(v->valuestring) > CP_MESSAGE_MAX))
		return "'message' must be a string of at most 4096 bytes";
	v = cJSON_GetObjectItemCaseSensitive(ev, "timestamp");
	int64_t ms;
	if (v && !cJSON_IsNull(v) && (!cJSON_IsString(v) || jv_iso8601_parse(v->valuestring, &ms) < 0))
		return "'timestamp' must be ISO-8601 UTC like 2026-01-02T03:04:05.678Z";
	v = cJSON_GetObjectItemCaseSensitive(ev, "pid");
	if (v && !cJSON_IsNull(v) && !is_seq(v, 1))
		return "'pid' must be a positive integer or null";
	v = cJSON_GetObjectItemCaseSensitive(ev, "restarts");
	if (v && !cJSON_IsNull(v) && !is_seq(v, 0))
		return "'restarts' must be an integer >= 0";
	return NULL;
}

#define STATS_HISTORY 60 /* 5 minutes at the default 5 s */

struct inst_stats {
	char agent[JV_IDENT_MAX + 1], inst[JV_IDENT_MAX + 1];
	cJSON *latest;
	cJSON *hist[STATS_HISTORY]; /* {at, cpuCores, memoryBytes}, ring */
	size_t head, n;
	struct inst_stats *next;
};

static struct inst_stats *stats_find(struct cp *cp, const char *agent, const char *inst, bool create)
{
	for (struct inst_stats *s = cp->stats; s; s = s->next)
		if (strcmp(s->agent, agent) == 0 && strcmp(s->inst, inst) == 0)
			return s;
	if (!create)
		return NULL;
	struct inst_stats *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	snprintf(s->agent, sizeof(s->agent), "%s", agent);
	snprintf(s->inst, sizeof(s->inst), "%s", inst);
	s->next = cp->stats;
	cp->stats = s;
	return s;
}

void inst_stats_free(struct cp *cp)
{
	while (cp->stats) {
		struct inst_stats *s = cp->stats;
		cp->stats = s->next;
		cJSON_Delete(s->latest);
		for (size_t i = 0; i < STATS_HISTORY; i++)
			cJSON_Delete(s->hist[i]);
		free(s);
	}
}

static void add_stats(struct cp *cp, cJSON *o, const char *agent, const char *inst)
{
	struct inst_stats *s = stats_find(cp, agent, inst, false);
	cJSON_AddItemToObject(o, "stats", s && s->latest ? cJSON_Duplicate(s->latest, true) : cJSON_CreateNull());
	cJSON *h = cJSON_AddArrayToObject(o, "statsHistory");
	for (size_t i = 0; s && h && i < s->n; i++)
		cJSON_AddItemToArray(h, cJSON_Duplicate(s->hist[(s->head + i) % STATS_HISTORY], true));
}

#define INST_COLUMNS "agent_id, instance_id, state, last_seq, body, updated_at, state_seq"

static cJSON *instance_from_row(struct cp *cp, sqlite3_stmt *st)
{
	const char *body = (const char *)sqlite3_column_text(st, 4);
	cJSON *o = body ? cJSON_Parse(body) : NULL;
	if (!cJSON_IsObject(o)) {
		cJSON_Delete(o);
		o = cJSON_CreateObject();
		if (!o)
			return NULL;
	}
	const char *since = jv_json_str(o, "timestamp", NULL);
	cJSON_AddItemToObject(o, "since", since ? cJSON_CreateString(since) : cJSON_CreateNull());
	static const char *const drop[] = {"seq", "kind", "timestamp", "agentId", "instanceId", "state",
	                                   "lastSeq", "stateSeq", "updatedAt"};
	for (size_t i = 0; i < JV_ARRAY_LEN(drop); i++)
		cJSON_DeleteItemFromObjectCaseSensitive(o, drop[i]);
	cJSON_AddStringToObject(o, "agentId", (const char *)sqlite3_column_text(st, 0));
	cJSON_AddStringToObject(o, "instanceId", (const char *)sqlite3_column_text(st, 1));
	cJSON_AddStringToObject(o, "state", (const char *)sqlite3_column_text(st, 2));
	cJSON_AddNumberToObject(o, "lastSeq", (double)sqlite3_column_int64(st, 3));
	cJSON_AddNumberToObject(o, "stateSeq", (double)sqlite3_column_int64(st, 6));
	cJSON_AddItemToObject(o, "updatedAt", store_time(sqlite3_column_int64(st, 5)));
	add_stats(cp, o, (const char *)sqlite3_column_text(st, 0), (const char *)sqlite3_column_text(st, 1));
	return o;
}

cJSON *inst_list_json(struct cp *cp, const char *agent_id, const char *state)
{
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT " INST_COLUMNS " FROM instances WHERE removed = 0"
	                                      " AND (?1 IS NULL OR agent_id = ?1) AND (?2 IS NULL OR state = ?2)"
	                                      " ORDER BY agent_id, instance_id LIMIT 10000");
	cJSON *arr = cJSON_CreateArray();
	if (!st || !arr) {
		sqlite3_finalize(st);
		cJSON_Delete(arr);
		return NULL;
	}
	if (agent_id)
		sqlite3_bind_text(st, 1, agent_id, -1, SQLITE_STATIC);
	if (state)
		sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
	while (sqlite3_step(st) == SQLITE_ROW) {
		cJSON *o = instance_from_row(cp, st);
		if (o)
			cJSON_AddItemToArray(arr, o);
	}
	sqlite3_finalize(st);
	return arr;
}

/* The instance as the lists show it (removed ones too); NULL when unknown. */
static cJSON *instance_json(struct cp *cp, const char *agent_id, const char *instance_id, bool *removed)
{
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT " INST_COLUMNS ", removed FROM instances"
	                                      " WHERE agent_id = ? AND instance_id = ?");
	if (!st)
		return NULL;
	sqlite3_bind_text(st, 1, agent_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, instance_id, -1, SQLITE_STATIC);
	cJSON *o = NULL;
	if (sqlite3_step(st) == SQLITE_ROW) {
		o = instance_from_row(cp, st);
		if (removed)
			*removed = sqlite3_column_int(st, 7) != 0;
	}
	sqlite3_finalize(st);
	return o;
}

static void publish(struct cp *cp, const char *agent_id, const char *instance_id, const cJSON *event)
{
	/* mu held */
	bool removed = false;
	cJSON *inst = instance_json(cp, agent_id, instance_id, &removed);
	cJSON *msg = cJSON_CreateObject();
	if (!inst || !msg) {
		cJSON_Delete(inst);
		cJSON_Delete(msg);
		return;
	}
	cJSON_AddStringToObject(msg, "type", "instance");
	cJSON_AddBoolToObject(inst, "removed", removed);
	/* The history is in the snapshot; each message carries the newest sample
	 * in `stats` only, so a page keeps its own (60 times less to push). */
	cJSON_DeleteItemFromObjectCaseSensitive(inst, "statsHistory");
	cJSON_AddItemToObject(msg, "instance", inst);
	if (event)
		cJSON_AddItemToObject(msg, "instanceEvent", cJSON_Duplicate(event, true));
	ws_publish(cp, msg);
}

struct inst_row {
	bool exists;
	int64_t last_seq, state_seq;
};

static int read_row(struct cp *cp, const char *agent_id, const char *instance_id, struct inst_row *r)
{
	memset(r, 0, sizeof(*r));
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT last_seq, state_seq FROM instances"
	                                      " WHERE agent_id = ? AND instance_id = ?");
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, agent_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, instance_id, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		r->exists = true;
		r->last_seq = sqlite3_column_int64(st, 0);
		r->state_seq = sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -EIO;
}

/* Insert or update the row; state/body NULL keeps them (a new row gets state UNKNOWN... never:
 * callers pass a state for new rows). */
static int write_row(struct cp *cp, const char *agent_id, const char *instance_id, const struct inst_row *r,
                     const char *state, const char *body, bool removed, int64_t now)
{
	sqlite3_stmt *st = db_prepare(cp->db,
	                              "INSERT INTO instances (agent_id, instance_id, state, state_seq, last_seq, body,"
	                              " removed, updated_at) VALUES (?1, ?2, coalesce(?3, 'STOPPED'), ?4, ?5,"
	                              " coalesce(?6, '{}'), ?7, ?8)"
	                              " ON CONFLICT (agent_id, instance_id) DO UPDATE SET"
	                              " state = coalesce(?3, state), state_seq = ?4, last_seq = ?5,"
	                              " body = coalesce(?6, body), removed = CASE WHEN ?3 IS NULL THEN removed ELSE ?7 END,"
	                              " updated_at = ?8");
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, agent_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, instance_id, -1, SQLITE_STATIC);
	if (state)
		sqlite3_bind_text(st, 3, state, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, r->state_seq);
	sqlite3_bind_int64(st, 5, r->last_seq);
	if (body)
		sqlite3_bind_text(st, 6, body, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 7, removed);
	sqlite3_bind_int64(st, 8, now);
	int rc = db_step_done(cp->db, st);
	sqlite3_finalize(st);
	return rc;
}

void api_inst_events(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id,
                     const char *instance_id)
{
	if (strcmp(agent->id, agent_id) != 0) {
		http_send_error(conn, 403, "this token belongs to another agent");
		return;
	}
	cJSON *body = NULL;
	struct cp_err err;
	if (http_read_json(conn, &body, &err) < 0) {
		http_send_error(conn, err.status, "%s", err.msg);
		return;
	}
	const cJSON *events = cJSON_GetObjectItemCaseSensitive(body, "events");
	int n = cJSON_IsArray(events) ? cJSON_GetArraySize(events) : -1;
	if (n < 0 || n > INST_EVENTS_PER_POST) {
		http_send_error(conn, 400, "'events' must be an array of at most %d events", INST_EVENTS_PER_POST);
		cJSON_Delete(body);
		return;
	}
	for (int i = 0; i < n; i++) {
		const char *why = validate_event(cJSON_GetArrayItem(events, i), instance_id, false);
		if (why) {
			http_send_error(conn, 400, "events[%d]: %s", i, why);
			cJSON_Delete(body);
			return;
		}
	}
	int64_t now = jv_now_real_ms();
	cJSON *fresh = cJSON_CreateArray();
	pthread_mutex_lock(&cp->mu);
	struct inst_row row;
	int rc = fresh ? read_row(cp, agent_id, instance_id, &row) : -ENOMEM;
	sqlite3_stmt *ins = rc == 0 ? db_prepare(cp->db, "INSERT OR IGNORE INTO instance_events"
	                                                 " (agent_id, instance_id, seq, body, received_at)"
	                                                 " VALUES (?, ?, ?, ?, ?)")
	                            : NULL;
	if (rc == 0 && !ins)
		rc = -EIO;
	if (rc == 0)
		rc = db_begin(cp->db);
	const char *new_state = NULL;
	char *state_body = NULL;
	bool removed = false;
	for (int i = 0; rc == 0 && i < n; i++) {
		cJSON *ev = cJSON_GetArrayItem(events, i);
		int64_t seq = jv_json_int(ev, "seq", 0);
		if (seq <= row.last_seq)
			continue; /* stored before: the agent did not see our answer */
		cJSON *copy = cJSON_Duplicate(ev, true);
		if (!copy) {
			rc = -ENOMEM;
			break;
		}
		cJSON_DeleteItemFromObjectCaseSensitive(copy, "agentId");
		cJSON_AddStringToObject(copy, "agentId", agent_id);
		if (!cJSON_GetObjectItemCaseSensitive(copy, "instanceId"))
			cJSON_AddStringToObject(copy, "instanceId", instance_id);
		char *text = jv_json_print(copy);
		if (!text) {
			cJSON_Delete(copy);
			rc = -ENOMEM;
			break;
		}
		sqlite3_reset(ins);
		sqlite3_bind_text(ins, 1, agent_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(ins, 2, instance_id, -1, SQLITE_STATIC);
		sqlite3_bind_int64(ins, 3, seq);
		sqlite3_bind_text(ins, 4, text, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(ins, 5, now);
		if (sqlite3_step(ins) != SQLITE_DONE)
			rc = -EIO;
		row.last_seq = seq;
		if (rc == 0 && strcmp(jv_json_str(ev, "kind", ""), "state") == 0 && seq > row.state_seq) {
			row.state_seq = seq;
			new_state = jv_json_str(ev, "state", NULL);
			removed = strcmp(new_state, "REMOVED") == 0;
			free(state_body);
			state_body = text;
			text = NULL;
		}
		free(text);
		cJSON_AddItemToArray(fresh, copy);
	}
	sqlite3_finalize(ins);
	if (rc == 0 && (row.exists || new_state))
		rc = write_row(cp, agent_id, instance_id, &row, new_state, state_body, removed, now);
	if (rc == 0 && cJSON_GetArraySize(fresh) > 0) {
		sqlite3_stmt *prune = db_prepare(cp->db,
		                                 "DELETE FROM instance_events WHERE agent_id = ?1 AND instance_id = ?2"
		                                 " AND seq <= (SELECT seq FROM instance_events WHERE agent_id = ?1"
		                                 " AND instance_id = ?2 ORDER BY seq DESC LIMIT 1 OFFSET ?3)");
		if (prune) {
			sqlite3_bind_text(prune, 1, agent_id, -1, SQLITE_STATIC);
			sqlite3_bind_text(prune, 2, instance_id, -1, SQLITE_STATIC);
			sqlite3_bind_int(prune, 3, INST_HISTORY_KEEP);
			rc = db_step_done(cp->db, prune);
			sqlite3_finalize(prune);
		} else {
			rc = -EIO;
		}
	}
	if (rc == 0)
		rc = db_commit(cp->db);
	if (rc < 0) {
		db_rollback(cp->db);
		http_send_error(conn, 500, "database error");
	} else {
		atomic_fetch_add(&cp->metrics.instance_events_stored, (uint64_t)cJSON_GetArraySize(fresh));
		const cJSON *ev;
		cJSON_ArrayForEach(ev, fresh)
		{
			if (strcmp(jv_json_str(ev, "kind", ""), "state") == 0)
				jv_info(NULL, NULL, "instance %s/%s: %s (seq %lld)", agent_id, instance_id,
				        jv_json_str(ev, "state", "?"), (long long)jv_json_int(ev, "seq", 0));
			if (row.exists || new_state)
				publish(cp, agent_id, instance_id, ev);
		}
		cJSON *ans = cJSON_CreateObject();
		cJSON_AddNumberToObject(ans, "ackSeq", (double)row.last_seq);
		http_send_json(conn, 200, ans);
		cJSON_Delete(ans);
	}
	pthread_mutex_unlock(&cp->mu);
	free(state_body);
	cJSON_Delete(fresh);
	cJSON_Delete(body);
}

void api_inst_snapshot(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id)
{
	if (strcmp(agent->id, agent_id) != 0) {
		http_send_error(conn, 403, "this token belongs to another agent");
		return;
	}
	cJSON *body = NULL;
	struct cp_err err;
	if (http_read_json(conn, &body, &err) < 0) {
		http_send_error(conn, err.status, "%s", err.msg);
		return;
	}
	const cJSON *list = cJSON_GetObjectItemCaseSensitive(body, "instances");
	int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : -1;
	if (n < 0 || n > INST_SNAPSHOT_MAX) {
		http_send_error(conn, 400, "'instances' must be an array of at most %d instances", INST_SNAPSHOT_MAX);
		cJSON_Delete(body);
		return;
	}
	for (int i = 0; i < n; i++) {
		const cJSON *e = cJSON_GetArrayItem(list, i);
		const char *why = validate_event(e, NULL, true);
		if (!why && strcmp(jv_json_str(e, "state", ""), "REMOVED") == 0)
			why = "a snapshot lists present instances only";
		for (int k = 0; !why && k < i; k++)
			if (strcmp(jv_json_str(cJSON_GetArrayItem(list, k), "instanceId", ""), jv_json_str(e, "instanceId", "")) == 0)
				why = "instance listed twice";
		if (why) {
			http_send_error(conn, 400, "instances[%d]: %s", i, why);
			cJSON_Delete(body);
			return;
		}
	}
	int64_t now = jv_now_real_ms();
	char (*changed)[JV_IDENT_MAX + 1] = calloc((size_t)n + INST_SNAPSHOT_MAX + 1, sizeof(*changed));
	size_t nchanged = 0;
	pthread_mutex_lock(&cp->mu);
	int rc = changed ? db_begin(cp->db) : -ENOMEM;
	for (int i = 0; rc == 0 && i < n; i++) {
		cJSON *e = cJSON_Duplicate(cJSON_GetArrayItem(list, i), true);
		if (!e) {
			rc = -ENOMEM;
			break;
		}
		const char *iid = jv_json_str(e, "instanceId", "");
		int64_t seq = jv_json_int(e, "seq", 0);
		struct inst_row row;
		rc = read_row(cp, agent_id, iid, &row);
		if (rc == 0 && (!row.exists || seq >= row.state_seq)) {
			cJSON_DeleteItemFromObjectCaseSensitive(e, "agentId");
			cJSON_AddStringToObject(e, "agentId", agent_id);
			cJSON_DeleteItemFromObjectCaseSensitive(e, "kind");
			cJSON_AddStringToObject(e, "kind", "state");
			char *text = jv_json_print(e);
			row.state_seq = seq;
			rc = text ? write_row(cp, agent_id, iid, &row, jv_json_str(e, "state", "STOPPED"), text, false, now)
			          : -ENOMEM;
			free(text);
			snprintf(changed[nchanged++], JV_IDENT_MAX + 1, "%s", iid);
		}
		cJSON_Delete(e);
	}
	/* Instances the agent no longer has. */
	sqlite3_stmt *gone = rc == 0 ? db_prepare(cp->db, "SELECT instance_id FROM instances"
	                                                  " WHERE agent_id = ? AND removed = 0")
	                             : NULL;
	if (gone)
		sqlite3_bind_text(gone, 1, agent_id, -1, SQLITE_STATIC);
	while (gone && sqlite3_step(gone) == SQLITE_ROW && nchanged < (size_t)n + INST_SNAPSHOT_MAX) {
		const char *iid = (const char *)sqlite3_column_text(gone, 0);
		bool listed = false;
		for (int i = 0; i < n && !listed; i++)
			listed = strcmp(jv_json_str(cJSON_GetArrayItem(list, i), "instanceId", ""), iid) == 0;
		if (!listed)
			snprintf(changed[nchanged++], JV_IDENT_MAX + 1, "%s", iid);
	}
	sqlite3_finalize(gone);
	sqlite3_stmt *rm = rc == 0 ? db_prepare(cp->db, "UPDATE instances SET removed = 1, updated_at = ?"
	                                                " WHERE agent_id = ? AND instance_id = ? AND removed = 0")
	                           : NULL;
	for (size_t i = 0; rm && i < nchanged; i++) {
		bool listed = false;
		for (int k = 0; k < n && !listed; k++)
			listed = strcmp(jv_json_str(cJSON_GetArrayItem(list, k), "instanceId", ""), changed[i]) == 0;
		if (listed)
			continue;
		sqlite3_reset(rm);
		sqlite3_bind_int64(rm, 1, now);
		sqlite3_bind_text(rm, 2, agent_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(rm, 3, changed[i], -1, SQLITE_STATIC);
		if (sqlite3_step(rm) != SQLITE_DONE)
			rc = -EIO;
	}
	sqlite3_finalize(rm);
	if (rc == 0)
		rc = db_commit(cp->db);
	if (rc < 0) {
		db_rollback(cp->db);
		http_send_error(conn, 500, "database error");
	} else {
		agent->instances_synced = true;
		for (size_t i = 0; i < nchanged; i++)
			publish(cp, agent_id, changed[i], NULL);
		jv_info(NULL, NULL, "agent '%s' reported %d instances", agent_id, n);
		cJSON *ans = cJSON_CreateObject();
		cJSON_AddNumberToObject(ans, "instances", n);
		http_send_json(conn, 200, ans);
		cJSON_Delete(ans);
	}
	pthread_mutex_unlock(&cp->mu);
	free(changed);
	cJSON_Delete(body);
}

void api_inst_list(struct cp *cp, struct mg_connection *conn)
{
	char agent[JV_IDENT_MAX + 1], state[16];
	const char *agent_id = NULL, *st = NULL;
	int q = http_query(conn, "agentId", agent, sizeof(agent));
	if (q != 0) {
		if (q < 0 || !jv_ident_valid(agent)) {
			http_send_error(conn, 400, "bad 'agentId'");
			return;
		}
		agent_id = agent;
	}
	q = http_query(conn, "state", state, sizeof(state));
	if (q != 0) {
		if (q < 0 || !state_valid(state) || strcmp(state, "REMOVED") == 0) {
			http_send_error(conn, 400, "'state' must be STARTING, RUNNING, STOPPING, STOPPED, CRASHED or BACKOFF");
			return;
		}
		st = state;
	}
	pthread_mutex_lock(&cp->mu);
	cJSON *arr = inst_list_json(cp, agent_id, st);
	pthread_mutex_unlock(&cp->mu);
	if (!arr) {
		http_send_error(conn, 500, "database error");
		return;
	}
	cJSON *ans = cJSON_CreateObject();
	cJSON_AddItemToObject(ans, "instances", arr);
	http_send_json(conn, 200, ans);
	cJSON_Delete(ans);
}

void api_inst_get(struct cp *cp, struct mg_connection *conn, const char *agent_id, const char *instance_id)
{
	bool removed = false;
	pthread_mutex_lock(&cp->mu);
	cJSON *o = instance_json(cp, agent_id, instance_id, &removed);
	if (o && !removed) {
		cJSON *hist = cJSON_AddArrayToObject(o, "history");
		sqlite3_stmt *st = db_prepare(cp->db, "SELECT body FROM (SELECT seq, body FROM instance_events"
		                                      " WHERE agent_id = ? AND instance_id = ? ORDER BY seq DESC LIMIT ?)"
		                                      " ORDER BY seq");
		if (st && hist) {
			sqlite3_bind_text(st, 1, agent_id, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 2, instance_id, -1, SQLITE_STATIC);
			sqlite3_bind_int(st, 3, INST_HISTORY_SHOWN);
			while (sqlite3_step(st) == SQLITE_ROW) {
				cJSON *ev = cJSON_Parse((const char *)sqlite3_column_text(st, 0));
				if (ev)
					cJSON_AddItemToArray(hist, ev);
			}
		}
		sqlite3_finalize(st);
	}
	pthread_mutex_unlock(&cp->mu);
	if (!o || removed)
		http_send_error(conn, 404, "no instance '%s' on agent '%s'", instance_id, agent_id);
	else
		http_send_json(conn, 200, o);
	cJSON_Delete(o);
}

static bool num_ok(const cJSON *o, const char *key, bool nullable)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!v || cJSON_IsNull(v))
		return nullable;
	return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 1e18;
}

void api_inst_stats(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id)
{
	if (strcmp(agent->id, agent_id) != 0) {
		http_send_error(conn, 403, "this token belongs to another agent");
		return;
	}
	cJSON *body = NULL;
	struct cp_err err;
	if (http_read_json(conn, &body, &err) < 0) {
		http_send_error(conn, err.status, "%s", err.msg);
		return;
	}
	const cJSON *list = cJSON_GetObjectItemCaseSensitive(body, "instances");
	int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : -1;
	if (n < 0 || n > INST_SNAPSHOT_MAX) {
		http_send_error(conn, 400, "'instances' must be an array of at most %d entries", INST_SNAPSHOT_MAX);
		cJSON_Delete(body);
		return;
	}
	const cJSON *e;
	int i = 0;
	cJSON_ArrayForEach(e, list)
	{
		int64_t ms;
		const char *at = jv_json_str(e, "at", NULL);
		if (!cJSON_IsObject(e) || !jv_ident_valid(jv_json_str(e, "instanceId", NULL)) || !at ||
		    jv_iso8601_parse(at, &ms) < 0 || !num_ok(e, "cpuCores", true) || !num_ok(e, "memoryBytes", false) ||
		    !num_ok(e, "processes", false) || !num_ok(e, "dataBytes", true) || !num_ok(e, "uptimeSeconds", true)) {
			http_send_error(conn, 400, "instances[%d]: needs instanceId, at (ISO-8601), memoryBytes, processes "
			                "and cpuCores, dataBytes, uptimeSeconds as numbers >= 0 or null", i);
			cJSON_Delete(body);
			return;
		}
		i++;
	}
	int taken = 0;
	pthread_mutex_lock(&cp->mu);
	cJSON_ArrayForEach(e, list)
	{
		const char *iid = jv_json_str(e, "instanceId", "");
		struct inst_row row;
		if (read_row(cp, agent_id, iid, &row) < 0 || !row.exists)
			continue; /* stats never create an instance */
		struct inst_stats *s = stats_find(cp, agent_id, iid, true);
		if (!s)
			continue;
		cJSON *latest = cJSON_CreateObject();
		static const char *const keys[] = {"at", "cpuCores", "memoryBytes", "processes", "dataBytes",
		                                   "uptimeSeconds", "source"};
		for (size_t k = 0; latest && k < JV_ARRAY_LEN(keys); k++) {
			const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, keys[k]);
			if (v && (!cJSON_IsString(v) || strlen(v->valuestring) < 64))
				cJSON_AddItemToObject(latest, keys[k], cJSON_Duplicate(v, false));
		}
		cJSON *h = cJSON_CreateObject();
		if (h) {
			cJSON_AddItemToObject(h, "at", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(e, "at"), false));
			const cJSON *cpu = cJSON_GetObjectItemCaseSensitive(e, "cpuCores");
			cJSON_AddItemToObject(h, "cpuCores", cpu ? cJSON_Duplicate(cpu, false) : cJSON_CreateNull());
			cJSON_AddNumberToObject(h, "memoryBytes", jv_json_num(e, "memoryBytes", 0));
			if (s->n == STATS_HISTORY) {
				cJSON_Delete(s->hist[s->head]);
				s->hist[s->head] = h;
				s->head = (s->head + 1) % STATS_HISTORY;
			} else {
				s->hist[(s->head + s->n++) % STATS_HISTORY] = h;
			}
		}
		cJSON_Delete(s->latest);
		s->latest = latest;
		publish(cp, agent_id, iid, NULL);
		taken++;
	}
	pthread_mutex_unlock(&cp->mu);
	cJSON *ans = cJSON_CreateObject();
	cJSON_AddNumberToObject(ans, "instances", taken);
	http_send_json(conn, 200, ans);
	cJSON_Delete(ans);
	cJSON_Delete(body);
}
