/* arch_pipe.c — decompression on a thread of its own, ahead of the reader.
 *
 * `zstd -dc X | tar -x` decompresses in one process while the other creates
 * and writes files. A single libarchive reader does both on one thread, so
 * the extraction waits for the decompressor and the other way round. Here a
 * decompressor runs on its own thread and fills a ring of blocks: libzstd
 * straight into them for zstd (what jobvisor writes), otherwise a second
 * libarchive instance (its filters with the "raw" format: the decompressed
 * stream as one entry). The reader's libarchive (tar/zip, no filter) reads
 * the blocks through arch_pipe_next(), without a copy.
 *
 * Threads: the decompressor blocks all signals, calls only the source read
 * callback it was given (which owns the archive fd and its hash until
 * arch_pipe_stop() returns), and meets the reader only under mu. */
#include "arch_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "quiet_thread.h"
#include "zstd_lazy.h"

#define PIPE_BLOCK (128u << 10)
#define PIPE_NBLOCKS 8

struct arch_pipe {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t filled_cv, freed_cv;
	unsigned char *mem;
	size_t len[PIPE_NBLOCKS];
	uint64_t produced, consumed; /* blocks; the reader holds block `consumed` while `held` */
	bool held;
	bool done, stop;
	int errnum;
	char msg[512];
	struct archive *ra; /* the libarchive filters (run_libarchive); error slot of src */
	archive_read_callback *src;
	void *src_ud;
	const struct jv_zstd *zstd; /* NULL: libzstd could not be loaded */
	const void *first;          /* the first source block, sniffed for the format */
	size_t first_len;
	bool first_pending;
};

static void finish(struct arch_pipe *p, int errnum, const char *msg)
{
	pthread_mutex_lock(&p->mu);
	p->done = true;
	p->errnum = errnum;
	if (msg)
		snprintf(p->msg, sizeof(p->msg), "%s", msg);
	pthread_cond_broadcast(&p->filled_cv);
	pthread_mutex_unlock(&p->mu);
}

/* The next free block, or NULL when told to stop. */
static unsigned char *free_block(struct arch_pipe *p)
{
	pthread_mutex_lock(&p->mu);
	while (!p->stop && p->produced - p->consumed >= PIPE_NBLOCKS)
		pthread_cond_wait(&p->freed_cv, &p->mu);
	unsigned char *b = p->stop ? NULL : p->mem + (p->produced % PIPE_NBLOCKS) * PIPE_BLOCK;
	pthread_mutex_unlock(&p->mu);
	return b;
}

static void hand_over(struct arch_pipe *p, size_t n)
{
	pthread_mutex_lock(&p->mu);
	p->len[p->produced % PIPE_NBLOCKS] = n;
	p->produced++;
	pthread_cond_signal(&p->filled_cv);
	pthread_mutex_unlock(&p->mu);
}

static void source_failed(struct arch_pipe *p)
{
	const char *m = archive_error_string(p->ra);
	finish(p, archive_errno(p->ra), m ? m : "read error");
}

/* The source as libarchive reads it: first the block the format was sniffed
 * from, then the source callback itself. */
static la_ssize_t replay_read(struct archive *a, void *ud, const void **out)
{
	struct arch_pipe *p = ud;
	if (p->first_pending) {
		p->first_pending = false;
		*out = p->first;
		return (la_ssize_t)p->first_len;
	}
	return p->src(a, p->src_ud, out);
}

/* gzip, xz, or what libzstd could not be loaded for: libarchive's filters
 * with the raw format, copied from its buffers into ring blocks (a block of
 * libarchive's own is only valid until its next call). */
static void run_libarchive(struct arch_pipe *p)
{
	struct archive_entry *ae;
	int r = archive_read_open(p->ra, p, NULL, replay_read, NULL);
	if (r == ARCHIVE_OK)
		r = archive_read_next_header(p->ra, &ae);
	const char *pend = NULL;
	size_t pend_len = 0;
	while (r != ARCHIVE_EOF && r >= ARCHIVE_WARN) {
		unsigned char *b = free_block(p);
		if (!b)
			break;
		size_t n = 0;
		while (n < PIPE_BLOCK && r != ARCHIVE_EOF && r >= ARCHIVE_WARN) {
			if (pend_len == 0) {
				const void *buf;
				la_int64_t off;
				r = archive_read_data_block(p->ra, &buf, &pend_len, &off);
				pend = buf;
				if (r == ARCHIVE_EOF || r < ARCHIVE_WARN)
					pend_len = 0;
				continue;
			}
			size_t k = pend_len < PIPE_BLOCK - n ? pend_len : PIPE_BLOCK - n;
			memcpy(b + n, pend, k);
			n += k;
			pend += k;
			pend_len -= k;
		}
		if (n > 0) /* what came before an error is handed over first */
			hand_over(p, n);
	}
	if (r < ARCHIVE_WARN)
		source_failed(p);
	else
		finish(p, 0, NULL); /* an empty stream too: the reader says what it lacks */
}

/* zstd (what jobvisor writes): libzstd decompresses straight into the ring
 * blocks, no copy. Concatenated and skippable frames are fine; input that
 * ends inside a frame is reported as truncated. */
static void run_zstd(struct arch_pipe *p)
{
	const struct jv_zstd *z = p->zstd;
	ZSTD_DStream *ds = z->create();
	if (!ds) {
		finish(p, ENOMEM, "out of memory");
		return;
	}
	jv_zstd_in in = {p->first, p->first_len, 0};
	p->first_pending = false;
	size_t last = 0;
	bool eof = false, done = false, failed = false;
	const char *msg = NULL;
	while (!done && !msg && !failed) {
		unsigned char *b = free_block(p);
		if (!b)
			break;
		jv_zstd_out out = {b, PIPE_BLOCK, 0};
		while (out.pos < out.size && !done && !msg && !failed) {
			if (in.pos == in.size && !eof) {
				const void *buf;
				la_ssize_t n = p->src(p->ra, p->src_ud, &buf);
				failed = n < 0;
				eof = n == 0;
				if (n > 0)
					in = (jv_zstd_in){buf, (size_t)n, 0};
				continue;
			}
			size_t before = out.pos;
			size_t r = z->decompress(ds, &out, &in);
			if (z->is_error(r))
				msg = z->error_name(r);
			last = r;
			done = !msg && eof && out.pos == before;
		}
		if (out.pos > 0) /* what came before an error is handed over first */
			hand_over(p, out.pos);
	}
	z->free(ds);
	if (failed)
		source_failed(p);
	else if (msg || (done && last != 0))
		finish(p, EIO, msg ? msg : "Truncated zstd input");
	else
		finish(p, 0, NULL);
}

static void *decompressor(void *arg)
{
	struct arch_pipe *p = arg;
	const void *b;
	la_ssize_t n = p->src(p->ra, p->src_ud, &b);
	if (n < 0) {
		source_failed(p);
		return NULL;
	}
	p->first = b;
	p->first_len = (size_t)n;
	p->first_pending = true;
	if (p->zstd && jv_zstd_magic(b, (size_t)n))
		run_zstd(p);
	else
		run_libarchive(p);
	return NULL;
}

static void pipe_free(struct arch_pipe *p)
{
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->filled_cv);
	pthread_cond_destroy(&p->freed_cv);
	archive_read_free(p->ra);
	free(p->mem);
	free(p);
}

int arch_pipe_start(struct arch_pipe **out, archive_read_callback *src, void *ud)
{
	struct arch_pipe *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->mem = malloc((size_t)PIPE_NBLOCKS * PIPE_BLOCK);
	p->ra = archive_read_new();
	p->src = src;
	p->src_ud = ud;
	p->zstd = jv_zstd_load();
	if (!p->mem || !p->ra) {
		if (p->ra)
			archive_read_free(p->ra);
		free(p->mem);
		free(p);
		return -ENOMEM;
	}
	archive_read_support_filter_gzip(p->ra);
	archive_read_support_filter_xz(p->ra);
	archive_read_support_filter_zstd(p->ra);
	archive_read_support_format_raw(p->ra);
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->filled_cv, NULL);
	pthread_cond_init(&p->freed_cv, NULL);
	int rc = jv_quiet_thread(&p->th, NULL, decompressor, p);
	if (rc != 0) {
		pipe_free(p);
		return -rc;
	}
	*out = p;
	return 0;
}

la_ssize_t arch_pipe_next(struct archive *a, struct arch_pipe *p, const void **out)
{
	pthread_mutex_lock(&p->mu);
	if (p->held) {
		p->held = false;
		p->consumed++;
		pthread_cond_signal(&p->freed_cv);
	}
	while (p->produced == p->consumed && !p->done)
		pthread_cond_wait(&p->filled_cv, &p->mu);
	la_ssize_t n;
	if (p->produced > p->consumed) {
		size_t i = p->consumed % PIPE_NBLOCKS;
		*out = p->mem + i * PIPE_BLOCK;
		n = (la_ssize_t)p->len[i];
		p->held = true;
	} else if (p->errnum || p->msg[0]) {
		archive_set_error(a, p->errnum ? p->errnum : EIO, "%s", p->msg);
		n = -1;
	} else {
		n = 0;
	}
	pthread_mutex_unlock(&p->mu);
	return n;
}

void arch_pipe_stop(struct arch_pipe *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->freed_cv);
	pthread_mutex_unlock(&p->mu);
	pthread_join(p->th, NULL);
	pipe_free(p);
}
