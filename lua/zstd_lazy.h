/* zstd_lazy.h — libzstd's streaming decompressor, loaded on first use.
 *
 * libzstd is already on every host that has libarchive (a dependency of it);
 * the restore and verify paths call it directly (lua/arch_pipe.c), so the
 * decompressed bytes land in the reader's blocks without a copy through
 * libarchive's filter buffer. The development header is not needed: the few
 * declarations below are zstd's stable ABI (zstd.h, "stable API"). */
#ifndef JOBVISOR_ZSTD_LAZY_H
#define JOBVISOR_ZSTD_LAZY_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ZSTD_DCtx_s ZSTD_DStream;
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
};

/* The functions, or NULL when libzstd cannot be loaded (the caller falls back
 * to libarchive's own filter). Call from one thread before sharing. */
const struct jv_zstd *jv_zstd_load(void);

/* The 4-byte magic number that starts a zstd frame. */
bool jv_zstd_magic(const void *p, size_t n);

#endif
