/* hashq.c — a single-worker SHA-256 pipeline (see hashq.h).
 *
 * Hand-offs are batched: the caller gathers up to HASHQ_PENDING operations
 * and hands them over under one lock with one wake-up, and small updates of
 * all streams are packed into one shared block, so extracting thousands of
 * small files costs a few hand-offs instead of several per file. Each op
 * that points into the shared block holds a reference on it (taken when the
 * op is handed over), the caller holds one while filling it.
 *
 * One mutex guards a ring of operations and a free list of pool blocks; the
 * worker takes operations in order, so per-stream order is queue order and a
 * stream's digest is final once hashq_wait() returns. The worker owns every
 * EVP context between BEGIN and FINAL; the caller reads a stream only after
 * hashq_wait(). */
#include "hashq.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "quiet_thread.h"

#define HASHQ_OPS 1024
#define HASHQ_PENDING 128 /* ops gathered by the caller before one hand-off */

enum op_kind { OP_BEGIN, OP_DATA, OP_FINAL };

struct op {
	enum op_kind kind;
	bool packed; /* data copied into the shared fill block: holds it until hashed */
	struct hashq_stream *s;
	unsigned char *block; /* may point inside a pool block */
	size_t len;
};

struct hashq {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t work;  /* ops queued, or stop */
	pthread_cond_t space; /* an op slot or a block came free */
	pthread_cond_t idle;  /* queue empty and worker idle */
	struct op ops[HASHQ_OPS];
	size_t head, count;
	unsigned char **free_blocks;
	unsigned *refs; /* per block: holders (caller, each queued op: hundreds when packed) */
	size_t nfree, nblocks;
	unsigned char *mem;
	bool busy, stop;
	int err;
	/* Caller side only (no lock): ops not yet handed over, and the block
	 * that small updates of every stream are packed into. */
	struct op pending[HASHQ_PENDING];
	size_t npending;
	unsigned char *fill;
	size_t fill_len;
};

static void drop_fill(struct hashq *q);

static void run_op(struct hashq *q, const struct op *op)
{
	struct hashq_stream *s = op->s;
	EVP_MD_CTX *md = s->md;
	switch (op->kind) {
	case OP_BEGIN:
		EVP_MD_CTX_free(md);
		md = EVP_MD_CTX_new();
		if (md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
			EVP_MD_CTX_free(md);
			md = NULL;
		}
		if (!md)
			q->err = -ENOMEM;
		s->md = md;
		s->bytes = 0;
		s->hex[0] = '\0';
		break;
	case OP_DATA:
		if (md && op->len)
			EVP_DigestUpdate(md, op->block, op->len);
		s->bytes += op->len;
		if (s->out && op->len && !__atomic_load_n(&s->out_err, __ATOMIC_RELAXED)) {
			int rc = s->out->write(s->out->ctx, op->block, op->len);
			if (rc < 0)
				__atomic_store_n(&s->out_err, rc, __ATOMIC_RELAXED);
		}
		break;
	case OP_FINAL:
		if (md) {
			unsigned char dg[EVP_MAX_MD_SIZE];
			unsigned int dl = 0;
			EVP_DigestFinal_ex(md, dg, &dl);
			jv_hex(dg, dl, s->hex);
			EVP_MD_CTX_free(md);
			s->md = NULL;
		}
		break;
	}
}

/* Drop one holder of a block (mutex held); the last one returns it to the pool. */
static void unref(struct hashq *q, unsigned char *block)
{
	size_t i = (size_t)(block - q->mem) / HASHQ_BLOCK; /* block may point inside */
	if (--q->refs[i] == 0) {
		q->free_blocks[q->nfree++] = q->mem + i * HASHQ_BLOCK;
		pthread_cond_signal(&q->space);
	}
}

static void *worker(void *arg)
{
	struct hashq *q = arg;
	pthread_mutex_lock(&q->mu);
	for (;;) {
		while (q->count == 0 && !q->stop) {
			q->busy = false;
			pthread_cond_broadcast(&q->idle);
			pthread_cond_wait(&q->work, &q->mu);
		}
		if (q->count == 0)
			break;
		struct op op = q->ops[q->head];
		q->head = (q->head + 1) % HASHQ_OPS;
		q->count--;
		q->busy = true;
		pthread_cond_signal(&q->space);
		pthread_mutex_unlock(&q->mu);
		run_op(q, &op);
		pthread_mutex_lock(&q->mu);
		if (op.block)
			unref(q, op.block);
	}
	q->busy = false;
	pthread_cond_broadcast(&q->idle);
	pthread_mutex_unlock(&q->mu);
	return NULL;
}

int hashq_new(struct hashq **out, size_t nblocks)
{
	*out = NULL;
	struct hashq *q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->nblocks = nblocks ? nblocks : 1;
	q->mem = malloc(q->nblocks * HASHQ_BLOCK);
	q->free_blocks = malloc(q->nblocks * sizeof(*q->free_blocks));
	q->refs = calloc(q->nblocks, sizeof(*q->refs));
	if (!q->mem || !q->free_blocks || !q->refs) {
		free(q->mem);
		free(q->free_blocks);
		free(q->refs);
		free(q);
		return -ENOMEM;
	}
	for (size_t i = 0; i < q->nblocks; i++)
		q->free_blocks[q->nfree++] = q->mem + i * HASHQ_BLOCK;
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->work, NULL);
	pthread_cond_init(&q->space, NULL);
	pthread_cond_init(&q->idle, NULL);
	/* Signals (cancel) stay with the calling thread. */
	int rc = jv_quiet_thread(&q->th, NULL, worker, q);
	if (rc != 0) {
		pthread_mutex_destroy(&q->mu);
		pthread_cond_destroy(&q->work);
		pthread_cond_destroy(&q->space);
		pthread_cond_destroy(&q->idle);
		free(q->mem);
		free(q->free_blocks);
		free(q->refs);
		free(q);
		return -rc;
	}
	*out = q;
	return 0;
}

void hashq_free(struct hashq *q)
{
	if (!q)
		return;
	drop_fill(q);
	pthread_mutex_lock(&q->mu);
	q->stop = true;
	pthread_cond_signal(&q->work);
	pthread_mutex_unlock(&q->mu);
	pthread_join(q->th, NULL);
	pthread_mutex_destroy(&q->mu);
	pthread_cond_destroy(&q->work);
	pthread_cond_destroy(&q->space);
	pthread_cond_destroy(&q->idle);
	free(q->mem);
	free(q->free_blocks);
	free(q->refs);
	free(q);
}

/* Hand every gathered op to the worker under one lock and one wake-up. */
static void flush(struct hashq *q)
{
	if (q->npending == 0)
		return;
	pthread_mutex_lock(&q->mu);
	for (size_t i = 0; i < q->npending; i++) {
		while (q->count == HASHQ_OPS) {
			pthread_cond_signal(&q->work);
			pthread_cond_wait(&q->space, &q->mu);
		}
		const struct op *op = &q->pending[i];
		if (op->packed)
			q->refs[(size_t)(op->block - q->mem) / HASHQ_BLOCK]++;
		q->ops[(q->head + q->count) % HASHQ_OPS] = *op;
		q->count++;
	}
	q->npending = 0;
	pthread_cond_signal(&q->work);
	pthread_mutex_unlock(&q->mu);
}

static void push(struct hashq *q, const struct op *op)
{
	if (q->npending == HASHQ_PENDING)
		flush(q);
	q->pending[q->npending++] = *op;
}

/* The caller's hold on the fill block ends: it goes back to the pool once the
 * worker has hashed every op that points into it. */
static void drop_fill(struct hashq *q)
{
	if (!q->fill)
		return;
	flush(q);
	hashq_release(q, q->fill);
	q->fill = NULL;
	q->fill_len = 0;
}

int hashq_begin(struct hashq *q, struct hashq_stream *s)
{
	push(q, &(struct op){.kind = OP_BEGIN, .s = s});
	return 0;
}

int hashq_begin_out(struct hashq *q, struct hashq_stream *s, const struct hashq_out *out)
{
	/* Set before the BEGIN op is handed over: the hand-off publishes it. */
	s->out = out;
	s->out_err = 0;
	return hashq_begin(q, s);
}

int hashq_out_error(const struct hashq_stream *s)
{
	return __atomic_load_n(&s->out_err, __ATOMIC_RELAXED);
}

void *hashq_acquire(struct hashq *q)
{
	flush(q); /* what we gathered may be what frees a block */
	pthread_mutex_lock(&q->mu);
	if (q->nfree == 0 && q->fill) {
		/* Our own fill block may be the one we wait for (a small pool). */
		pthread_mutex_unlock(&q->mu);
		drop_fill(q);
		pthread_mutex_lock(&q->mu);
	}
	while (q->nfree == 0)
		pthread_cond_wait(&q->space, &q->mu);
	unsigned char *b = q->free_blocks[--q->nfree];
	q->refs[(size_t)(b - q->mem) / HASHQ_BLOCK] = 1; /* the worker's hold, from submit on */
	pthread_mutex_unlock(&q->mu);
	return b;
}

int hashq_submit(struct hashq *q, struct hashq_stream *s, void *block, size_t len)
{
	push(q, &(struct op){.kind = OP_DATA, .s = s, .block = block, .len = len});
	flush(q); /* a whole block: worth a hand-off of its own */
	return 0;
}

int hashq_submit_keep(struct hashq *q, struct hashq_stream *s, void *block, size_t len)
{
	pthread_mutex_lock(&q->mu);
	q->refs[(size_t)((unsigned char *)block - q->mem) / HASHQ_BLOCK]++;
	pthread_mutex_unlock(&q->mu);
	return hashq_submit(q, s, block, len);
}

void hashq_release(struct hashq *q, void *block)
{
	pthread_mutex_lock(&q->mu);
	unref(q, block);
	pthread_mutex_unlock(&q->mu);
}

int hashq_update(struct hashq *q, struct hashq_stream *s, const void *data, size_t len)
{
	const unsigned char *p = data;
	while (len > 0) {
		if (!q->fill) {
			q->fill = hashq_acquire(q); /* refs = 1: our hold while filling */
			q->fill_len = 0;
		}
		size_t n = HASHQ_BLOCK - q->fill_len;
		if (n > len)
			n = len;
		memcpy(q->fill + q->fill_len, p, n);
		push(q, &(struct op){.kind = OP_DATA, .packed = true, .s = s,
		                     .block = q->fill + q->fill_len, .len = n});
		q->fill_len += n;
		p += n;
		len -= n;
		if (q->fill_len == HASHQ_BLOCK)
			drop_fill(q);
	}
	return 0;
}

int hashq_final(struct hashq *q, struct hashq_stream *s)
{
	push(q, &(struct op){.kind = OP_FINAL, .s = s});
	return 0;
}

int hashq_wait(struct hashq *q)
{
	flush(q);
	pthread_mutex_lock(&q->mu);
	while (q->count > 0 || q->busy)
		pthread_cond_wait(&q->idle, &q->mu);
	int rc = q->err;
	pthread_mutex_unlock(&q->mu);
	return rc;
}

void hashq_discard(struct hashq *q, struct hashq_stream *s)
{
	/* The worker is idle for s (precondition), so this thread may free it. */
	(void)q;
	EVP_MD_CTX_free(s->md);
	s->md = NULL;
}
