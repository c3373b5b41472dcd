/* arch_internal.h — what arch_read.c shares with arch_extract.c: a read source
 * that hashes the archive file as libarchive consumes it, and the streaming of
 * one entry's data (hash, optional write, size cap and free-space guard). */
#ifndef JOBVISOR_ARCH_INTERNAL_H
#define JOBVISOR_ARCH_INTERNAL_H

#include <archive.h>
#include <archive_entry.h>
#include <stdarg.h>
#include <stdio.h>

#include "arch.h"
#include "hashq.h"

/* Decompression on its own thread (arch_pipe.c): started over a source read
 * callback (the thread calls it until arch_pipe_stop returns); the reader's
 * libarchive reads the decompressed stream with arch_pipe_next as its read
 * callback (a block stays valid until the next call). */
struct arch_pipe;
int arch_pipe_start(struct arch_pipe **p, archive_read_callback *src, void *ud);
la_ssize_t arch_pipe_next(struct archive *a, struct arch_pipe *p, const void **out);
/* Stops the thread wherever it is and frees; NULL is fine. */
void arch_pipe_stop(struct arch_pipe *p);

struct arch_src {
	int fd;
	struct arch_pipe *pipe; /* the decompressor thread, until arch_src_check */
	struct hashq *q;        /* per-entry SHA-256 runs on its worker */
	struct hashq *aq;       /* the archive file's SHA-256, on a second worker */
	struct hashq_stream st; /* over the archive file's bytes, in read order (on aq) */
	void *held;             /* aq block libarchive is reading (released on the next read) */
	uint64_t bytes;  /* read so far (written by the decompressor thread: atomic) */
	uint64_t size;   /* file size at open (progress) */
	unsigned char *buf;
	const char *name;
	struct archive *a;
	const struct jv_io_hooks *hooks;
};

/* Open dirfd/name (a regular file, no symlink) for reading as tar (none, gzip,
 * xz, zstd) or zip. Release with arch_src_close() whatever the outcome. */
int arch_src_open(struct arch_src *s, int dirfd, const char *name,
                  const struct jv_io_hooks *hooks, char *err, size_t errlen);
/* The same over an open descriptor (a pipe or socket: a stream), consumed
 * whatever the outcome; size is for progress only (0 = unknown). */
int arch_src_open_fd(struct arch_src *s, int fd, const char *name, uint64_t size,
                     const struct jv_io_hooks *hooks, char *err, size_t errlen);
/* After ARCHIVE_EOF: hash what libarchive did not read, then compare with the
 * manifest's archive sha256/bytes when it has them. */
int arch_src_check(struct arch_src *s, const struct arch_manifest *m, char *err, size_t errlen);
void arch_src_close(struct arch_src *s);

/* Next header; 1 at the end, 0 with *ae set, or an error with a message. */
int arch_src_next(struct arch_src *s, struct archive_entry **ae, char *err, size_t errlen);

struct arch_budget {
	uint64_t max_bytes; /* 0 = none */
	uint64_t ratio_limit; /* bytes the expansion-ratio guard allows; 0 = none */
	double max_ratio;     /* for the message */
	uint64_t src_size;    /* the archive's own size, for the message */
	uint64_t used;      /* uncompressed bytes produced so far */
	uint64_t reserve;   /* free space to keep */
	int fs_fd;          /* filesystem to watch; -1 = do not */
	uint64_t next_check;
};

/* Check before an entry of `size` bytes is written (header values). */
int arch_budget_admit(struct arch_budget *b, const char *path, uint64_t size, char *err,
                      size_t errlen);

/* Stream the current entry's data: hash it, write it to out_fd when >= 0
 * (holes of sparse entries stay holes), charge it to the budget. hex gets the
 * SHA-256 and *size the byte count. */
int arch_stream_entry(struct arch_src *s, const char *path, uint64_t declared, int out_fd,
                      struct arch_budget *b, char hex[JV_SHA256_HEX], uint64_t *size, char *err,
                      size_t errlen);
/* The same without waiting for the digest: est (caller-owned, must not move)
 * gets it after hashq_wait(s->q); NULL hashes nothing. On failure est is
 * still queued: hashq_wait before hashq_discard. */
int arch_stream_entry_async(struct arch_src *s, const char *path, uint64_t declared, int out_fd,
                            struct arch_budget *b, struct hashq_stream *est, uint64_t *size,
                            char *err, size_t errlen);

/* Manifest checks shared by verify and extract. seen[] is indexed like m->v.
 * check_entry: the entry must be listed, not seen before, of the same type
 * (a hard link must match its target's digest), symlinks with the same target;
 * returns the manifest entry or NULL with err set. */
struct arch_entry *arch_manifest_check_entry(const struct arch_manifest *m, bool *seen,
                                             const char *path, struct archive_entry *ae,
                                             char *err, size_t errlen);
int arch_manifest_check_data(const struct arch_entry *me, const char *path, uint64_t size,
                             const char *hex, char *err, size_t errlen);
int arch_manifest_check_missing(const struct arch_manifest *m, const bool *seen, char *err,
                                size_t errlen);

/* Map a libarchive entry to our type (hard links first). */
enum arch_type arch_entry_kind(struct archive_entry *ae);

static inline void arch_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline void arch_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

#endif
