/* front_park.c — long polls parked in the accept front.
 *
 * Every request the front relays carries a marker header (CP_FRONT_HEADER:
 * the process's random secret and the most the poll may still wait, in ms),
 * inserted after the request line; clients cannot send that header
 * themselves (front_request.c answers 400). A long poll that finds nothing
 * to do is answered by its handler "HTTP/1.1 299 Park" with X-JV-Park: the
 * agent's index, the wake generation it saw and the time left. The front
 * then keeps the client's connection and the request bytes (a few hundred
 * bytes; no civetweb connection, no thread) in a list per agent, and sends
 * the same request again, with the marker's wait rewritten in place:
 *
 *   - when the agent is woken (front_wake, from lc_wake_parked: new work, a
 *     cancel, a console change), with the time left: the handler assigns,
 *     or parks it again;
 *   - at its deadline, or when the process stops, with 0 ms: the handler
 *     gives the normal answer (leases renewed, lastSeen, consoles), so the
 *     handler stays the only place that decides what a poll answers.
 *
 * A wake-up that comes between the handler's decision and the park reaching
 * the front is not lost: the front remembers the newest generation each
 * agent was woken at, and a park older than that is sent again at once.
 * A client that closes its connection while parked frees its slot. Resent
 * polls after a deadline queue behind new requests for a backend slot. */
#include "front_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define WAIT_DIGITS 9

int front_park_init(struct front *f)
{
	size_t n = f->cp->nagents ? f->cp->nagents : 1;
	f->parked = calloc(n, sizeof(*f->parked));
	f->queue = calloc(n, sizeof(*f->queue));
	f->wgen = calloc(n, sizeof(*f->wgen));
	f->queued = calloc(n, sizeof(*f->queued));
	return f->parked && f->queue && f->wgen && f->queued ? 0 : -ENOMEM;
}

void front_park_free(struct front *f)
{
	free(f->parked);
	free(f->queue);
	free(f->wgen);
	free(f->queued);
}

static void set_wait(struct fconn *c, int64_t ms)
{
	char digits[WAIT_DIGITS + 1];
	snprintf(digits, sizeof(digits), "%0*lld", WAIT_DIGITS,
	         (long long)(ms < 0 ? 0 : ms > CP_FRONT_WAIT_ANY ? CP_FRONT_WAIT_ANY : ms));
	memcpy(c->req.data + c->mark_off, digits, WAIT_DIGITS);
}

int front_mark(struct front *f, struct fconn *c)
{
	char *nl = c->req.len ? memchr(c->req.data, '\n', c->req.len) : NULL;
	if (!nl)
		return -EINVAL;
	size_t at = (size_t)(nl - c->req.data) + 1;
	char mark[FRONT_MARK_MAX];
	int n = snprintf(mark, sizeof(mark), "%s: %s %0*d\r\n", CP_FRONT_HEADER, f->secret, WAIT_DIGITS,
	                 CP_FRONT_WAIT_ANY);
	if (n <= 0 || (size_t)n >= sizeof(mark) || jv_buf_append(&c->req, mark, (size_t)n) < 0)
		return -ENOMEM;
	memmove(c->req.data + at + n, c->req.data + at, c->req.len - (size_t)n - at);
	memcpy(c->req.data + at, mark, (size_t)n);
	c->mark_off = at + (size_t)n - 2 - WAIT_DIGITS;
	return 0;
}

/* Send a parked poll on, allowed to wait wait_ms more. */
static void resend(struct front *f, struct fconn *c, int64_t wait_ms, int prio)
{
	flist_unlink(c);
	f->nparked--;
	atomic_store(&f->cp->parked_polls, (int)f->nparked);
	set_wait(c, wait_ms);
	c->st = FS_WAIT;
	front_forward(f, c, prio);
}

/* "X-JV-Park: INDEX GEN WAIT_MS" from the held answer; false when malformed. */
static bool park_fields(struct front *f, struct fconn *c, size_t *idx, uint64_t *gen, int64_t *wait_ms)
{
	char head[512];
	size_t n = c->out_len < sizeof(head) - 1 ? c->out_len : sizeof(head) - 1;
	memcpy(head, c->out, n);
	head[n] = '\0';
	const char *h = strstr(head, "\r\nX-JV-Park: ");
	unsigned long long i, g;
	long long w;
	if (!h || sscanf(h + 13, "%llu %llu %lld", &i, &g, &w) != 3 || i >= f->cp->nagents || w < 0)
		return false;
	*idx = (size_t)i;
	*gen = (uint64_t)g;
	*wait_ms = (int64_t)w;
	return true;
}

void front_park(struct front *f, struct fconn *c)
{
	size_t idx;
	uint64_t gen;
	int64_t wait_ms;
	front_backend_close(f, c);
	c->hold = false;
	if (!park_fields(f, c, &idx, &gen, &wait_ms)) {
		jv_error(NULL, NULL, "front: a malformed park answer from the HTTP workers");
		c->out_len = c->out_off = 0;
		front_answer(f, c, 503, "Retry-After: 1\r\n", "server busy, try again");
		return;
	}
	/* What a parked poll keeps: the connection and the request. */
	free(c->out);
	c->out = NULL;
	c->out_len = c->out_off = 0;
	char *shrunk = realloc(c->req.data, c->req.len + 1);
	if (shrunk) {
		c->req.data = shrunk;
		c->req.cap = c->req.len + 1;
	}
	c->st = FS_PARKED;
	c->agent = (uint32_t)idx;
	c->deadline = jv_now_mono_ms() + wait_ms;
	flist_push(&f->parked[idx], c);
	f->nparked++;
	atomic_store(&f->cp->parked_polls, (int)f->nparked);
	if (c->deadline < f->next_tick)
		f->next_tick = c->deadline;
	pthread_mutex_lock(&f->qmu);
	bool stale = f->wgen[idx] > gen;
	pthread_mutex_unlock(&f->qmu);
	if (stale || atomic_load(&f->release_all))
		resend(f, c, stale ? wait_ms : 0, 0); /* woken meanwhile, or stopping */
	else if (front_arm(f, c) < 0)
		front_conn_close(f, c);
}

void front_on_parked(struct front *f, struct fconn *c)
{
	char sink[512];
	ssize_t n = front_cread(c, sink, sizeof(sink));
	if (n == 0 || (n < 0 && n != -EAGAIN)) {
		front_conn_close(f, c); /* gone (or half-closed): nobody to answer */
		return;
	}
	if (n > 0)
		c->keep = false; /* pipelined while parked: dropped, and closed after the answer */
	if (front_arm(f, c) < 0) /* TLS: what a read that waits needs; queued if bytes wait inside */
		front_conn_close(f, c);
}

void front_park_expire(struct front *f, struct fconn *c, int64_t now)
{
	if (now >= c->deadline || atomic_load(&f->release_all))
		resend(f, c, 0, 1);
}

void front_take_wakes(struct front *f)
{
	uint64_t v;
	(void)!read(f->wakefd, &v, sizeof(v));
	int64_t now = jv_now_mono_ms();
	for (;;) {
		/* One agent at a time: the lock is never held while sending. */
		pthread_mutex_lock(&f->qmu);
		if (f->qlen == 0) {
			pthread_mutex_unlock(&f->qmu);
			return;
		}
		uint32_t idx = f->queue[--f->qlen];
		f->queued[idx] = false;
		pthread_mutex_unlock(&f->qmu);
		while (f->parked[idx].head) {
			struct fconn *c = f->parked[idx].head;
			resend(f, c, c->deadline - now, 0);
		}
	}
}

void front_start_waiting(struct front *f)
{
	for (int prio = 0; prio < 2; prio++) {
		while (f->inflight < f->inflight_max && f->waiting[prio].head)
			front_connect_backend(f, f->waiting[prio].head);
	}
}
