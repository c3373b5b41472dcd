/* s3_mpu.c — multipart uploads (see s3.h): create, one part with its
 * Content-MD5 and ETag check, complete, abort. */
#include "s3_req.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

struct upload_id {
	char *out;
	size_t n;
	bool found;
};

static void on_initiate_el(void *arg, const char *name, const char *parent, const char *text)
{
	struct upload_id *u = arg;
	if (strcmp(name, "UploadId") == 0 && strcmp(parent, "InitiateMultipartUploadResult") == 0 &&
	    strlen(text) < u->n && *text) {
		memcpy(u->out, text, strlen(text) + 1);
		u->found = true;
	}
}

int s3_mpu_create(const struct s3_remote *r, const char *key, char *id, size_t idlen,
                  struct s3_err *e)
{
	struct s3r_req q = S3R_REQ("POST");
	q.key = key;
	q.query = "uploads=";
	char what[1200];
	s3r_describe(what, sizeof(what), "cannot start a multipart upload of", key);
	int rc = s3r_call(r, &q, what, e);
	if (rc == 0) {
		struct upload_id u = {id, idlen, false};
		if (s3r_xml_walk(q.resp.p ? q.resp.p : "", q.resp.len, on_initiate_el, &u) || !u.found) {
			s3r_set_err(r, e, S3_TRANSIENT, q.http, NULL, what, "the answer holds no UploadId");
			rc = -EPROTO;
		}
	}
	free(q.resp.p);
	return rc;
}

/* The query naming upload id (and part n when n > 0); an id too long for
 * it: e set (what failed) and -ENAMETOOLONG. */
static int id_query(const struct s3_remote *r, const char *id, int n, char *out, size_t outlen,
                    const char *what, struct s3_err *e)
{
	char eid[1100];
	int l = -1;
	if (s3r_uri_encode(id, false, eid, sizeof(eid)) == 0)
		l = n > 0 ? snprintf(out, outlen, "partNumber=%d&uploadId=%s", n, eid)
		          : snprintf(out, outlen, "uploadId=%s", eid);
	if (l < 0 || (size_t)l >= outlen) {
		s3r_set_err(r, e, S3_PERMANENT, 0, NULL, what, "upload id too long");
		return -ENAMETOOLONG;
	}
	return 0;
}

int s3_mpu_part_mem(const struct s3_remote *r, const char *key, const char *id, int n,
                    const void *data, size_t len, char etag[80], char md5[33],
                    const struct jv_io_hooks *hooks, struct s3_err *e)
{
	char what[1200];
	snprintf(what, sizeof(what), "cannot upload part %d of '%s'", n, key);
	char query[1200];
	if (id_query(r, id, n, query, sizeof(query), what, e))
		return -ENAMETOOLONG;
	struct s3r_req q = S3R_REQ("PUT");
	q.key = key;
	q.query = query;
	q.body = data;
	q.bodylen = len;
	q.hooks = hooks;
	return s3r_put_checked(r, &q, what, etag, md5, e);
}

int s3_mpu_part(const struct s3_remote *r, const char *key, const char *id, int n, int fd,
                off_t off, size_t len, char etag[80], const struct jv_io_hooks *hooks,
                struct s3_err *e)
{
	char *data = len ? malloc(len) : NULL;
	if (len && !data) {
		s3r_set_err(r, e, S3_TRANSIENT, 0, NULL, "cannot upload a part", "out of memory");
		return -ENOMEM;
	}
	size_t got = 0;
	while (got < len) {
		ssize_t k = pread(fd, data + got, len - got, off + (off_t)got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			int rc = k < 0 ? -errno : -EIO;
			s3r_set_err(r, e, S3_PERMANENT, 0, NULL, "cannot upload a part",
			            k < 0 ? strerror(errno) : "the file is shorter than the part");
			free(data);
			return rc;
		}
		got += (size_t)k;
	}
	char md5[33];
	int rc = s3_mpu_part_mem(r, key, id, n, data, len, etag, md5, hooks, e);
	free(data);
	return rc;
}

int s3_mpu_complete(const struct s3_remote *r, const char *key, const char *id,
                    const struct s3_part *parts, size_t nparts, struct s3_err *e)
{
	char what[1200];
	s3r_describe(what, sizeof(what), "cannot complete the multipart upload of", key);
	char query[1200];
	if (id_query(r, id, 0, query, sizeof(query), what, e))
		return -ENAMETOOLONG;
	struct s3r_buf b = {.max = 2u << 20};
	int rc = s3r_buf_add(&b, "<CompleteMultipartUpload>", 25);
	for (size_t i = 0; rc == 0 && i < nparts; i++) {
		char one[200];
		int l = snprintf(one, sizeof(one), "<Part><PartNumber>%d</PartNumber><ETag>\"%s\"</ETag></Part>",
		                 parts[i].n, parts[i].etag);
		rc = s3r_buf_add(&b, one, (size_t)l);
	}
	if (rc == 0)
		rc = s3r_buf_add(&b, "</CompleteMultipartUpload>", 26);
	if (rc) {
		free(b.p);
		s3r_set_err(r, e, S3_PERMANENT, 0, NULL, what, "too many parts");
		return rc;
	}
	struct s3r_req q = S3R_REQ("POST");
	q.key = key;
	q.query = query;
	q.body = b.p;
	q.bodylen = b.len;
	rc = s3r_call(r, &q, what, e);
	free(q.resp.p);
	free(b.p);
	return rc;
}

int s3_mpu_abort(const struct s3_remote *r, const char *key, const char *id, struct s3_err *e)
{
	char what[1200];
	s3r_describe(what, sizeof(what), "cannot abort the multipart upload of", key);
	char query[1200];
	if (id_query(r, id, 0, query, sizeof(query), what, e))
		return -ENAMETOOLONG;
	struct s3r_req q = S3R_REQ("DELETE");
	q.key = key;
	q.query = query;
	int rc = s3r_call(r, &q, what, e);
	free(q.resp.p);
	return rc;
}

