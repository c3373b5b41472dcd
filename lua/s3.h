/* s3.h — a small client for S3-compatible object stores (AWS S3, MinIO, R2...).
 * Settings, objects and listing: s3.c; the request itself: s3_req.c;
 * multipart uploads: s3_mpu.c; a multipart upload fed by a stream of bytes:
 * s3_stream.h.
 *
 * The pure-C core of the `remote` Lua module (lua/api_remote.c). Requests are
 * signed by libcurl itself (CURLOPT_AWS_SIGV4) with an x-amz-content-sha256
 * header carrying the payload's real SHA-256; TLS is always verified. S3's
 * XML answers are read with expat. Each call retries transient failures
 * (connection errors, timeouts, a stalled transfer, 408/429/5xx, SlowDown)
 * with exponential backoff inside the call; what remains is classified:
 * S3_TRANSIENT (retry the run later) or S3_PERMANENT (403, NoSuchBucket...).
 *
 * Secrets: the access key pair lives in struct s3_remote only, is wiped by
 * s3_remote_wipe, and is never written into an error message. Messages name
 * the remote ("remote 'offsite'") and the store's error code. */
#ifndef JOBVISOR_S3_H
#define JOBVISOR_S3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <cjson/cJSON.h>

#include "iohooks.h"

struct s3_remote {
	char name[40];
	char endpoint[1024];
	char bucket[64];
	char region[64];
	char prefix[1024];
	bool path_style;
	int64_t bandwidth_limit; /* bytes/s, 0 = none */
	int64_t part_size;
	int parallel;
	char key_id[256];
	char secret[256];
	/* Transfers: a request without a byte moving for stall_s seconds is cut
	 * and retried; attempts per call; first backoff (doubling, 8 s cap). */
	long connect_timeout_s;
	long stall_s;
	int attempts;
	long backoff_ms;
};

enum s3_class { S3_OK = 0, S3_TRANSIENT, S3_PERMANENT, S3_NOT_FOUND };

/* The outcome of a failed call: a class and a message naming the remote. */
struct s3_err {
	enum s3_class cls;
	long http;           /* last status, 0 = no answer */
	char code[64];       /* the store's error code (NoSuchBucket...), "" if none */
	char msg[512];
};

/* Fill r from settings.remotes[name] and read its credentials file (refused
 * unless a regular file not accessible by group or others). 0, or -errno with
 * a message in err (never containing the secret). */
int s3_remote_load(const cJSON *settings, const char *name, struct s3_remote *r, char *err,
                   size_t errlen);
void s3_remote_wipe(struct s3_remote *r);

/* The object key for rel under the remote's prefix into out (1024 bytes):
 * "<prefix>/<rel>" or rel. -ENAMETOOLONG when it does not fit. */
int s3_key(const struct s3_remote *r, const char *rel, char *out, size_t outlen);

/* One object from memory (small objects: manifests), with its Content-MD5;
 * an answer whose ETag is a plain MD5 must match it. */
int s3_put(const struct s3_remote *r, const char *key, const void *data, size_t len,
           struct s3_err *e);
/* A whole small object into a malloc'ed buffer (returned-owned, free()). */
int s3_get_mem(const struct s3_remote *r, const char *key, size_t max, char **data, size_t *len,
               struct s3_err *e);
/* Bytes [from, from+len) of key (len -1 = to the end) handed to sink in
 * order; a cut transfer resumes at the first byte not delivered. sink returns
 * 0 or a -errno that stops the call. *size gets the object's total size. */
typedef int (*s3_sink)(void *arg, const void *buf, size_t n);
int s3_get_range(const struct s3_remote *r, const char *key, int64_t from, int64_t len,
                 s3_sink sink, void *arg, int64_t *size, const struct jv_io_hooks *hooks,
                 struct s3_err *e);
/* Size and ETag of an object (S3_NOT_FOUND when it does not exist). */
int s3_head(const struct s3_remote *r, const char *key, int64_t *size, char etag[80],
            struct s3_err *e);
int s3_delete(const struct s3_remote *r, const char *key, struct s3_err *e);

/* Multipart upload. create: a new upload id (returned into id, 1024 bytes).
 * part: bytes [off, off+len) of fd as part number n with Content-MD5; the
 * answer's ETag (quotes removed) into etag; an ETag that is a plain MD5 and
 * differs from the part's MD5 is an integrity failure. complete: the parts in
 * order; an <Error> inside a 200 answer is a failure. abort: gives the
 * upload's storage back (S3_NOT_FOUND when it no longer exists). */
int s3_mpu_create(const struct s3_remote *r, const char *key, char *id, size_t idlen,
                  struct s3_err *e);
int s3_mpu_part(const struct s3_remote *r, const char *key, const char *id, int n, int fd,
                off_t off, size_t len, char etag[80], const struct jv_io_hooks *hooks,
                struct s3_err *e);
/* The same from memory; md5 gets the part's MD5 (hex) as sent in Content-MD5. */
int s3_mpu_part_mem(const struct s3_remote *r, const char *key, const char *id, int n,
                    const void *data, size_t len, char etag[80], char md5[33],
                    const struct jv_io_hooks *hooks, struct s3_err *e);
struct s3_part {
	int n;
	char etag[80];
};
int s3_mpu_complete(const struct s3_remote *r, const char *key, const char *id,
                    const struct s3_part *parts, size_t nparts, struct s3_err *e);
int s3_mpu_abort(const struct s3_remote *r, const char *key, const char *id, struct s3_err *e);

/* ListObjectsV2 of prefix, every page: cb once per object. */
struct s3_object {
	const char *key;
	int64_t size;
	const char *etag;
	const char *last_modified;
};
typedef int (*s3_list_cb)(void *arg, const struct s3_object *o);
int s3_list(const struct s3_remote *r, const char *prefix, s3_list_cb cb, void *arg,
            struct s3_err *e);

/* A jv_io_hooks tick for worker threads: arg is an atomic_bool, true = stop. */
bool s3_stop_tick(void *arg, uint64_t done, uint64_t total);

#endif
