/* hashq.h — SHA-256 on a worker thread, so hashing overlaps with reading,
 * compressing, decompressing and writing.
 *
 * The archive and download cores hash everything they move (per-file digests
 * and the digest of the archive or download itself). Done inline, SHA-256 is
 * as expensive as the I/O it rides on; here the I/O thread copies (or reads
 * straight into) a pool block, queues it, and goes on while one worker thread
 * runs the digests in queue order. Streams are caller-owned structs that must
 * not move while queued; their digest is valid after hashq_wait().
 *
 * Threads: the worker blocks all signals (cancel flags are read by the
 * calling thread only). Only the calling thread may use a hashq. */
#ifndef JOBVISOR_HASHQ_H
#define JOBVISOR_HASHQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "iohooks.h"

#define HASHQ_BLOCK (1u << 20)

struct hashq;

/* Where a write-through stream's bytes go (hashq_begin_out): write() runs on
 * the worker thread, once per queued piece, in stream order, right after the
 * piece is hashed; 0 or -errno. */
struct hashq_out {
	int (*write)(void *ctx, const void *buf, size_t len);
	void *ctx;
};

struct hashq_stream {
	void *md;                  /* worker-side digest state (EVP_MD_CTX) */
	char hex[JV_SHA256_HEX];   /* after hashq_wait() following hashq_final() */
	uint64_t bytes;            /* bytes hashed */
	const struct hashq_out *out; /* write-through target, or NULL */
	int out_err;               /* first error of out->write (read with hashq_out_error) */
};

/* nblocks pool blocks of HASHQ_BLOCK bytes. Returns-owned *q: hashq_free(). */
int hashq_new(struct hashq **q, size_t nblocks);
/* Waits for queued work, stops the worker, frees. NULL is fine. */
void hashq_free(struct hashq *q);

/* Start a stream (resets it). */
int hashq_begin(struct hashq *q, struct hashq_stream *s);
/* Start a write-through stream: besides hashing, the worker hands every byte
 * to out (which must outlive the stream), so the calling thread neither
 * writes nor waits for the writes. After the first error out is no longer
 * called; hashq_out_error() tells (at any time, from the calling thread). */
int hashq_begin_out(struct hashq *q, struct hashq_stream *s, const struct hashq_out *out);
int hashq_out_error(const struct hashq_stream *s);
/* Queue a copy of data for s (blocks while every pool block is in use).
 * Updates of every stream are packed into one shared block, and operations
 * are handed to the worker in batches (at the latest by hashq_wait). */
int hashq_update(struct hashq *q, struct hashq_stream *s, const void *data, size_t len);
/* Zero-copy variant: take a free block to fill (HASHQ_BLOCK bytes), then
 * queue len bytes of it with hashq_submit; the block goes back to the pool
 * when hashed and must not be touched after the call. hashq_submit_keep
 * queues it the same way but lets the caller keep reading it until it calls
 * hashq_release (the block returns to the pool when both are done). */
void *hashq_acquire(struct hashq *q);
int hashq_submit(struct hashq *q, struct hashq_stream *s, void *block, size_t len);
int hashq_submit_keep(struct hashq *q, struct hashq_stream *s, void *block, size_t len);
void hashq_release(struct hashq *q, void *block);
/* Queue the end of s; s->hex is filled by the worker (valid after hashq_wait). */
int hashq_final(struct hashq *q, struct hashq_stream *s);
/* Wait until everything queued so far is done; -ENOMEM if a digest could
 * not be set up (its stream then has no hex). */
int hashq_wait(struct hashq *q);
/* Drop a stream that was begun but will not be finished; only after
 * hashq_wait() (pass q) or hashq_free() (pass NULL), when the worker no
 * longer touches it. */
void hashq_discard(struct hashq *q, struct hashq_stream *s);

#endif
