/* front_request.c — the accept front's per-connection work: parsing the
 * request head with http_parser (target, header names, Authorization,
 * Expect, framing), the limits and the front's own refusals, then moving
 * bytes: the request to civetweb, the answer back, WebSocket tunnels, and the
 * linger after a final answer. See front.c for the rules. */
#include "front_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <http_parser.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

/* ---- parsing the request head ---- */

/* The request target: a path (origin form) of visible ASCII. civetweb would
 * answer anything else with a plain-text error or not at all. */
static int on_url(http_parser *p, const char *at, size_t len)
{
	struct fconn *c = p->data;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)at[i];
		if ((c->url_len == 0 && ch != '/') || ch <= 0x20 || ch >= 0x7f) {
			c->reject_msg = c->url_len == 0 && ch != '/'
			                    ? "the request target must be a path starting with '/'"
			                    : "the request target must be ASCII (percent-encode other bytes)";
			return 1;
		}
		if (c->url_len < sizeof(c->path) - 1)
			c->path[c->url_len] = (char)ch;
		c->url_len++;
	}
	return 0;
}

/* The one place that upgrades: GET /v1/ws (query allowed). Elsewhere an
 * upgrade would make the rest of the connection an unbounded tunnel. */
static bool upgrade_allowed(const struct fconn *c)
{
	return c->hp.method == HTTP_GET && strncmp(c->path, "/v1/ws", 6) == 0 && (c->path[6] == '\0' || c->path[6] == '?');
}

static bool is_tchar(unsigned char ch)
{
	return (ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') || strchr("!#$%&'*+-.^_`|~", ch);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
	struct fconn *c = p->data;
	for (size_t i = 0; i < len; i++) {
		if (!at[i] || !is_tchar((unsigned char)at[i])) {
			c->reject_msg = "malformed header name";
			return 1;
		}
	}
	if (c->in_value) {
		c->in_value = false;
		c->field_len = 0;
	}
	size_t room = sizeof(c->field) - 1 - c->field_len;
	if (len > room) {
		len = room;
		c->field[0] = '\0'; /* longer than any header we look at */
	}
	memcpy(c->field + c->field_len, at, len);
	c->field_len += len;
	c->field[c->field_len] = '\0';
	return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
	struct fconn *c = p->data;
	if (!c->in_value) {
		c->in_value = true;
		if (strcasecmp(c->field, CP_FRONT_HEADER) == 0) {
			c->reject_msg = "the " CP_FRONT_HEADER " header is reserved for the control plane itself";
			return 1;
		}
		c->cur = strcasecmp(c->field, "Authorization") == 0 ? 1 : strcasecmp(c->field, "Expect") == 0 ? 2 : 0;
		if (c->cur == 1)
			c->nauth++;
	}
	char *dst = c->cur == 1 ? c->auth : c->cur == 2 ? c->expect : NULL;
	size_t cap = c->cur == 1 ? sizeof(c->auth) : sizeof(c->expect);
	size_t *n = c->cur == 1 ? &c->auth_len : &c->expect_len;
	if (!dst)
		return 0;
	if (*n + len >= cap) {
		*n = cap; /* too long to be valid: remembered as such */
		return 0;
	}
	memcpy(dst + *n, at, len);
	*n += len;
	dst[*n] = '\0';
	return 0;
}

/* A valid agent or admin token in "Authorization: Bearer T" (exactly one). */
static bool head_authenticated(struct cp *cp, struct fconn *c)
{
	if (c->nauth != 1 || c->auth_len >= sizeof(c->auth) || strncasecmp(c->auth, "Bearer ", 7) != 0)
		return false;
	const char *tok = c->auth + 7;
	while (*tok == ' ')
		tok++;
	struct cp_agent *agent = NULL;
	return *tok && http_token_auth(cp, tok, strlen(tok), &agent, NULL) != AUTH_NONE;
}

static int on_headers_complete(http_parser *p)
{
	struct fconn *c = p->data;
	c->head_done = true;
	c->upgrade = p->upgrade;
	c->expect_continue = c->expect_len < sizeof(c->expect) && strcasecmp(c->expect, "100-continue") == 0;
	c->keep = http_should_keep_alive(p); /* 1.1 without close, or 1.0 with keep-alive (front_keep.c) */
	return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
	struct fconn *c = p->data;
	(void)at;
	c->body_seen += len;
	return 0;
}

static int on_message_complete(http_parser *p)
{
	struct fconn *c = p->data;
	c->msg_done = true;
	http_parser_pause(p, 1); /* anything after one request is not ours to forward */
	return 0;
}

static const http_parser_settings parser_settings = {
	.on_url = on_url,
	.on_header_field = on_header_field,
	.on_header_value = on_header_value,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
};

/* The head just completed: decide the budget (or refuse) before any body. */
static void head_complete(struct front *f, struct fconn *c, size_t head_len)
{
	c->authed = head_authenticated(f->cp, c);
	explicit_bzero(c->auth, sizeof(c->auth));
	if (c->nauth > 1) {
		/* civetweb would use the first; say no rather than guess. */
		c->reject = 400;
		c->reject_msg = "more than one Authorization header";
		return;
	}
	if (c->upgrade && !upgrade_allowed(c)) {
		c->reject = 400;
		c->reject_msg = "only GET /v1/ws can be upgraded (to a WebSocket)";
		return;
	}
	bool has_len = c->hp.flags & F_CONTENTLENGTH;
	uint64_t declared = has_len ? c->hp.content_length : 0;
	if (c->authed) {
		c->limit = FRONT_HEAD_MAX + CP_BODY_MAX + FRONT_CHUNK_SLACK;
		if (has_len && declared > CP_BODY_MAX) {
			c->reject = 400;
			return;
		}
	} else {
		c->limit = FRONT_ANON_MAX;
		if (has_len && head_len + declared > FRONT_ANON_MAX) {
			c->reject = 401;
			return;
		}
	}
	if (!c->msg_done && !c->upgrade) {
		c->st = FS_BODY;
		if (c->authed)
			c->deadline = jv_now_mono_ms() + FRONT_BODY_MS;
		/* Without a token the head's deadline covers the body too. */
	}
}

/* "100 Continue" goes out at once, on a socket nothing else was written to
 * since the handshake. Plain: best effort, as before. TLS: a record that did
 * not go out whole would be taken for the start of the next write, so the
 * client (whose socket does not even take 25 bytes) is dropped. false = c
 * was closed. */
static bool send_continue(struct front *f, struct fconn *c)
{
	if (c->st != FS_BODY || !c->expect_continue)
		return true;
	ssize_t n = front_cwrite(c, continue_100, sizeof(continue_100) - 1);
	if (c->ssl && n != (ssize_t)sizeof(continue_100) - 1) {
		front_conn_close(f, c);
		return false;
	}
	return true;
}

/* 400: body over the cap; 401: no valid token and more than a token-less
 * request may bring; 431: head over the cap. c may be closed on return. */
static void refuse(struct front *f, struct fconn *c, int status)
{
	char msg[96];
	if (status == 401) {
		front_answer(f, c, 401, "WWW-Authenticate: Bearer\r\n", "unauthorized");
		return;
	}
	if (status == 431)
		snprintf(msg, sizeof(msg), "request head larger than %d bytes", FRONT_HEAD_MAX);
	else
		snprintf(msg, sizeof(msg), "request body larger than %d bytes", CP_BODY_MAX);
	front_answer(f, c, status, NULL, msg);
}

/* ---- moving bytes ---- */

void front_forward(struct front *f, struct fconn *c, int prio)
{
	front_pending_unlink(f, c);
	c->deadline = 0;
	if (!c->upgrade && !c->mark_off && front_mark(f, c) < 0) {
		front_answer(f, c, 503, "Retry-After: 1\r\n", "out of memory, try again");
		return;
	}
	if (!c->upgrade && f->inflight >= f->inflight_max) {
		c->st = FS_WAIT;
		flist_push(&f->waiting[prio], c);
		if (front_arm(f, c) < 0)
			front_conn_close(f, c);
		return;
	}
	front_connect_backend(f, c);
}

void front_connect_backend(struct front *f, struct fconn *c)
{
	flist_unlink(c); /* from waiting */
	c->st = c->upgrade ? FS_TUNNEL : FS_PROXY;
	c->hold = !c->upgrade; /* until we know the answer is not a park */
	c->connected = c->b_eof = false;
	c->req_off = 0;
	c->ans_head = false; /* a new answer (a resent parked poll gets one too) */
	c->ans_sent = c->ans_expect = 0;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		front_answer(f, c, 503, "Retry-After: 1\r\n", "server busy, try again");
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	const struct sockaddr_in *to = c->upgrade ? &f->ws_backend : &f->backend;
	if (connect(fd, (const struct sockaddr *)to, sizeof(*to)) < 0 && errno != EINPROGRESS) {
		close(fd);
		front_answer(f, c, 503, "Retry-After: 1\r\n", "server busy, try again");
		return;
	}
	c->bfd = fd;
	if (!c->upgrade) {
		c->slot = true;
		f->inflight++;
	}
	c->bend = (struct fend){.c = c, .backend = true};
	c->bmask = EPOLLOUT;
	struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = &c->bend};
	if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 || front_arm(f, c) < 0)
		front_conn_close(f, c);
}

/* Read what the client sent while its request is arriving. */
void front_read_request(struct front *f, struct fconn *c)
{
	char chunk[16384];
	if (c->ssl && !c->tls_up && front_tls_handshake(f, c) <= 0)
		return; /* still shaking hands under the head deadline, or closed */
	for (;;) {
		ssize_t n = front_cread(c, chunk, sizeof(chunk));
		if (n == -EAGAIN) {
			if (front_arm(f, c) < 0) /* TLS may wait for the other direction */
				front_conn_close(f, c);
			return;
		}
		if (n <= 0) { /* gone before finishing (or kept and closed): nothing to answer */
			front_conn_close(f, c);
			return;
		}
		if (c->idle)
			front_keep_wake(f, c, jv_now_mono_ms());
		size_t before = c->req.len;
		if (before + (size_t)n > c->limit) {
			refuse(f, c, !c->head_done ? 431 : c->authed ? 400 : 401);
			return;
		}
		if (jv_buf_append(&c->req, chunk, (size_t)n) < 0) {
			front_answer(f, c, 503, "Retry-After: 1\r\n", "out of memory, try again");
			return;
		}
		bool was_head = c->head_done;
		size_t used = http_parser_execute(&c->hp, &parser_settings, chunk, (size_t)n);
		enum http_errno e = HTTP_PARSER_ERRNO(&c->hp);
		if (e != HPE_OK && e != HPE_PAUSED) {
			char msg[128];
			snprintf(msg, sizeof(msg), "malformed HTTP request: %s",
			         c->reject_msg ? c->reject_msg : http_errno_description(e));
			front_answer(f, c, 400, NULL, msg);
			return;
		}
		if (!c->head_done && c->req.len > FRONT_HEAD_MAX) {
			refuse(f, c, 431);
			return;
		}
		if (c->head_done && !was_head) {
			/* Where the head ended: body bytes in this chunk are after it. */
			size_t head_len = before + used - c->body_seen;
			if (head_len > FRONT_HEAD_MAX) {
				refuse(f, c, 431);
				return;
			}
			head_complete(f, c, head_len);
			if (c->reject && c->reject_msg) {
				front_answer(f, c, c->reject, NULL, c->reject_msg);
				return;
			}
			if (c->reject) {
				refuse(f, c, c->reject);
				return;
			}
			if (!send_continue(f, c))
				return;
		}
		if (c->msg_done || (c->head_done && c->upgrade)) {
			/* One request at a time: pipelined bytes read with it are
			 * dropped, and the connection closes after this answer
			 * (front_keep.c); after an upgrade head the rest is the stream. */
			if (!c->upgrade && before + used < c->req.len) {
				c->req.len = before + used;
				c->keep = false;
			}
			front_forward(f, c, 0);
			return;
		}
	}
}

/* An answer is held until it is known not to be a park (CP_PARK_PREFIX); a
 * park is taken whole (it is short, and civetweb closes after it). true when
 * c was parked (or closed). */
static bool held_answer(struct front *f, struct fconn *c)
{
	size_t plen = sizeof(CP_PARK_PREFIX) - 1;
	if (c->out_len == 0) {
		c->hold = !c->b_eof; /* civetweb closed without a word: nothing to hold */
		return false;
	}
	size_t cmp = c->out_len < plen ? c->out_len : plen;
	if (memcmp(c->out, CP_PARK_PREFIX, cmp) != 0 || (c->out_len >= plen && c->out_len == FRONT_RELAY_BUF)) {
		c->hold = false; /* an answer for the client */
		return false;
	}
	if (!c->b_eof)
		return false; /* more to come */
	if (c->out_len < plen) {
		c->hold = false; /* a short answer that is not a park */
		return false;
	}
	front_park(f, c);
	return true;
}

void front_relay(struct front *f, struct fconn *c, bool backend, uint32_t ev)
{
	/* epoll reports these even when nothing is asked for: a client that reset
	 * or vanished is done with (its answer, if any, has nowhere to go). */
	if (!backend && (ev & (EPOLLERR | EPOLLHUP))) {
		front_conn_close(f, c);
		return;
	}
	if (backend && !c->connected && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
		int err = 0;
		socklen_t l = sizeof(err);
		if (getsockopt(c->bfd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
			jv_warn(NULL, NULL, "front: cannot reach the HTTP workers: %s", strerror(err ? err : errno));
			front_answer(f, c, 503, "Retry-After: 1\r\n", "server busy, try again");
			return;
		}
		c->connected = true;
	}
	/* client -> civetweb */
	if (c->connected && c->bfd >= 0 && c->req_off < c->req.len) {
		ssize_t n = send(c->bfd, c->req.data + c->req_off, c->req.len - c->req_off, MSG_NOSIGNAL);
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			front_conn_close(f, c);
			return;
		}
		if (n > 0)
			c->req_off += (size_t)n;
		if (c->st == FS_TUNNEL && c->req_off == c->req.len) {
			c->req.len = 0;
			c->req_off = 0;
		}
	}
	if (c->st == FS_TUNNEL && !backend && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR | c->tls_want))) {
		char chunk[16384];
		ssize_t n = front_cread(c, chunk, sizeof(chunk));
		if (n == 0 || (n < 0 && n != -EAGAIN)) {
			front_conn_close(f, c);
			return;
		}
		if (n > 0 && jv_buf_append(&c->req, chunk, (size_t)n) < 0) {
			front_conn_close(f, c);
			return;
		}
	}
	/* civetweb -> client */
	if (c->connected && !c->b_eof && c->out_len < FRONT_RELAY_BUF) {
		if (!c->out && !(c->out = malloc(FRONT_RELAY_BUF + FRONT_OUT_SLACK))) {
			front_conn_close(f, c);
			return;
		}
		ssize_t n = recv(c->bfd, c->out + c->out_len, FRONT_RELAY_BUF - c->out_len, 0);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			/* civetweb is done: drop its socket, or its hang-up would wake
			 * epoll again and again while the client takes the rest. */
			c->b_eof = true;
			front_backend_close(f, c);
		} else if (n > 0) {
			c->out_len += (size_t)n;
		}
	}
	if (c->hold && held_answer(f, c))
		return; /* parked */
	if (!c->hold && !c->ans_head && !front_answer_head(f, c))
		c->hold = true; /* its head is not all here yet */
	if (!c->hold && c->out_off < c->out_len) {
		ssize_t n = front_cwrite(c, c->out + c->out_off, c->out_len - c->out_off);
		if (n < 0 && n != -EAGAIN) {
			front_conn_close(f, c);
			return;
		}
		if (n > 0) {
			c->out_off += (size_t)n;
			c->ans_sent += (size_t)n;
			c->deadline = 0;
		}
		if (c->out_off == c->out_len)
			c->out_off = c->out_len = 0;
		else if (!c->deadline)
			c->deadline = jv_now_mono_ms() + FRONT_STALL_MS;
	}
	if (c->b_eof && c->out_len == 0) {
		if (c->st == FS_TUNNEL) {
			front_conn_close(f, c);
			return;
		}
		if (c->keep && c->ans_sent == c->ans_expect)
			front_keep(f, c); /* the whole answer went out: wait for the next request */
		else
			front_linger(f, c);
	}
	if (front_arm(f, c) < 0)
		front_conn_close(f, c);
}

void front_on_linger(struct front *f, struct fconn *c)
{
	if (c->out_off < c->out_len) {
		ssize_t n = front_cwrite(c, c->out + c->out_off, c->out_len - c->out_off);
		if (n < 0 && n != -EAGAIN) {
			front_conn_close(f, c);
			return;
		}
		if (n > 0)
			c->out_off += (size_t)n;
		if (c->out_off == c->out_len)
			front_cshutdown(c);
	}
	char sink[4096];
	ssize_t n = front_cread(c, sink, sizeof(sink));
	if (n == 0 || (n < 0 && n != -EAGAIN)) {
		front_conn_close(f, c);
		return;
	}
	if (front_arm(f, c) < 0)
		front_conn_close(f, c);
}
