/* arch_zout.c — the compressed archive's way out (arch_create.c): libarchive
 * writes the tar stream (no filter, no blocking) to arch_zout_write, which
 * compresses it with libzstd straight into a block of the archive's hash
 * queue; each full block is handed to that queue's worker, which hashes it and
 * writes it to the temp file (sink_out), so the archive's bytes are never
 * copied between compressing and writing and the write(2) calls happen 1 MiB
 * at a time off the thread that reads and compresses. What zstd produces is
 * what libarchive's own zstd filter produced (one frame, same level and
 * worker count, no checksum: the manifest's SHA-256 covers the archive).
 *
 * Threads: everything here runs on the archiving thread except sink_out,
 * which runs on the hash worker; the two share only the stream's error. */
#include "arch_zout.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "jobvisor/durable.h"

/* Start writeback every this many bytes so the final fsync does not stall on
 * gigabytes. */
#define ZOUT_WRITEBACK (32u << 20)

/* Worker thread: every byte of the archive, in order, after it was hashed. */
static int sink_out(void *ctx, const void *buf, size_t n)
{
	struct arch_zout *w = ctx;
	int rc = w->fd >= 0 ? jv_write_all(w->fd, buf, n) : 0;
	if (rc < 0)
		return rc;
	w->written += n;
	if (w->fd >= 0 && w->written - w->synced >= ZOUT_WRITEBACK) {
		sync_file_range(w->fd, (off_t)w->synced, (off_t)(w->written - w->synced),
		                SYNC_FILE_RANGE_WRITE);
		w->synced = w->written;
	}
	return 0;
}

int arch_zout_open(struct arch_zout *w, int level, long threads, size_t nblocks, char *err,
                   size_t errlen)
{
	w->z = jv_zstd_load();
	if (!w->z || !w->z->compress2) {
		snprintf(err, errlen, "cannot compress: libzstd.so.1 (1.4 or later) is not available");
		return -ENOSYS;
	}
	int rc = hashq_new(&w->q, nblocks);
	if (rc < 0 || !(w->cctx = w->z->cctx_create())) {
		snprintf(err, errlen, "out of memory");
		return rc < 0 ? rc : -ENOMEM;
	}
	if (w->z->is_error(w->z->cctx_set(w->cctx, JV_ZSTD_C_LEVEL, level))) {
		snprintf(err, errlen, "bad zstd level %d", level);
		return -EINVAL;
	}
	/* As libarchive's filter did: `threads` workers beside this thread (zstd -T).
	 * A libzstd built without threads refuses them: compress on this thread. */
	if (threads > 0)
		w->z->cctx_set(w->cctx, JV_ZSTD_C_WORKERS, (int)(threads > 256 ? 256 : threads));
	w->file_out = (struct hashq_out){.write = sink_out, .ctx = w};
	hashq_begin_out(w->q, &w->st, &w->file_out);
	return 0;
}

/* The block being filled is complete (or the last): the streamed copy gets it
 * here, the file on the worker. */
static int hand_over(struct arch_zout *w)
{
	int rc = w->out ? w->out(w->out_arg, w->blk, w->pos) : 0;
	if (rc < 0) {
		hashq_release(w->q, w->blk);
	} else {
		w->bytes += w->pos;
		hashq_submit(w->q, &w->st, w->blk, w->pos);
	}
	w->blk = NULL;
	w->pos = 0;
	return rc;
}

/* Compress in (all of it, or to the end of the frame with end) into blocks. */
static int compress(struct arch_zout *w, jv_zstd_in *in, bool end, const char **why)
{
	for (;;) {
		int rc = hashq_out_error(&w->st);
		if (rc < 0)
			return rc;
		if (!w->blk) {
			w->blk = hashq_acquire(w->q);
			w->pos = 0;
		}
		jv_zstd_out out = {w->blk, HASHQ_BLOCK, w->pos};
		size_t left = w->z->compress2(w->cctx, &out, in,
		                              end ? JV_ZSTD_E_END : JV_ZSTD_E_CONTINUE);
		if (w->z->is_error(left)) {
			*why = w->z->error_name(left);
			return -EIO;
		}
		w->pos = out.pos;
		if (w->pos == HASHQ_BLOCK && (rc = hand_over(w)) < 0)
			return rc;
		if (end ? left == 0 : in->pos == in->size)
			return 0;
	}
}

la_ssize_t arch_zout_write(struct archive *a, void *ud, const void *buf, size_t n)
{
	struct arch_zout *w = ud;
	if (w->discard)
		return (la_ssize_t)n;
	jv_zstd_in in = {buf, n, 0};
	const char *why = NULL;
	int rc = compress(w, &in, false, &why);
	if (rc < 0) {
		archive_set_error(a, -rc, "%s", why ? why : strerror(-rc));
		return -1;
	}
	return (la_ssize_t)n;
}

int arch_zout_finish(struct arch_zout *w, char *err, size_t errlen)
{
	jv_zstd_in in = {NULL, 0, 0};
	const char *why = NULL;
	int rc = compress(w, &in, true, &why);
	if (rc == 0 && w->pos > 0)
		rc = hand_over(w);
	if (rc < 0) {
		snprintf(err, errlen, "cannot write archive: %s", why ? why : strerror(-rc));
		return rc;
	}
	hashq_final(w->q, &w->st);
	if (hashq_wait(w->q) < 0) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if ((rc = hashq_out_error(&w->st)) < 0) {
		snprintf(err, errlen, "cannot write archive: %s", strerror(-rc));
		return rc;
	}
	return 0;
}

int arch_zout_error(const struct arch_zout *w)
{
	return hashq_out_error(&w->st);
}

void arch_zout_free(struct arch_zout *w)
{
	if (w->blk)
		hashq_release(w->q, w->blk);
	w->blk = NULL;
	hashq_free(w->q); /* its worker writes to w->fd until here */
	w->q = NULL;
	hashq_discard(NULL, &w->st);
	if (w->cctx)
		w->z->cctx_free(w->cctx);
	w->cctx = NULL;
}
