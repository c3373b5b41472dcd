/* zstd_lazy.h — libzstd's streaming (de)compressor, loaded on first use.
 *
 * libzstd is already on every host that has libarchive (a dependency of it);
 * the restore and verify paths call it directly (lua/arch_pipe.c), so the
 * decompressed bytes land in the reader's blocks without a copy through
 * libarchive's filter buffer, and archive creation compresses with it
 * straight into the blocks its hash worker writes out (lua/arch_zout.c). The development header is not needed: the few
 * declarations below are zstd's stable ABI (zstd.h, "stable API"). */
#ifndef JOBVISOR_ZSTD_LAZY_H
#define JOBVISOR_ZSTD_LAZY_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ZSTD_DCtx_s ZSTD_DStream;
typedef struct ZSTD_CCtx_s ZSTD_CCtx;
typedef struct {
	const void *src;
	size_t size, pos;
} jv_zstd_in;
typedef struct {
	void *dst;
	size_t size, pos;
} jv_zstd_out;

struct jv_zstd {
	ZSTD_DStream *(*create)(void);
	size_t (*free)(ZSTD_DStream *);
	size_t (*decompress)(ZSTD_DStream *, jv_zstd_out *, jv_zstd_in *);
	unsigned (*is_error)(size_t);
	const char *(*error_name)(size_t);
	/* Compression (zstd >= 1.4; NULL when the library lacks it). */
	ZSTD_CCtx *(*cctx_create)(void);
	size_t (*cctx_free)(ZSTD_CCtx *);
	size_t (*cctx_set)(ZSTD_CCtx *, int param, int value);
	size_t (*compress2)(ZSTD_CCtx *, jv_zstd_out *, jv_zstd_in *, int end_op);
};

/* zstd.h's stable values: parameters of cctx_set, end_op of compress2. */
#define JV_ZSTD_C_LEVEL 100
#define JV_ZSTD_C_WORKERS 400
#define JV_ZSTD_E_CONTINUE 0
#define JV_ZSTD_E_END 2

/* The functions, or NULL when libzstd cannot be loaded (the caller falls back
 * to libarchive's own filter). Call from one thread before sharing. */
const struct jv_zstd *jv_zstd_load(void);

/* The 4-byte magic number that starts a zstd frame. */
bool jv_zstd_magic(const void *p, size_t n);

#endif
