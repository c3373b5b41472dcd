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
 * per instance. The rows live in the store (store.h).
 *
 * Locks: store calls never happen under cp->mu (the store is thread-safe; on
 * PostgreSQL each call is a round trip, and every poll of this replica takes
 * cp->mu). cp->mu covers only the in-memory stats map. What the one mutex
 * used to give the agent's own requests, the agent's inst_mu gives now: an
 * agent's instance events, snapshots and stats are handled one at a time on
 * this replica, from the store call to the WebSocket messages, so the
 * messages of one instance leave in the order its changes were stored and
 * never carry an older row after a newer one; two agents never wait for each
 * other. An agent talks to one replica at a time (it sticks to a healthy
 * URL), and the store orders each instance's writes itself (a transaction
 * per request, seq numbers kept once). Reads for the UI take no agent lock:
 * each is one store call plus the stats under cp->mu. */
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

/* The newest stats sample of the instance o (and its history when asked)
 * from the in-memory map. cp->mu held. */
static void add_stats(struct cp *cp, cJSON *o, bool history)
{
	struct inst_stats *s =
		stats_find(cp, jv_json_str(o, "agentId", ""), jv_json_str(o, "instanceId", ""), false);
	cJSON_AddItemToObject(o, "stats", s && s->latest ? cJSON_Duplicate(s->latest, true) : cJSON_CreateNull());
	cJSON *h = history ? cJSON_AddArrayToObject(o, "statsHistory") : NULL;
	for (size_t i = 0; s && h && i < s->n; i++)
		cJSON_AddItemToArray(h, cJSON_Duplicate(s->hist[(s->head + i) % STATS_HISTORY], true));
}

/* The row as the API shows it, without the stats (add_stats): no lock. */
static cJSON *instance_from_row(const struct store_instance_row *r)
{
	cJSON *o = r->body ? cJSON_Parse(r->body) : NULL;
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
	cJSON_AddStringToObject(o, "agentId", r->agent_id);
	cJSON_AddStringToObject(o, "instanceId", r->instance_id);
	cJSON_AddStringToObject(o, "state", r->state);
	cJSON_AddNumberToObject(o, "lastSeq", (double)r->last_seq);
	cJSON_AddNumberToObject(o, "stateSeq", (double)r->state_seq);
	cJSON_AddItemToObject(o, "updatedAt", store_time(r->updated_at));
	return o;
}

struct inst_collect {
	cJSON *arr; /* list: every row goes here */
	cJSON *one; /* get: the row */
	bool removed;
};

static int collect_row(void *ud, const struct store_instance_row *r)
{
	struct inst_collect *c = ud;
	cJSON *o = instance_from_row(r);
	if (o && c->arr) {
		cJSON_AddItemToArray(c->arr, o);
	} else {
		cJSON_Delete(c->one);
		c->one = o;
		c->removed = r->removed;
	}
	return 0;
}

cJSON *inst_list_json(struct cp *cp, const char *agent_id, const char *state)
{
	struct inst_collect c = {.arr = cJSON_CreateArray()};
	if (c.arr && store_instances_list(cp->store, agent_id, state, collect_row, &c) < 0) {
		cJSON_Delete(c.arr);
		return NULL;
	}
	pthread_mutex_lock(&cp->mu);
	cJSON *o;
	cJSON_ArrayForEach(o, c.arr)
	{
		add_stats(cp, o, true);
	}
	pthread_mutex_unlock(&cp->mu);
	return c.arr;
}

/* The instance as the lists show it (removed ones too), without its stats;
 * NULL when unknown. One store call, no lock. */
static cJSON *instance_json(struct cp *cp, const char *agent_id, const char *instance_id, bool *removed)
{
	struct inst_collect c = {0};
	if (store_instance_get(cp->store, agent_id, instance_id, collect_row, &c) < 0) {
		cJSON_Delete(c.one);
		return NULL;
	}
	if (removed)
		*removed = c.removed;
	return c.one;
}

/* One instance a request publishes. */
struct inst_want {
	const char *id;
	cJSON *obj;   /* instance_from_row; NULL = unknown */
	bool removed;
	bool tried;   /* asked the store already */
	bool publish;
};

static int want_cmp(const void *a, const void *b)
{
	return strcmp((*(struct inst_want *const *)a)->id, (*(struct inst_want *const *)b)->id);
}

struct want_index {
	struct inst_want **by_id; /* sorted by id */
	size_t n;
};

static int want_row(void *ud, const struct store_instance_row *r)
{
	struct want_index *x = ud;
	struct inst_want key = {.id = r->instance_id}, *kp = &key;
	struct inst_want **hit = bsearch(&kp, x->by_id, x->n, sizeof(*x->by_id), want_cmp);
	while (hit && hit > x->by_id && strcmp(hit[-1]->id, r->instance_id) == 0)
		hit--;
	for (; hit && hit < x->by_id + x->n && strcmp((*hit)->id, r->instance_id) == 0; hit++) {
		cJSON_Delete((*hit)->obj);
		(*hit)->obj = instance_from_row(r);
		(*hit)->removed = r->removed;
		(*hit)->tried = true;
	}
	return 0;
}

/* Read the agent's instances w[0..n) (ids may repeat) from the store, no
 * lock: several at once with one store_instances_list (one round trip), then
 * one store_instance_get for each not listed there (removed or unknown). */
static void fetch_instances(struct cp *cp, const char *agent_id, struct inst_want *w, size_t n)
{
	bool one = true;
	for (size_t i = 1; i < n && one; i++)
		one = strcmp(w[i].id, w[0].id) == 0;
	struct inst_want **by_id = one ? NULL : calloc(n, sizeof(*by_id));
	if (by_id) {
		for (size_t i = 0; i < n; i++)
			by_id[i] = &w[i];
		qsort(by_id, n, sizeof(*by_id), want_cmp);
		struct want_index x = {by_id, n};
		(void)store_instances_list(cp->store, agent_id, NULL, want_row, &x); /* failed: the gets below */
		free(by_id);
	}
	for (size_t i = 0; i < n; i++) {
		if (w[i].obj || w[i].tried)
			continue;
		w[i].obj = instance_json(cp, agent_id, w[i].id, &w[i].removed);
		for (size_t k = i + 1; k < n; k++)
			if (!w[k].obj && strcmp(w[k].id, w[i].id) == 0) {
				w[k].obj = w[i].obj ? cJSON_Duplicate(w[i].obj, true) : NULL;
				w[k].removed = w[i].removed;
				w[k].tried = true;
			}
	}
}

static void wants_free(struct inst_want *w, size_t n)
{
	for (size_t i = 0; w && i < n; i++)
		cJSON_Delete(w[i].obj);
	free(w);
}

/* {"type":"instance"} for WebSocket clients: the instance (with its newest
 * stats sample, added by the caller, not the history: a page keeps its own,
 * 60 times less to push), removed or not, and the event that changed it. */
static cJSON *instance_msg(const struct inst_want *w, const cJSON *event)
{
	cJSON *msg = cJSON_CreateObject();
	cJSON *inst = cJSON_Duplicate(w->obj, true);
	if (!inst || !msg) {
		cJSON_Delete(inst);
		cJSON_Delete(msg);
		return NULL;
	}
	cJSON_AddStringToObject(msg, "type", "instance");
	cJSON_AddBoolToObject(inst, "removed", w->removed);
	cJSON_AddItemToObject(msg, "instance", inst);
	if (event)
		cJSON_AddItemToObject(msg, "instanceEvent", cJSON_Duplicate(event, true));
	return msg;
}

/* Publish msgs[0..n) (consumed, NULLs skipped) in order: on PostgreSQL one
 * round trip for all, without cp->mu; on SQLite the ring under cp->mu. */
static void publish(struct cp *cp, cJSON **msgs, size_t n)
{
	if (n > 0)
		ws_publish_wake(cp, msgs, n, NULL);
}

/* The events as the store takes them; texts and copies owned by the caller. */
static int to_inst_events(const char *agent_id, const char *instance_id, const cJSON *events, int n,
                          struct store_inst_event *ev, char **texts, cJSON *copies)
{
	for (int i = 0; i < n; i++) {
		const cJSON *e = cJSON_GetArrayItem(events, i);
		cJSON *copy = cJSON_Duplicate(e, true);
		if (!copy)
			return -ENOMEM;
		cJSON_AddItemToArray(copies, copy);
		cJSON_DeleteItemFromObjectCaseSensitive(copy, "agentId");
		cJSON_AddStringToObject(copy, "agentId", agent_id);
		if (!cJSON_GetObjectItemCaseSensitive(copy, "instanceId"))
			cJSON_AddStringToObject(copy, "instanceId", instance_id);
		texts[i] = jv_json_print(copy);
		if (!texts[i])
			return -ENOMEM;
		bool state = strcmp(jv_json_str(e, "kind", ""), "state") == 0;
		ev[i] = (struct store_inst_event){
			.seq = jv_json_int(e, "seq", 0),
			.body = texts[i],
			.state = state ? jv_json_str(e, "state", NULL) : NULL,
		};
	}
	return 0;
}

/* Store the events not stored before, and the instance row they change. */
static int inst_store_events(struct cp *cp, const char *agent_id, const char *instance_id, const cJSON *events,
                             int n, cJSON *copies, struct store_inst_event *ev, int64_t *last_seq, bool *known)
{
	char **texts = calloc((size_t)n + 1, sizeof(*texts));
	int rc = texts ? to_inst_events(agent_id, instance_id, events, n, ev, texts, copies) : -ENOMEM;
	if (rc == 0)
		rc = store_instance_events_append(cp->store, agent_id, instance_id, ev, (size_t)n, jv_now_real_ms(),
		                                  INST_HISTORY_KEEP, last_seq, known);
	for (int i = 0; texts && i < n; i++)
		free(texts[i]);
	free(texts);
	return rc;
}

/* The agent's list in body[key]: an array of at most max entries, each
 * checked by validate_event. 0 with *list and *n, or -1 after answering. */
static int read_list(struct mg_connection *conn, const cJSON *body, const char *key, int max, const char *instance_id,
                     const cJSON **list, int *n)
{
	*list = cJSON_GetObjectItemCaseSensitive(body, key);
	*n = cJSON_IsArray(*list) ? cJSON_GetArraySize(*list) : -1;
	if (*n < 0 || *n > max) {
		http_send_error(conn, 400, "'%s' must be an array of at most %d %s", key, max, key);
		return -1;
	}
	bool snapshot = instance_id == NULL;
	for (int i = 0; i < *n; i++) {
		const cJSON *e = cJSON_GetArrayItem(*list, i);
		const char *why = validate_event(e, instance_id, snapshot);
		if (!why && snapshot && strcmp(jv_json_str(e, "state", ""), "REMOVED") == 0)
			why = "a snapshot lists present instances only";
		for (int k = 0; !why && snapshot && k < i; k++)
			if (strcmp(jv_json_str(cJSON_GetArrayItem(*list, k), "instanceId", ""),
			           jv_json_str(e, "instanceId", "")) == 0)
				why = "instance listed twice";
		if (why) {
			http_send_error(conn, 400, "%s[%d]: %s", key, i, why);
			return -1;
		}
	}
	return 0;
}

void api_inst_events(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id,
                     const char *instance_id)
{
	cJSON *body = NULL;
	if (http_read_agent_json(conn, agent, agent_id, &body) < 0)
		return;
	const cJSON *events;
	int n;
	if (read_list(conn, body, "events", INST_EVENTS_PER_POST, instance_id, &events, &n) < 0) {
		cJSON_Delete(body);
		return;
	}
	cJSON *copies = cJSON_CreateArray();
	struct store_inst_event *ev = calloc((size_t)n + 1, sizeof(*ev));
	cJSON **msgs = calloc((size_t)n + 1, sizeof(*msgs));
	struct http_answer ans = {0};
	int64_t last_seq = 0;
	bool known = false;
	pthread_mutex_lock(&agent->inst_mu);
	int rc = copies && ev && msgs
	                 ? inst_store_events(cp, agent_id, instance_id, events, n, copies, ev, &last_seq, &known)
	                 : -ENOMEM;
	if (rc < 0) {
		http_answer_error(&ans, 500, "database error");
	} else {
		struct inst_want w = {.id = instance_id};
		size_t k = 0;
		for (int i = 0; i < n; i++) {
			if (!ev[i].inserted)
				continue;
			atomic_fetch_add(&cp->metrics.instance_events_stored, 1);
			if (ev[i].state)
				jv_info(NULL, NULL, "instance %s/%s: %s (seq %lld)", agent_id, instance_id, ev[i].state,
				        (long long)ev[i].seq);
			if (known && !w.tried)
				fetch_instances(cp, agent_id, &w, 1);
			if (w.obj && !w.publish) {
				pthread_mutex_lock(&cp->mu);
				add_stats(cp, w.obj, false);
				pthread_mutex_unlock(&cp->mu);
				w.publish = true;
			}
			if (w.obj)
				msgs[k++] = instance_msg(&w, cJSON_GetArrayItem(copies, i));
		}
		publish(cp, msgs, k);
		cJSON_Delete(w.obj);
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "ackSeq", (double)last_seq);
		http_answer_json(&ans, 200, o);
	}
	pthread_mutex_unlock(&agent->inst_mu);
	http_send_answer(conn, &ans);
	free(msgs);
	free(ev);
	cJSON_Delete(copies);
	cJSON_Delete(body);
}

/* The snapshot's entries as the store takes them; texts owned by the caller. */
static int to_snaps(const char *agent_id, const cJSON *list, int n, struct store_inst_snap *items, char **texts)
{
	for (int i = 0; i < n; i++) {
		cJSON *e = cJSON_Duplicate(cJSON_GetArrayItem(list, i), true);
		if (!e)
			return -ENOMEM;
		cJSON_DeleteItemFromObjectCaseSensitive(e, "agentId");
		cJSON_AddStringToObject(e, "agentId", agent_id);
		cJSON_DeleteItemFromObjectCaseSensitive(e, "kind");
		cJSON_AddStringToObject(e, "kind", "state");
		texts[i] = jv_json_print(e);
		cJSON_Delete(e);
		if (!texts[i])
			return -ENOMEM;
		const cJSON *src = cJSON_GetArrayItem(list, i);
		items[i] = (struct store_inst_snap){
			.instance_id = jv_json_str(src, "instanceId", ""),
			.seq = jv_json_int(src, "seq", 0),
			.state = jv_json_str(src, "state", "STOPPED"),
			.body = texts[i],
		};
	}
	return 0;
}

/* After a stored snapshot: mark the agent synced, and publish the instances
 * it changed (in its order), then those it removed. agent->inst_mu held. */
static void snapshot_publish(struct cp *cp, struct cp_agent *agent, const struct store_inst_snap *items, size_t n,
                             const char (*removed)[JV_IDENT_MAX + 1], size_t nremoved)
{
	struct inst_want *w = calloc(n + nremoved + 1, sizeof(*w));
	cJSON **msgs = calloc(n + nremoved + 1, sizeof(*msgs));
	size_t k = 0;
	for (size_t i = 0; w && i < n; i++)
		if (items[i].changed)
			w[k++].id = items[i].instance_id;
	for (size_t i = 0; w && i < nremoved; i++)
		w[k++].id = removed[i];
	if (w && msgs)
		fetch_instances(cp, agent->id, w, k);
	pthread_mutex_lock(&cp->mu);
	agent->instances_synced = true;
	for (size_t i = 0; w && msgs && i < k; i++)
		if (w[i].obj)
			add_stats(cp, w[i].obj, false);
	pthread_mutex_unlock(&cp->mu);
	for (size_t i = 0; w && msgs && i < k; i++)
		msgs[i] = w[i].obj ? instance_msg(&w[i], NULL) : NULL;
	publish(cp, msgs, msgs ? k : 0);
	free(msgs);
	wants_free(w, k);
}

void api_inst_snapshot(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id)
{
	cJSON *body = NULL;
	if (http_read_agent_json(conn, agent, agent_id, &body) < 0)
		return;
	const cJSON *list;
	int n;
	if (read_list(conn, body, "instances", INST_SNAPSHOT_MAX, NULL, &list, &n) < 0) {
		cJSON_Delete(body);
		return;
	}
	struct store_inst_snap *items = calloc((size_t)n + 1, sizeof(*items));
	char **texts = calloc((size_t)n + 1, sizeof(*texts));
	char(*removed)[JV_IDENT_MAX + 1] = NULL;
	size_t nremoved = 0;
	struct http_answer ans = {0};
	pthread_mutex_lock(&agent->inst_mu);
	int rc = items && texts ? to_snaps(agent_id, list, n, items, texts) : -ENOMEM;
	if (rc == 0)
		rc = store_instances_snapshot(cp->store, agent_id, items, (size_t)n, jv_now_real_ms(), &removed,
		                              &nremoved);
	if (rc < 0) {
		http_answer_error(&ans, 500, "database error");
	} else {
		snapshot_publish(cp, agent, items, (size_t)n, removed, nremoved);
		jv_info(NULL, NULL, "agent '%s' reported %d instances", agent_id, n);
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "instances", n);
		http_answer_json(&ans, 200, o);
	}
	pthread_mutex_unlock(&agent->inst_mu);
	http_send_answer(conn, &ans);
	for (int i = 0; texts && i < n; i++)
		free(texts[i]);
	free(texts);
	free(items);
	free(removed);
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
	http_send_list(conn, "instances", inst_list_json(cp, agent_id, st));
}

void api_inst_get(struct cp *cp, struct mg_connection *conn, const char *agent_id, const char *instance_id)
{
	bool removed = false;
	cJSON *o = instance_json(cp, agent_id, instance_id, &removed);
	if (!o || removed) {
		http_send_error(conn, 404, "no instance '%s' on agent '%s'", instance_id, agent_id);
		cJSON_Delete(o);
		return;
	}
	pthread_mutex_lock(&cp->mu);
	add_stats(cp, o, true);
	pthread_mutex_unlock(&cp->mu);
	cJSON *hist = NULL;
	if (store_instance_history(cp->store, agent_id, instance_id, INST_HISTORY_SHOWN, &hist) < 0)
		hist = cJSON_CreateArray();
	cJSON_AddItemToObject(o, "history", hist);
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

/* Keep the sample e (checked) as the instance's newest and in its history.
 * False when out of memory. cp->mu held. */
static bool stats_take(struct cp *cp, const char *agent_id, const cJSON *e)
{
	struct inst_stats *s = stats_find(cp, agent_id, jv_json_str(e, "instanceId", ""), true);
	if (!s)
		return false;
	cJSON *latest = cJSON_CreateObject();
	static const char *const keys[] = {"at", "cpuCores", "memoryBytes", "processes", "dataBytes", "uptimeSeconds",
	                                   "source"};
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
	return true;
}

void api_inst_stats(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id)
{
	cJSON *body = NULL;
	if (http_read_agent_json(conn, agent, agent_id, &body) < 0)
		return;
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
	struct inst_want *w = calloc((size_t)n + 1, sizeof(*w));
	cJSON **msgs = calloc((size_t)n + 1, sizeof(*msgs));
	if (!w || !msgs) {
		http_send_error(conn, 500, "out of memory");
		free(w);
		free(msgs);
		cJSON_Delete(body);
		return;
	}
	i = 0;
	cJSON_ArrayForEach(e, list)
	{
		w[i++].id = jv_json_str(e, "instanceId", "");
	}
	pthread_mutex_lock(&agent->inst_mu);
	fetch_instances(cp, agent_id, w, (size_t)n); /* stats never create an instance */
	pthread_mutex_lock(&cp->mu);
	i = 0;
	cJSON_ArrayForEach(e, list)
	{
		if (w[i].obj && stats_take(cp, agent_id, e)) {
			add_stats(cp, w[i].obj, false);
			w[i].publish = true;
		}
		i++;
	}
	pthread_mutex_unlock(&cp->mu);
	size_t taken = 0;
	for (i = 0; i < n; i++)
		if (w[i].publish)
			msgs[taken++] = instance_msg(&w[i], NULL);
	publish(cp, msgs, taken);
	pthread_mutex_unlock(&agent->inst_mu);
	cJSON *ans = cJSON_CreateObject();
	cJSON_AddNumberToObject(ans, "instances", (double)taken);
	http_send_json(conn, 200, ans);
	cJSON_Delete(ans);
	free(msgs);
	wants_free(w, (size_t)n);
	cJSON_Delete(body);
}
