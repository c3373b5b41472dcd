/* store_pg_evgroup.c — group commit of run events on PostgreSQL.
 *
 * Every events request is queued; a request that finds fewer than
 * EVQ_WRITERS writers at work becomes one itself (no thread of our own, no
 * timer: a lone request is written at once by its own thread). A writer takes
 * the queue's oldest requests, at most one per run and within EVQ_ROWS
 * events / EVQ_BYTES of bodies (always at least one request), stores them in
 * one transaction (pgs_events_group: one pipeline, one commit) and wakes
 * each of them. Requests arriving meanwhile wait for the next group, so
 * under load the commits per second stay about constant while the events
 * per commit grow. A request returns only after its group committed: an
 * answer of 2xx means stored. When a group of several fails, each of its
 * requests is tried alone, so one request the server refuses fails only
 * itself. A request for a run already in the group being formed waits for
 * the next one: each run's batches are applied one transaction after the
 * other, exactly as before. */
#include "store_pg_int.h"

#include <errno.h>
#include <string.h>

#define EVQ_WRITERS 2                  /* groups being committed at once */
#define EVQ_ROWS 4000                  /* events per group (a request alone may exceed it) */
#define EVQ_BYTES (8u * 1024 * 1024)   /* event bodies per group */
#define EVQ_REQS 64                    /* requests per group */

void pgs_evq_init(struct pgs_evq *q)
{
	pthread_mutex_init(&q->mu, NULL);
	q->head = q->tail = NULL;
	q->writers = 0;
}

void pgs_evq_destroy(struct pgs_evq *q)
{
	pthread_mutex_destroy(&q->mu);
}

static bool run_in(struct pgs_evreq *const *g, size_t k, const char *run_id)
{
	for (size_t i = 0; i < k; i++)
		if (strcmp(g[i]->run_id, run_id) == 0)
			return true;
	return false;
}

/* Take the next group off the queue (q->mu held): FIFO, skipping a run
 * already in the group, until a bound is reached. */
static size_t take_group(struct pgs_evq *q, struct pgs_evreq **g)
{
	size_t k = 0, rows = 0, bytes = 0;
	struct pgs_evreq **link = &q->head, *prev = NULL;
	while (*link && k < EVQ_REQS) {
		struct pgs_evreq *r = *link;
		if (k > 0 && (rows + r->n > EVQ_ROWS || bytes + r->bytes > EVQ_BYTES))
			break;
		if (run_in(g, k, r->run_id)) {
			prev = r;
			link = &r->next;
			continue;
		}
		*link = r->next; /* unlink */
		if (q->tail == r)
			q->tail = prev;
		r->taken = true;
		r->next = NULL;
		g[k++] = r;
		rows += r->n;
		bytes += r->bytes;
	}
	return k;
}

/* Write a group: together, or each alone when together failed. */
static void write_group(struct store *s, struct pgs_evreq *const *g, size_t k)
{
	if (pgs_events_group(s, g, k) == 0 || k == 1)
		return;
	for (size_t i = 0; i < k; i++)
		pgs_events_group(s, &g[i], 1);
}

/* Let queued requests become writers while there is room (q->mu held). */
static void wake_waiters(struct pgs_evq *q)
{
	int room = EVQ_WRITERS - q->writers;
	for (struct pgs_evreq *r = q->head; r && room > 0; r = r->next, room--)
		pthread_cond_signal(&r->cond);
}

/* Be a writer for one group (q->mu held on entry and on return). */
static void lead(struct store *s, struct pgs_evq *q)
{
	struct pgs_evreq *g[EVQ_REQS];
	size_t k = take_group(q, g);
	q->writers++;
	pthread_mutex_unlock(&q->mu);
	write_group(s, g, k);
	pthread_mutex_lock(&q->mu);
	q->writers--;
	for (size_t i = 0; i < k; i++) {
		g[i]->done = true;
		pthread_cond_signal(&g[i]->cond);
	}
	wake_waiters(q);
}

int pgs_events_append(struct store *s, const char *run_id, struct store_event *ev, size_t n, int64_t now,
                      int64_t *ack_seq, bool *was_acked)
{
	struct pgs_evreq req = {.run_id = run_id, .ev = ev, .n = n, .now = now, .was_acked = *was_acked};
	for (size_t i = 0; i < n; i++)
		req.bytes += strlen(ev[i].body);
	pthread_cond_init(&req.cond, NULL);
	struct pgs_evq *q = &pgs(s)->evq;
	pthread_mutex_lock(&q->mu);
	if (q->tail)
		q->tail->next = &req;
	else
		q->head = &req;
	q->tail = &req;
	while (!req.done) {
		if (!req.taken && q->writers < EVQ_WRITERS)
			lead(s, q);
		else
			pthread_cond_wait(&req.cond, &q->mu);
	}
	pthread_mutex_unlock(&q->mu);
	pthread_cond_destroy(&req.cond);
	if (req.rc == 0) {
		*ack_seq = req.ack_seq;
		*was_acked = req.was_acked;
	}
	return req.rc;
}
