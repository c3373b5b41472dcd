/* instconsole.c — live consoles of watched instances, and console commands.
 *
 * The control plane says which consoles someone watches (consoleWatch in the
 * poll answer and in the answer to each console POST). For each watched
 * instance the agent holds a console subscription on the monitor's socket (a
 * connection of its own, so a flood can never cost the state subscription)
 * and sends the lines in batches, at most every BATCH_MS, to
 * POST /v1/agents/{agentId}/console. Unwatched instances cost nothing.
 *
 * Floods: per instance at most PENDING_BYTES of line text wait for the next
 * batch; beyond that the oldest waiting lines are dropped and counted (the
 * newest output is what matters on a console), and so are lines the monitor no longer
 * had when the agent caught up (gaps in the monitor's seq). The count goes
 * with the next batch ("dropped"), so a viewer sees "dropped N lines". A
 * monitor that stops a lagging subscriber is reconnected with `since`.
 * Console traffic is best effort: nothing is spooled.
 *
 * Commands (consoleCommands in the poll answer) go to the monitor's `send`
 * (a short blocking call on a local socket, at most 2 s); the result
 * (sent / not-running / rejected) goes back with the next batch, at once,
 * and is sent again until a batch carrying it is answered 200. The control
 * plane offers a command again when its result does not come (the poll
 * answer may have been lost), so the agent remembers the last CMDS_SEEN
 * command ids it ran with their results: a command offered again is not
 * sent to the monitor a second time, its result is sent again instead.
 * That list survives the agent (kill -9 included): data_dir/runs/
 * .console-commands gets "sending" (fdatasync) before a command goes to
 * the monitor and its result after. A command found "sending" after a
 * restart may or may not have reached the server: it is answered
 * `rejected` with that said, never sent again. The file is rewritten from
 * the list when it passes JOURNAL_MAX bytes. */
#include "instconsole.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/instance_client.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "transport.h"

#define BATCH_MS 100
#define PENDING_BYTES (64 * 1024)
#define RECONNECT_MS 100
#define RESULTS_MAX 100
#define SEND_TIMEOUT_MS 2000
#define CMDS_SEEN 512
#define CMD_ID_MAX 64
#define JOURNAL "runs/.console-commands"
#define JOURNAL_MAX (256 * 1024)
#define RESTARTED_MSG "the agent restarted while writing this command to the server: it may or may not " \
                      "have reached it; not sent again"

/* A command run: its id and result, to answer a re-offer without running it. */
struct cmd_seen {
	char id[CMD_ID_MAX + 1];
	char status[16];
	char error[160];
};

struct cwatch {
	char id[JV_IDENT_MAX + 1];
	char dir[PATH_MAX];
	struct jv_monconn *mc;
	bool sub_ok;
	uint64_t since;    /* what the control plane has */
	uint64_t next_seq; /* next line expected from the monitor, 0 = unknown */
	cJSON *pending;    /* array of {seq, line} */
	size_t pending_bytes;
	uint64_t dropped;
	bool reset;        /* the monitor's numbering started over */
	bool wanted;
	int64_t retry_at_ms;
	struct cwatch *next;
};

struct instconsole {
	struct agent *ag;
	struct cwatch *list;
	size_t n;
	struct transport_req *req;
	int64_t next_send_ms;
	bool enabled;
	cJSON *results;          /* waiting for the next batch */
	cJSON *results_inflight; /* in the batch on its way: back to results if it fails */
	struct cmd_seen seen[CMDS_SEEN];
	size_t seen_next;
	int journal_fd; /* -1: the list is in memory only */
	size_t journal_bytes;
};

static void cw_close(struct cwatch *w)
{
	jv_monconn_close(w->mc);
	w->mc = NULL;
	w->sub_ok = false;
}

static void cw_free(struct cwatch *w)
{
	cw_close(w);
	cJSON_Delete(w->pending);
	free(w);
}

static struct cmd_seen *seen_find(struct instconsole *ic, const char *id);

static struct cmd_seen *seen_put(struct instconsole *ic, const char *id, const char *status, const char *error)
{
	struct cmd_seen *s = seen_find(ic, id);
	if (!s) {
		s = &ic->seen[ic->seen_next++ % CMDS_SEEN];
		snprintf(s->id, sizeof(s->id), "%s", id);
	}
	snprintf(s->status, sizeof(s->status), "%s", status);
	snprintf(s->error, sizeof(s->error), "%s", error ? error : "");
	return s;
}

static char *journal_line(const char *id, const char *status, const char *error)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "id", id);
	cJSON_AddStringToObject(o, "status", status);
	if (error && error[0])
		cJSON_AddStringToObject(o, "error", error);
	char *text = jv_json_print(o);
	cJSON_Delete(o);
	return text;
}

/* Rewrite the journal from the list (oldest first), then append to it. */
static void journal_compact(struct instconsole *ic, const char *path)
{
	struct jv_buf b;
	jv_buf_init(&b, 0);
	bool ok = true;
	for (size_t i = 0; i < CMDS_SEEN && ok; i++) {
		const struct cmd_seen *s = &ic->seen[(ic->seen_next + i) % CMDS_SEEN];
		if (!s->id[0])
			continue;
		char *line = journal_line(s->id, s->status, s->error);
		ok = line && jv_buf_append(&b, line, strlen(line)) == 0 && jv_buf_append(&b, "\n", 1) == 0;
		free(line);
	}
	if (ic->journal_fd >= 0)
		close(ic->journal_fd);
	ic->journal_fd = -1;
	int rc = ok ? jv_durable_write(path, b.len ? b.data : "", b.len, 0600) : -ENOMEM;
	if (rc == 0)
		ic->journal_fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
	if (rc || ic->journal_fd < 0)
		jv_warn(NULL, NULL, "cannot rewrite %s: %s; console commands are remembered in memory only",
		        path, strerror(rc ? -rc : errno));
	ic->journal_bytes = b.len;
	jv_buf_free(&b);
}

/* Load the commands run before this start; a "sending" without a result is unknown. */
static void journal_open(struct instconsole *ic)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/" JOURNAL, ic->ag->cfg.data_dir);
	char *text = NULL;
	size_t len = 0;
	int rc = jv_read_file_at(AT_FDCWD, path, 4 * JOURNAL_MAX, &text, &len);
	if (rc && rc != -ENOENT)
		jv_warn(NULL, NULL, "cannot read %s: %s; starting a new one", path, jv_read_strerror(rc));
	size_t unknown = 0, n = 0;
	for (char *line = text, *nl; line && *line; line = nl ? nl + 1 : NULL) {
		nl = strchr(line, '\n');
		cJSON *o = jv_json_parse(line, nl ? (size_t)(nl - line) : strlen(line));
		const char *id = jv_json_str(o, "id", NULL);
		const char *status = jv_json_str(o, "status", NULL);
		if (id && status && strlen(id) <= CMD_ID_MAX) {
			seen_put(ic, id, status, jv_json_str(o, "error", NULL));
			n++;
		}
		cJSON_Delete(o);
	}
	free(text);
	for (size_t i = 0; i < CMDS_SEEN; i++)
		if (ic->seen[i].id[0] && strcmp(ic->seen[i].status, "sending") == 0) {
			seen_put(ic, ic->seen[i].id, "rejected", RESTARTED_MSG);
			unknown++;
		}
	if (n)
		jv_info(NULL, NULL, "console commands: %zu known from before this start (%zu cut short by it)", n,
		        unknown);
	journal_compact(ic, path);
}

/* Record a command's progress durably; a failure turns the journal off (logged). */
static void journal_put(struct instconsole *ic, const char *id, const char *status, const char *error)
{
	if (ic->journal_fd < 0)
		return;
	char *text = journal_line(id, status, error);
	size_t len = text ? strlen(text) : 0;
	int rc = text ? jv_write_all(ic->journal_fd, text, len) : -ENOMEM;
	if (rc == 0)
		rc = jv_write_all(ic->journal_fd, "\n", 1);
	if (rc == 0 && fdatasync(ic->journal_fd) < 0)
		rc = -errno;
	free(text);
	if (rc) {
		jv_warn(NULL, NULL, "cannot record console command %s: %s; commands are remembered in memory only",
		        id, strerror(-rc));
		close(ic->journal_fd);
		ic->journal_fd = -1;
		return;
	}
	ic->journal_bytes += len + 1;
	if (ic->journal_bytes > JOURNAL_MAX) {
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/" JOURNAL, ic->ag->cfg.data_dir);
		journal_compact(ic, path);
	}
}

int instconsole_start(struct agent *ag)
{
	struct instconsole *ic = calloc(1, sizeof(*ic));
	if (!ic)
		return -ENOMEM;
	ic->ag = ag;
	ic->enabled = true;
	ic->journal_fd = -1;
	ic->results = cJSON_CreateArray();
	if (!ic->results) {
		free(ic);
		return -ENOMEM;
	}
	ag->ic = ic;
	journal_open(ic);
	return 0;
}

void instconsole_free(struct agent *ag)
{
	struct instconsole *ic = ag->ic;
	if (!ic)
		return;
	if (ic->req)
		transport_abort(ag->tp, ic->req);
	while (ic->list) {
		struct cwatch *w = ic->list;
		ic->list = w->next;
		cw_free(w);
	}
	cJSON_Delete(ic->results);
	cJSON_Delete(ic->results_inflight);
	if (ic->journal_fd >= 0)
		close(ic->journal_fd);
	free(ic);
	ag->ic = NULL;
}

static struct cwatch *find(struct instconsole *ic, const char *id)
{
	for (struct cwatch *w = ic->list; w; w = w->next)
		if (strcmp(w->id, id) == 0)
			return w;
	return NULL;
}

size_t instconsole_set_watch(struct agent *ag, const cJSON *watch)
{
	struct instconsole *ic = ag->ic;
	if (!ic || !ic->enabled)
		return 0;
	size_t changes = 0;
	for (struct cwatch *w = ic->list; w; w = w->next)
		w->wanted = false;
	const cJSON *it;
	const cJSON *list = cJSON_IsArray(watch) ? watch : NULL;
	cJSON_ArrayForEach(it, list)
	{
		const char *id = jv_json_str(it, "instanceId", NULL);
		int64_t since = jv_json_int(it, "since", 0);
		if (!jv_ident_valid(id) || since < 0)
			continue;
		struct cwatch *w = find(ic, id);
		if (!w) {
			if (ic->n >= 200 || !(w = calloc(1, sizeof(*w))))
				continue;
			snprintf(w->id, sizeof(w->id), "%s", id);
			snprintf(w->dir, sizeof(w->dir), "%s/instances/%s", ag->cfg.data_dir, id);
			w->since = (uint64_t)since;
			w->pending = cJSON_CreateArray();
			w->next = ic->list;
			ic->list = w;
			ic->n++;
			changes++;
			jv_info(NULL, NULL, "instance %s: console watched; streaming it", id);
		}
		w->wanted = true;
	}
	for (struct cwatch **pp = &ic->list; *pp;) {
		struct cwatch *w = *pp;
		if (w->wanted) {
			pp = &w->next;
			continue;
		}
		jv_info(NULL, NULL, "instance %s: console no longer watched; stopped streaming", w->id);
		*pp = w->next;
		ic->n--;
		cw_free(w);
		changes++;
	}
	return changes;
}

static struct cmd_seen *seen_find(struct instconsole *ic, const char *id)
{
	for (size_t i = 0; i < CMDS_SEEN; i++)
		if (ic->seen[i].id[0] && strcmp(ic->seen[i].id, id) == 0)
			return &ic->seen[i];
	return NULL;
}

static void add_result(struct instconsole *ic, const char *cmd, const char *inst, const char *status,
                       const char *error)
{
	struct cmd_seen *s = seen_find(ic, cmd);
	if (!s || strcmp(s->status, status) != 0) {
		seen_put(ic, cmd, status, error);
		journal_put(ic, cmd, status, error);
	}
	if (cJSON_GetArraySize(ic->results) >= RESULTS_MAX)
		return; /* the control plane offers the command again and gets it then */
	cJSON *r = cJSON_CreateObject();
	cJSON_AddStringToObject(r, "commandId", cmd);
	cJSON_AddStringToObject(r, "instanceId", inst);
	cJSON_AddStringToObject(r, "status", status);
	if (error)
		cJSON_AddStringToObject(r, "error", error);
	else
		cJSON_AddNullToObject(r, "error");
	cJSON_AddItemToArray(ic->results, r);
	ic->next_send_ms = 0;
}

size_t instconsole_commands(struct agent *ag, const cJSON *cmds)
{
	struct instconsole *ic = ag->ic;
	if (!ic || !cJSON_IsArray(cmds))
		return 0;
	size_t n = 0;
	/* Each call is bounded; all of them together too, so a hung monitor can
	 * hold the agent's loop for at most SEND_TIMEOUT_MS per poll answer. */
	int64_t end = jv_now_mono_ms() + SEND_TIMEOUT_MS;
	const cJSON *c;
	cJSON_ArrayForEach(c, cmds)
	{
		const char *id = jv_json_str(c, "commandId", NULL);
		const char *inst = jv_json_str(c, "instanceId", NULL);
		const char *line = jv_json_str(c, "line", NULL);
		if (!id || !id[0] || strlen(id) > CMD_ID_MAX || !jv_ident_valid(inst) || !line) {
			jv_warn(NULL, NULL, "poll answer: ignoring a malformed console command");
			continue;
		}
		const struct cmd_seen *seen = seen_find(ic, id);
		if (seen) {
			/* Offered again: its answer (or our result) was lost. Never twice to the server. */
			jv_info(NULL, NULL, "instance %s: console command %s offered again; it was run already "
			        "(%s): sending its result again", inst, id, seen->status);
			char status[16], error[160];
			snprintf(status, sizeof(status), "%s", seen->status);
			snprintf(error, sizeof(error), "%s", seen->error);
			add_result(ic, id, inst, status, error[0] ? error : NULL);
			continue;
		}
		n++;
		int64_t left = end - jv_now_mono_ms();
		if (left <= 0) {
			add_result(ic, id, inst, "rejected", "the agent spent its time on earlier commands; send again");
			continue;
		}
		/* On disk before the server can see it: after a kill -9 here the
		 * command is never sent again (its fate is unknown, and said so). */
		seen_put(ic, id, "sending", NULL);
		journal_put(ic, id, "sending", NULL);
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%s/instances/%s", ag->cfg.data_dir, inst);
		cJSON *req = cJSON_CreateObject();
		cJSON_AddStringToObject(req, "op", "send");
		cJSON_AddStringToObject(req, "line", line);
		cJSON *reply = NULL;
		int rc = jv_monitor_call(dir, req, (int)left, &reply);
		cJSON_Delete(req);
		if (rc == -ENOENT || rc == -ECONNREFUSED) {
			add_result(ic, id, inst, "not-running", "no monitor runs for this instance");
		} else if (rc) {
			add_result(ic, id, inst, "rejected", strerror(-rc));
		} else if (jv_json_bool(reply, "ok", false)) {
			add_result(ic, id, inst, "sent", NULL);
		} else {
			const char *e = jv_json_str(reply, "error", "refused");
			add_result(ic, id, inst, strstr(e, "not running") ? "not-running" : "rejected", e);
		}
		jv_info(NULL, NULL, "instance %s: console command %s: %s", inst, id,
		        jv_json_str(cJSON_GetArrayItem(ic->results, cJSON_GetArraySize(ic->results) - 1),
		                    "status", "?"));
		cJSON_Delete(reply);
	}
	return n;
}

static void subscribe(struct cwatch *w, int64_t now)
{
	struct jv_monconn *c = NULL;
	if (jv_monconn_open(w->dir, &c) != 0) {
		w->retry_at_ms = now + 1000; /* no monitor (yet): the instance may be stopped */
		return;
	}
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "op", "subscribe");
	cJSON_AddBoolToObject(req, "console", true);
	uint64_t since = w->next_seq ? w->next_seq - 1 : w->since;
	cJSON_AddNumberToObject(req, "since", (double)since);
	int rc = jv_monconn_send(c, req);
	cJSON_Delete(req);
	if (rc) {
		jv_monconn_close(c);
		w->retry_at_ms = now + 1000;
		return;
	}
	w->mc = c;
	w->sub_ok = false;
}

static void on_line(struct cwatch *w, uint64_t seq, const char *line)
{
	if (w->next_seq && seq < w->next_seq)
		return; /* replayed and already sent */
	if (w->next_seq && seq > w->next_seq)
		w->dropped += seq - w->next_seq;
	w->next_seq = seq + 1;
	size_t len = strlen(line) + 24;
	/* Full: the oldest waiting lines make room, so the newest output (the
	 * end of a flood, the answer to a command) is what the viewer gets. */
	while (w->pending_bytes + len > PENDING_BYTES && cJSON_GetArraySize(w->pending) > 0) {
		cJSON *old = cJSON_DetachItemFromArray(w->pending, 0);
		w->pending_bytes -= strlen(jv_json_str(old, "line", "")) + 24;
		cJSON_Delete(old);
		w->dropped++;
	}
	cJSON *o = cJSON_CreateObject();
	if (!o) {
		w->dropped++;
		return;
	}
	cJSON_AddNumberToObject(o, "seq", (double)seq);
	cJSON_AddStringToObject(o, "line", line);
	cJSON_AddItemToArray(w->pending, o);
	w->pending_bytes += len;
}

static void on_readable(struct cwatch *w)
{
	for (int i = 0; i < 4096 && w->mc; i++) {
		cJSON *msg = NULL;
		int rc = jv_monconn_recv(w->mc, 0, &msg);
		if (rc == -ETIMEDOUT)
			return;
		if (rc) {
			/* The monitor ended or dropped us for lagging: catch up with since. */
			cw_close(w);
			w->retry_at_ms = jv_now_mono_ms() + RECONNECT_MS;
			return;
		}
		const char *ev = jv_json_str(msg, "event", NULL);
		if (cJSON_GetObjectItemCaseSensitive(msg, "ok")) {
			w->sub_ok = jv_json_bool(msg, "ok", false);
			uint64_t mseq = (uint64_t)jv_json_int(msg, "seq", 0);
			uint64_t have = w->next_seq ? w->next_seq - 1 : w->since;
			if (mseq < have) {
				/* A new monitor: its lines are numbered from 1 again. */
				w->reset = true;
				w->next_seq = 0;
				w->since = 0;
				w->dropped = 0;
				cJSON_Delete(w->pending);
				w->pending = cJSON_CreateArray();
				w->pending_bytes = 0;
			}
		} else if (ev && strcmp(ev, "line") == 0) {
			int64_t seq = jv_json_int(msg, "seq", 0);
			const char *line = jv_json_str(msg, "line", NULL);
			if (seq > 0 && line)
				on_line(w, (uint64_t)seq, line);
		}
		cJSON_Delete(msg);
	}
}

/* The batch failed: its results wait for the next one (lines are not resent). */
static void results_back(struct instconsole *ic)
{
	cJSON *back = ic->results_inflight;
	ic->results_inflight = NULL;
	if (!back)
		return;
	cJSON *r;
	while (cJSON_GetArraySize(ic->results) > 0 && cJSON_GetArraySize(back) < RESULTS_MAX &&
	       (r = cJSON_DetachItemFromArray(ic->results, 0)) != NULL)
		cJSON_AddItemToArray(back, r);
	cJSON_Delete(ic->results);
	ic->results = back;
}

static void on_answer(void *ud, const struct transport_response *resp)
{
	struct instconsole *ic = ud;
	ic->req = NULL;
	if (transport_classify(resp) == TRANSPORT_OK) {
		cJSON_Delete(ic->results_inflight); /* acknowledged */
		ic->results_inflight = NULL;
	} else if (resp->status != 404) {
		results_back(ic);
	}
	if (resp->status == 404) {
		ic->enabled = false;
		jv_warn(NULL, NULL, "the control plane does not take console lines (HTTP 404); consoles are "
		        "not streamed until the agent restarts");
		instconsole_set_watch(ic->ag, NULL);
		return;
	}
	if (transport_classify(resp) != TRANSPORT_OK) {
		jv_debug(NULL, NULL, "console batch not delivered (HTTP %ld); its lines are lost", resp->status);
		ic->next_send_ms = jv_now_mono_ms() + 1000;
		return;
	}
	cJSON *o = jv_json_parse(resp->body, resp->len);
	const cJSON *watch = cJSON_GetObjectItemCaseSensitive(o, "consoleWatch");
	if (cJSON_IsArray(watch))
		instconsole_set_watch(ic->ag, watch);
	cJSON_Delete(o);
}

static bool has_work(const struct instconsole *ic)
{
	if (cJSON_GetArraySize(ic->results) > 0)
		return true;
	for (const struct cwatch *w = ic->list; w; w = w->next)
		if (cJSON_GetArraySize(w->pending) > 0 || w->dropped || w->reset)
			return true;
	return false;
}

static void flush(struct instconsole *ic, int64_t now)
{
	struct agent *ag = ic->ag;
	if (ic->req || now < ic->next_send_ms || !has_work(ic) || ag->hard_stop)
		return;
	cJSON *body = cJSON_CreateObject();
	cJSON *arr = cJSON_AddArrayToObject(body, "instances");
	size_t lines = 0;
	for (struct cwatch *w = ic->list; w && arr; w = w->next) {
		if (cJSON_GetArraySize(w->pending) == 0 && !w->dropped && !w->reset)
			continue;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "instanceId", w->id);
		lines += (size_t)cJSON_GetArraySize(w->pending);
		cJSON_AddItemToObject(o, "lines", w->pending);
		cJSON_AddNumberToObject(o, "dropped", (double)w->dropped);
		if (w->reset)
			cJSON_AddTrueToObject(o, "reset");
		cJSON_AddItemToArray(arr, o);
		w->pending = cJSON_CreateArray();
		w->pending_bytes = 0;
		w->dropped = 0;
		w->reset = false;
	}
	cJSON_AddItemToObject(body, "results", cJSON_Duplicate(ic->results, true));
	cJSON_Delete(ic->results_inflight);
	ic->results_inflight = ic->results;
	ic->results = cJSON_CreateArray();
	char *text = jv_json_print(body);
	cJSON_Delete(body);
	ic->next_send_ms = now + BATCH_MS;
	if (!text) {
		results_back(ic);
		return;
	}
	char path[200];
	snprintf(path, sizeof(path), "/v1/agents/%s/console", ag->cfg.agent_id);
	jv_debug(NULL, NULL, "console batch: %zu lines", lines);
	if (transport_post(ag->tp, path, text, (long)ag->cfg.request_timeout_s * 1000, on_answer, ic,
	                   &ic->req)) {
		ic->req = NULL;
		results_back(ic);
	}
}

size_t instconsole_pollfds(struct agent *ag, struct pollfd *fds, size_t max)
{
	struct instconsole *ic = ag->ic;
	size_t n = 0;
	for (struct cwatch *w = ic ? ic->list : NULL; w && n < max; w = w->next)
		if (w->mc)
			fds[n++] = (struct pollfd){.fd = jv_monconn_fd(w->mc), .events = POLLIN};
	return n;
}

bool instconsole_on_fd(struct agent *ag, int fd, short revents)
{
	struct instconsole *ic = ag->ic;
	for (struct cwatch *w = ic ? ic->list : NULL; w; w = w->next)
		if (w->mc && jv_monconn_fd(w->mc) == fd) {
			if (revents & (POLLIN | POLLHUP | POLLERR))
				on_readable(w);
			return true;
		}
	return false;
}

int64_t instconsole_next_deadline(const struct agent *ag)
{
	const struct instconsole *ic = ag->ic;
	if (!ic)
		return INT64_MAX;
	int64_t next = INT64_MAX;
	if (!ic->req && has_work(ic))
		next = ic->next_send_ms;
	for (const struct cwatch *w = ic->list; w; w = w->next)
		if (!w->mc && w->retry_at_ms < next)
			next = w->retry_at_ms;
	return next;
}

void instconsole_tick(struct agent *ag, int64_t now)
{
	struct instconsole *ic = ag->ic;
	if (!ic)
		return;
	for (struct cwatch *w = ic->list; w; w = w->next)
		if (!w->mc && now >= w->retry_at_ms && !ag->stopping)
			subscribe(w, now);
	flush(ic, now);
}
