/* arch_zout.h — the compressed archive's way out for arch_create.c: zstd
 * straight into the blocks of a hash queue whose worker hashes the archive
 * and writes it to its file (see arch_zout.c). */
#ifndef JOBVISOR_ARCH_ZOUT_H
#define JOBVISOR_ARCH_ZOUT_H

#include <archive.h>
#include <stdbool.h>
#include <stdint.h>

#include "hashq.h"
#include "zstd_lazy.h"

struct arch_zout {
	int fd;                    /* the temp file, or -1 (streamed copy only) */
	struct hashq *q;           /* the archive's own hash worker; it writes fd */
	struct hashq_stream st;    /* the compressed archive */
	struct hashq_out file_out; /* sink_out on the worker thread */
	uint64_t written, synced;  /* worker side: read after arch_zout_finish */
	uint64_t bytes;            /* handed over (this thread) */
	bool discard;              /* failing: swallow what closing the archive still writes */
	/* opts->out: a streamed copy of every block, on this thread */
	int (*out)(void *arg, const void *buf, size_t n);
	void *out_arg;
	const struct jv_zstd *z;
	ZSTD_CCtx *cctx;
	unsigned char *blk; /* the queue block being filled, pos bytes so far */
	size_t pos;
};

/* Set up compression (level; threads zstd workers, as `zstd -T`) over a hash
 * queue of nblocks blocks. The caller sets fd, out and out_arg first; free
 * with arch_zout_free whatever the outcome. 0 or -errno with err. */
int arch_zout_open(struct arch_zout *w, int level, long threads, size_t nblocks, char *err,
                   size_t errlen);
/* libarchive's write callback (client data: the arch_zout). */
la_ssize_t arch_zout_write(struct archive *a, void *ud, const void *buf, size_t n);
/* After archive_write_close: end the frame, wait until every byte is hashed
 * and written; w->st.hex and w->written are then final. 0 or -errno with err. */
int arch_zout_finish(struct arch_zout *w, char *err, size_t errlen);
/* The first error of writing the file, or 0 (any time, from this thread). */
int arch_zout_error(const struct arch_zout *w);
/* Stops the worker (it no longer touches fd afterwards), frees. Not fd. */
void arch_zout_free(struct arch_zout *w);

#endif
