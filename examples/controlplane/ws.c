/* ws.c — GET /v1/ws: the WebSocket stream of job changes and events.
 *
 * Every published message gets the next sequence number and lands in a
 * bounded in-memory ring (WS_RING_SIZE messages, WS_RING_BYTES of text at
 * most: the oldest are dropped first). The libwebsockets service thread
 * (ws_lws.c) sends each client the ring entries from its own next seq on, in
 * order, as its socket can take them. A client connecting with
 * ?since=N&epoch=E (the last seq it saw and the epoch from its hello) gets
 * the missed messages replayed from the ring; a new client, one from another
 * process lifetime (epoch), or one that fell out of the ring gets a snapshot
 * (recent jobs, all agents, all instances) instead and continues from there.
 * A client that falls more than the ring behind while connected is closed
 * and reconnects. Sequence numbers restart with the process; the epoch says so.
 *
 * On PostgreSQL the replicas share one sequence and epoch (store_pg.h):
 * ws_publish appends to the database's ws_log instead of the ring, and the
 * listener thread feeds every replica's ring in seq order (ws_ingest), so a
 * client may resume on any replica (docs/scaling.md).
 *
 * Agent liveness is batched (ws_tick): an `agent` message when an agent is
 * first seen, changes capacity, comes back or goes offline, and at most one
 * `agents.seen` message a second listing the agents seen since the last. */
#include "ws_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "replicas.h"
#include "store_pg.h"

uint64_t ws_oldest_seq(const struct ws_hub *h)
{
	uint64_t by_count = h->head >= WS_RING_SIZE ? h->head - WS_RING_SIZE + 1 : 1;
	return h->oldest > by_count ? h->oldest : by_count;
}

static void drop_slot(struct ws_hub *h, uint64_t seq)
{
	struct ws_msg *m = &h->ring[seq % WS_RING_SIZE];
	h->bytes -= m->len;
	free(m->text);
	m->text = NULL;
	m->len = 0;
}

/* Put text (owned) into the ring as seq = head + 1 (cp->mu held). */
static void ring_put(struct ws_hub *h, uint64_t seq, char *text)
{
	if (seq > WS_RING_SIZE)
		drop_slot(h, seq - WS_RING_SIZE); /* the slot we are about to reuse */
	struct ws_msg *slot = &h->ring[seq % WS_RING_SIZE];
	slot->text = text;
	slot->len = strlen(text);
	h->bytes += slot->len;
	h->head = seq;
	if (h->oldest == 0)
		h->oldest = 1;
	/* Large messages (big params or outputs) must not make the ring unbounded. */
	while (h->bytes > WS_RING_BYTES && h->oldest < h->head) {
		uint64_t o = ws_oldest_seq(h);
		drop_slot(h, o);
		h->oldest = o + 1;
	}
	atomic_store(&h->head_seen, h->head);
	ws_lws_wake(h);
}

void ws_publish(struct cp *cp, cJSON *msg)
{
	struct ws_hub *h = cp->hub;
	if (!h) {
		cJSON_Delete(msg);
		return;
	}
	if (store_is_pg(cp->store)) {
		/* Replicas share one sequence: the message comes back, numbered,
		 * through ws_ingest on every replica (this one included). */
		char *text = jv_json_print(msg);
		cJSON_Delete(msg);
		if (!text || store_pg_ws_append(cp->store, text, jv_now_real_ms()) < 0)
			jv_error(NULL, NULL, "a WebSocket message is lost: cannot append it to ws_log");
		free(text);
		return;
	}
	uint64_t seq = h->head + 1;
	cJSON_AddNumberToObject(msg, "seq", (double)seq);
	char *text = jv_json_print(msg);
	cJSON_Delete(msg);
	if (!text)
		return; /* out of memory: the message is lost, sequence numbers stay dense */
	ring_put(h, seq, text);
}

/* PostgreSQL: the messages (consumed) appended in one statement, which also
 * wakes wake's polls on every replica (NULL = none). */
static void pg_publish(struct cp *cp, cJSON **msgs, size_t n, const char *wake)
{
	char **texts = calloc(n ? n : 1, sizeof(*texts));
	size_t k = 0, want = 0;
	for (size_t i = 0; i < n; i++) {
		want += msgs[i] != NULL && cp->hub;
		char *t = texts && msgs[i] && cp->hub ? jv_json_print(msgs[i]) : NULL;
		cJSON_Delete(msgs[i]);
		if (t)
			texts[k++] = t;
	}
	if (k < want ||
	    store_pg_ws_append_wake(cp->store, (const char *const *)texts, k, jv_now_real_ms(), wake) < 0)
		jv_error(NULL, NULL, "WebSocket messages are lost: cannot append them to ws_log");
	for (size_t i = 0; i < k; i++)
		free(texts[i]);
	free(texts);
}

void ws_publish_many(struct cp *cp, cJSON **msgs, size_t n)
{
	if (!cp->hub || !store_is_pg(cp->store)) {
		for (size_t i = 0; i < n; i++)
			if (msgs[i])
				ws_publish(cp, msgs[i]);
		return;
	}
	pg_publish(cp, msgs, n, NULL);
}

void ws_publish_wake(struct cp *cp, cJSON **msgs, size_t n, const char *wake)
{
	bool pg = store_is_pg(cp->store);
	if (pg)
		pg_publish(cp, msgs, n, wake); /* no lock: a store call */
	pthread_mutex_lock(&cp->mu);
	for (size_t i = 0; !pg && i < n; i++)
		if (msgs[i])
			ws_publish(cp, msgs[i]);
	if (wake)
		lc_wake_local(cp, wake); /* at once here; other replicas by the notification */
	pthread_mutex_unlock(&cp->mu);
}

void ws_ingest(struct cp *cp, uint64_t seq, const char *text)
{
	struct ws_hub *h = cp->hub;
	pthread_mutex_lock(&cp->mu);
	char *copy = seq > h->head ? strdup(text) : NULL;
	if (copy && seq != h->head + 1) {
		/* A gap (ws_log trimmed past us): start the ring over at seq;
		 * clients behind it are closed and come back for a snapshot. */
		for (uint64_t s = ws_oldest_seq(h); s <= h->head && h->head > 0; s++)
			drop_slot(h, s);
		h->head = seq - 1;
		h->oldest = seq;
	}
	if (copy)
		ring_put(h, seq, copy);
	pthread_mutex_unlock(&cp->mu);
}

void ws_seed(struct cp *cp, uint64_t head)
{
	pthread_mutex_lock(&cp->mu);
	cp->hub->head = head;
	cp->hub->oldest = head + 1; /* nothing older to replay here: a snapshot */
	atomic_store(&cp->hub->head_seen, head);
	pthread_mutex_unlock(&cp->mu);
}

struct ws_blob *ws_blob_new(const char *text, size_t len)
{
	struct ws_blob *b = malloc(sizeof(*b) + LWS_PRE + len + 1);
	if (!b)
		return NULL;
	atomic_init(&b->refs, 1);
	b->len = len;
	memcpy(b->buf + LWS_PRE, text, len);
	b->buf[LWS_PRE + len] = '\0';
	return b;
}

void ws_blob_put(struct ws_blob *b)
{
	if (b && atomic_fetch_sub(&b->refs, 1) == 1)
		free(b);
}

static bool enqueue(struct ws_client *c, struct ws_blob *b, bool console)
{
	struct ws_out *o = malloc(sizeof(*o));
	if (!o)
		return false;
	*o = (struct ws_out){.blob = b, .console = console};
	if (c->q_tail)
		c->q_tail->next = o;
	else
		c->q = o;
	c->q_tail = o;
	c->q_console += console;
	c->q_bytes += b->len;
	return true;
}

bool ws_queue(struct ws_client *c, const char *text, size_t len, bool console)
{
	/* A browser that cannot keep up misses console batches rather than holding memory. */
	if (console && (c->q_console >= WS_CONSOLE_QUEUE_MAX || c->q_bytes + len > WS_CONSOLE_QUEUE_BYTES))
		return false;
	struct ws_blob *b = ws_blob_new(text, len);
	if (b && enqueue(c, b, console))
		return true;
	ws_blob_put(b);
	return false;
}

bool ws_queue_blob(struct ws_client *c, struct ws_blob *b)
{
	atomic_fetch_add(&b->refs, 1);
	if (enqueue(c, b, false))
		return true;
	ws_blob_put(b);
	return false;
}

static void queue_json(struct ws_hub *h, struct ws_client *c, cJSON *o)
{
	char *text = o ? jv_json_print(o) : NULL;
	if (text) {
		pthread_mutex_lock(&h->list_mu);
		ws_queue(c, text, strlen(text), false);
		pthread_mutex_unlock(&h->list_mu);
	}
	free(text);
}

/* Requests from the page: {"op":"events","jobRunId":ID,"after":N} -> the run's stored events. */
static cJSON *answer_events(struct cp *cp, const cJSON *req)
{
	const char *run_id = jv_json_str(req, "jobRunId", "");
	int64_t after = jv_json_int(req, "after", 0);
	cJSON *events = NULL, *ans = cJSON_CreateObject();
	int rc = -EINVAL;
	if (jv_run_id_valid(run_id) && after >= 0)
		rc = store_run_events(cp->store, run_id, after, 1000, &events);
	cJSON_AddStringToObject(ans, "type", "events");
	cJSON_AddStringToObject(ans, "jobRunId", run_id);
	if (rc == 0)
		cJSON_AddItemToObject(ans, "events", events);
	else
		cJSON_AddStringToObject(ans, "error", "cannot read the run's events");
	return ans;
}

static cJSON *answer_console(struct cp *cp, struct ws_client *c, const cJSON *req, bool on)
{
	const char *agent = jv_json_str(req, "agentId", "");
	const char *inst = jv_json_str(req, "instanceId", "");
	int64_t since = jv_json_int(req, "since", 0);
	const char *why = NULL;
	cJSON *lines = NULL, *ans = cJSON_CreateObject();
	if (!jv_ident_valid(agent) || !jv_ident_valid(inst) || since < 0)
		why = "console.watch needs agentId, instanceId and since >= 0";
	else
		lines = console_watch(cp, c, agent, inst, on, (uint64_t)since, &why);
	if (why) {
		cJSON_AddStringToObject(ans, "type", "error");
		cJSON_AddStringToObject(ans, "error", why);
		return ans;
	}
	cJSON_AddStringToObject(ans, "type", "console");
	cJSON_AddStringToObject(ans, "agentId", agent);
	cJSON_AddStringToObject(ans, "instanceId", inst);
	cJSON_AddBoolToObject(ans, "watching", on);
	if (on) {
		cJSON_AddBoolToObject(ans, "tail", true);
		cJSON_AddItemToObject(ans, "lines", lines ? lines : cJSON_CreateArray());
	}
	return ans;
}

static cJSON *error_msg(const char *text)
{
	cJSON *e = cJSON_CreateObject();
	cJSON_AddStringToObject(e, "type", "error");
	cJSON_AddStringToObject(e, "error", text);
	return e;
}

void ws_answer(struct ws_hub *h, struct ws_client *c, const char *data, size_t len)
{
	cJSON *req = jv_json_depth_ok(data, len, CP_JSON_DEPTH_MAX) ? jv_json_parse(data, len) : NULL;
	char where[128], msg[200];
	const char *what = NULL, *op = jv_json_str(req, "op", "");
	cJSON *ans = NULL;
	if (!cJSON_IsObject(req)) {
		ans = error_msg("expected a JSON object");
	} else if (!jv_json_text_ok(req, where, sizeof(where), &what)) {
		snprintf(msg, sizeof(msg), "'%s' %s", where, what);
		ans = error_msg(msg);
	} else if (strcmp(op, "events") == 0) {
		ans = answer_events(h->cp, req);
	} else if (strcmp(op, "console.watch") == 0 || strcmp(op, "console.unwatch") == 0) {
		ans = answer_console(h->cp, c, req, strcmp(op, "console.watch") == 0);
	} else {
		ans = error_msg("unknown op (known: events, console.watch, console.unwatch)");
	}
	queue_json(h, c, ans);
	cJSON_Delete(ans);
	cJSON_Delete(req);
}

/* ---- the snapshot: recent jobs, every agent, every instance ---- */

struct agent_row {
	int64_t last_seen;
	int capacity, running;
};

static void count_running(void *ud, const char *agent_id, int n)
{
	struct cp *cp = ((void **)ud)[0];
	struct agent_row *rows = ((void **)ud)[1];
	struct cp_agent *a = tokens_agent_find(cp, agent_id);
	if (a)
		rows[a - cp->agents].running = n;
}

/* An agent as GET /v1/agents shows it, from its copied row. */
static cJSON *agent_row_json(const struct cp *cp, const char *id, const struct agent_row *row, int64_t now)
{
	/* Online: seen within three poll intervals plus the longest long poll. */
	int64_t window = (int64_t)(3 * cp->cfg.poll_interval_s + cp->cfg.max_wait_s) * 1000;
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "agentId", id);
	cJSON_AddItemToObject(o, "lastSeen", store_time(row->last_seen));
	cJSON_AddNumberToObject(o, "capacity", row->capacity);
	cJSON_AddNumberToObject(o, "running", row->running > 0 ? row->running : 0);
	cJSON_AddBoolToObject(o, "online", row->last_seen > 0 && now - row->last_seen <= window);
	return o;
}

/* Every agent, from memory and one query. */
static cJSON *agents_json(struct cp *cp, const struct agent_row *rows, int64_t now)
{
	cJSON *arr = cJSON_CreateArray();
	for (size_t i = 0; arr && i < cp->nagents; i++) {
		cJSON *o = agent_row_json(cp, cp->agents[i].id, &rows[i], now);
		if (!o)
			break;
		cJSON_AddItemToArray(arr, o);
	}
	return arr;
}

/* The agents' in-memory state (cp->mu held). */
static void copy_rows(const struct cp *cp, struct agent_row *rows)
{
	for (size_t i = 0; rows && i < cp->nagents; i++)
		rows[i] = (struct agent_row){.last_seen = cp->agents[i].last_seen_ms, .capacity = cp->agents[i].capacity};
}

cJSON *agents_list_json(struct cp *cp)
{
	struct agent_row *rows = calloc(cp->nagents ? cp->nagents : 1, sizeof(*rows));
	if (!rows)
		return NULL;
	pthread_mutex_lock(&cp->mu);
	copy_rows(cp, rows);
	pthread_mutex_unlock(&cp->mu);
	void *ud[2] = {cp, rows};
	(void)store_agents_running(cp->store, count_running, ud); /* failed: running 0 (as it always was) */
	cJSON *arr = agents_json(cp, rows, jv_now_real_ms());
	free(rows);
	return arr;
}

/* Built at seq (read first, so the database reads below see at least what
 * seq says; later messages are replayed on top). cp->mu is held only to copy
 * the agents' in-memory state; the instances are read after it (one store
 * call, then cp->mu again for their in-memory stats). */
static char *snapshot_text(struct cp *cp, uint64_t *seq)
{
	struct agent_row *rows = calloc(cp->nagents ? cp->nagents : 1, sizeof(*rows));
	cJSON *instances = NULL, *jobs = NULL, *o = cJSON_CreateObject();
	pthread_mutex_lock(&cp->mu);
	*seq = cp->hub->head;
	copy_rows(cp, rows);
	pthread_mutex_unlock(&cp->mu);
	instances = inst_list_json(cp, NULL, NULL);
	struct store_filter f = {.limit = CP_SNAPSHOT_JOBS};
	int64_t next = 0;
	void *ud[2] = {cp, rows};
	char *text = NULL;
	if (rows && o && store_jobs_list(cp->store, &f, &jobs, &next) == 0 &&
	    store_agents_running(cp->store, count_running, ud) >= 0) {
		cJSON_AddStringToObject(o, "type", "snapshot");
		cJSON_AddNumberToObject(o, "seq", (double)*seq);
		cJSON_AddItemToObject(o, "jobs", jobs);
		cJSON_AddItemToObject(o, "agents", agents_json(cp, rows, jv_now_real_ms()));
		cJSON_AddItemToObject(o, "instances", instances ? instances : cJSON_CreateArray());
		instances = NULL;
		text = jv_json_print(o);
	}
	cJSON_Delete(instances);
	cJSON_Delete(o);
	free(rows);
	return text;
}

/* The snapshot for a client: shared by every client greeted at the same seq. */
static bool queue_snapshot(struct ws_hub *h, struct ws_client *c, uint64_t *seq)
{
	uint64_t head = atomic_load(&h->head_seen);
	if (!h->snap || h->snap_seq != head) {
		uint64_t at = 0;
		char *text = snapshot_text(h->cp, &at);
		struct ws_blob *b = text ? ws_blob_new(text, strlen(text)) : NULL;
		free(text);
		if (!b)
			return false;
		ws_blob_put(h->snap); /* clients still sending the old one keep it */
		h->snap = b;
		h->snap_seq = at;
	}
	pthread_mutex_lock(&h->list_mu);
	bool ok = ws_queue_blob(c, h->snap);
	pthread_mutex_unlock(&h->list_mu);
	*seq = h->snap_seq;
	return ok;
}

void ws_greet(struct ws_hub *h, struct ws_client *c)
{
	struct cp *cp = h->cp;
	pthread_mutex_lock(&cp->mu);
	uint64_t oldest = ws_oldest_seq(h), head = h->head;
	bool replay = c->since >= 0 && c->epoch_ok && (uint64_t)c->since + 1 >= oldest && (uint64_t)c->since <= head;
	pthread_mutex_unlock(&cp->mu);
	cJSON *hello = cJSON_CreateObject();
	cJSON_AddStringToObject(hello, "type", "hello");
	cJSON_AddStringToObject(hello, "epoch", cp->epoch);
	cJSON_AddNumberToObject(hello, "seq", (double)head);
	cJSON_AddNumberToObject(hello, "oldestSeq", (double)oldest);
	cJSON_AddStringToObject(hello, "replay", replay ? "ring" : "snapshot");
	queue_json(h, c, hello);
	cJSON_Delete(hello);
	uint64_t at = head;
	if (replay) {
		c->next = (uint64_t)c->since + 1;
	} else if (queue_snapshot(h, c, &at)) {
		c->next = at + 1;
	} else {
		c->next = head + 1;
		cJSON *e = cJSON_CreateObject();
		cJSON_AddStringToObject(e, "type", "error");
		cJSON_AddStringToObject(e, "error", "cannot read the snapshot; reconnect");
		queue_json(h, c, e);
		cJSON_Delete(e);
		c->closing = true;
	}
}

void ws_console_send(struct cp *cp, const char *agent, const char *inst, char *text, uint64_t last_seq)
{
	struct ws_hub *h = cp->hub;
	size_t len = strlen(text);
	bool any = false;
	pthread_mutex_lock(&h->list_mu);
	for (struct ws_client *c = h->clients; c; c = c->next_client)
		if (console_watching(cp, c, agent, inst, last_seq))
			any |= ws_queue(c, text, len, true);
	pthread_mutex_unlock(&h->list_mu);
	free(text);
	if (any)
		ws_lws_wake(h);
}

/* ---- agent liveness, batched ---- */

/* The `agent` messages of the agents gone quiet (quiet[0..n), rows copied
 * under cp->mu) into msgs; their RUNNING counts read without the lock. */
static size_t quiet_msgs(struct cp *cp, const size_t *quiet, struct agent_row *rows, size_t n, int64_t now,
                         cJSON **msgs)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		const char *id = cp->agents[quiet[i]].id;
		rows[i].running = store_agent_running(cp->store, id);
		cJSON *msg = cJSON_CreateObject();
		cJSON *o = agent_row_json(cp, id, &rows[i], now);
		if (msg && o) {
			cJSON_AddStringToObject(msg, "type", "agent");
			cJSON_AddItemToObject(msg, "agent", o);
			msgs[k++] = msg;
		} else {
			cJSON_Delete(msg);
			cJSON_Delete(o);
		}
	}
	return k;
}

void ws_tick(struct cp *cp)
{
	struct ws_hub *h = cp->hub;
	int64_t now = jv_now_real_ms();
	if (!h || now - h->seen_at < WS_SEEN_MS)
		return;
	h->seen_at = now;
	int64_t window = (int64_t)(3 * cp->cfg.poll_interval_s + cp->cfg.max_wait_s) * 1000;
	cJSON *ids = NULL;
	int64_t newest = 0;
	size_t *quiet = calloc(cp->nagents + 1, sizeof(*quiet)), nquiet = 0;
	struct agent_row *rows = calloc(cp->nagents + 1, sizeof(*rows));
	cJSON **msgs = calloc(cp->nagents + 2, sizeof(*msgs));
	if (!quiet || !rows || !msgs)
		goto out; /* out of memory: next tick */
	pthread_mutex_lock(&cp->mu);
	for (size_t i = 0; i < cp->nagents; i++) {
		struct cp_agent *a = &cp->agents[i];
		if (a->online_told && a->last_seen_ms > a->pushed_seen_ms) {
			if (!ids)
				ids = cJSON_CreateArray();
			cJSON_AddItemToArray(ids, cJSON_CreateString(a->id));
			a->pushed_seen_ms = a->last_seen_ms;
			newest = a->last_seen_ms > newest ? a->last_seen_ms : newest;
		} else if (a->online_told && now - a->last_seen_ms > window) {
			/* Gone quiet: say so once (only the replica that said it was online does). */
			a->online_told = false;
			rows[nquiet] = (struct agent_row){.last_seen = a->last_seen_ms, .capacity = a->capacity};
			quiet[nquiet++] = i;
		}
	}
	pthread_mutex_unlock(&cp->mu);
	/* The store calls and the publication (a round trip on PostgreSQL)
	 * without cp->mu: every poll of this replica takes it. */
	size_t k = quiet_msgs(cp, quiet, rows, nquiet, now, msgs);
	if (ids) {
		cJSON *msg = cJSON_CreateObject();
		cJSON_AddStringToObject(msg, "type", "agents.seen");
		cJSON_AddItemToObject(msg, "lastSeen", store_time(newest));
		cJSON_AddItemToObject(msg, "agentIds", ids);
		msgs[k++] = msg;
	}
	if (k > 0)
		ws_publish_wake(cp, msgs, k, NULL);
out:
	free(msgs);
	free(rows);
	free(quiet);
}

/* ---- start and stop ---- */

int ws_hub_start(struct cp *cp, struct ws_hub **out)
{
	struct ws_hub *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->cp = cp;
	pthread_mutex_init(&h->list_mu, NULL);
	char err[256];
	int rc = ws_lws_start(h, err, sizeof(err));
	if (rc < 0) {
		jv_error(NULL, NULL, "%s", err);
		pthread_mutex_destroy(&h->list_mu);
		free(h);
		return rc;
	}
	cp->ws_port = h->port;
	*out = h;
	return 0;
}

void ws_hub_stop(struct ws_hub *h)
{
	if (h)
		ws_lws_stop(h);
}

void ws_hub_free(struct ws_hub *h)
{
	if (!h)
		return;
	ws_lws_free(h);
	for (size_t i = 0; i < WS_RING_SIZE; i++)
		free(h->ring[i].text);
	ws_blob_put(h->snap);
	pthread_mutex_destroy(&h->list_mu);
	free(h);
}
