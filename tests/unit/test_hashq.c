/* test_hashq.c — the SHA-256 worker pipeline (lua/hashq.c): interleaved
 * streams, zero-copy blocks, more data than the pool holds, discard. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdbool.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "hashq.h"

static void oneshot(const void *d, size_t n, char hex[JV_SHA256_HEX])
{
	unsigned char md[32];
	unsigned int ml;
	EVP_Digest(d, n, md, &ml, EVP_sha256(), NULL);
	jv_hex(md, 32, hex);
}

Test(hashq, interleaved_streams_match_one_shot_digests)
{
	size_t n = 5 * HASHQ_BLOCK + 12345; /* more than the pool of 2 blocks */
	unsigned char *a = malloc(n), *b = malloc(n);
	for (size_t i = 0; i < n; i++) {
		a[i] = (unsigned char)(i * 7);
		b[i] = (unsigned char)(i * 13 + 1);
	}
	struct hashq *q;
	cr_assert_eq(hashq_new(&q, 2), 0);
	struct hashq_stream sa = {0}, sb = {0}, empty = {0};
	hashq_begin(q, &sa);
	hashq_begin(q, &sb);
	hashq_begin(q, &empty);
	for (size_t off = 0; off < n; off += 100000) {
		size_t k = n - off < 100000 ? n - off : 100000;
		hashq_update(q, &sa, a + off, k);
		/* b goes in zero-copy through pool blocks */
		unsigned char *blk = hashq_acquire(q);
		memcpy(blk, b + off, k);
		hashq_submit(q, &sb, blk, k);
	}
	hashq_final(q, &sa);
	hashq_final(q, &sb);
	hashq_final(q, &empty);
	cr_assert_eq(hashq_wait(q), 0);
	char want[JV_SHA256_HEX];
	oneshot(a, n, want);
	cr_expect_str_eq(sa.hex, want);
	oneshot(b, n, want);
	cr_expect_str_eq(sb.hex, want);
	cr_expect_eq(sa.bytes, n);
	cr_expect_str_eq(empty.hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	/* A stream begun and abandoned is released without a digest. */
	struct hashq_stream lost = {0};
	hashq_begin(q, &lost);
	hashq_update(q, &lost, a, 10);
	hashq_free(q);
	cr_expect(lost.md != NULL);
	hashq_discard(NULL, &lost);
	cr_expect(lost.md == NULL);
	free(a);
	free(b);
}

Test(hashq, a_kept_block_is_not_handed_out_again_until_released)
{
	struct hashq *q;
	cr_assert_eq(hashq_new(&q, 2), 0);
	struct hashq_stream s1 = {0}, s2 = {0};
	hashq_begin(q, &s1);
	hashq_begin(q, &s2);
	unsigned char *held = hashq_acquire(q);
	memset(held, 0xAB, 4096);
	hashq_submit_keep(q, &s1, held, 4096);
	hashq_wait(q); /* the worker is done with it; the caller still holds it */
	unsigned char *junk = calloc(1, 3 * HASHQ_BLOCK);
	hashq_update(q, &s2, junk, 3 * HASHQ_BLOCK); /* cycles the pool */
	hashq_wait(q);
	for (int i = 0; i < 4096; i++)
		cr_assert_eq(held[i], 0xAB, "a kept block was reused at byte %d", i);
	hashq_release(q, held);
	hashq_final(q, &s1);
	hashq_final(q, &s2);
	hashq_wait(q);
	unsigned char ab[4096];
	memset(ab, 0xAB, sizeof(ab));
	char want[JV_SHA256_HEX];
	oneshot(ab, sizeof(ab), want);
	cr_expect_str_eq(s1.hex, want);
	hashq_free(q);
	free(junk);
}

Test(hashq, thousands_of_small_streams_share_blocks_and_each_gets_its_own_digest)
{
	/* More streams than the op ring and the hand-off batch hold, sizes from 0 to a
	 * bit over a block, a pool of two blocks, one wait at the end: what extracting
	 * a world of small files does. Every digest must be that stream's alone. */
	enum { N = 3000 };
	size_t cap = HASHQ_BLOCK + 7000;
	unsigned char *data = malloc(cap);
	for (size_t i = 0; i < cap; i++)
		data[i] = (unsigned char)(i * 31 + (i >> 9));
	struct hashq_stream *st = calloc(N, sizeof(*st));
	size_t *off = malloc(N * sizeof(*off)), *len = malloc(N * sizeof(*len));
	struct hashq *q;
	cr_assert_eq(hashq_new(&q, 2), 0);
	unsigned seed = 12345;
	for (int i = 0; i < N; i++) {
		seed = seed * 1103515245u + 12345u;
		len[i] = (i % 997 == 0) ? HASHQ_BLOCK + 5000 : (seed >> 8) % 6000;
		off[i] = (seed >> 4) % (cap - len[i] + 1);
		hashq_begin(q, &st[i]);
		/* in two updates, so a stream's pieces can straddle the shared block */
		size_t half = len[i] / 2;
		hashq_update(q, &st[i], data + off[i], half);
		hashq_update(q, &st[i], data + off[i] + half, len[i] - half);
		hashq_final(q, &st[i]);
	}
	cr_assert_eq(hashq_wait(q), 0);
	for (int i = 0; i < N; i++) {
		char want[JV_SHA256_HEX];
		oneshot(data + off[i], len[i], want);
		cr_assert_str_eq(st[i].hex, want, "stream %d (%zu bytes)", i, len[i]);
		cr_assert_eq(st[i].bytes, len[i]);
	}
	hashq_free(q);
	free(st);
	free(off);
	free(len);
	free(data);
}

/* A write-through target that keeps what it gets, and fails after `limit` bytes. */
struct collect {
	unsigned char *buf;
	size_t len, limit;
	int calls_after_error;
	bool failed;
};

static int collect_write(void *ctx, const void *p, size_t n)
{
	struct collect *c = ctx;
	if (c->failed)
		c->calls_after_error++;
	if (c->len + n > c->limit) {
		c->failed = true;
		return -ENOSPC;
	}
	memcpy(c->buf + c->len, p, n);
	c->len += n;
	return 0;
}

Test(hashq, write_through_stream_gets_every_byte_in_order_and_stops_at_the_first_error)
{
	size_t n = 3 * HASHQ_BLOCK + 777;
	unsigned char *a = malloc(n);
	for (size_t i = 0; i < n; i++)
		a[i] = (unsigned char)(i * 31 + 5);
	struct collect c = {.buf = malloc(n), .limit = n};
	struct hashq_out out = {.write = collect_write, .ctx = &c};
	struct hashq *q;
	cr_assert_eq(hashq_new(&q, 2), 0);
	struct hashq_stream s = {0}, other = {0};
	hashq_begin_out(q, &s, &out);
	hashq_begin(q, &other);
	for (size_t off = 0; off < n; off += 65536) {
		size_t k = n - off < 65536 ? n - off : 65536;
		hashq_update(q, &s, a + off, k);
		hashq_update(q, &other, a, 100); /* packed beside it, never written */
	}
	hashq_final(q, &s);
	hashq_final(q, &other);
	cr_assert_eq(hashq_wait(q), 0);
	cr_expect_eq(hashq_out_error(&s), 0);
	cr_assert_eq(c.len, n);
	cr_expect_eq(memcmp(c.buf, a, n), 0);
	char want[JV_SHA256_HEX];
	oneshot(a, n, want);
	cr_expect_str_eq(s.hex, want);
	/* A target that fails: the error is kept, and nothing more is written. */
	struct collect f = {.buf = malloc(n), .limit = HASHQ_BLOCK};
	struct hashq_out fout = {.write = collect_write, .ctx = &f};
	struct hashq_stream s2 = {0};
	hashq_begin_out(q, &s2, &fout);
	for (size_t off = 0; off < n; off += 65536)
		hashq_update(q, &s2, a + off, n - off < 65536 ? n - off : 65536);
	hashq_final(q, &s2);
	cr_assert_eq(hashq_wait(q), 0);
	cr_expect_eq(hashq_out_error(&s2), -ENOSPC);
	cr_expect(f.len <= HASHQ_BLOCK);
	cr_expect_eq(f.calls_after_error, 0);
	hashq_free(q);
	free(a);
	free(c.buf);
	free(f.buf);
}
