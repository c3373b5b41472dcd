/* front.c — the accept front: a request reaches a civetweb worker only once
 * it has fully arrived.
 *
 * civetweb gives each connection a worker thread from accept to close, so
 * clients that send slowly (or never finish) could hold every worker and
 * starve agents and admins. The front owns the public listening socket and
 * reads requests on one epoll thread, framing them with http_parser, under
 * whole-request deadlines: the head within FRONT_HEAD_MS of the accept, the
 * body within FRONT_BODY_MS of the head. A complete request is then sent on,
 * byte for byte, to civetweb on an ephemeral 127.0.0.1 port and the answer is
 * relayed back. A WebSocket upgrade becomes a two-way tunnel once its head is
 * complete (the stream's own ping/pong timeouts apply from there).
 *
 * Unauthenticated connections stay cheap: a request without a valid agent or
 * admin token may bring FRONT_ANON_MAX bytes in all within the head deadline
 * (a larger body is answered 401 unread); only a valid token buys the 1 MiB
 * body budget and the body deadline. Each client address may have at most
 * FRONT_PENDING_PER_CLIENT requests still arriving: one more evicts the
 * oldest of them once it has had FRONT_EVICT_MIN_MS (else the newcomer is
 * refused), as does a full connection table across addresses. A real
 * client's request arrives in one or two packets and is pending for
 * microseconds, so eviction hits those that dribble.
 *
 * The front is also where malformed HTTP stops: framing errors, repeated or
 * conflicting Content-Length, bad chunking, header names that are not
 * tokens, request targets that are not ASCII paths, a second Authorization
 * header, and upgrades anywhere but GET /v1/ws. Its own answers (400, 401,
 * 408, 431, 503) are JSON like the API's. civetweb sees every connection as
 * coming from 127.0.0.1.
 *
 * Threads: one, its own; it reads the token table (fixed after start) and
 * nothing else of struct cp. */
#include "cp.h"

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

#define FRONT_HEAD_MS 10000            /* whole request head, from accept */
#define FRONT_BODY_MS 30000            /* whole body (token holders), from the end of the head */
#define FRONT_STALL_MS 30000           /* a client that takes no answer bytes for this long */
#define FRONT_LINGER_MS 2000           /* after a final answer: drain the client's input */
#define FRONT_HEAD_MAX 16384           /* request line + headers */
#define FRONT_ANON_MAX 32768           /* head + body of a request without a valid token */
#define FRONT_CHUNK_SLACK 65536        /* chunk framing on top of CP_BODY_MAX */
#define FRONT_RELAY_BUF 65536          /* answer bytes held per connection */
#define FRONT_TUNNEL_BUF 65536         /* client bytes held per tunnel */
#define FRONT_PENDING_PER_CLIENT 256   /* requests still arriving, per client address */
#define FRONT_EVICT_MIN_MS 1000        /* a request is given this long before it may be evicted */
#define FRONT_CONNS_MAX 8192           /* all connections (also bounded by RLIMIT_NOFILE) */
#define FRONT_ACCEPT_BATCH 16
#define FRONT_TICK_MS 250
#define FRONT_REPORT_MS 60000

enum fstate { FS_HEAD, FS_BODY, FS_PROXY, FS_TUNNEL, FS_LINGER };

struct fconn;
struct fend {
	struct fconn *c;
	bool backend;
};

struct fconn {
	int cfd, bfd;
	enum fstate st;
	uint32_t ip;             /* client IPv4, network order */
	int64_t deadline;        /* CLOCK_MONOTONIC ms; 0 = none */
	int64_t born;            /* accepted at, CLOCK_MONOTONIC ms */
	http_parser hp;
	struct jv_buf req;       /* request bytes as received, forwarded unchanged */
	size_t req_off;          /* of req, sent to civetweb */
	size_t limit;            /* request bytes allowed */
	int reject;              /* answer the front gives instead (status), 0 = none */
	const char *reject_msg;  /* its message (static), NULL = the status's usual one */
	bool head_done, msg_done, authed, upgrade, expect_continue, connected, b_eof, closed;
	size_t body_seen;        /* body bytes parsed so far */
	bool in_value;           /* http_parser header callbacks: value follows field */
	size_t url_len;          /* request target bytes seen */
	char path[16];           /* its start, enough to recognise "/v1/ws" */
	int cur;                 /* header being read: 0 other, 1 Authorization, 2 Expect */
	int nauth;
	char field[24];
	size_t field_len;
	char auth[CP_TOKEN_MAX + 16];
	size_t auth_len;
	char expect[24];
	size_t expect_len;
	char *out;               /* answer bytes for the client */
	size_t out_len, out_off;
	uint32_t cmask, bmask;   /* armed epoll events */
	struct fend cend, bend;
	struct fconn *prev, *next;   /* every connection, oldest first */
	struct fconn *pprev, *pnext; /* pending (FS_HEAD/FS_BODY), oldest first */
};

struct front {
	struct cp *cp;
	int lfd, epfd, wakefd;
	uint16_t port;           /* public, host order */
	struct sockaddr_in backend;
	pthread_t thread;
	bool started;
	atomic_bool stop;
	struct fend lend;            /* the listening socket's epoll tag */
	struct fconn *head, *tail;   /* all */
	struct fconn *dead;          /* closed during this epoll batch, freed after it */
	struct fconn *phead, *ptail; /* pending */
	size_t nconns, conns_max;
	/* Reported at most once a minute. */
	unsigned long evicted, timed_out, refused;
	uint32_t last_ip;
	int64_t last_report;
};

static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

/* ---- the connection table ---- */

static void pending_unlink(struct front *f, struct fconn *c)
{
	if (c->st != FS_HEAD && c->st != FS_BODY)
		return;
	if (c->pprev)
		c->pprev->pnext = c->pnext;
	else
		f->phead = c->pnext;
	if (c->pnext)
		c->pnext->pprev = c->pprev;
	else
		f->ptail = c->pprev;
	c->pprev = c->pnext = NULL;
}

static void conn_close(struct front *f, struct fconn *c)
{
	pending_unlink(f, c);
	if (c->prev)
		c->prev->next = c->next;
	else
		f->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		f->tail = c->prev;
	f->nconns--;
	if (c->cfd >= 0)
		close(c->cfd); /* also removes it from the epoll set */
	if (c->bfd >= 0)
		close(c->bfd);
	c->cfd = c->bfd = -1;
	c->closed = true;
	/* Later events of this epoll batch may still name it: freed after the batch. */
	c->next = f->dead;
	f->dead = c;
}

static void free_dead(struct front *f)
{
	while (f->dead) {
		struct fconn *c = f->dead;
		f->dead = c->next;
		jv_buf_free(&c->req);
		free(c->out);
		free(c);
	}
}

static int arm_fd(struct front *f, int fd, struct fend *end, uint32_t *have, uint32_t want)
{
	if (fd < 0 || *have == want)
		return 0;
	struct epoll_event ev = {.events = want, .data.ptr = end};
	if (epoll_ctl(f->epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
		return -errno;
	*have = want;
	return 0;
}

/* Ask epoll for what this connection can make progress on now. */
static int arm(struct front *f, struct fconn *c)
{
	uint32_t cw = 0, bw = 0;
	bool out_pending = c->out_off < c->out_len;
	switch (c->st) {
	case FS_HEAD:
	case FS_BODY:
		cw = EPOLLIN;
		break;
	case FS_PROXY:
		cw = out_pending ? EPOLLOUT : 0;
		break;
	case FS_TUNNEL:
		cw = EPOLLRDHUP | (out_pending ? EPOLLOUT : 0) |
		     (c->req.len - c->req_off < FRONT_TUNNEL_BUF ? EPOLLIN : 0);
		break;
	case FS_LINGER:
		cw = EPOLLIN | (out_pending ? EPOLLOUT : 0);
		break;
	}
	if (c->bfd >= 0) {
		if (!c->connected)
			bw = EPOLLOUT;
		else
			bw = (c->req_off < c->req.len ? EPOLLOUT : 0) |
			     (!c->b_eof && c->out_len < FRONT_RELAY_BUF ? EPOLLIN : 0);
	}
	int rc = arm_fd(f, c->cfd, &c->cend, &c->cmask, cw);
	return rc < 0 ? rc : arm_fd(f, c->bfd, &c->bend, &c->bmask, bw);
}

/* Queue bytes for the client (out must have been drained or be empty). */
static int out_set(struct fconn *c, const char *data, size_t len)
{
	if (!c->out) {
		c->out = malloc(FRONT_RELAY_BUF);
		if (!c->out)
			return -ENOMEM;
	}
	if (len > FRONT_RELAY_BUF)
		len = FRONT_RELAY_BUF;
	memcpy(c->out, data, len);
	c->out_len = len;
	c->out_off = 0;
	return 0;
}

/* Stop reading a request and wait for the client to take the final bytes in
 * out (if any), then half-close and drain its input for a moment, so a client
 * still sending gets the answer rather than a reset. */
static void linger(struct front *f, struct fconn *c)
{
	pending_unlink(f, c);
	c->st = FS_LINGER;
	c->deadline = jv_now_mono_ms() + FRONT_LINGER_MS;
	if (c->bfd >= 0) {
		close(c->bfd);
		c->bfd = -1;
	}
	if (c->out_off >= c->out_len)
		shutdown(c->cfd, SHUT_WR);
}

/* The front answers by itself, then lingers. c may be closed on return. */
static void answer(struct front *f, struct fconn *c, int status, const char *extra, const char *msg)
{
	static const struct {
		int status;
		const char *text;
	} reasons[] = {{400, "Bad Request"}, {401, "Unauthorized"}, {408, "Request Timeout"},
	               {431, "Request Header Fields Too Large"}, {503, "Service Unavailable"}};
	const char *reason = "Error";
	for (size_t i = 0; i < JV_ARRAY_LEN(reasons); i++)
		if (reasons[i].status == status)
			reason = reasons[i].text;
	char body[256], head[512];
	int blen = snprintf(body, sizeof(body), "{\"error\":\"%s\"}", msg);
	int hlen = snprintf(head, sizeof(head),
	                    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
	                    "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n%s"
	                    "Connection: close\r\n\r\n%s",
	                    status, reason, blen, extra ? extra : "", body);
	if (hlen > 0 && (size_t)hlen < sizeof(head))
		out_set(c, head, (size_t)hlen);
	linger(f, c);
	if (arm(f, c) < 0)
		conn_close(f, c);
}

static void note_drop(struct front *f, struct fconn *c, unsigned long *counter)
{
	(*counter)++;
	f->last_ip = c->ip;
}

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
		if (c->expect_continue)
			(void)!send(c->cfd, continue_100, sizeof(continue_100) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
}

/* 400: body over the cap; 401: no valid token and more than a token-less
 * request may bring; 431: head over the cap. c may be closed on return. */
static void refuse(struct front *f, struct fconn *c, int status)
{
	char msg[96];
	if (status == 401) {
		answer(f, c, 401, "WWW-Authenticate: Bearer\r\n", "unauthorized");
		return;
	}
	if (status == 431)
		snprintf(msg, sizeof(msg), "request head larger than %d bytes", FRONT_HEAD_MAX);
	else
		snprintf(msg, sizeof(msg), "request body larger than %d bytes", CP_BODY_MAX);
	answer(f, c, status, NULL, msg);
}

/* ---- moving bytes ---- */

static void start_proxy(struct front *f, struct fconn *c)
{
	pending_unlink(f, c);
	c->st = c->upgrade ? FS_TUNNEL : FS_PROXY;
	c->deadline = 0;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		answer(f, c, 503, "Retry-After: 1\r\n", "server busy, try again");
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (const struct sockaddr *)&f->backend, sizeof(f->backend)) < 0 && errno != EINPROGRESS) {
		close(fd);
		answer(f, c, 503, "Retry-After: 1\r\n", "server busy, try again");
		return;
	}
	c->bfd = fd;
	c->bend = (struct fend){.c = c, .backend = true};
	c->bmask = EPOLLOUT;
	struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = &c->bend};
	if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 || arm(f, c) < 0)
		conn_close(f, c);
}

/* Read what the client sent while its request is arriving. */
static void read_request(struct front *f, struct fconn *c)
{
	char chunk[16384];
	for (;;) {
		ssize_t n = recv(c->cfd, chunk, sizeof(chunk), 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n <= 0) { /* gone before finishing: nothing to answer */
			conn_close(f, c);
			return;
		}
		size_t before = c->req.len;
		if (before + (size_t)n > c->limit) {
			refuse(f, c, !c->head_done ? 431 : c->authed ? 400 : 401);
			return;
		}
		if (jv_buf_append(&c->req, chunk, (size_t)n) < 0) {
			answer(f, c, 503, "Retry-After: 1\r\n", "out of memory, try again");
			return;
		}
		bool was_head = c->head_done;
		size_t used = http_parser_execute(&c->hp, &parser_settings, chunk, (size_t)n);
		enum http_errno e = HTTP_PARSER_ERRNO(&c->hp);
		if (e != HPE_OK && e != HPE_PAUSED) {
			char msg[128];
			snprintf(msg, sizeof(msg), "malformed HTTP request: %s",
			         c->reject_msg ? c->reject_msg : http_errno_description(e));
			answer(f, c, 400, NULL, msg);
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
				answer(f, c, c->reject, NULL, c->reject_msg);
				return;
			}
			if (c->reject) {
				refuse(f, c, c->reject);
				return;
			}
		}
		if (c->msg_done || (c->head_done && c->upgrade)) {
			/* One request only: pipelined bytes are dropped; after an upgrade
			 * head the rest is the stream, kept. */
			if (!c->upgrade)
				c->req.len = before + used;
			start_proxy(f, c);
			return;
		}
	}
}

static void relay(struct front *f, struct fconn *c, bool backend, uint32_t ev)
{
	/* epoll reports these even when nothing is asked for: a client that reset
	 * or vanished is done with (its answer, if any, has nowhere to go). */
	if (!backend && (ev & (EPOLLERR | EPOLLHUP))) {
		conn_close(f, c);
		return;
	}
	if (backend && !c->connected && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
		int err = 0;
		socklen_t l = sizeof(err);
		if (getsockopt(c->bfd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
			jv_warn(NULL, NULL, "front: cannot reach the HTTP workers: %s", strerror(err ? err : errno));
			answer(f, c, 503, "Retry-After: 1\r\n", "server busy, try again");
			return;
		}
		c->connected = true;
	}
	/* client -> civetweb */
	if (c->connected && c->bfd >= 0 && c->req_off < c->req.len) {
		ssize_t n = send(c->bfd, c->req.data + c->req_off, c->req.len - c->req_off, MSG_NOSIGNAL);
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			conn_close(f, c);
			return;
		}
		if (n > 0)
			c->req_off += (size_t)n;
		if (c->st == FS_TUNNEL && c->req_off == c->req.len) {
			c->req.len = 0;
			c->req_off = 0;
		}
	}
	if (c->st == FS_TUNNEL && !backend && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
		char chunk[16384];
		ssize_t n = recv(c->cfd, chunk, sizeof(chunk), 0);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			conn_close(f, c);
			return;
		}
		if (n > 0 && jv_buf_append(&c->req, chunk, (size_t)n) < 0) {
			conn_close(f, c);
			return;
		}
	}
	/* civetweb -> client */
	if (c->connected && !c->b_eof && c->out_len < FRONT_RELAY_BUF) {
		if (!c->out && !(c->out = malloc(FRONT_RELAY_BUF))) {
			conn_close(f, c);
			return;
		}
		ssize_t n = recv(c->bfd, c->out + c->out_len, FRONT_RELAY_BUF - c->out_len, 0);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			/* civetweb is done: drop its socket, or its hang-up would wake
			 * epoll again and again while the client takes the rest. */
			c->b_eof = true;
			close(c->bfd);
			c->bfd = -1;
			c->bmask = 0;
		} else if (n > 0) {
			c->out_len += (size_t)n;
		}
	}
	if (c->out_off < c->out_len) {
		ssize_t n = send(c->cfd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			conn_close(f, c);
			return;
		}
		if (n > 0) {
			c->out_off += (size_t)n;
			c->deadline = 0;
		}
		if (c->out_off == c->out_len)
			c->out_off = c->out_len = 0;
		else if (!c->deadline)
			c->deadline = jv_now_mono_ms() + FRONT_STALL_MS;
	}
	if (c->b_eof && c->out_len == 0) {
		if (c->st == FS_TUNNEL) {
			conn_close(f, c);
			return;
		}
		linger(f, c);
	}
	if (arm(f, c) < 0)
		conn_close(f, c);
}

static void on_linger(struct front *f, struct fconn *c)
{
	if (c->out_off < c->out_len) {
		ssize_t n = send(c->cfd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			conn_close(f, c);
			return;
		}
		if (n > 0)
			c->out_off += (size_t)n;
		if (c->out_off == c->out_len)
			shutdown(c->cfd, SHUT_WR);
	}
	char sink[4096];
	ssize_t n = recv(c->cfd, sink, sizeof(sink), 0);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		conn_close(f, c);
		return;
	}
	if (arm(f, c) < 0)
		conn_close(f, c);
}

/* ---- accepting ---- */

/* Make room for one more connection from ip. An address with too many
 * requests still arriving loses its oldest one, and a full table loses the
 * oldest anywhere, but only once that request has had FRONT_EVICT_MIN_MS to
 * arrive: a flood of new connections cannot push out a request that is on
 * its way. false = no room; the new connection is refused. */
static bool make_room(struct front *f, uint32_t ip, int64_t now)
{
	size_t mine = 0;
	struct fconn *oldest_mine = NULL;
	for (struct fconn *p = f->phead; p; p = p->pnext) {
		if (p->ip == ip && mine++ == 0)
			oldest_mine = p;
	}
	if (mine >= FRONT_PENDING_PER_CLIENT) {
		if (now - oldest_mine->born < FRONT_EVICT_MIN_MS)
			return false;
		note_drop(f, oldest_mine, &f->evicted);
		conn_close(f, oldest_mine);
	}
	if (f->nconns < f->conns_max)
		return true;
	if (!f->phead || now - f->phead->born < FRONT_EVICT_MIN_MS)
		return false;
	note_drop(f, f->phead, &f->evicted);
	conn_close(f, f->phead);
	return true;
}

static void accept_some(struct front *f)
{
	for (int i = 0; i < FRONT_ACCEPT_BATCH; i++) {
		struct sockaddr_in peer;
		socklen_t plen = sizeof(peer);
		int fd = accept4(f->lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE) {
				f->refused++;
				/* Free a slot from the oldest pending request, if any. */
				if (f->phead)
					conn_close(f, f->phead);
			}
			return;
		}
		uint32_t ip = peer.sin_family == AF_INET ? peer.sin_addr.s_addr : 0;
		int64_t now = jv_now_mono_ms();
		struct fconn *c = make_room(f, ip, now) ? calloc(1, sizeof(*c)) : NULL;
		if (!c) {
			f->refused++;
			close(fd);
			continue;
		}
		c->cfd = fd;
		c->bfd = -1;
		c->ip = ip;
		c->st = FS_HEAD;
		c->limit = FRONT_ANON_MAX;
		c->born = now;
		c->deadline = now + FRONT_HEAD_MS;
		jv_buf_init(&c->req, FRONT_HEAD_MAX + CP_BODY_MAX + FRONT_CHUNK_SLACK);
		http_parser_init(&c->hp, HTTP_REQUEST);
		c->hp.data = c;
		c->cend = (struct fend){.c = c, .backend = false};
		c->cmask = EPOLLIN;
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &c->cend};
		if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			jv_buf_free(&c->req);
			free(c);
			continue;
		}
		c->prev = f->tail;
		if (f->tail)
			f->tail->next = c;
		else
			f->head = c;
		f->tail = c;
		c->pprev = f->ptail;
		if (f->ptail)
			f->ptail->pnext = c;
		else
			f->phead = c;
		f->ptail = c;
		f->nconns++;
		/* Most requests are already here: take them before accepting more,
		 * so a burst of new connections cannot evict them. */
		read_request(f, c);
	}
}

static void expire(struct front *f, int64_t now)
{
	struct fconn *next;
	for (struct fconn *c = f->head; c; c = next) {
		next = c->next;
		if (!c->deadline || now < c->deadline)
			continue;
		if (c->st == FS_HEAD || c->st == FS_BODY) {
			note_drop(f, c, &f->timed_out);
			answer(f, c, 408, NULL, c->st == FS_HEAD ? "request head not received in time"
			                                          : "request body not received in time");
		} else {
			conn_close(f, c); /* lingered long enough, or stalled taking an answer */
		}
	}
	if ((f->evicted || f->timed_out || f->refused) && now - f->last_report >= FRONT_REPORT_MS) {
		char ip[INET_ADDRSTRLEN] = "?";
		inet_ntop(AF_INET, &f->last_ip, ip, sizeof(ip));
		jv_warn(NULL, NULL, "front: dropped slow or excess clients: %lu evicted, %lu timed out, %lu refused "
		        "(last from %s)", f->evicted, f->timed_out, f->refused, ip);
		f->evicted = f->timed_out = f->refused = 0;
		f->last_report = now;
	}
}

static void *front_main(void *arg)
{
	struct front *f = arg;
	struct epoll_event evs[64];
	int64_t next_tick = jv_now_mono_ms() + FRONT_TICK_MS;
	while (!atomic_load(&f->stop)) {
		int n = epoll_wait(f->epfd, evs, JV_ARRAY_LEN(evs), FRONT_TICK_MS);
		for (int i = 0; i < n; i++) {
			struct fend *end = evs[i].data.ptr;
			if (!end)
				continue; /* the wake-up eventfd */
			if (end == &f->lend) {
				accept_some(f);
				continue;
			}
			struct fconn *c = end->c;
			/* Events of a connection closed earlier in this batch are skipped:
			 * closing removes it from epoll, and its ends are marked. */
			if (c->closed)
				continue;
			if (c->st == FS_HEAD || c->st == FS_BODY) {
				if (!end->backend)
					read_request(f, c);
				else
					conn_close(f, c);
			} else if (c->st == FS_LINGER) {
				on_linger(f, c);
			} else {
				relay(f, c, end->backend, evs[i].events);
			}
		}
		int64_t now = jv_now_mono_ms();
		if (now >= next_tick) {
			expire(f, now);
			next_tick = now + FRONT_TICK_MS;
		}
		free_dead(f);
	}
	return NULL;
}

/* ---- start and stop ---- */

/* "A.B.C.D:PORT" (checked by main) -> address. */
static int parse_listen(const char *listen, struct sockaddr_in *sa)
{
	const char *colon = strrchr(listen, ':');
	char host[16];
	if (!colon || (size_t)(colon - listen) >= sizeof(host))
		return -EINVAL;
	memcpy(host, listen, (size_t)(colon - listen));
	host[colon - listen] = '\0';
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)atoi(colon + 1));
	return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -EINVAL;
}

/* Each proxied request costs three descriptors (client, ours to civetweb,
 * civetweb's own): take the hard limit and size the table to it. */
static size_t conns_budget(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	size_t n = rl.rlim_cur > 512 ? (size_t)(rl.rlim_cur - 256) / 3 : 64;
	return n < FRONT_CONNS_MAX ? n : FRONT_CONNS_MAX;
}

int front_start(struct cp *cp, const char *addr, uint16_t backend_port, struct front **out, char *err,
                size_t errlen)
{
	struct front *f = calloc(1, sizeof(*f));
	if (!f) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	f->cp = cp;
	f->lfd = f->epfd = f->wakefd = -1;
	f->conns_max = conns_budget();
	f->backend.sin_family = AF_INET;
	f->backend.sin_port = htons(backend_port);
	f->backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct sockaddr_in sa;
	int one = 1, rc;
	if (parse_listen(addr, &sa) < 0) {
		snprintf(err, errlen, "bad listen address '%s'", addr);
		rc = -EINVAL;
		goto fail;
	}
	f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (f->lfd < 0 || setsockopt(f->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(f->lfd, 1024) < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot listen on '%s': %s", addr, strerror(errno));
		goto fail;
	}
	socklen_t sl = sizeof(sa);
	getsockname(f->lfd, (struct sockaddr *)&sa, &sl);
	f->port = ntohs(sa.sin_port);
	f->epfd = epoll_create1(EPOLL_CLOEXEC);
	f->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &f->lend};
	struct epoll_event wev = {.events = EPOLLIN, .data.ptr = NULL};
	if (f->epfd < 0 || f->wakefd < 0 || epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->lfd, &lev) < 0 ||
	    epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->wakefd, &wev) < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot set up the accept front: %s", strerror(errno));
		goto fail;
	}
	rc = -pthread_create(&f->thread, NULL, front_main, f);
	if (rc < 0) {
		snprintf(err, errlen, "cannot start the accept front: %s", strerror(-rc));
		goto fail;
	}
	f->started = true;
	*out = f;
	return 0;
fail:
	front_stop(f);
	return rc;
}

uint16_t front_port(const struct front *f)
{
	return f->port;
}

void front_stop(struct front *f)
{
	if (!f)
		return;
	if (f->started) {
		atomic_store(&f->stop, true);
		uint64_t one = 1;
		(void)!write(f->wakefd, &one, sizeof(one));
		pthread_join(f->thread, NULL);
	}
	while (f->head)
		conn_close(f, f->head);
	free_dead(f);
	if (f->lfd >= 0)
		close(f->lfd);
	if (f->epfd >= 0)
		close(f->epfd);
	if (f->wakefd >= 0)
		close(f->wakefd);
	free(f);
}
