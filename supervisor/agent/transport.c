/* transport.c — HTTP/1.1 requests to the control plane on non-blocking sockets.
 *
 * Each request walks resolve -> connect -> TLS handshake (https) -> send ->
 * receive, as far as its socket allows whenever the loop runs; through a proxy
 * (transport_proxy.c) an http:// request goes to it in absolute form and an
 * https:// one first opens a tunnel with CONNECT, then runs TLS over it with
 * the control plane's name. Nothing here
 * blocks: names resolve on a short-lived thread (transport_dns.c), sockets are
 * non-blocking, and every request has a deadline (its total timeout, and the
 * connect timeout while it has no connection). Connections are kept alive
 * (transport_conn.c), tunnels included. A request sent on a pooled
 * connection that the server closed meanwhile is sent again once on a fresh
 * one, as any HTTP client does.
 *
 * Completion is reported once per request from transport_perform(), one at a
 * time and always from the head of the list, so a callback may start or abort
 * other requests safely. The token lives in one header string that is wiped
 * when replaced or freed, and in each request's bytes until its answer starts
 * (wiped then: until then the request may be sent again); it never appears in
 * an error text. */
#include "transport.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "endpoints.h"
#include "jobvisor/util.h"
#include "transport_internal.h"

#define READ_CHUNK 16384

/* In this order: every state before R_SEND is part of connecting. */
enum rstate { R_RESOLVE, R_CONNECT, R_TUNNEL_SEND, R_TUNNEL_RECV, R_TLS, R_SEND, R_RECV, R_DONE };

struct transport_req {
	struct transport *tp;
	struct tp_url url;
	bool via_proxy;
	struct tp_proxy proxy;  /* a copy when via_proxy (with its credentials: wiped) */
	const char *dial_host, *dial_port; /* the proxy's or the URL's */
	char peer[300];         /* "[proxy ]host port N", for errors */
	char key[640];          /* of its connection (transport_conn.c) */
	struct jv_buf tun;      /* CONNECT's bytes (with the proxy's credentials: wiped) */
	struct jv_buf out; /* the request's bytes (with the token: wiped) */
	size_t sent;
	enum rstate state;
	struct tp_resolve *res;
	struct addrinfo *ai, *ai_next;
	struct tp_conn *c; /* NULL until connected */
	bool reused;    /* c came from the pool */
	short want;     /* events the current step waits for */
	struct tp_answer ans;
	char err[300];
	long timeout_ms;
	int64_t started_ms, deadline_ms, connect_deadline_ms, attempt_deadline_ms;
	transport_cb cb;
	void *ud;
	uint64_t ep_gen; /* the endpoints generation it was sent in */
	struct transport_req *prev, *next;
};

struct transport {
	struct endpoints ep;
	char *auth;     /* "Bearer <token>" */
	char *ca_file;
	bool insecure;
	long connect_timeout_ms;
	size_t max_response;
	struct tp_tls_conf *tls; /* made at the first https connection with these settings */
	struct tp_proxies proxies;
	struct tp_conn *pool;       /* idle connections, newest first */
	struct transport_req *reqs; /* in flight */
	size_t active;
	struct pollfd *pfd;         /* transport_wait's array */
	size_t pfd_cap;
};

int transport_global_init(void)
{
	return 0; /* nothing global: kept for the agent's start-up order */
}

void transport_global_cleanup(void)
{
}

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

int transport_configure(struct transport *tp, const struct transport_opts *opts)
{
	struct jv_buf auth;
	jv_buf_init(&auth, 0);
	char *ca = opts->ca_file ? strdup(opts->ca_file) : NULL;
	int rc = jv_buf_printf(&auth, "Bearer %s", opts->token ? opts->token : "");
	if (rc == 0 && opts->ca_file && !ca)
		rc = -ENOMEM;
	struct tp_proxies proxies = {0};
	if (rc == 0)
		rc = tp_proxies_load(&proxies, opts->proxy, opts->no_proxy);
	if (rc == 0)
		rc = endpoints_set(&tp->ep, opts->urls, opts->nurls); /* the last step that can fail */
	if (rc) {
		if (auth.data)
			explicit_bzero(auth.data, auth.len);
		jv_buf_free(&auth);
		free(ca);
		tp_proxies_clear(&proxies);
		return rc;
	}
	wipe_free(tp->auth);
	tp->auth = auth.data; /* ownership moves out of the buffer */
	free(tp->ca_file);
	tp->ca_file = ca;
	tp->insecure = opts->insecure;
	tp_proxies_clear(&tp->proxies);
	tp->proxies = proxies;
	tp->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 10000;
	tp->max_response = opts->max_response ? opts->max_response : 4u << 20;
	/* New TLS settings apply to new connections; requests in flight keep theirs. */
	tp_tls_conf_put(tp->tls);
	tp->tls = NULL;
	tp_pool_clear(&tp->pool);
	return 0;
}

int transport_new(const struct transport_opts *opts, struct transport **out)
{
	*out = NULL;
	struct transport *tp = calloc(1, sizeof(*tp));
	if (!tp)
		return -ENOMEM;
	int rc = transport_configure(tp, opts);
	if (rc) {
		free(tp);
		return rc;
	}
	*out = tp;
	return 0;
}

static void req_drop_conn(struct transport_req *r)
{
	tp_conn_close(r->c);
	r->c = NULL;
}

static void req_free(struct transport_req *r)
{
	if (!r)
		return;
	tp_resolve_cancel(r->res);
	if (r->ai)
		freeaddrinfo(r->ai);
	req_drop_conn(r);
	if (r->out.data)
		explicit_bzero(r->out.data, r->out.len);
	jv_buf_free(&r->out);
	if (r->tun.data)
		explicit_bzero(r->tun.data, r->tun.len);
	jv_buf_free(&r->tun);
	explicit_bzero(&r->proxy, sizeof(r->proxy));
	tp_answer_free(&r->ans);
	free(r);
}

static void req_unlink(struct transport *tp, struct transport_req *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		tp->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
	tp->active--;
}

void transport_abort(struct transport *tp, struct transport_req *req)
{
	if (!tp || !req)
		return;
	req_unlink(tp, req);
	req_free(req);
}

void transport_free(struct transport *tp)
{
	if (!tp)
		return;
	while (tp->reqs)
		transport_abort(tp, tp->reqs);
	tp_pool_clear(&tp->pool);
	tp_tls_conf_put(tp->tls);
	tp_proxies_clear(&tp->proxies);
	endpoints_clear(&tp->ep);
	wipe_free(tp->auth);
	free(tp->ca_file);
	free(tp->pfd);
	free(tp);
}

const char *transport_current_url(const struct transport *tp)
{
	return tp ? endpoints_current(&tp->ep) : "";
}

uint64_t transport_url_gen(const struct transport *tp)
{
	return tp ? tp->ep.gen : 0;
}

size_t transport_active(const struct transport *tp)
{
	return tp ? tp->active : 0;
}

/* ---- the request's steps ---- */

static void finish(struct transport_req *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void finish(struct transport_req *r, const char *fmt, ...)
{
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(r->err, sizeof(r->err), fmt, ap);
		va_end(ap);
	}
	r->state = R_DONE;
	r->want = 0;
}

static void start_resolve(struct transport_req *r)
{
	r->c = NULL;
	r->reused = false;
	r->connect_deadline_ms = jv_now_mono_ms() + r->tp->connect_timeout_ms;
	int rc = tp_resolve_start(r->dial_host, r->dial_port, &r->res);
	if (rc) {
		finish(r, "cannot resolve %s'%s': %s", r->via_proxy ? "the proxy " : "", r->dial_host,
		       strerror(-rc));
		return;
	}
	r->state = R_RESOLVE;
	r->want = POLLIN;
}

/* Take a pooled connection to the URL's server, or start a new one. */
static void start_connection(struct transport_req *r)
{
	struct tp_conn *c = tp_pool_take(&r->tp->pool, r->key, r->tp->tls);
	if (c) {
		r->c = c;
		r->reused = true;
		r->state = R_SEND;
		r->want = POLLOUT;
		return;
	}
	start_resolve(r);
}

static int open_socket(struct transport_req *r, const struct addrinfo *ai)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
		return -errno;
	int one = 1, idle = 60;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof(idle));
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

/* Try the next address; each gets an equal share of what is left of the
 * connect timeout. */
static void next_address(struct transport_req *r, int last_error)
{
	req_drop_conn(r);
	while (r->ai_next) {
		const struct addrinfo *ai = r->ai_next;
		r->ai_next = ai->ai_next;
		int fd = open_socket(r, ai);
		if (fd < 0) {
			last_error = fd;
			continue;
		}
		r->c = calloc(1, sizeof(*r->c));
		if (!r->c) {
			close(fd);
			finish(r, "out of memory");
			return;
		}
		r->c->fd = fd;
		snprintf(r->c->key, sizeof(r->c->key), "%s", r->key);
		size_t left = 1;
		for (const struct addrinfo *a = r->ai_next; a; a = a->ai_next)
			left++;
		int64_t now = jv_now_mono_ms();
		r->attempt_deadline_ms = now + (r->connect_deadline_ms - now) / (int64_t)left;
		r->state = R_CONNECT;
		r->want = POLLOUT;
		return;
	}
	finish(r, "cannot connect to %s: %s", r->peer, strerror(last_error ? -last_error : ECONNREFUSED));
}

static void step_resolve(struct transport_req *r)
{
	int rc = tp_resolve_result(r->res, &r->ai, r->err, sizeof(r->err));
	if (rc == -EAGAIN)
		return;
	tp_resolve_cancel(r->res);
	r->res = NULL;
	if (rc) {
		finish(r, NULL);
		return;
	}
	r->ai_next = r->ai;
	next_address(r, 0);
}

static void start_tls(struct transport_req *r)
{
	struct transport *tp = r->tp;
	if (!tp->tls && tp_tls_conf_new(tp->ca_file, tp->insecure, &tp->tls)) {
		finish(r, "cannot set up TLS: out of memory");
		return;
	}
	if (tp_tls_new(tp->tls, r->c->fd, r->url.host, &r->c->tls, r->err, sizeof(r->err))) {
		finish(r, NULL);
		return;
	}
	r->c->tls_conf = tp->tls;
	r->state = R_TLS;
	r->want = POLLOUT;
}

/* Connected to the proxy: ask it for a tunnel to the control plane. */
static void start_tunnel(struct transport_req *r)
{
	if (r->tun.data)
		explicit_bzero(r->tun.data, r->tun.len);
	jv_buf_free(&r->tun);
	jv_buf_init(&r->tun, 0);
	if (tp_connect_format(&r->tun, &r->url, r->proxy.auth)) {
		finish(r, "out of memory");
		return;
	}
	r->sent = 0;
	tp_answer_free(&r->ans);
	tp_answer_init(&r->ans, r->tp->max_response);
	r->ans.head_only = true;
	r->state = R_TUNNEL_SEND;
	r->want = POLLOUT;
}

static void step_connect(struct transport_req *r)
{
	struct pollfd p = {.fd = r->c->fd, .events = POLLOUT};
	if (poll(&p, 1, 0) == 0) {
		if (jv_now_mono_ms() >= r->attempt_deadline_ms && r->ai_next)
			next_address(r, -ETIMEDOUT);
		return;
	}
	int soerr = 0;
	socklen_t len = sizeof(soerr);
	if (getsockopt(r->c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
		soerr = errno;
	if (soerr) {
		next_address(r, -soerr);
		return;
	}
	freeaddrinfo(r->ai);
	r->ai = r->ai_next = NULL;
	if (r->via_proxy && r->url.https) {
		start_tunnel(r);
		return;
	}
	if (r->url.https) {
		start_tls(r);
		return;
	}
	r->state = R_SEND;
	r->want = POLLOUT;
}

static void step_tls(struct transport_req *r)
{
	int rc = tp_tls_handshake(r->c->tls, &r->want, r->err, sizeof(r->err));
	if (rc == -EAGAIN)
		return;
	if (rc) {
		finish(r, NULL);
		return;
	}
	r->state = R_SEND;
	r->want = POLLOUT;
}

/* The server closed a pooled connection before answering: send again once on a new one. */
static bool retry_fresh(struct transport_req *r)
{
	if (!r->reused || r->ans.started)
		return false;
	req_drop_conn(r);
	r->sent = 0;
	tp_answer_free(&r->ans);
	tp_answer_init(&r->ans, r->tp->max_response);
	start_resolve(r);
	return true;
}

static ssize_t conn_io(struct transport_req *r, bool writing, void *buf, size_t len)
{
	struct tp_conn *c = r->c;
	if (c->tls)
		return tp_tls_io(c->tls, writing, buf, len, &r->want, r->err, sizeof(r->err));
	ssize_t n = writing ? send(c->fd, buf, len, MSG_NOSIGNAL) : recv(c->fd, buf, len, 0);
	if (n >= 0)
		return n;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
		r->want = writing ? POLLOUT : POLLIN;
		return -EAGAIN;
	}
	snprintf(r->err, sizeof(r->err), "%s %s failed: %s", writing ? "sending to" : "receiving from",
	         r->peer, strerror(errno));
	return -EIO;
}

/* After conn_io: is this step over (waiting for the socket, sent again, or failed)? */
static bool io_stop(struct transport_req *r, ssize_t n)
{
	if (n == -EAGAIN)
		return true;
	if (n < 0) {
		if (!retry_fresh(r))
			finish(r, NULL);
		return true;
	}
	return false;
}

/* Send what is left of b; true once all of it is out. */
static bool send_buf(struct transport_req *r, const struct jv_buf *b)
{
	while (r->sent < b->len) {
		ssize_t n = conn_io(r, true, b->data + r->sent, b->len - r->sent);
		if (io_stop(r, n))
			return false;
		r->sent += (size_t)n;
	}
	r->want = POLLIN;
	return true;
}

static void step_send(struct transport_req *r)
{
	if (send_buf(r, &r->out))
		r->state = R_RECV; /* the bytes are wiped once the answer starts: until then a
		                    * closed kept connection means sending them again */
}

static void step_tunnel_send(struct transport_req *r)
{
	if (send_buf(r, &r->tun)) {
		explicit_bzero(r->tun.data, r->tun.len); /* the proxy's credentials are out */
		r->sent = 0;
		r->state = R_TUNNEL_RECV;
	}
}

/* The proxy's answer to CONNECT: 2xx and nothing after it opens the tunnel. */
static void tunnel_answered(struct transport_req *r)
{
	struct tp_answer *a = &r->ans;
	unsigned st = a->parser.status_code;
	a->complete = false; /* the proxy's answer is never the control plane's */
	const char *hint = st == 407 ? (r->proxy.auth[0] ? ": it refused the user and password of the proxy URL"
	                                                 : ": it asks for credentials (put them in the proxy URL)")
	                             : "";
	if (st < 200 || st > 299) {
		finish(r, "the proxy %s port %s refused the tunnel to %s port %s: HTTP %u%s", r->proxy.host,
		       r->proxy.port, r->url.host, r->url.port, st, hint);
		return;
	}
	if (a->extra) {
		finish(r, "the proxy %s port %s sent data after its answer to CONNECT", r->proxy.host, r->proxy.port);
		return;
	}
	tp_answer_free(&r->ans);
	tp_answer_init(&r->ans, r->tp->max_response);
	start_tls(r);
}

static void step_tunnel_recv(struct transport_req *r)
{
	char buf[1024];
	for (;;) {
		ssize_t n = conn_io(r, false, buf, sizeof(buf));
		if (io_stop(r, n))
			return;
		int rc = tp_answer_feed(&r->ans, buf, (size_t)n);
		if (r->ans.complete) {
			tunnel_answered(r);
			return;
		}
		if (rc || n == 0) {
			finish(r, "the proxy %s port %s %s", r->proxy.host, r->proxy.port,
			       n == 0 ? "closed the connection without answering CONNECT"
			              : "answered CONNECT with something that is not HTTP");
			return;
		}
	}
}

static void answer_done(struct transport_req *r)
{
	struct tp_answer *a = &r->ans;
	if (r->via_proxy && !r->url.https && a->parser.status_code == 407) {
		a->complete = false; /* the proxy's answer, not the control plane's */
		finish(r, "the proxy %s port %s asks for credentials (HTTP 407): %s", r->proxy.host,
		       r->proxy.port, r->proxy.auth[0] ? "it refused the user and password of the proxy URL"
		                                       : "put them in the proxy URL (http://user:password@host:port)");
		return;
	}
	if (a->keep_alive && r->c) {
		tp_pool_put(&r->tp->pool, r->c, r->tp->tls);
		r->c = NULL;
	}
	finish(r, NULL);
}

static void step_recv(struct transport_req *r)
{
	char buf[READ_CHUNK];
	for (;;) {
		ssize_t n = conn_io(r, false, buf, sizeof(buf));
		if (io_stop(r, n))
			return;
		if (n == 0 && retry_fresh(r))
			return;
		if (n > 0 && !r->ans.started) /* no sending again now: the token can go */
			explicit_bzero(r->out.data, r->out.len);
		int rc = tp_answer_feed(&r->ans, buf, (size_t)n);
		if (rc == -EFBIG) {
			finish(r, "answer larger than max_response");
			return;
		}
		if (r->ans.complete) {
			answer_done(r);
			return;
		}
		if (rc || n == 0) {
			finish(r, "%s", n == 0 ? (r->ans.started ? "the server closed the connection before the answer was complete"
			                                     : "the server closed the connection without answering")
			                       : "the server's answer is not valid HTTP");
			return;
		}
	}
}

static void step(struct transport_req *r)
{
	int64_t now = jv_now_mono_ms();
	if (now >= r->deadline_ms) {
		finish(r, "timed out after %ld ms", r->timeout_ms);
		return;
	}
	if (r->state <= R_TLS && !r->reused && now >= r->connect_deadline_ms) {
		finish(r, "cannot connect to %s: timed out after %ld ms", r->peer, r->tp->connect_timeout_ms);
		return;
	}
	enum rstate before;
	do {
		before = r->state;
		switch (r->state) {
		case R_RESOLVE:
			step_resolve(r);
			break;
		case R_CONNECT:
			step_connect(r);
			break;
		case R_TUNNEL_SEND:
			step_tunnel_send(r);
			break;
		case R_TUNNEL_RECV:
			step_tunnel_recv(r);
			break;
		case R_TLS:
			step_tls(r);
			break;
		case R_SEND:
			step_send(r);
			break;
		case R_RECV:
			step_recv(r);
			break;
		case R_DONE:
			break;
		}
	} while (r->state != before && r->state != R_DONE);
}

/* Directly or through a proxy: where to connect, and the connection's key. */
static void route(struct transport_req *r, const struct transport *tp, const char **proxy_err)
{
	const struct tp_proxy *p = tp_proxy_for(&tp->proxies, &r->url, proxy_err);
	r->via_proxy = p != NULL;
	if (p)
		r->proxy = *p;
	r->dial_host = p ? r->proxy.host : r->url.host;
	r->dial_port = p ? r->proxy.port : r->url.port;
	snprintf(r->peer, sizeof(r->peer), "%s%s port %s", p ? "the proxy " : "", r->dial_host, r->dial_port);
	/* Through a proxy: http:// requests to any server share its connections; a tunnel is one server's. */
	snprintf(r->key, sizeof(r->key), "%s via %s", p && !r->url.https ? "http://" : r->url.key,
	         p ? p->authority : "-");
}

int transport_post(struct transport *tp, const char *path, char *body, long timeout_ms,
                   transport_cb cb, void *ud, struct transport_req **out)
{
	if (out)
		*out = NULL;
	struct transport_req *r = calloc(1, sizeof(*r));
	if (!r) {
		free(body);
		return -ENOMEM;
	}
	char err[300];
	int rc = tp_url_parse(endpoints_current(&tp->ep), &r->url, err, sizeof(err));
	jv_buf_init(&r->out, 0);
	jv_buf_init(&r->tun, 0);
	const char *proxy_err = NULL;
	if (rc == 0)
		route(r, tp, &proxy_err);
	if (rc == 0)
		rc = tp_request_format(&r->out, &r->url, path, tp->auth,
		                       r->via_proxy && !r->url.https ? r->proxy.auth : NULL, body);
	free(body);
	if (rc) {
		req_free(r);
		return rc;
	}
	tp_answer_init(&r->ans, tp->max_response);
	r->tp = tp;
	r->cb = cb;
	r->ud = ud;
	r->ep_gen = tp->ep.gen;
	r->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000L;
	r->started_ms = jv_now_mono_ms();
	r->deadline_ms = r->started_ms + r->timeout_ms;
	r->next = tp->reqs;
	if (tp->reqs)
		tp->reqs->prev = r;
	tp->reqs = r;
	tp->active++;
	if (proxy_err)
		finish(r, "%s", proxy_err);
	else
		start_connection(r);
	step(r);
	if (out)
		*out = r;
	return 0;
}

/* ---- the wait and the completions ---- */

static int req_fd(const struct transport_req *r)
{
	if (r->state == R_RESOLVE)
		return tp_resolve_fd(r->res);
	return r->state != R_DONE && r->c ? r->c->fd : -1;
}

int transport_wait(struct transport *tp, struct pollfd *fds, unsigned nfds, int timeout_ms)
{
	if (nfds > TRANSPORT_MAX_EXTRA_FDS)
		nfds = TRANSPORT_MAX_EXTRA_FDS;
	size_t need = nfds + tp->active;
	if (need > tp->pfd_cap) {
		struct pollfd *n = realloc(tp->pfd, need * sizeof(*n));
		if (!n)
			return -ENOMEM;
		tp->pfd = n;
		tp->pfd_cap = need;
	}
	if (nfds)
		memcpy(tp->pfd, fds, nfds * sizeof(*fds));
	int64_t now = jv_now_mono_ms(), until = now + (timeout_ms < 0 ? 0 : timeout_ms);
	size_t n = nfds;
	for (struct transport_req *r = tp->reqs; r; r = r->next) {
		int64_t d = r->deadline_ms;
		if (r->state <= R_TLS && !r->reused && r->connect_deadline_ms < d)
			d = r->connect_deadline_ms;
		if (r->state == R_CONNECT && r->ai_next && r->attempt_deadline_ms < d)
			d = r->attempt_deadline_ms;
		if (r->state == R_DONE)
			d = now;
		if (d < until)
			until = d;
		int fd = req_fd(r);
		if (fd >= 0)
			tp->pfd[n++] = (struct pollfd){.fd = fd, .events = r->want ? r->want : POLLIN};
	}
	int wait = until > now ? (int)(until - now) : 0;
	int rc = poll(tp->pfd, (nfds_t)n, wait);
	if (rc < 0 && errno != EINTR)
		return -errno;
	for (unsigned i = 0; i < nfds; i++)
		fds[i].revents = rc > 0 ? tp->pfd[i].revents : 0;
	return 0;
}

static void respond(struct transport *tp, struct transport_req *r)
{
	struct tp_answer *a = &r->ans;
	struct transport_response resp = {.retry_after_ms = -1};
	resp.too_large = a->too_large;
	/* A transfer that failed half-way has no trustworthy answer. */
	resp.status = a->complete ? (long)a->parser.status_code : 0;
	if (a->complete || a->too_large)
		resp.retry_after_ms = a->retry_after_ms;
	if (!a->complete)
		resp.error = r->err[0] ? r->err : "no answer";
	resp.body = a->body.data ? a->body.data : "";
	resp.len = a->body.len;
	resp.elapsed_ms = jv_now_mono_ms() - r->started_ms;
	resp.failover = endpoints_report(&tp->ep, r->ep_gen, resp.status, resp.too_large, resp.error);
	if (r->cb)
		r->cb(r->ud, &resp);
}

void transport_perform(struct transport *tp)
{
	for (struct transport_req *r = tp->reqs; r; r = r->next)
		if (r->state != R_DONE)
			step(r);
	/* One at a time from the head: a callback may add or abort requests. */
	for (;;) {
		struct transport_req *r = tp->reqs;
		while (r && r->state != R_DONE)
			r = r->next;
		if (!r)
			break;
		req_unlink(tp, r);
		respond(tp, r);
		req_free(r);
	}
}

int transport_route(const struct transport *tp, const char *url, char *buf, size_t len)
{
	return tp_route_describe(&tp->proxies, url, buf, len);
}
