/* iohooks.h — what the pure-C cores of fs, archive and http share: a progress
 * and cancellation hook, and SHA-256 hex helpers.
 *
 * The cores (fsx.c, arch*.c, dl.c) never include lua.h; the Lua bindings fill
 * a jv_io_hooks with a function that reports progress and answers "cancel
 * requested?". A core calls it at safe points (entry boundaries and every
 * chunk of a big file) and, when it answers true, removes its partial output
 * and returns -ECANCELED. */
#ifndef JOBVISOR_IOHOOKS_H
#define JOBVISOR_IOHOOKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct jv_io_hooks {
	/* done and total are bytes (total 0 when unknown). Return true to stop. */
	bool (*tick)(void *arg, uint64_t done, uint64_t total);
	void *arg;
};

static inline bool jv_io_tick(const struct jv_io_hooks *h, uint64_t done, uint64_t total)
{
	return h && h->tick && h->tick(h->arg, done, total);
}

/* One header line as curl hands it to a header callback (src, n bytes, not
 * NUL-terminated): copied into line (cut at cap - 1 bytes), NUL-terminated,
 * the trailing CR/LF removed. Returns its length. */
static inline size_t jv_header_line(const char *src, size_t n, char *line, size_t cap)
{
	size_t l = n < cap - 1 ? n : cap - 1;
	memcpy(line, src, l);
	line[l] = '\0';
	while (l && (line[l - 1] == '\r' || line[l - 1] == '\n'))
		line[--l] = '\0';
	return l;
}

#define JV_SHA256_LEN 32
#define JV_SHA256_HEX 65 /* 64 hex digits + NUL */

static inline void jv_hex(const unsigned char *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

/* True for exactly 64 hex digits (either case). */
static inline bool jv_sha256_hex_valid(const char *s)
{
	if (!s || strlen(s) != 64)
		return false;
	for (const char *p = s; *p; p++) {
		char c = *p;
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
			return false;
	}
	return true;
}

/* Case-insensitive comparison of two hex digests. */
static inline bool jv_sha256_hex_equal(const char *a, const char *b)
{
	if (!a || !b)
		return false;
	for (; *a && *b; a++, b++) {
		char x = *a, y = *b;
		if (x >= 'A' && x <= 'F')
			x = (char)(x - 'A' + 'a');
		if (y >= 'A' && y <= 'F')
			y = (char)(y - 'A' + 'a');
		if (x != y)
			return false;
	}
	return *a == *b;
}

#endif
