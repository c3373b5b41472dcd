/* ws.c — GET /v1/ws: the WebSocket stream of job changes and events.
 *
 * Every published message gets the next sequence number and lands in a
 * bounded in-memory ring (RING_SIZE messages, RING_BYTES of text at most:
 * the oldest are dropped first). One broadcaster thread sends
 * new ring entries to every client in order. A client connecting with
 * ?since=N&epoch=E (the last seq it saw and the epoch from its hello) gets
 * the missed messages replayed from the ring; a new client, one from another
 * process lifetime (epoch), or one that fell out of the ring gets a snapshot
 * (recent jobs and all agents) instead and continues from there. A client
 * that falls more than the ring behind while connected is closed and
 * reconnects. Sequence numbers restart with the process; the epoch says so.
 *
 * On PostgreSQL the replicas share one sequence and epoch (store_pg.h):
 * ws_publish appends to the database's ws_log instead of the ring, and the
 * listener thread feeds every replica's ring in seq order (ws_ingest), so a
 * client may resume on any replica (docs/scaling.md).
 *
 * Locks, always in this order: hub.list_mu -> client.wmu -> cp->mu. The ring
 * is guarded by cp->mu (publishers hold it anyway). Each connected client
 * pins one civetweb worker thread (civetweb's design), so their number is
 * capped (cp->ws_max) to leave threads for HTTP. */
#include "cp.h"

#include <civetweb.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "replicas.h"
#include "store_pg.h"

#define RING_SIZE 8192
#define RING_BYTES (64u * 1024 * 1024)
#define CLIENT_FRAME_MAX 65536

struct ws_msg {
	char *text;
	size_t len;
};

struct ws_client {
	struct mg_connection *conn;
	pthread_mutex_t wmu;   /* one writer at a time on this connection */
	uint64_t next;         /* next sequence number to send */
	int64_t since;         /* -1 = none */
	bool epoch_ok;
	bool dead;             /* write failed or closed for lagging: send nothing more */
	char **cq;             /* console messages waiting for the broadcaster; hub.list_mu */
	size_t cqn, cq_bytes;
	struct ws_client *next_client;
};

#define CONSOLE_QUEUE_MAX 256               /* messages per client */
#define CONSOLE_QUEUE_BYTES (4u * 1024 * 1024)

struct ws_hub {
	struct cp *cp;
	struct ws_msg ring[RING_SIZE]; /* seq s lives at ring[s % RING_SIZE]; cp->mu */
	uint64_t head;                 /* last published seq, 0 = none; cp->mu */
	uint64_t oldest;               /* oldest seq still held (byte budget); cp->mu */
	size_t bytes;                  /* text held in the ring; cp->mu */
	bool kick;                     /* a client joined: look again; cp->mu */
	bool stop;                     /* cp->mu */
	pthread_cond_t cond;           /* broadcaster waits here with cp->mu */
	pthread_mutex_t list_mu;
	struct ws_client *clients;     /* list_mu */
	int nclients;                  /* connected or connecting; list_mu */
	pthread_t thread;
};

static uint64_t oldest_seq(const struct ws_hub *h)
{
	uint64_t by_count = h->head >= RING_SIZE ? h->head - RING_SIZE + 1 : 1;
	return h->oldest > by_count ? h->oldest : by_count;
}

static void drop_slot(struct ws_hub *h, uint64_t seq)
{
	struct ws_msg *m = &h->ring[seq % RING_SIZE];
	h->bytes -= m->len;
	free(m->text);
	m->text = NULL;
	m->len = 0;
}

/* Put text (owned) into the ring as seq = head + 1 (cp->mu held). */
static void ring_put(struct ws_hub *h, uint64_t seq, char *text)
{
	if (seq > RING_SIZE)
		drop_slot(h, seq - RING_SIZE); /* the slot we are about to reuse */
	struct ws_msg *slot = &h->ring[seq % RING_SIZE];
	slot->text = text;
	slot->len = strlen(text);
	h->bytes += slot->len;
	h->head = seq;
	if (h->oldest == 0)
		h->oldest = 1;
	/* Large messages (big params or outputs) must not make the ring unbounded. */
	while (h->bytes > RING_BYTES && h->oldest < h->head) {
		uint64_t o = oldest_seq(h);
		drop_slot(h, o);
		h->oldest = o + 1;
	}
	pthread_cond_signal(&h->cond);
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
		for (uint64_t s = oldest_seq(h); s <= h->head && h->head > 0; s++)
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
	pthread_mutex_unlock(&cp->mu);
}

/* Copies of ring messages [from, head] (cp->mu held). */
static struct ws_msg *copy_range(struct ws_hub *h, uint64_t from, size_t *n)
{
	*n = 0;
	if (from > h->head)
		return NULL;
	size_t count = (size_t)(h->head - from + 1);
	struct ws_msg *out = calloc(count, sizeof(*out));
	if (!out)
		return NULL;
	for (uint64_t s = from; s <= h->head; s++) {
		const struct ws_msg *m = &h->ring[s % RING_SIZE];
		if (!m->text)
			continue;
		out[*n].text = strdup(m->text);
		out[*n].len = m->len;
		if (out[*n].text)
			(*n)++;
	}
	return out;
}

static void send_copies(struct ws_client *c, struct ws_msg *msgs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!c->dead && mg_websocket_write(c->conn, MG_WEBSOCKET_OPCODE_TEXT, msgs[i].text, msgs[i].len) <= 0)
			c->dead = true;
		free(msgs[i].text);
	}
	free(msgs);
}

static void send_json(struct ws_client *c, cJSON *o)
{
	char *text = o ? jv_json_print(o) : NULL;
	if (text && !c->dead && mg_websocket_write(c->conn, MG_WEBSOCKET_OPCODE_TEXT, text, strlen(text)) <= 0)
		c->dead = true;
	free(text);
}

static void *broadcaster(void *arg)
{
	struct ws_hub *h = arg;
	struct cp *cp = h->cp;
	uint64_t seen = 0;
	pthread_mutex_lock(&cp->mu);
	seen = h->head;
	for (;;) {
		while (!h->stop && h->head == seen && !h->kick)
			pthread_cond_wait(&h->cond, &cp->mu);
		if (h->stop)
			break;
		seen = h->head;
		h->kick = false;
		pthread_mutex_unlock(&cp->mu);

		pthread_mutex_lock(&h->list_mu);
		for (struct ws_client *c = h->clients; c; c = c->next_client) {
			pthread_mutex_lock(&c->wmu);
			size_t n = 0;
			struct ws_msg *msgs = NULL;
			bool lagging = false;
			pthread_mutex_lock(&cp->mu);
			if (!c->dead && c->next < oldest_seq(h))
				lagging = true;
			else if (!c->dead && c->next <= h->head)
				msgs = copy_range(h, c->next, &n);
			c->next = h->head + 1;
			pthread_mutex_unlock(&cp->mu);
			if (lagging) {
				/* Too far behind to catch up from the ring: it reconnects and gets a snapshot. */
				static const char bye[] = "{\"type\":\"overflow\"}";
				mg_websocket_write(c->conn, MG_WEBSOCKET_OPCODE_TEXT, bye, sizeof(bye) - 1);
				mg_websocket_write(c->conn, MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE, "\x03\xf0", 2);
				c->dead = true;
			}
			send_copies(c, msgs, n);
			for (size_t i = 0; i < c->cqn; i++) {
				if (!c->dead && mg_websocket_write(c->conn, MG_WEBSOCKET_OPCODE_TEXT, c->cq[i],
				                                   strlen(c->cq[i])) <= 0)
					c->dead = true;
				free(c->cq[i]);
			}
			c->cqn = c->cq_bytes = 0;
			pthread_mutex_unlock(&c->wmu);
		}
		pthread_mutex_unlock(&h->list_mu);
		pthread_mutex_lock(&cp->mu);
	}
	pthread_mutex_unlock(&cp->mu);
	return NULL;
}

int ws_hub_start(struct cp *cp, struct ws_hub **out)
{
	struct ws_hub *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->cp = cp;
	pthread_cond_init(&h->cond, NULL);
	pthread_mutex_init(&h->list_mu, NULL);
	int rc = pthread_create(&h->thread, NULL, broadcaster, h);
	if (rc != 0) {
		pthread_cond_destroy(&h->cond);
		pthread_mutex_destroy(&h->list_mu);
		free(h);
		return -rc;
	}
	*out = h;
	return 0;
}

void ws_hub_stop(struct ws_hub *h)
{
	if (!h)
		return;
	struct cp *cp = h->cp;
	pthread_mutex_lock(&cp->mu);
	h->stop = true;
	pthread_cond_signal(&h->cond);
	pthread_mutex_unlock(&cp->mu);
	pthread_join(h->thread, NULL);
}

void ws_hub_free(struct ws_hub *h)
{
	if (!h)
		return;
	for (size_t i = 0; i < RING_SIZE; i++)
		free(h->ring[i].text);
	pthread_cond_destroy(&h->cond);
	pthread_mutex_destroy(&h->list_mu);
	free(h);
}

void ws_console_send(struct cp *cp, const char *agent, const char *inst, char *text, uint64_t last_seq)
{
	struct ws_hub *h = cp->hub;
	size_t len = strlen(text);
	bool any = false;
	pthread_mutex_lock(&h->list_mu);
	for (struct ws_client *c = h->clients; c; c = c->next_client) {
		if (c->dead || !console_watching(cp, c, agent, inst, last_seq))
			continue;
		if (!c->cq && !(c->cq = calloc(CONSOLE_QUEUE_MAX, sizeof(char *))))
			continue;
		/* A browser that cannot keep up misses batches rather than holding memory. */
		if (c->cqn == CONSOLE_QUEUE_MAX || c->cq_bytes + len > CONSOLE_QUEUE_BYTES)
			continue;
		char *copy = strdup(text);
		if (!copy)
			continue;
		c->cq[c->cqn++] = copy;
		c->cq_bytes += len;
		any = true;
	}
	pthread_mutex_unlock(&h->list_mu);
	free(text);
	if (any) {
		pthread_mutex_lock(&cp->mu);
		h->kick = true;
		pthread_cond_signal(&h->cond);
		pthread_mutex_unlock(&cp->mu);
	}
}

static void reject(const struct mg_connection *conn, int status, const char *body, const char *extra)
{
	mg_printf((struct mg_connection *)conn,
	          "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n%s"
	          "Connection: close\r\n\r\n%s",
	          status, mg_get_response_code_text(conn, status), strlen(body), extra ? extra : "", body);
}

int ws_on_connect(const struct mg_connection *conn, void *cbdata)
{
	struct cp *cp = cbdata;
	struct ws_hub *h = cp->hub;
	char token[CP_TOKEN_MAX + 1] = "", since[32] = "", epoch[sizeof(cp->epoch) + 1] = "";
	struct cp_agent *agent = NULL;
	int q = http_query(conn, "token", token, sizeof(token));
	enum http_auth auth = http_authenticate(cp, conn, q > 0 ? token : NULL, &agent, NULL);
	explicit_bzero(token, sizeof(token));
	if (auth == AUTH_NONE) {
		reject(conn, 401, "{\"error\":\"unauthorized\"}", "WWW-Authenticate: Bearer\r\n");
		return 1;
	}
	if (auth != AUTH_ADMIN) {
		reject(conn, 403, "{\"error\":\"the stream needs the admin token\"}", NULL);
		return 1;
	}
	struct ws_client *c = calloc(1, sizeof(*c));
	if (!c) {
		reject(conn, 500, "{\"error\":\"out of memory\"}", NULL);
		return 1;
	}
	c->since = -1;
	if (http_query(conn, "since", since, sizeof(since)) > 0) {
		char *end = NULL;
		long long v = strtoll(since, &end, 10);
		if (!*end && v >= 0)
			c->since = v;
	}
	c->epoch_ok = http_query(conn, "epoch", epoch, sizeof(epoch)) > 0 && strcmp(epoch, cp->epoch) == 0;
	pthread_mutex_lock(&h->list_mu);
	bool full = h->nclients >= cp->ws_max;
	if (!full)
		h->nclients++;
	pthread_mutex_unlock(&h->list_mu);
	if (full) {
		free(c);
		reject(conn, 503, "{\"error\":\"too many WebSocket clients\"}", "Retry-After: 5\r\n");
		return 1;
	}
	pthread_mutex_init(&c->wmu, NULL);
	c->conn = (struct mg_connection *)conn;
	mg_set_user_connection_data(conn, c);
	return 0;
}

static cJSON *snapshot(struct cp *cp)
{
	struct store_filter f = {.limit = CP_SNAPSHOT_JOBS};
	cJSON *jobs = NULL;
	int64_t next = 0;
	cJSON *o = cJSON_CreateObject();
	if (!o || store_jobs_list(cp->store, &f, &jobs, &next) < 0) {
		cJSON_Delete(o);
		return NULL;
	}
	cJSON_AddStringToObject(o, "type", "snapshot");
	cJSON_AddNumberToObject(o, "seq", (double)cp->hub->head);
	cJSON_AddItemToObject(o, "jobs", jobs);
	cJSON *agents = dispatch_agents_json(cp);
	cJSON_AddItemToObject(o, "agents", agents ? agents : cJSON_CreateArray());
	cJSON *instances = inst_list_json(cp, NULL, NULL);
	cJSON_AddItemToObject(o, "instances", instances ? instances : cJSON_CreateArray());
	return o;
}

void ws_on_ready(struct mg_connection *conn, void *cbdata)
{
	struct cp *cp = cbdata;
	struct ws_hub *h = cp->hub;
	struct ws_client *c = mg_get_user_connection_data(conn);
	if (!c)
		return;
	pthread_mutex_lock(&c->wmu);
	pthread_mutex_lock(&cp->mu);
	uint64_t oldest = oldest_seq(h);
	bool replay = c->since >= 0 && c->epoch_ok && (uint64_t)c->since + 1 >= oldest &&
	              (uint64_t)c->since <= h->head;
	cJSON *hello = cJSON_CreateObject();
	cJSON_AddStringToObject(hello, "type", "hello");
	cJSON_AddStringToObject(hello, "epoch", cp->epoch);
	cJSON_AddNumberToObject(hello, "seq", (double)h->head);
	cJSON_AddNumberToObject(hello, "oldestSeq", (double)oldest);
	cJSON_AddStringToObject(hello, "replay", replay ? "ring" : "snapshot");
	size_t n = 0;
	struct ws_msg *msgs = NULL;
	cJSON *snap = NULL;
	if (replay)
		msgs = copy_range(h, (uint64_t)c->since + 1, &n);
	else
		snap = snapshot(cp);
	c->next = h->head + 1;
	pthread_mutex_unlock(&cp->mu);
	send_json(c, hello);
	if (snap)
		send_json(c, snap);
	send_copies(c, msgs, n);
	cJSON_Delete(hello);
	cJSON_Delete(snap);
	pthread_mutex_unlock(&c->wmu);

	pthread_mutex_lock(&h->list_mu);
	c->next_client = h->clients;
	h->clients = c;
	pthread_mutex_unlock(&h->list_mu);
	/* Messages published since we read head: let the broadcaster send them. */
	pthread_mutex_lock(&cp->mu);
	h->kick = true;
	pthread_cond_signal(&h->cond);
	pthread_mutex_unlock(&cp->mu);
}

/* Requests from the page: {"op":"events","jobRunId":ID,"after":N} -> the run's stored events. */
static void answer_op(struct cp *cp, struct ws_client *c, const cJSON *req)
{
	const char *op = jv_json_str(req, "op", "");
	cJSON *ans = cJSON_CreateObject();
	if (!ans)
		return;
	if (strcmp(op, "events") == 0) {
		const char *run_id = jv_json_str(req, "jobRunId", "");
		int64_t after = jv_json_int(req, "after", 0);
		cJSON *events = NULL;
		int rc = -EINVAL;
		if (jv_run_id_valid(run_id) && after >= 0) {
			pthread_mutex_lock(&cp->mu);
			rc = store_run_events(cp->store, run_id, after, 1000, &events);
			pthread_mutex_unlock(&cp->mu);
		}
		cJSON_AddStringToObject(ans, "type", "events");
		cJSON_AddStringToObject(ans, "jobRunId", run_id);
		if (rc == 0)
			cJSON_AddItemToObject(ans, "events", events);
		else
			cJSON_AddStringToObject(ans, "error", "cannot read the run's events");
	} else if (strcmp(op, "console.watch") == 0 || strcmp(op, "console.unwatch") == 0) {
		bool on = strcmp(op, "console.watch") == 0;
		const char *agent = jv_json_str(req, "agentId", "");
		const char *inst = jv_json_str(req, "instanceId", "");
		int64_t since = jv_json_int(req, "since", 0);
		const char *why = NULL;
		cJSON *lines = NULL;
		if (!jv_ident_valid(agent) || !jv_ident_valid(inst) || since < 0)
			why = "console.watch needs agentId, instanceId and since >= 0";
		else
			lines = console_watch(cp, c, agent, inst, on, (uint64_t)since, &why);
		if (why) {
			cJSON_AddStringToObject(ans, "type", "error");
			cJSON_AddStringToObject(ans, "error", why);
		} else {
			cJSON_AddStringToObject(ans, "type", "console");
			cJSON_AddStringToObject(ans, "agentId", agent);
			cJSON_AddStringToObject(ans, "instanceId", inst);
			cJSON_AddBoolToObject(ans, "watching", on);
			if (on) {
				cJSON_AddBoolToObject(ans, "tail", true);
				cJSON_AddItemToObject(ans, "lines", lines ? lines : cJSON_CreateArray());
			}
		}
	} else {
		cJSON_AddStringToObject(ans, "type", "error");
		cJSON_AddStringToObject(ans, "error", "unknown op (known: events, console.watch, console.unwatch)");
	}
	send_json(c, ans);
	cJSON_Delete(ans);
}

int ws_on_data(struct mg_connection *conn, int bits, char *data, size_t len, void *cbdata)
{
	struct cp *cp = cbdata;
	struct ws_client *c = mg_get_user_connection_data(conn);
	int opcode = bits & 0x0f;
	/* A client whose writes failed (or that fell behind the ring) is closed
	 * at its next frame: returning 0 makes civetweb end the connection. */
	if (!c || c->dead || opcode == MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE)
		return 0;
	if (opcode != MG_WEBSOCKET_OPCODE_TEXT || len > CLIENT_FRAME_MAX)
		return 1; /* pings are answered by civetweb; binary and huge frames are ignored */
	cJSON *req = jv_json_depth_ok(data, len, CP_JSON_DEPTH_MAX) ? jv_json_parse(data, len) : NULL;
	char where[128], msg[200];
	const char *what = NULL;
	pthread_mutex_lock(&c->wmu);
	if (cJSON_IsObject(req) && !jv_json_text_ok(req, where, sizeof(where), &what)) {
		snprintf(msg, sizeof(msg), "'%s' %s", where, what);
		cJSON *e = cJSON_CreateObject();
		cJSON_AddStringToObject(e, "type", "error");
		cJSON_AddStringToObject(e, "error", msg);
		send_json(c, e);
		cJSON_Delete(e);
	} else if (cJSON_IsObject(req)) {
		answer_op(cp, c, req);
	} else {
		cJSON *e = cJSON_CreateObject();
		cJSON_AddStringToObject(e, "type", "error");
		cJSON_AddStringToObject(e, "error", "expected a JSON object");
		send_json(c, e);
		cJSON_Delete(e);
	}
	pthread_mutex_unlock(&c->wmu);
	cJSON_Delete(req);
	return 1;
}

void ws_on_close(const struct mg_connection *conn, void *cbdata)
{
	struct cp *cp = cbdata;
	struct ws_hub *h = cp->hub;
	struct ws_client *c = mg_get_user_connection_data(conn);
	if (!c)
		return;
	pthread_mutex_lock(&h->list_mu);
	for (struct ws_client **pp = &h->clients; *pp; pp = &(*pp)->next_client) {
		if (*pp == c) {
			*pp = c->next_client;
			break;
		}
	}
	pthread_mutex_unlock(&h->list_mu);
	console_client_gone(cp, c);
}

void ws_on_connection_closed(struct cp *cp, const struct mg_connection *conn)
{
	/* civetweb calls its close handler only for connections whose handshake
	 * went out; this runs for every connection, so the slot and memory taken
	 * in ws_on_connect are always given back. */
	struct ws_hub *h = cp->hub;
	struct ws_client *c = mg_get_user_connection_data(conn);
	if (!c || !h)
		return;
	ws_on_close(conn, cp);
	pthread_mutex_lock(&h->list_mu);
	h->nclients--;
	for (size_t i = 0; i < c->cqn; i++)
		free(c->cq[i]);
	free(c->cq);
	pthread_mutex_unlock(&h->list_mu);
	mg_set_user_connection_data(conn, NULL);
	pthread_mutex_destroy(&c->wmu);
	free(c);
}
