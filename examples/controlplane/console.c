/* console.c — live consoles: who watches what, the kept tail, console commands.
 *
 * Nothing here is durable: a console is a live view. A WebSocket client
 * watches an instance ({"op":"console.watch"}); the union of all watches of
 * an agent's instances is the watch list that goes to the agent in every poll
 * answer and in the answer to each console POST, and a change wakes the
 * agent's long poll. The agent streams lines of watched instances only
 * (POST /v1/agents/{agentId}/console, batches at most every 100 ms); each
 * batch is kept in a per-instance tail (the last CON_TAIL_LINES lines, at most
 * CON_TAIL_BYTES) and sent to the watching clients that lack it, as
 * `console` messages without a stream seq (not part of the replayable
 * stream; each line carries the monitor's seq). A new watcher gets the tail
 * after its `since`; each watch remembers what its client has, and the watch
 * list asks the agent to start from what all watchers have when the tail
 * holds less (the monitor then replays the rest). Commands (POST
 * /v1/agents/{a}/instances/{i}/console) wait in a small per-control-plane
 * queue until a poll answer hands them out; their results come back in a
 * console POST and go to every client as a numbered `console` message with
 * `result`.
 *
 * Commands are delivered at least once: a command stays queued until its
 * result comes back; one handed out in a poll answer without a result after
 * CON_REOFFER_MS is handed out again (the answer may have been lost; the
 * agent knows the command ids it has run and never runs one twice). A
 * command without a result by its deadline (timeoutSeconds, default
 * CON_TIMEOUT_S) is dropped with the result `expired`; one in flight at its
 * deadline gets until its offer times out. A result for a command this
 * control plane finished already is a resend and is not pushed again, except
 * the true result of one it had expired (pushed with "late": true).
 *
 * Locking: con->mu is a leaf: nothing else is locked while it is held.
 * Callers may hold cp->mu or the hub's list lock when they call in. */
#include "cp.h"

#include <civetweb.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define CON_TAIL_LINES 500
#define CON_TAIL_BYTES (256 * 1024)
#define CON_CMDS_MAX 100
#define CON_POST_LINES 5000
#define CON_WATCHES_PER_CLIENT 16
#define CON_LINE_MAX 4096
#define CON_REOFFER_MS 3000
#define CON_TIMEOUT_S 30
#define CON_TIMEOUT_MAX_S 300
#define CON_DONE_KEEP 256

struct con_line {
	uint64_t seq;
	char *text;
};

struct con_tail {
	char agent[JV_IDENT_MAX + 1], inst[JV_IDENT_MAX + 1];
	struct con_line lines[CON_TAIL_LINES]; /* ring: oldest at head */
	size_t head, n, bytes;
	uint64_t last_seq;
	struct con_tail *next;
};

struct con_watch {
	const void *client;
	char agent[JV_IDENT_MAX + 1], inst[JV_IDENT_MAX + 1];
	uint64_t since; /* the client has the lines up to here: older batches are not sent to it */
	struct con_watch *next;
};

struct con_cmd {
	char id[JV_UUID_LEN];
	char agent[JV_IDENT_MAX + 1], inst[JV_IDENT_MAX + 1];
	char *line;
	int64_t deadline_ms; /* monotonic */
	int64_t offered_ms;  /* last handed out, 0 = never */
	unsigned offers;
	bool woken;          /* the agent was woken for the re-offer */
	struct con_cmd *next;
};

/* Commands finished here (result or expired), to know a resent result. */
struct con_done {
	char id[JV_UUID_LEN];
	bool expired;
};

struct console_hub {
	pthread_mutex_t mu;
	struct con_tail *tails;
	struct con_watch *watches;
	struct con_cmd *cmds;
	size_t ncmds;
	struct con_done done[CON_DONE_KEEP];
	size_t done_next;
};

int console_start(struct cp *cp)
{
	struct console_hub *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	pthread_mutex_init(&h->mu, NULL);
	cp->con = h;
	return 0;
}

void console_free(struct cp *cp)
{
	struct console_hub *h = cp->con;
	if (!h)
		return;
	while (h->tails) {
		struct con_tail *t = h->tails;
		h->tails = t->next;
		for (size_t i = 0; i < t->n; i++)
			free(t->lines[(t->head + i) % CON_TAIL_LINES].text);
		free(t);
	}
	while (h->watches) {
		struct con_watch *w = h->watches;
		h->watches = w->next;
		free(w);
	}
	while (h->cmds) {
		struct con_cmd *c = h->cmds;
		h->cmds = c->next;
		free(c->line);
		free(c);
	}
	pthread_mutex_destroy(&h->mu);
	free(h);
	cp->con = NULL;
}

static struct con_tail *tail_find(struct console_hub *h, const char *agent, const char *inst, bool create)
{
	for (struct con_tail *t = h->tails; t; t = t->next)
		if (strcmp(t->agent, agent) == 0 && strcmp(t->inst, inst) == 0)
			return t;
	if (!create)
		return NULL;
	struct con_tail *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	snprintf(t->agent, sizeof(t->agent), "%s", agent);
	snprintf(t->inst, sizeof(t->inst), "%s", inst);
	t->next = h->tails;
	h->tails = t;
	return t;
}

static void tail_drop_oldest(struct con_tail *t)
{
	struct con_line *l = &t->lines[t->head];
	t->bytes -= strlen(l->text);
	free(l->text);
	l->text = NULL;
	t->head = (t->head + 1) % CON_TAIL_LINES;
	t->n--;
}

static void tail_push(struct con_tail *t, uint64_t seq, const char *text)
{
	size_t len = strlen(text);
	char *copy = strdup(text);
	if (!copy)
		return;
	while (t->n > 0 && (t->n == CON_TAIL_LINES || t->bytes + len > CON_TAIL_BYTES))
		tail_drop_oldest(t);
	t->lines[(t->head + t->n) % CON_TAIL_LINES] = (struct con_line){seq, copy};
	t->n++;
	t->bytes += len;
	if (seq > t->last_seq)
		t->last_seq = seq;
}

/* Lines with seq > since, oldest first (con->mu held). */
static cJSON *tail_json(struct con_tail *t, uint64_t since)
{
	cJSON *arr = cJSON_CreateArray();
	for (size_t i = 0; arr && t && i < t->n; i++) {
		const struct con_line *l = &t->lines[(t->head + i) % CON_TAIL_LINES];
		if (l->seq <= since)
			continue;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "seq", (double)l->seq);
		cJSON_AddStringToObject(o, "line", l->text);
		cJSON_AddItemToArray(arr, o);
	}
	return arr;
}

/* Bump the agent's console generation and wake its long poll. */
static void wake(struct cp *cp, const char *agent_id)
{
	pthread_mutex_lock(&cp->mu);
	struct cp_agent *a = tokens_agent_find(cp, agent_id);
	if (a) {
		a->console_gen++;
		pthread_cond_broadcast(&a->cond);
		lc_wake_parked(cp, a);
	}
	pthread_mutex_unlock(&cp->mu);
}

cJSON *console_watch(struct cp *cp, const void *client, const char *agent, const char *inst, bool on,
                     uint64_t since, const char **why)
{
	struct console_hub *h = cp->con;
	*why = NULL;
	if (!tokens_agent_find(cp, agent)) {
		*why = "unknown agent";
		return NULL;
	}
	bool changed = false;
	pthread_mutex_lock(&h->mu);
	struct con_watch **pp = &h->watches, *found = NULL;
	size_t mine = 0;
	for (; *pp; pp = &(*pp)->next) {
		if ((*pp)->client != client)
			continue;
		mine++;
		if (strcmp((*pp)->agent, agent) == 0 && strcmp((*pp)->inst, inst) == 0)
			found = *pp;
	}
	if (on && !found) {
		if (mine >= CON_WATCHES_PER_CLIENT) {
			*why = "too many watched consoles on this connection (16)";
		} else if ((found = calloc(1, sizeof(*found))) != NULL) {
			found->client = client;
			snprintf(found->agent, sizeof(found->agent), "%s", agent);
			snprintf(found->inst, sizeof(found->inst), "%s", inst);
			found->since = since;
			found->next = h->watches;
			h->watches = found;
			changed = true;
		}
	} else if (!on && found) {
		for (pp = &h->watches; *pp; pp = &(*pp)->next)
			if (*pp == found) {
				*pp = found->next;
				break;
			}
		free(found);
		changed = true;
	}
	cJSON *lines = NULL;
	if (on && !*why) {
		struct con_tail *t = tail_find(h, agent, inst, false);
		lines = tail_json(t, since);
		/* It has what it asked for and what the tail gave it. */
		if (found)
			found->since = t && t->last_seq > since ? t->last_seq : since;
		changed = true; /* the agent may have to start further back or further on */
	}
	pthread_mutex_unlock(&h->mu);
	if (changed)
		wake(cp, agent);
	return lines;
}

void console_client_gone(struct cp *cp, const void *client)
{
	struct console_hub *h = cp->con;
	if (!h)
		return;
	char agents[CON_WATCHES_PER_CLIENT][JV_IDENT_MAX + 1];
	size_t n = 0;
	pthread_mutex_lock(&h->mu);
	for (struct con_watch **pp = &h->watches; *pp;) {
		struct con_watch *w = *pp;
		if (w->client != client) {
			pp = &w->next;
			continue;
		}
		if (n < CON_WATCHES_PER_CLIENT)
			snprintf(agents[n++], JV_IDENT_MAX + 1, "%s", w->agent);
		*pp = w->next;
		free(w);
	}
	pthread_mutex_unlock(&h->mu);
	for (size_t i = 0; i < n; i++)
		wake(cp, agents[i]);
}

bool console_watching(struct cp *cp, const void *client, const char *agent, const char *inst,
                      uint64_t last_seq)
{
	struct console_hub *h = cp->con;
	bool yes = false;
	pthread_mutex_lock(&h->mu);
	for (struct con_watch *w = h->watches; w && !yes; w = w->next)
		yes = w->client == client && strcmp(w->agent, agent) == 0 && strcmp(w->inst, inst) == 0 &&
		      (last_seq == 0 || last_seq > w->since);
	pthread_mutex_unlock(&h->mu);
	return yes;
}

cJSON *console_watch_list(struct cp *cp, const char *agent_id)
{
	struct console_hub *h = cp->con;
	cJSON *arr = cJSON_CreateArray();
	if (!arr)
		return NULL;
	pthread_mutex_lock(&h->mu);
	for (struct con_watch *w = h->watches; w; w = w->next) {
		if (strcmp(w->agent, agent_id) != 0)
			continue;
		bool dup = false;
		const cJSON *it;
		cJSON_ArrayForEach(it, arr)
		{
			dup = dup || strcmp(jv_json_str(it, "instanceId", ""), w->inst) == 0;
		}
		if (dup)
			continue;
		/* From what this control plane keeps, or, when it keeps less than
		 * every watcher has (it restarted, say), from what they all have:
		 * the agent asks the monitor for the lines after that. */
		uint64_t have = UINT64_MAX;
		for (struct con_watch *x = h->watches; x; x = x->next)
			if (strcmp(x->agent, agent_id) == 0 && strcmp(x->inst, w->inst) == 0 && x->since < have)
				have = x->since;
		struct con_tail *t = tail_find(h, agent_id, w->inst, false);
		uint64_t since = t && t->last_seq > have ? t->last_seq : have;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "instanceId", w->inst);
		cJSON_AddNumberToObject(o, "since", (double)since);
		cJSON_AddItemToArray(arr, o);
	}
	pthread_mutex_unlock(&h->mu);
	return arr;
}

static bool offerable(const struct con_cmd *c, const char *agent_id, int64_t now)
{
	return strcmp(c->agent, agent_id) == 0 && (c->offered_ms == 0 || now - c->offered_ms >= CON_REOFFER_MS);
}

cJSON *console_take_commands(struct cp *cp, const char *agent_id)
{
	struct console_hub *h = cp->con;
	cJSON *arr = cJSON_CreateArray();
	if (!arr)
		return NULL;
	int64_t now = jv_now_mono_ms();
	pthread_mutex_lock(&h->mu);
	for (struct con_cmd *c = h->cmds; c; c = c->next) {
		if (!offerable(c, agent_id, now))
			continue;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "commandId", c->id);
		cJSON_AddStringToObject(o, "instanceId", c->inst);
		cJSON_AddStringToObject(o, "line", c->line);
		cJSON_AddItemToArray(arr, o);
		if (c->offers++)
			jv_info(NULL, NULL, "console command %s: no result %d ms after it went out; offering it "
			        "again (offer %u)", c->id, CON_REOFFER_MS, c->offers);
		c->offered_ms = now;
		c->woken = false;
	}
	pthread_mutex_unlock(&h->mu);
	return arr;
}

bool console_has_commands(struct cp *cp, const char *agent_id)
{
	struct console_hub *h = cp->con;
	bool yes = false;
	int64_t now = jv_now_mono_ms();
	pthread_mutex_lock(&h->mu);
	for (struct con_cmd *c = h->cmds; c && !yes; c = c->next)
		yes = offerable(c, agent_id, now);
	pthread_mutex_unlock(&h->mu);
	return yes;
}

static void done_add(struct console_hub *h, const char *id, bool expired)
{
	struct con_done *d = &h->done[h->done_next++ % CON_DONE_KEEP];
	snprintf(d->id, sizeof(d->id), "%s", id);
	d->expired = expired;
}

/* Push a command's result to every WebSocket client (do not hold cp->mu). */
static void publish_result(struct cp *cp, const char *agent_id, const char *inst, const char *cmd_id,
                           const char *status, const char *error, bool late)
{
	cJSON *msg = cJSON_CreateObject();
	cJSON *res = cJSON_CreateObject();
	cJSON_AddStringToObject(msg, "type", "console");
	cJSON_AddStringToObject(msg, "agentId", agent_id);
	cJSON_AddStringToObject(msg, "instanceId", inst);
	cJSON_AddStringToObject(res, "commandId", cmd_id);
	cJSON_AddStringToObject(res, "status", status);
	if (error)
		cJSON_AddStringToObject(res, "error", error);
	else
		cJSON_AddNullToObject(res, "error");
	if (late)
		cJSON_AddTrueToObject(res, "late");
	cJSON_AddItemToObject(msg, "result", res);
	jv_info(NULL, NULL, "console command %s on %s/%s: %s%s", cmd_id, agent_id, inst, status,
	        late ? " (after it had expired)" : "");
	ws_publish_wake(cp, &msg, 1, NULL); /* on PostgreSQL a round trip: not under cp->mu */
}

/* A result from the agent: finish its command. False when it is a resend of
 * a result already pushed; *late when the command had expired here. */
static bool command_finish(struct console_hub *h, const char *id, bool *late)
{
	*late = false;
	bool fresh = true;
	pthread_mutex_lock(&h->mu);
	struct con_cmd **pp = &h->cmds, *found = NULL;
	for (; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->id, id) == 0) {
			found = *pp;
			*pp = found->next;
			h->ncmds--;
			break;
		}
	if (found) {
		done_add(h, id, false);
	} else {
		for (size_t i = 0; i < CON_DONE_KEEP; i++) {
			struct con_done *d = &h->done[i];
			if (strcmp(d->id, id) != 0)
				continue;
			fresh = d->expired;
			*late = d->expired;
			d->expired = false;
			break;
		}
	}
	pthread_mutex_unlock(&h->mu);
	if (found) {
		free(found->line);
		free(found);
	}
	return fresh;
}

void console_sweep(struct cp *cp)
{
	struct console_hub *h = cp->con;
	struct con_cmd *expired = NULL;
	char wake_ids[8][JV_IDENT_MAX + 1];
	size_t nwake = 0;
	int64_t now = jv_now_mono_ms();
	pthread_mutex_lock(&h->mu);
	for (struct con_cmd **pp = &h->cmds; *pp;) {
		struct con_cmd *c = *pp;
		bool in_flight = c->offered_ms && now - c->offered_ms < CON_REOFFER_MS;
		if (now >= c->deadline_ms && !in_flight) {
			*pp = c->next;
			h->ncmds--;
			done_add(h, c->id, true);
			c->next = expired;
			expired = c;
			continue;
		}
		if (c->offered_ms && !in_flight && !c->woken && nwake < JV_ARRAY_LEN(wake_ids)) {
			/* Due again: a waiting long poll of its agent answers with it. */
			c->woken = true;
			snprintf(wake_ids[nwake++], JV_IDENT_MAX + 1, "%s", c->agent);
		}
		pp = &c->next;
	}
	pthread_mutex_unlock(&h->mu);
	for (size_t i = 0; i < nwake; i++)
		wake(cp, wake_ids[i]);
	while (expired) {
		struct con_cmd *c = expired;
		expired = c->next;
		char why[160];
		snprintf(why, sizeof(why), "%s", c->offers ? "handed to the agent but no result came back in time"
		                                           : "the agent did not ask for it in time");
		publish_result(cp, c->agent, c->inst, c->id, "expired", why, false);
		free(c->line);
		free(c);
	}
}

/* ---- HTTP -----------------------------------------------------------------*/

void api_console_command(struct cp *cp, struct mg_connection *conn, const char *agent_id, const char *inst)
{
	if (!tokens_agent_find(cp, agent_id)) {
		http_send_error(conn, 404, "unknown agent '%s'", agent_id);
		return;
	}
	cJSON *body = NULL;
	if (http_read_body(conn, &body) < 0)
		return;
	const cJSON *it;
	cJSON_ArrayForEach(it, body)
	{
		if (strcmp(it->string, "line") != 0 && strcmp(it->string, "timeoutSeconds") != 0) {
			http_send_error(conn, 400, "unknown field '%.64s'", it->string);
			cJSON_Delete(body);
			return;
		}
	}
	const cJSON *line = cJSON_GetObjectItemCaseSensitive(body, "line");
	if (!cJSON_IsString(line) || !line->valuestring[0] || strlen(line->valuestring) >= CON_LINE_MAX ||
	    strpbrk(line->valuestring, "\r\n")) {
		http_send_error(conn, 400, "'line' must be one line of 1 to 4095 bytes (no CR or LF)");
		cJSON_Delete(body);
		return;
	}
	const cJSON *to = cJSON_GetObjectItemCaseSensitive(body, "timeoutSeconds");
	if (to && (!cJSON_IsNumber(to) || to->valuedouble != (double)(int)to->valuedouble || to->valueint < 1 ||
	           to->valueint > CON_TIMEOUT_MAX_S)) {
		http_send_error(conn, 400, "'timeoutSeconds' must be an integer from 1 to %d", CON_TIMEOUT_MAX_S);
		cJSON_Delete(body);
		return;
	}
	int timeout_s = to ? to->valueint : CON_TIMEOUT_S;
	struct console_hub *h = cp->con;
	struct con_cmd *c = calloc(1, sizeof(*c));
	if (!c || jv_uuid4(c->id) < 0 || !(c->line = strdup(line->valuestring))) {
		if (c)
			free(c->line);
		free(c);
		cJSON_Delete(body);
		http_send_error(conn, 500, "out of memory");
		return;
	}
	snprintf(c->agent, sizeof(c->agent), "%s", agent_id);
	snprintf(c->inst, sizeof(c->inst), "%s", inst);
	c->deadline_ms = jv_now_mono_ms() + (int64_t)timeout_s * 1000;
	char id[JV_UUID_LEN]; /* c belongs to the queue once it is in */
	memcpy(id, c->id, sizeof(id));
	bool full;
	pthread_mutex_lock(&h->mu);
	full = h->ncmds >= CON_CMDS_MAX;
	if (!full) {
		struct con_cmd **pp = &h->cmds;
		while (*pp)
			pp = &(*pp)->next;
		*pp = c;
		h->ncmds++;
	}
	pthread_mutex_unlock(&h->mu);
	cJSON_Delete(body);
	if (full) {
		free(c->line);
		free(c);
		http_send_error(conn, 429, "too many console commands waiting for agents (%d)", CON_CMDS_MAX);
		return;
	}
	jv_info(NULL, NULL, "console command %s queued for %s/%s", id, agent_id, inst);
	cJSON *ans = cJSON_CreateObject();
	cJSON_AddStringToObject(ans, "commandId", id);
	cJSON_AddStringToObject(ans, "agentId", agent_id);
	cJSON_AddStringToObject(ans, "instanceId", inst);
	cJSON_AddStringToObject(ans, "status", "queued");
	cJSON_AddNumberToObject(ans, "timeoutSeconds", timeout_s);
	wake(cp, agent_id);
	http_send_json(conn, 202, ans);
	cJSON_Delete(ans);
}

static bool is_uint(const cJSON *v)
{
	return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 9007199254740992.0 &&
	       v->valuedouble == (double)(int64_t)v->valuedouble;
}

static const char *validate_post(const cJSON *body)
{
	const cJSON *insts = cJSON_GetObjectItemCaseSensitive(body, "instances");
	const cJSON *results = cJSON_GetObjectItemCaseSensitive(body, "results");
	if ((insts && !cJSON_IsArray(insts)) || (results && !cJSON_IsArray(results)))
		return "'instances' and 'results' must be arrays";
	int total = 0;
	const cJSON *in, *l;
	cJSON_ArrayForEach(in, insts)
	{
		if (!cJSON_IsObject(in) || !jv_ident_valid(jv_json_str(in, "instanceId", NULL)))
			return "each instance needs an 'instanceId'";
		const cJSON *lines = cJSON_GetObjectItemCaseSensitive(in, "lines");
		if (lines && !cJSON_IsArray(lines))
			return "'lines' must be an array";
		const cJSON *dropped = cJSON_GetObjectItemCaseSensitive(in, "dropped");
		if (dropped && !is_uint(dropped))
			return "'dropped' must be an integer >= 0";
		const cJSON *reset = cJSON_GetObjectItemCaseSensitive(in, "reset");
		if (reset && !cJSON_IsBool(reset))
			return "'reset' must be a boolean";
		cJSON_ArrayForEach(l, lines)
		{
			const cJSON *t = cJSON_GetObjectItemCaseSensitive(l, "line");
			if (!cJSON_IsObject(l) || !is_uint(cJSON_GetObjectItemCaseSensitive(l, "seq")) ||
			    !cJSON_IsString(t) || strlen(t->valuestring) > CON_LINE_MAX)
				return "each line is {seq, line} with at most 4096 bytes";
			if (++total > CON_POST_LINES)
				return "more than 5000 lines in one request";
		}
	}
	cJSON_ArrayForEach(l, results)
	{
		const char *st = jv_json_str(l, "status", "");
		if (!cJSON_IsObject(l) || !jv_ident_valid(jv_json_str(l, "instanceId", NULL)) ||
		    !jv_json_str(l, "commandId", NULL) || strlen(jv_json_str(l, "commandId", "")) >= JV_UUID_LEN ||
		    (strcmp(st, "sent") != 0 && strcmp(st, "not-running") != 0 && strcmp(st, "rejected") != 0))
			return "each result is {commandId, instanceId, status: sent|not-running|rejected, error?}";
	}
	return NULL;
}

void api_console_post(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id)
{
	cJSON *body = NULL;
	if (http_read_agent_json(conn, agent, agent_id, &body) < 0)
		return;
	const char *why = validate_post(body);
	if (why) {
		http_send_error(conn, 400, "%s", why);
		cJSON_Delete(body);
		return;
	}
	struct console_hub *h = cp->con;
	const cJSON *in;
	cJSON_ArrayForEach(in, cJSON_GetObjectItemCaseSensitive(body, "instances"))
	{
		const char *iid = jv_json_str(in, "instanceId", "");
		cJSON *lines = cJSON_GetObjectItemCaseSensitive(in, "lines");
		int64_t dropped = jv_json_int(in, "dropped", 0);
		bool reset = jv_json_bool(in, "reset", false);
		pthread_mutex_lock(&h->mu);
		struct con_tail *t = tail_find(h, agent_id, iid, true);
		if (t && reset) {
			/* A new monitor numbers its lines from 1 again. */
			while (t->n > 0)
				tail_drop_oldest(t);
			t->last_seq = 0;
			for (struct con_watch *w = h->watches; w; w = w->next)
				if (strcmp(w->agent, agent_id) == 0 && strcmp(w->inst, iid) == 0)
					w->since = 0;
		}
		uint64_t last = 0;
		const cJSON *l;
		cJSON_ArrayForEach(l, lines)
		{
			uint64_t seq = (uint64_t)jv_json_int(l, "seq", 0);
			if (t)
				tail_push(t, seq, jv_json_str(l, "line", ""));
			last = seq > last ? seq : last;
		}
		pthread_mutex_unlock(&h->mu);
		cJSON *msg = cJSON_CreateObject();
		cJSON_AddStringToObject(msg, "type", "console");
		cJSON_AddStringToObject(msg, "agentId", agent_id);
		cJSON_AddStringToObject(msg, "instanceId", iid);
		cJSON_AddItemToObject(msg, "lines", cJSON_DetachItemFromObjectCaseSensitive((cJSON *)in, "lines"));
		cJSON_AddNumberToObject(msg, "dropped", (double)dropped);
		if (reset)
			cJSON_AddTrueToObject(msg, "reset");
		char *text = jv_json_print(msg);
		cJSON_Delete(msg);
		if (text)
			ws_console_send(cp, agent_id, iid, text, reset ? 0 : last); /* consumes text */
	}
	const cJSON *r;
	cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(body, "results"))
	{
		const char *cmd_id = jv_json_str(r, "commandId", "");
		bool late;
		if (!command_finish(h, cmd_id, &late)) {
			jv_debug(NULL, NULL, "console command %s: result sent again; already pushed", cmd_id);
			continue;
		}
		publish_result(cp, agent_id, jv_json_str(r, "instanceId", ""), cmd_id, jv_json_str(r, "status", ""),
		               jv_json_str(r, "error", NULL), late);
	}
	cJSON *ans = cJSON_CreateObject();
	cJSON *watch = console_watch_list(cp, agent_id);
	cJSON_AddItemToObject(ans, "consoleWatch", watch ? watch : cJSON_CreateArray());
	http_send_json(conn, 200, ans);
	cJSON_Delete(ans);
	cJSON_Delete(body);
}
