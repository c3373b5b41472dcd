/* monitor_sock.c — `.jobvisor/monitor.sock`: JSON-line requests and subscriptions.
 *
 * One JSON object per line each way. Requests carry "op":
 *   status    {"tail": N?}                  -> {"ok":true,"status":{...},"tail":[...]}
 *   stop      {"timeoutSeconds": T?, "force": B?}
 *   kill      {}                            -> state events while it works, then
 *                                              {"ok":true,"done":true,"status":{...}}
 *   send      {"line": "say hi"}            -> {"ok":true,"seq":N}
 *   tail      {"lines": N?, "since": S?}    -> {"ok":true,"lines":[...],"firstSeq":F,"seq":N}
 *   subscribe {"console": B?, "since": S?}  -> {"ok":true,"status":{...},"seq":N}, then
 *             {"event":"state","status":{...}} and, with console, {"event":"line","seq":N,"line":"..."}
 * Errors: {"ok":false,"error":"message"}. Console lines are numbered from 1 in
 * the order the monitor saw them; `since` replays buffered lines after that
 * number, so a client that sent a command cannot miss its answer.
 *
 * The socket is mode 0600 and peers must run as our user or root. Clients
 * that stop reading are dropped once their queue passes 512 KiB. The path is
 * reached through /proc/self/fd/<dirfd>/ so long instance paths still fit in
 * sun_path. */
#include "monitor_sock.h"
#include "monitor_console.h"
#include "monitor_state.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int sock_listen(struct monitor *m)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/monitor.sock", m->jv_fd);
	/* We hold the lock: any socket file left here belongs to a dead monitor. */
	if (unlinkat(m->jv_fd, "monitor.sock", 0) < 0 && errno != ENOENT)
		return -errno;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	mode_t old = umask(077);
	int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (rc == 0)
		rc = fchmodat(m->jv_fd, "monitor.sock", 0600, 0);
	if (rc == 0)
		rc = listen(fd, 16);
	if (rc < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -e;
	}
	m->listen_fd = fd;
	return 0;
}

static void client_close(struct mon_client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	jv_buf_free(&c->in);
	jv_buf_free(&c->out);
	*c = (struct mon_client){.fd = -1};
}

static void client_flush(struct mon_client *c)
{
	while (c->out.len > 0) {
		ssize_t w = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				client_close(c);
			return;
		}
		jv_buf_consume(&c->out, (size_t)w);
	}
	if (c->closing)
		client_close(c);
}

/* Queue one message (borrowed) for the client; drop a client that lags. */
static void client_send_text(struct mon_client *c, const char *text, size_t len)
{
	if (c->fd < 0)
		return;
	if (jv_buf_append(&c->out, text, len) < 0 || jv_buf_append(&c->out, "\n", 1) < 0) {
		client_close(c);
		return;
	}
	client_flush(c);
}

static void client_send(struct mon_client *c, cJSON *msg)
{
	char *text = msg ? jv_json_print(msg) : NULL;
	if (text)
		client_send_text(c, text, strlen(text));
	else
		client_close(c);
	free(text);
	cJSON_Delete(msg);
}

static void reply_error(struct mon_client *c, const char *msg)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddBoolToObject(o, "ok", false);
	cJSON_AddStringToObject(o, "error", msg);
	client_send(c, o);
}

static cJSON *ok_object(void)
{
	cJSON *o = cJSON_CreateObject();
	if (o)
		cJSON_AddBoolToObject(o, "ok", true);
	return o;
}

void sock_accept(struct monitor *m)
{
	for (;;) {
		int fd = accept4(m->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0)
			return;
		struct ucred cred;
		socklen_t len = sizeof(cred);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
		    (cred.uid != 0 && cred.uid != geteuid())) {
			close(fd);
			continue;
		}
		struct mon_client *slot = NULL;
		for (int i = 0; i < MON_MAX_CLIENTS && !slot; i++)
			if (m->clients[i].fd < 0)
				slot = &m->clients[i];
		if (!slot) {
			static const char busy[] = "{\"ok\":false,\"error\":\"too many clients\"}\n";
			(void)!send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
			close(fd);
			continue;
		}
		*slot = (struct mon_client){.fd = fd};
		jv_buf_init(&slot->in, MON_CLIENT_IN_MAX);
		jv_buf_init(&slot->out, MON_CLIENT_OUT_MAX);
	}
}

static bool server_alive(struct monitor *m)
{
	return m->pid > 0 && !m->leader_exited &&
	       (m->state == MON_STARTING || m->state == MON_RUNNING);
}

static void op_send(struct monitor *m, struct mon_client *c, const cJSON *req)
{
	const char *line = jv_json_str(req, "line", NULL);
	if (!line) {
		reply_error(c, "'line' must be a string");
		return;
	}
	if (strpbrk(line, "\r\n") || strlen(line) >= CONSOLE_LINE_MAX) {
		reply_error(c, "'line' must be one line shorter than 4096 bytes");
		return;
	}
	if (!server_alive(m)) {
		char msg[96];
		snprintf(msg, sizeof(msg), "the server is not running (state %s)",
		         state_name(m->state));
		reply_error(c, msg);
		return;
	}
	uint64_t seq = m->con.lines;
	int rc = con_send(m, line);
	if (rc < 0) {
		reply_error(c, rc == -EAGAIN ? "the console input is full (the server is not reading it)"
		                             : "cannot write to the console");
		return;
	}
	m->hooks->console_sent(m, line);
	cJSON *o = ok_object();
	cJSON_AddNumberToObject(o, "seq", (double)seq);
	client_send(c, o);
}

static void replay_lines(struct monitor *m, struct mon_client *c, uint64_t since)
{
	uint64_t first = 0;
	cJSON *lines = con_tail(m, 1000, since, &first);
	const cJSON *it;
	uint64_t seq = first;
	cJSON_ArrayForEach(it, lines) {
		cJSON *ev = cJSON_CreateObject();
		cJSON_AddStringToObject(ev, "event", "line");
		cJSON_AddNumberToObject(ev, "seq", (double)seq++);
		cJSON_AddStringToObject(ev, "line", it->valuestring);
		client_send(c, ev);
		if (c->fd < 0)
			break;
	}
	cJSON_Delete(lines);
}

static void handle(struct monitor *m, struct mon_client *c, const char *text, size_t len)
{
	cJSON *req = jv_json_parse(text, len);
	const char *op = jv_json_str(req, "op", NULL);
	if (!cJSON_IsObject(req) || !op) {
		reply_error(c, "a request is a JSON object with an \"op\"");
	} else if (strcmp(op, "status") == 0) {
		cJSON *o = ok_object();
		cJSON_AddItemToObject(o, "status", state_object(m));
		int n = (int)jv_json_int(req, "tail", 0);
		if (n > 0) {
			uint64_t first;
			cJSON_AddItemToObject(o, "tail", con_tail(m, n > 1000 ? 1000 : n, 0, &first));
		}
		client_send(c, o);
	} else if (strcmp(op, "stop") == 0 || strcmp(op, "kill") == 0) {
		if (m->exiting) {
			cJSON *o = ok_object();
			cJSON_AddBoolToObject(o, "done", true);
			cJSON_AddItemToObject(o, "status", state_object(m));
			client_send(c, o);
		} else {
			c->stop_waiter = true;
			c->subscribed = true;
			bool force = strcmp(op, "kill") == 0 || jv_json_bool(req, "force", false);
			double t = jv_json_num(req, "timeoutSeconds", -1);
			m->hooks->stop_requested(m, force, t > 0 && t <= 86400 ? t : -1);
		}
	} else if (strcmp(op, "send") == 0) {
		op_send(m, c, req);
	} else if (strcmp(op, "tail") == 0) {
		int n = (int)jv_json_int(req, "lines", 50);
		int64_t since = jv_json_int(req, "since", 0);
		uint64_t first = 0;
		cJSON *o = ok_object();
		cJSON_AddItemToObject(o, "lines", con_tail(m, n < 0 ? 0 : n > 1000 ? 1000 : n,
		                                           since < 0 ? 0 : (uint64_t)since, &first));
		cJSON_AddNumberToObject(o, "firstSeq", (double)first);
		cJSON_AddNumberToObject(o, "seq", (double)m->con.lines);
		client_send(c, o);
	} else if (strcmp(op, "subscribe") == 0) {
		cJSON *o = ok_object();
		cJSON_AddItemToObject(o, "status", state_object(m));
		cJSON_AddNumberToObject(o, "seq", (double)m->con.lines);
		client_send(c, o);
		if (c->fd >= 0) {
			c->subscribed = true;
			c->console = jv_json_bool(req, "console", false);
			int64_t since = jv_json_int(req, "since", -1);
			if (c->console && since >= 0)
				replay_lines(m, c, (uint64_t)since);
		}
	} else {
		char msg[96];
		snprintf(msg, sizeof(msg), "unknown op '%.40s'", op);
		reply_error(c, msg);
	}
	cJSON_Delete(req);
}

void sock_on_client(struct monitor *m, struct mon_client *c, short revents)
{
	if (revents & POLLOUT)
		client_flush(c);
	if (c->fd < 0 || !(revents & (POLLIN | POLLHUP | POLLERR)))
		return;
	char buf[4096];
	ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		client_close(c);
		return;
	}
	if (jv_buf_append(&c->in, buf, (size_t)n) < 0) {
		reply_error(c, "request too long");
		c->closing = true;
		client_flush(c);
		return;
	}
	char *nl;
	while (c->fd >= 0 && !c->closing && c->in.len && (nl = memchr(c->in.data, '\n', c->in.len))) {
		size_t len = (size_t)(nl - c->in.data);
		char *line = malloc(len + 1);
		if (!line) {
			client_close(c);
			return;
		}
		memcpy(line, c->in.data, len);
		line[len] = '\0';
		jv_buf_consume(&c->in, len + 1);
		handle(m, c, line, len);
		free(line);
	}
}

static bool any_subscriber(struct monitor *m, bool console)
{
	for (int i = 0; i < MON_MAX_CLIENTS; i++)
		if (m->clients[i].fd >= 0 && m->clients[i].subscribed && (!console || m->clients[i].console))
			return true;
	return false;
}

void sock_broadcast_state(struct monitor *m)
{
	if (!any_subscriber(m, false))
		return;
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "event", "state");
	cJSON_AddItemToObject(ev, "status", state_object(m));
	char *text = jv_json_print(ev);
	cJSON_Delete(ev);
	if (!text)
		return;
	for (int i = 0; i < MON_MAX_CLIENTS; i++)
		if (m->clients[i].fd >= 0 && m->clients[i].subscribed)
			client_send_text(&m->clients[i], text, strlen(text));
	free(text);
}

void sock_broadcast_line(struct monitor *m, const char *line, size_t len, uint64_t seq)
{
	if (!any_subscriber(m, true))
		return;
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "event", "line");
	cJSON_AddNumberToObject(ev, "seq", (double)seq);
	cJSON_AddStringToObject(ev, "line", line);
	(void)len;
	char *text = jv_json_print(ev);
	cJSON_Delete(ev);
	if (!text)
		return;
	for (int i = 0; i < MON_MAX_CLIENTS; i++)
		if (m->clients[i].fd >= 0 && m->clients[i].subscribed && m->clients[i].console)
			client_send_text(&m->clients[i], text, strlen(text));
	free(text);
}

void sock_finish_stop(struct monitor *m)
{
	for (int i = 0; i < MON_MAX_CLIENTS; i++) {
		struct mon_client *c = &m->clients[i];
		if (c->fd < 0)
			continue;
		if (c->stop_waiter) {
			cJSON *o = ok_object();
			cJSON_AddBoolToObject(o, "done", true);
			cJSON_AddItemToObject(o, "status", state_object(m));
			client_send(c, o);
		}
		if (c->fd >= 0 && (c->stop_waiter || c->subscribed)) {
			c->closing = true;
			client_flush(c);
		}
	}
}

void sock_flush_all(struct monitor *m, int timeout_ms)
{
	int64_t end = jv_now_mono_ms() + timeout_ms;
	for (;;) {
		struct pollfd p[MON_MAX_CLIENTS];
		int n = 0;
		for (int i = 0; i < MON_MAX_CLIENTS; i++)
			if (m->clients[i].fd >= 0 && m->clients[i].out.len)
				p[n++] = (struct pollfd){.fd = m->clients[i].fd, .events = POLLOUT};
		int64_t left = end - jv_now_mono_ms();
		if (n == 0 || left <= 0)
			return;
		poll(p, (nfds_t)n, (int)left);
		for (int i = 0; i < MON_MAX_CLIENTS; i++)
			if (m->clients[i].fd >= 0 && m->clients[i].out.len)
				client_flush(&m->clients[i]);
	}
}

void sock_close(struct monitor *m)
{
	for (int i = 0; i < MON_MAX_CLIENTS; i++)
		if (m->clients[i].fd >= 0)
			client_close(&m->clients[i]);
	if (m->listen_fd >= 0) {
		close(m->listen_fd);
		m->listen_fd = -1;
		unlinkat(m->jv_fd, "monitor.sock", 0);
	}
}
