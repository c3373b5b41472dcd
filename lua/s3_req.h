/* s3_req.h — what the parts of the S3 client share (lua/s3*.c only): one
 * signed request with retries (s3_req.c), a growing buffer, URI encoding,
 * digests and the expat walker. Objects and listing are in s3.c, multipart
 * uploads in s3_mpu.c, the streamed upload in s3_stream.c. */
#ifndef JOBVISOR_S3_REQ_H
#define JOBVISOR_S3_REQ_H

#include <openssl/evp.h>

#include "s3.h"

struct s3r_buf {
	char *p;
	size_t len, cap, max;
};

/* Append n bytes (kept NUL-terminated); -EFBIG past max, -ENOMEM. */
int s3r_buf_add(struct s3r_buf *b, const void *d, size_t n);
/* Percent-encode everything but S3's unreserved set (and '/' when keep_slash). */
int s3r_uri_encode(const char *in, bool keep_slash, char *out, size_t outlen);
/* One digest of a buffer; false when libcrypto is unavailable. */
bool s3r_digest(const EVP_MD *md, const void *d, size_t n, unsigned char *out, unsigned *outlen);
/* Base64 of a digest for Content-MD5 (out: 4 * ceil(n / 3) + 1 bytes). */
void s3r_base64(const unsigned char *in, size_t n, char *out);
void s3r_sha256_hex(const void *d, size_t n, char hex[JV_SHA256_HEX]);
/* Each closed element of doc with its parent's name and its text. 0, or
 * -EBADMSG when the document is not well-formed XML. */
int s3r_xml_walk(const char *doc, size_t len,
                 void (*on_end)(void *, const char *, const char *, const char *), void *arg);

struct s3r_req {
	const char *method;   /* GET PUT POST DELETE HEAD */
	const char *key;      /* NULL = the bucket */
	const char *query;    /* canonical: sorted, encoded; NULL = none */
	const void *body;
	size_t bodylen;
	const char *content_md5; /* base64, or NULL */
	int64_t range_from, range_len; /* range_from < 0: no Range */
	s3_sink sink;         /* 2xx body to sink instead of resp */
	void *sink_arg;
	const struct jv_io_hooks *hooks;
	/* results */
	long http;
	struct s3r_buf resp;
	char etag[80];
	bool etag_not_md5; /* SSE-KMS or SSE-C: the store's ETag is no MD5 of the body */
	int64_t total;        /* from Content-Range or Content-Length, -1 unknown */
	int64_t delivered;    /* bytes handed to sink */
	int sink_rc;
	size_t sent;
};

#define S3R_REQ(m) {.method = (m), .range_from = -1, .range_len = -1, .total = -1}

/* The error e for a call described by what ("cannot upload 'k'"), naming
 * the remote, never its secret. */
void s3r_set_err(const struct s3_remote *r, struct s3_err *e, enum s3_class cls, long http,
                 const char *code, const char *what, const char *detail);
/* One attempt; 0 on a 2xx answer without an <Error>, else classified in e. */
int s3r_once(const struct s3_remote *r, struct s3r_req *q, const char *what, struct s3_err *e);
/* Attempts with backoff while the failure is transient. */
int s3r_call(const struct s3_remote *r, struct s3r_req *q, const char *what, struct s3_err *e);
/* Sleep ms in slices, stopping early (true) when the hook asks to cancel. */
bool s3r_backoff_sleep(const struct jv_io_hooks *hooks, long ms);
/* PUT q's body with its Content-MD5 (md5 gets the hex digest) and check the
 * answer: an ETag that is a plain MD5 must be that digest (into etag). Frees
 * q's answer. */
int s3r_put_checked(const struct s3_remote *r, struct s3r_req *q, const char *what, char etag[80],
                    char md5[33], struct s3_err *e);
void s3r_describe(char *what, size_t n, const char *verb, const char *key);

#endif
