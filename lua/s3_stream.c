/* s3_stream.c — a multipart upload fed by a byte stream (see s3_stream.h).
 *
 * parallel + 1 slots, each one part's buffer (allocated on first use): the
 * writer fills one, cuts it (QUEUED), and takes the next FREE one, waiting
 * when there is none; workers take the QUEUED part with the lowest number,
 * send it (BUSY) and leave it DONE; the writer hands DONE parts to on_ack in
 * the order they finished and frees their slot. The first failure is sticky:
 * it stops the workers and every later call returns it. */
#include "s3_stream.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "s3_req.h"

#define STREAM_MAX_PARALLEL 32
#define STREAM_PARTS_MAX 10000
/* The total is not known in advance: parts double in size every
 * STREAM_GROW_EVERY parts (a function of the part number only, so an
 * archive made again is cut at the same places): 16 MiB parts reach ~1 TiB
 * within S3's 10,000. */
#define STREAM_GROW_EVERY 2000

enum slot_state { SLOT_FREE = 0, SLOT_QUEUED, SLOT_BUSY, SLOT_DONE };

struct slot {
	unsigned char *buf;
	size_t cap, want, len; /* allocated, this part's size, filled */
	enum slot_state state;
	uint64_t seq; /* order of completion */
	struct s3_stream_part p;
	int rc;
	struct s3_err e;
};

struct s3_stream {
	struct s3_stream_opts o;
	struct s3_remote each; /* one connection's share of the bandwidth cap */
	pthread_mutex_t mu;
	pthread_cond_t work, done;
	struct slot slots[STREAM_MAX_PARALLEL + 1];
	int nslots;
	struct slot *cur; /* being filled (the writer's) */
	int cuts;         /* parts cut so far: the last part's number */
	uint64_t seq;
	atomic_bool stop;
	struct jv_io_hooks whooks; /* the workers': the stop flag only */
	pthread_t th[STREAM_MAX_PARALLEL];
	int nth;
	int rc; /* the first failure */
	struct s3_err e;
};

void s3_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, long ms)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(cv, mu, &until);
}

bool s3_stop_tick(void *arg, uint64_t done, uint64_t total)
{
	(void)done;
	(void)total;
	return atomic_load((atomic_bool *)arg);
}

/* Record the first failure (lock held or not: the writer's own fields). */
static int fail(struct s3_stream *s, int rc, const struct s3_err *e, const char *msg)
{
	if (s->rc == 0) {
		s->rc = rc;
		if (e)
			s->e = *e;
		else
			s3r_set_err(s->o.r, &s->e, rc == -ECANCELED ? S3_PERMANENT : S3_TRANSIENT, 0, NULL,
			            "streamed upload", msg ? msg : strerror(-rc));
	}
	atomic_store(&s->stop, true);
	pthread_mutex_lock(&s->mu);
	pthread_cond_broadcast(&s->work);
	pthread_mutex_unlock(&s->mu);
	return s->rc;
}

static struct slot *first_queued(struct s3_stream *s)
{
	struct slot *q = NULL;
	for (int i = 0; i < s->nslots; i++)
		if (s->slots[i].state == SLOT_QUEUED && (!q || s->slots[i].p.n < q->p.n))
			q = &s->slots[i];
	return q;
}

static void *worker(void *arg)
{
	struct s3_stream *s = arg;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		struct slot *q = NULL;
		while (!atomic_load(&s->stop) && !(q = first_queued(s)))
			pthread_cond_wait(&s->work, &s->mu);
		if (!q)
			break;
		q->state = SLOT_BUSY;
		pthread_mutex_unlock(&s->mu);
		int rc = s3_mpu_part_mem(&s->each, s->o.key, s->o.upload_id, q->p.n, q->buf, q->len,
		                         q->p.etag, q->p.md5, &s->whooks, &q->e);
		pthread_mutex_lock(&s->mu);
		q->rc = rc;
		q->p.sent = true;
		q->state = SLOT_DONE;
		q->seq = ++s->seq;
		pthread_cond_broadcast(&s->done);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* Hand every finished part to on_ack (without the lock) and free its slot. */
static int deliver(struct s3_stream *s)
{
	for (;;) {
		pthread_mutex_lock(&s->mu);
		struct slot *d = NULL;
		for (int i = 0; i < s->nslots; i++)
			if (s->slots[i].state == SLOT_DONE && (!d || s->slots[i].seq < d->seq))
				d = &s->slots[i];
		if (!d) {
			pthread_mutex_unlock(&s->mu);
			return s->rc;
		}
		struct s3_stream_part p = d->p;
		int rc = d->rc;
		struct s3_err e = d->e;
		d->state = SLOT_FREE;
		d->len = 0;
		pthread_mutex_unlock(&s->mu);
		if (rc)
			return fail(s, rc, &e, NULL);
		if (s->rc == 0 && s->o.on_ack && (rc = s->o.on_ack(s->o.ack_arg, &p)) != 0)
			return fail(s, rc, NULL, "stopped");
	}
}

/* Wait (delivering what finishes) until pred holds; 0 or the failure. */
static int wait_until(struct s3_stream *s, bool (*pred)(struct s3_stream *s))
{
	for (;;) {
		int rc = deliver(s);
		if (rc)
			return rc;
		pthread_mutex_lock(&s->mu);
		if (pred(s)) {
			pthread_mutex_unlock(&s->mu);
			return 0;
		}
		s3_cond_wait_ms(&s->done, &s->mu, 100);
		pthread_mutex_unlock(&s->mu);
		if (jv_io_tick(s->o.hooks, 0, 0))
			return fail(s, -ECANCELED, NULL, "cancelled");
	}
}

static bool has_free(struct s3_stream *s)
{
	for (int i = 0; i < s->nslots; i++)
		if (s->slots[i].state == SLOT_FREE)
			return true;
	return false;
}

static bool all_free(struct s3_stream *s)
{
	for (int i = 0; i < s->nslots; i++)
		if (s->slots[i].state != SLOT_FREE)
			return false;
	return true;
}

size_t s3_stream_part_size(size_t base, int n)
{
	size_t size = base;
	for (int k = (n - 1) / STREAM_GROW_EVERY; k > 0 && size <= (5ull << 30) / 2; k--)
		size *= 2;
	return size;
}

/* A free slot with its buffer into s->cur. */
static int take_slot(struct s3_stream *s)
{
	int rc = wait_until(s, has_free);
	if (rc)
		return rc;
	struct slot *f = NULL;
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < s->nslots && !f; i++)
		if (s->slots[i].state == SLOT_FREE)
			f = &s->slots[i];
	f->state = SLOT_BUSY; /* the writer's until it is cut */
	pthread_mutex_unlock(&s->mu);
	f->want = s3_stream_part_size(s->o.part_size, s->cuts + 1);
	if (f->cap < f->want) {
		free(f->buf);
		f->cap = 0;
		if (!(f->buf = malloc(f->want)))
			return fail(s, -ENOMEM, NULL, "out of memory for a part buffer");
		f->cap = f->want;
	}
	f->len = 0;
	s->cur = f;
	return 0;
}

static const struct s3_stream_part *prior_part(const struct s3_stream *s, int n)
{
	for (size_t i = 0; i < s->o.nprior; i++)
		if (s->o.prior[i].n == n)
			return &s->o.prior[i];
	return NULL;
}

/* A part an earlier attempt had acknowledged: the same bytes are not sent
 * again; different bytes mean the stream is not the one that upload holds. */
static int match_prior(struct s3_stream *s, struct slot *c, const struct s3_stream_part *pr)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned ml = 0;
	char hex[33];
	if (!s3r_digest(EVP_md5(), c->len ? (const void *)c->buf : "", c->len, md, &ml))
		return fail(s, -ENOSYS, NULL, "cannot load libcrypto (libcrypto.so.3)");
	jv_hex(md, ml, hex);
	const char *want = pr->md5[0] ? pr->md5 : strlen(pr->etag) == 32 ? pr->etag : "";
	if (pr->len != c->len || strcasecmp(want, hex) != 0) {
		char msg[200];
		snprintf(msg, sizeof(msg), "part %d differs from the part an earlier run uploaded "
		         "(the data changed since)", c->p.n);
		return fail(s, -ESTALE, NULL, msg);
	}
	c->p = *pr;
	memcpy(c->p.md5, hex, sizeof(hex));
	c->p.sent = false;
	c->rc = 0;
	return 0;
}

/* The slot being filled becomes the next part. */
static int cut(struct s3_stream *s)
{
	struct slot *c = s->cur;
	s->cur = NULL;
	if (s->cuts >= STREAM_PARTS_MAX) {
		char msg[200];
		snprintf(msg, sizeof(msg), "more than %d parts (from %zu bytes, doubling every %d): "
		         "raise remote.%s.part_size", STREAM_PARTS_MAX, s->o.part_size,
		         STREAM_GROW_EVERY, s->o.r->name);
		return fail(s, -EFBIG, NULL, msg);
	}
	memset(&c->p, 0, sizeof(c->p));
	c->p.n = ++s->cuts;
	c->p.len = c->len;
	const struct s3_stream_part *pr = prior_part(s, c->p.n);
	int rc = pr ? match_prior(s, c, pr) : 0;
	pthread_mutex_lock(&s->mu);
	if (rc) {
		c->state = SLOT_FREE;
	} else if (pr) {
		c->state = SLOT_DONE;
		c->seq = ++s->seq;
	} else {
		c->state = SLOT_QUEUED;
		pthread_cond_signal(&s->work);
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int s3_stream_write(struct s3_stream *s, const void *buf, size_t n)
{
	const unsigned char *p = buf;
	while (n && s->rc == 0) {
		if (!s->cur && take_slot(s))
			break;
		struct slot *c = s->cur;
		size_t k = c->want - c->len < n ? c->want - c->len : n;
		memcpy(c->buf + c->len, p, k);
		c->len += k;
		p += k;
		n -= k;
		if (c->len == c->want)
			cut(s);
	}
	return s->rc;
}

int s3_stream_finish(struct s3_stream *s, int *nparts)
{
	*nparts = 0;
	if (s->rc)
		return s->rc;
	/* an empty stream is one empty part: an upload cannot complete without one */
	if ((s->cur && s->cur->len > 0) || (s->cuts == 0 && (s->cur || take_slot(s) == 0)))
		cut(s);
	if (s->cur) {
		pthread_mutex_lock(&s->mu);
		s->cur->state = SLOT_FREE;
		pthread_mutex_unlock(&s->mu);
		s->cur = NULL;
	}
	int rc = s->rc ? s->rc : wait_until(s, all_free);
	if (rc == 0)
		*nparts = s->cuts;
	return rc;
}

const struct s3_err *s3_stream_error(const struct s3_stream *s)
{
	return &s->e;
}

int s3_stream_open(const struct s3_stream_opts *o, struct s3_stream **out, struct s3_err *e)
{
	*out = NULL;
	if (o->parallel < 1 || o->parallel > STREAM_MAX_PARALLEL || o->part_size < 1 ||
	    o->part_size > (5ull << 30)) {
		s3r_set_err(o->r, e, S3_PERMANENT, 0, NULL, "streamed upload",
		            "parallel must be 1-32 and part_size 1 byte to 5 GiB");
		return -EINVAL;
	}
	struct s3_stream *s = calloc(1, sizeof(*s));
	if (!s) {
		s3r_set_err(o->r, e, S3_TRANSIENT, 0, NULL, "streamed upload", "out of memory");
		return -ENOMEM;
	}
	s->o = *o;
	s->each = *o->r;
	if (s->each.bandwidth_limit > 0) /* the cap is for the remote as a whole */
		s->each.bandwidth_limit = s->each.bandwidth_limit / o->parallel > 0
		                              ? s->each.bandwidth_limit / o->parallel : 1;
	s->nslots = o->parallel + 1;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->work, NULL);
	pthread_cond_init(&s->done, NULL);
	atomic_init(&s->stop, false);
	s->whooks.tick = s3_stop_tick;
	s->whooks.arg = &s->stop;
	while (s->nth < o->parallel && pthread_create(&s->th[s->nth], NULL, worker, s) == 0)
		s->nth++;
	if (s->nth == 0) {
		s3r_set_err(o->r, e, S3_TRANSIENT, 0, NULL, "streamed upload", "cannot start a thread");
		s3_stream_close(s);
		return -EAGAIN;
	}
	*out = s;
	return 0;
}

void s3_stream_close(struct s3_stream *s)
{
	if (!s)
		return;
	atomic_store(&s->stop, true);
	pthread_mutex_lock(&s->mu);
	pthread_cond_broadcast(&s->work);
	pthread_mutex_unlock(&s->mu);
	for (int i = 0; i < s->nth; i++)
		pthread_join(s->th[i], NULL);
	for (int i = 0; i < s->nslots; i++)
		free(s->slots[i].buf);
	pthread_cond_destroy(&s->work);
	pthread_cond_destroy(&s->done);
	pthread_mutex_destroy(&s->mu);
	s3_remote_wipe(&s->each);
	free(s);
}
