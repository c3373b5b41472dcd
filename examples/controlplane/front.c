/* front.c — the accept front: a request reaches a civetweb worker only once
 * it has fully arrived.
 *
 * civetweb gives each connection a worker thread from accept to close, so
 * clients that send slowly (or never finish) could hold every worker and
 * starve agents and admins. The front owns the public listening socket and
 * reads requests on one epoll thread, framing them with http_parser, under
 * whole-request deadlines: the head within FRONT_HEAD_MS of the accept (of
 * the first byte of a kept connection's next request), the
 * body within FRONT_BODY_MS of the head. A complete request is then sent on,
 * byte for byte, to civetweb on an ephemeral 127.0.0.1 port and the answer is
 * relayed back. The client's connection is kept across requests when it
 * may be (front_keep.c: idle timeout, per-address limits, pipelining); the
 * one to civetweb is one per request. A WebSocket upgrade becomes a two-way
 * tunnel, to the
 * libwebsockets server (ws_lws.c) rather than civetweb, once its head is
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
#include <time.h>
#include <unistd.h>

#include <http_parser.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

/* ---- the connection table ---- */

void flist_push(struct flist *l, struct fconn *c)
{
	c->list = l;
	c->pnext = NULL;
	c->pprev = l->tail;
	if (l->tail)
		l->tail->pnext = c;
	else
		l->head = c;
	l->tail = c;
	l->n++;
}

void flist_unlink(struct fconn *c)
{
	struct flist *l = c->list;
	if (!l)
		return;
	if (c->pprev)
		c->pprev->pnext = c->pnext;
	else
		l->head = c->pnext;
	if (c->pnext)
		c->pnext->pprev = c->pprev;
	else
		l->tail = c->pprev;
	c->pprev = c->pnext = NULL;
	c->list = NULL;
	l->n--;
}

void front_pending_unlink(struct front *f, struct fconn *c)
{
	if (c->list == &f->pending)
		flist_unlink(c);
}

void front_conn_close(struct front *f, struct fconn *c)
{
	flist_unlink(c);
	if (c->st == FS_PARKED) {
		f->nparked--;
		atomic_store(&f->cp->parked_polls, (int)f->nparked);
	}
	if (c->slot)
		f->inflight--;
	c->slot = false;
	if (c->prev)
		c->prev->next = c->next;
	else
		f->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		f->tail = c->prev;
	f->nconns--;
	front_tls_detach(c);
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
	for (struct fconn **pp = &f->ready; *pp;) { /* a closed one may still be queued */
		if ((*pp)->closed)
			*pp = (*pp)->rnext;
		else
			pp = &(*pp)->rnext;
	}
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
int front_arm(struct front *f, struct fconn *c)
{
	uint32_t cw = 0, bw = 0;
	bool out_pending = c->out_off < c->out_len;
	switch (c->st) {
	case FS_HEAD:
	case FS_BODY:
		cw = EPOLLIN;
		break;
	case FS_WAIT:
		break; /* only a hang-up or an error */
	case FS_PROXY:
		cw = out_pending && !c->hold ? EPOLLOUT : 0;
		break;
	case FS_PARKED:
		cw = EPOLLIN | EPOLLRDHUP;
		break;
	case FS_TUNNEL:
		cw = EPOLLRDHUP | (out_pending ? EPOLLOUT : 0) |
		     (c->req.len - c->req_off < FRONT_TUNNEL_BUF ? EPOLLIN : 0);
		break;
	case FS_LINGER:
		cw = EPOLLIN | (out_pending ? EPOLLOUT : 0);
		break;
	}
	cw |= c->tls_want;
	if ((cw & EPOLLIN) && !c->rqueued && front_tls_pending(c)) {
		c->rqueued = true; /* served by the loop at once: epoll cannot see these bytes */
		c->rnext = f->ready;
		f->ready = c;
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

/* Done with civetweb for this request: its socket and backend slot. */
void front_backend_close(struct front *f, struct fconn *c)
{
	if (c->bfd >= 0)
		close(c->bfd);
	c->bfd = -1;
	c->bmask = 0;
	if (c->slot)
		f->inflight--;
	c->slot = false;
}

/* Queue bytes for the client (out must have been drained or be empty). */
static int out_set(struct fconn *c, const char *data, size_t len)
{
	if (!c->out) {
		c->out = malloc(FRONT_RELAY_BUF + FRONT_OUT_SLACK);
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
void front_linger(struct front *f, struct fconn *c)
{
	flist_unlink(c); /* pending or waiting */
	c->st = FS_LINGER;
	c->hold = false;
	c->deadline = jv_now_mono_ms() + FRONT_LINGER_MS;
	front_backend_close(f, c);
	if (c->out_off >= c->out_len)
		front_cshutdown(c);
}

/* The front answers by itself, then lingers. c may be closed on return. */
void front_answer(struct front *f, struct fconn *c, int status, const char *extra, const char *msg)
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
	front_linger(f, c);
	if (front_arm(f, c) < 0)
		front_conn_close(f, c);
}

static void note_drop(struct front *f, struct fconn *c, unsigned long *counter)
{
	(*counter)++;
	f->last_ip = c->ip;
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
	for (struct fconn *p = f->pending.head; p; p = p->pnext) {
		if (p->ip == ip && mine++ == 0)
			oldest_mine = p;
	}
	for (struct fconn *p = f->idle.head; p; p = p->pnext)
		mine += p->ip == ip;
	if (mine >= FRONT_PENDING_PER_CLIENT) {
		struct fconn *kept = front_idle_oldest(f, true, ip);
		if (kept) {
			front_conn_close(f, kept); /* the cheapest to lose: its client reconnects */
		} else {
			if (now - oldest_mine->born < FRONT_EVICT_MIN_MS)
				return false;
			note_drop(f, oldest_mine, &f->evicted);
			front_conn_close(f, oldest_mine);
		}
	}
	if (f->nconns < f->conns_max)
		return true;
	struct fconn *oldest = f->idle.head ? f->idle.head : f->pending.head;
	if (!oldest || (!oldest->idle && now - oldest->born < FRONT_EVICT_MIN_MS))
		return false;
	if (!oldest->idle)
		note_drop(f, oldest, &f->evicted);
	front_conn_close(f, oldest);
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
				/* Free a slot: the oldest idle kept connection, else the oldest pending request. */
				if (f->idle.head || f->pending.head)
					front_conn_close(f, f->idle.head ? f->idle.head : f->pending.head);
			}
			return;
		}
		uint32_t ip = peer.sin_family == AF_INET ? peer.sin_addr.s_addr : 0;
		int64_t now = jv_now_mono_ms();
		struct fconn *c = make_room(f, ip, now) ? calloc(1, sizeof(*c)) : NULL;
		if (!c) {
			f->refused++;
			f->last_ip = ip; /* the report names it */
			close(fd);
			continue;
		}
		/* A kept connection's answer goes out in a few writes (head, body): none
		 * may wait for the client's delayed ACK (Nagle). */
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c->cfd = fd;
		c->bfd = -1;
		c->ip = ip;
		c->st = FS_HEAD;
		c->limit = FRONT_ANON_MAX;
		c->born = now;
		c->deadline = now + FRONT_HEAD_MS;
		atomic_fetch_add(&f->cp->metrics.front_accepted, 1);
		jv_buf_init(&c->req, FRONT_REQ_MAX);
		http_parser_init(&c->hp, HTTP_REQUEST);
		c->hp.data = c;
		c->cend = (struct fend){.c = c, .backend = false};
		c->cmask = EPOLLIN;
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &c->cend};
		if (front_tls_attach(f, c) < 0 || epoll_ctl(f->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			f->refused++;
			front_tls_detach(c);
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
		flist_push(&f->pending, c);
		f->nconns++;
		/* Most requests are already here: take them before accepting more,
		 * so a burst of new connections cannot evict them. */
		front_read_request(f, c);
	}
}

static void expire(struct front *f, int64_t now)
{
	struct fconn *next;
	int64_t tick = now + FRONT_TICK_MS;
	for (struct fconn *c = f->head; c; c = next) {
		next = c->next;
		if (c->st == FS_PARKED) {
			front_park_expire(f, c, now);
			if (!c->closed && c->st == FS_PARKED && c->deadline < tick)
				tick = c->deadline;
			continue;
		}
		if (!c->deadline || now < c->deadline)
			continue;
		if (c->idle) {
			front_conn_close(f, c); /* kept, and no next request came */
		} else if (c->st == FS_HEAD && c->ssl && !c->tls_up) {
			note_drop(f, c, &f->timed_out);
			front_conn_close(f, c); /* no TLS yet to say 408 over */
		} else if (c->st == FS_HEAD || c->st == FS_BODY) {
			note_drop(f, c, &f->timed_out);
			front_answer(f, c, 408, NULL, c->st == FS_HEAD ? "request head not received in time"
			                                          : "request body not received in time");
		} else {
			front_conn_close(f, c); /* lingered long enough, or stalled taking an answer */
		}
	}
	f->next_tick = tick;
	if ((f->evicted || f->timed_out || f->refused) && now - f->last_report >= FRONT_REPORT_MS) {
		char ip[INET_ADDRSTRLEN] = "?";
		inet_ntop(AF_INET, &f->last_ip, ip, sizeof(ip));
		jv_warn(NULL, NULL, "front: dropped slow or excess clients: %lu evicted, %lu timed out, %lu refused "
		        "(last from %s)", f->evicted, f->timed_out, f->refused, ip);
		f->evicted = f->timed_out = f->refused = 0;
		f->last_report = now;
	}
	if (f->tls_failed && now - f->last_tls_report >= FRONT_REPORT_MS) {
		char ip[INET_ADDRSTRLEN] = "?";
		inet_ntop(AF_INET, &f->last_ip, ip, sizeof(ip));
		jv_warn(NULL, NULL, "front: %lu TLS handshakes failed (the last from %s: %s)", f->tls_failed, ip,
		        f->tls_last_err);
		f->tls_failed = 0;
		f->last_tls_report = now;
	}
}

static void on_event(struct front *f, struct fend *end, uint32_t events)
{
	if (end == &f->lend) {
		accept_some(f);
		return;
	}
	struct fconn *c = end->c;
	/* Events of a connection closed earlier in this batch are skipped:
	 * closing removes it from epoll, and its ends are marked. */
	if (c->closed)
		return;
	if (c->st == FS_HEAD || c->st == FS_BODY) {
		if (!end->backend)
			front_read_request(f, c);
		else if (c->bfd >= 0)
			front_conn_close(f, c);
		/* else: civetweb's socket of the answer before, closed in this batch */
	} else if (c->st == FS_LINGER) {
		front_on_linger(f, c);
	} else if (c->st == FS_PARKED || c->st == FS_WAIT) {
		front_on_parked(f, c);
	} else {
		front_relay(f, c, end->backend, events);
	}
}

/* TLS connections with decrypted bytes epoll cannot see, as if readable.
 * Those that still have some after their turn wait for the next round; a
 * connection closed meanwhile stays queued, skipped, until free_dead. */
static void serve_ready(struct front *f)
{
	struct fconn *c = f->ready;
	f->ready = NULL;
	while (c) {
		struct fconn *next = c->rnext;
		c->rqueued = false;
		c->rnext = NULL;
		if (!c->closed)
			on_event(f, &c->cend, EPOLLIN);
		c = next;
	}
}

static void *front_main(void *arg)
{
	struct front *f = arg;
	struct epoll_event evs[64];
	f->next_tick = jv_now_mono_ms() + FRONT_TICK_MS;
	while (!atomic_load(&f->stop)) {
		int64_t wait = f->ready ? 0 : f->next_tick - jv_now_mono_ms();
		int n = epoll_wait(f->epfd, evs, JV_ARRAY_LEN(evs), wait < 0 ? 0 : wait > FRONT_TICK_MS ? FRONT_TICK_MS : (int)wait);
		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr)
				on_event(f, evs[i].data.ptr, evs[i].events);
			else
				front_take_wakes(f); /* the wake-up eventfd */
		}
		serve_ready(f);
		int64_t now = jv_now_mono_ms();
		if (now >= f->next_tick || atomic_load(&f->release_all))
			expire(f, now);
		front_start_waiting(f);
		atomic_store(&f->busy, f->nparked + f->inflight + f->waiting[0].n + f->waiting[1].n);
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

/* A parked poll or a request still arriving costs one descriptor; a request
 * at civetweb (at most inflight_max) or a WebSocket tunnel three (the
 * client's, ours to civetweb, civetweb's own). Take the hard limit and size
 * the table to it. */
static size_t conns_budget(size_t backend_max)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	size_t need = FRONT_FD_RESERVE + 2 * backend_max;
	size_t n = rl.rlim_cur > need + 64 ? (size_t)rl.rlim_cur - need : 64;
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
	pthread_mutex_init(&f->qmu, NULL);
	/* Enough requests at civetweb to keep every worker busy, few enough that
	 * its accept queue never overflows (a dropped SYN costs a second). */
	f->inflight_max = (size_t)cp->cfg.threads * 2;
	f->conns_max = conns_budget(f->inflight_max + (size_t)cp->ws_max);
	memcpy(f->secret, cp->front_secret, sizeof(f->secret));
	f->backend.sin_family = AF_INET;
	f->backend.sin_port = htons(backend_port);
	f->backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	f->ws_backend = f->backend;
	f->ws_backend.sin_port = htons(cp->ws_port);
	struct sockaddr_in sa;
	int one = 1, rc;
	if (front_park_init(f) < 0) {
		snprintf(err, errlen, "out of memory");
		rc = -ENOMEM;
		goto fail;
	}
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
		front_conn_close(f, f->head);
	free_dead(f);
	if (f->lfd >= 0)
		close(f->lfd);
	if (f->epfd >= 0)
		close(f->epfd);
	if (f->wakefd >= 0)
		close(f->wakefd);
	front_park_free(f);
	pthread_mutex_destroy(&f->qmu);
	free(f);
}

void front_wake(struct front *f, size_t agent_index, uint64_t gen)
{
	pthread_mutex_lock(&f->qmu);
	if (gen > f->wgen[agent_index])
		f->wgen[agent_index] = gen;
	bool first = f->qlen == 0;
	if (!f->queued[agent_index]) {
		f->queued[agent_index] = true;
		f->queue[f->qlen++] = (uint32_t)agent_index;
	}
	pthread_mutex_unlock(&f->qmu);
	uint64_t one = 1;
	if (first) /* else a write is pending already: the queue is taken whole */
		(void)!write(f->wakefd, &one, sizeof(one));
}

void front_drain(struct front *f, int ms)
{
	if (!f)
		return;
	atomic_store(&f->busy, (size_t)1); /* until the thread has looked */
	atomic_store(&f->release_all, true);
	uint64_t one = 1;
	(void)!write(f->wakefd, &one, sizeof(one));
	struct timespec step = {.tv_sec = 0, .tv_nsec = 20 * 1000000L};
	for (int i = 0; i < ms / 20 && atomic_load(&f->busy) > 0; i++)
		nanosleep(&step, NULL);
}
