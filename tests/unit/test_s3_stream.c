/* test_s3_stream.c — the streamed multipart upload's own decisions (lua/s3_stream.c), the
 * ones that need no server: where parts are cut (the same places on every attempt, growing
 * past 2000 parts), a part an earlier attempt had acknowledged with the same bytes is not
 * sent, one with other bytes stops the stream with -ESTALE before anything is sent. The
 * remote points at a closed port: a request would fail the test with a connection error.
 * The uploads themselves are tested against a real S3 server in
 * tests/e2e/test_remote_stream.py. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include <openssl/evp.h>

#include "s3_stream.h"

static struct s3_remote remote(void)
{
	struct s3_remote r = {0};
	strcpy(r.name, "unit");
	strcpy(r.endpoint, "http://127.0.0.1:1"); /* nothing listens: a request fails */
	strcpy(r.bucket, "b");
	strcpy(r.region, "us-east-1");
	strcpy(r.key_id, "K");
	strcpy(r.secret, "S");
	r.connect_timeout_s = 2;
	r.stall_s = 2;
	r.attempts = 1;
	r.backoff_ms = 1;
	return r;
}

static void md5_hex(const void *d, size_t n, char out[33])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned ml = 0;
	EVP_Digest(d, n, md, &ml, EVP_md5(), NULL);
	jv_hex(md, ml, out);
}

struct acks {
	int n;
	struct s3_stream_part v[8];
};

static int on_ack(void *arg, const struct s3_stream_part *p)
{
	struct acks *a = arg;
	if (a->n < 8)
		a->v[a->n++] = *p;
	return 0;
}

Test(s3_stream, part_sizes_depend_on_the_part_number_only)
{
	size_t base = 16u << 20;
	cr_assert_eq(s3_stream_part_size(base, 1), base);
	cr_assert_eq(s3_stream_part_size(base, 2000), base);
	cr_assert_eq(s3_stream_part_size(base, 2001), 2 * base);
	cr_assert_eq(s3_stream_part_size(base, 8001), 16 * base);
	cr_assert_eq(s3_stream_part_size(base, 10000), 16 * base);
	/* never past S3's 5 GiB part limit */
	cr_assert_leq(s3_stream_part_size(4ull << 30, 9000), 5ull << 30);
	uint64_t total = 0;
	for (int n = 1; n <= 10000; n++)
		total += s3_stream_part_size(base, n);
	cr_assert_eq(total, 62000ull * base);
}

Test(s3_stream, acknowledged_parts_with_the_same_bytes_are_not_sent_again)
{
	struct s3_remote r = remote();
	char data[2500];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (char)(i * 7);
	struct s3_stream_part prior[3] = {{.n = 1, .len = 1000}, {.n = 2, .len = 1000},
	                                  {.n = 3, .len = 500}};
	for (int i = 0; i < 3; i++) {
		md5_hex(data + i * 1000, prior[i].len, prior[i].md5);
		snprintf(prior[i].etag, sizeof(prior[i].etag), "etag-%d", i + 1);
	}
	struct acks a = {0};
	struct s3_stream_opts o = {.r = &r, .key = "k", .upload_id = "u", .part_size = 1000,
	                           .parallel = 2, .prior = prior, .nprior = 3, .on_ack = on_ack,
	                           .ack_arg = &a};
	struct s3_stream *s;
	struct s3_err e = {0};
	cr_assert_eq(s3_stream_open(&o, &s, &e), 0, "%s", e.msg);
	/* written in odd slices: the cuts are where the part sizes say */
	cr_assert_eq(s3_stream_write(s, data, 333), 0);
	cr_assert_eq(s3_stream_write(s, data + 333, 2000), 0);
	cr_assert_eq(s3_stream_write(s, data + 2333, 167), 0);
	int nparts = 0;
	cr_assert_eq(s3_stream_finish(s, &nparts), 0, "%s", s3_stream_error(s)->msg);
	s3_stream_close(s);
	cr_assert_eq(nparts, 3);
	cr_assert_eq(a.n, 3);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(a.v[i].n, i + 1);
		cr_assert_not(a.v[i].sent);
		cr_assert_str_eq(a.v[i].etag, prior[i].etag);
		cr_assert_eq(a.v[i].len, prior[i].len);
	}
}

Test(s3_stream, a_part_with_other_bytes_stops_the_stream_before_anything_is_sent)
{
	struct s3_remote r = remote();
	char data[1500];
	memset(data, 'a', sizeof(data));
	struct s3_stream_part prior = {.n = 1, .len = 1000, .etag = "e"};
	md5_hex(data, 1000, prior.md5);
	data[10] = 'b'; /* the tree changed since the earlier attempt */
	struct acks a = {0};
	struct s3_stream_opts o = {.r = &r, .key = "k", .upload_id = "u", .part_size = 1000,
	                           .parallel = 1, .prior = &prior, .nprior = 1, .on_ack = on_ack,
	                           .ack_arg = &a};
	struct s3_stream *s;
	struct s3_err e = {0};
	cr_assert_eq(s3_stream_open(&o, &s, &e), 0);
	cr_assert_eq(s3_stream_write(s, data, sizeof(data)), -ESTALE);
	int nparts = 0;
	cr_assert_eq(s3_stream_finish(s, &nparts), -ESTALE);
	cr_assert(strstr(s3_stream_error(s)->msg, "part 1 differs from the part an earlier run "
	                                          "uploaded"), "%s", s3_stream_error(s)->msg);
	cr_assert(strstr(s3_stream_error(s)->msg, "remote 'unit'"));
	s3_stream_close(s);
	cr_assert_eq(a.n, 0);
}

Test(s3_stream, bad_options_are_refused)
{
	struct s3_remote r = remote();
	struct s3_stream_opts o = {.r = &r, .key = "k", .upload_id = "u", .part_size = 1000,
	                           .parallel = 0};
	struct s3_stream *s = NULL;
	struct s3_err e = {0};
	cr_assert_eq(s3_stream_open(&o, &s, &e), -EINVAL);
	cr_assert_null(s);
	cr_assert(strstr(e.msg, "parallel must be 1-32"), "%s", e.msg);
}
