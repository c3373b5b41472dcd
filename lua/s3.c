/* s3.c — S3-compatible object storage (see s3.h): a remote's settings and
 * credentials, single objects (put, ranged get, head, delete) and the
 * paginated listing. The request itself is s3_req.c; multipart uploads are
 * s3_mpu.c and s3_stream.c. */
#define CURL_DISABLE_TYPECHECK 1
#include "s3_req.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- credentials and settings ---- */

static const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *k, double def)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int copy_field(char *dst, size_t n, const char *src)
{
	if (!src || strlen(src) >= n)
		return -EINVAL;
	memcpy(dst, src, strlen(src) + 1);
	return 0;
}

/* The first two non-empty lines of the credentials file. */
static int read_credentials(struct s3_remote *r, const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		int rc = -errno;
		snprintf(err, errlen, "remote '%s': cannot open credentials file '%s': %s", r->name, path,
		         strerror(errno));
		return rc;
	}
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		snprintf(err, errlen, "remote '%s': credentials file '%s' is not a regular file", r->name,
		         path);
		return -EINVAL;
	}
	if (st.st_mode & (S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH)) {
		close(fd);
		snprintf(err, errlen,
		         "remote '%s': credentials file '%s' is accessible by group or others (mode %04o); "
		         "run chmod 600 on it", r->name, path, (unsigned)(st.st_mode & 07777));
		return -EPERM;
	}
	char buf[1024];
	size_t len = 0;
	for (;;) {
		ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if (len == sizeof(buf) - 1)
			break;
	}
	close(fd);
	buf[len] = '\0';
	char *lines[2] = {NULL, NULL};
	int nl = 0;
	for (char *save = NULL, *l = strtok_r(buf, "\r\n", &save); l && nl < 2;
	     l = strtok_r(NULL, "\r\n", &save)) {
		while (*l == ' ' || *l == '\t')
			l++;
		size_t n = strlen(l);
		while (n && (l[n - 1] == ' ' || l[n - 1] == '\t'))
			l[--n] = '\0';
		if (n)
			lines[nl++] = l;
	}
	int rc = 0;
	if (nl < 2 || copy_field(r->key_id, sizeof(r->key_id), lines[0]) ||
	    copy_field(r->secret, sizeof(r->secret), lines[1]) || strchr(r->key_id, ':')) {
		snprintf(err, errlen,
		         "remote '%s': credentials file '%s' must hold the access key id on its first "
		         "line and the secret key on its second", r->name, path);
		rc = -EINVAL;
	}
	explicit_bzero(buf, sizeof(buf));
	return rc;
}

int s3_remote_load(const cJSON *settings, const char *name, struct s3_remote *r, char *err,
                   size_t errlen)
{
	memset(r, 0, sizeof(*r));
	const cJSON *all = cJSON_GetObjectItemCaseSensitive(settings, "remotes");
	const cJSON *o = cJSON_GetObjectItemCaseSensitive(all, name);
	if (!cJSON_IsObject(o)) {
		snprintf(err, errlen, "remote '%.64s' is not configured on this agent (set remote.%.64s.* "
		         "in the agent settings)", name, name);
		return -ENOENT;
	}
	if (copy_field(r->name, sizeof(r->name), name) ||
	    copy_field(r->endpoint, sizeof(r->endpoint), jstr(o, "endpoint")) ||
	    copy_field(r->bucket, sizeof(r->bucket), jstr(o, "bucket")) ||
	    copy_field(r->region, sizeof(r->region), jstr(o, "region")) ||
	    copy_field(r->prefix, sizeof(r->prefix), jstr(o, "prefix") ? jstr(o, "prefix") : "") ||
	    !jstr(o, "credentials_file")) {
		snprintf(err, errlen, "remote '%.64s': incomplete settings", name);
		return -EINVAL;
	}
	const cJSON *ps = cJSON_GetObjectItemCaseSensitive(o, "path_style");
	r->path_style = cJSON_IsTrue(ps);
	r->bandwidth_limit = (int64_t)jnum(o, "bandwidth_limit", 0);
	r->part_size = (int64_t)jnum(o, "part_size", 16 << 20);
	r->parallel = (int)jnum(o, "parallel", 4);
	r->connect_timeout_s = 10;
	r->stall_s = 30;
	r->attempts = 6;
	r->backoff_ms = 500;
	return read_credentials(r, jstr(o, "credentials_file"), err, errlen);
}

void s3_remote_wipe(struct s3_remote *r)
{
	explicit_bzero(r->key_id, sizeof(r->key_id));
	explicit_bzero(r->secret, sizeof(r->secret));
}

int s3_key(const struct s3_remote *r, const char *rel, char *out, size_t outlen)
{
	int n = r->prefix[0] ? snprintf(out, outlen, "%s/%s", r->prefix, rel)
	                     : snprintf(out, outlen, "%s", rel);
	return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* ---- objects ---- */

int s3_put(const struct s3_remote *r, const char *key, const void *data, size_t len,
           struct s3_err *e)
{
	char what[1200];
	s3r_describe(what, sizeof(what), "cannot upload", key);
	struct s3r_req q = S3R_REQ("PUT");
	q.key = key;
	q.body = data;
	q.bodylen = len;
	char etag[80], md5[33];
	return s3r_put_checked(r, &q, what, etag, md5, e);
}

static int mem_sink(void *arg, const void *d, size_t n)
{
	return s3r_buf_add(arg, d, n);
}

int s3_get_mem(const struct s3_remote *r, const char *key, size_t max, char **data, size_t *len,
               struct s3_err *e)
{
	struct s3r_buf b = {.max = max};
	*data = NULL;
	*len = 0;
	int64_t size = -1;
	int rc = s3_get_range(r, key, 0, -1, mem_sink, &b, &size, NULL, e);
	if (rc) {
		free(b.p);
		return rc;
	}
	if (!b.p && !(b.p = calloc(1, 1)))
		return -ENOMEM;
	*data = b.p;
	*len = b.len;
	return 0;
}

int s3_get_range(const struct s3_remote *r, const char *key, int64_t from, int64_t len,
                 s3_sink sink, void *arg, int64_t *size, const struct jv_io_hooks *hooks,
                 struct s3_err *e)
{
	char what[1200];
	s3r_describe(what, sizeof(what), "cannot download", key);
	int64_t got = 0;
	long delay = r->backoff_ms;
	int rc = 0;
	/* Attempts count failures without progress: a transfer that moved bytes
	 * before it was cut starts the count again (a long download over a flaky
	 * link must not fail for the sum of its hiccups). */
	for (int attempt = 1;; attempt++) {
		struct s3r_req q = S3R_REQ("GET");
		q.key = key;
		q.hooks = hooks;
		q.sink = sink;
		q.sink_arg = arg;
		q.range_from = from + got;
		q.range_len = len < 0 ? -1 : len - got;
		if (len >= 0 && q.range_len == 0)
			break;
		rc = s3r_once(r, &q, what, e);
		got += q.delivered;
		if (rc && q.http == 416 && q.range_from > 0 && len < 0) {
			/* resuming at (or past) the end: nothing more to send; the
			 * caller's size and digest checks judge what it has */
			free(q.resp.p);
			rc = 0;
			break;
		}
		if (q.total >= 0 && size)
			*size = q.total;
		free(q.resp.p);
		if (rc == 0) {
			if (q.http == 416 || (len >= 0 && got < len && q.delivered == 0))
				break;
			if (len < 0 || got >= len)
				break;
			continue;
		}
		if (rc == 0 || e->cls != S3_TRANSIENT || q.sink_rc)
			break; /* the sink's failure (a full disk) is the caller's to handle */
		if (q.delivered > 0)
			attempt = 0;
		if (attempt >= r->attempts)
			break;
		if (s3r_backoff_sleep(hooks, delay)) {
			s3r_set_err(r, e, S3_PERMANENT, 0, NULL, what, "cancelled");
			return -ECANCELED;
		}
		delay = delay * 2 > 8000 ? 8000 : delay * 2;
	}
	if (rc == 0)
		memset(e, 0, sizeof(*e));
	return rc;
}

int s3_head(const struct s3_remote *r, const char *key, int64_t *size, char etag[80],
            struct s3_err *e)
{
	struct s3r_req q = S3R_REQ("HEAD");
	q.key = key;
	char what[1200];
	s3r_describe(what, sizeof(what), "cannot look up", key);
	int rc = s3r_call(r, &q, what, e);
	if (rc == 0) {
		if (size)
			*size = q.total;
		if (etag)
			snprintf(etag, 80, "%s", q.etag);
	}
	free(q.resp.p);
	return rc;
}

int s3_delete(const struct s3_remote *r, const char *key, struct s3_err *e)
{
	struct s3r_req q = S3R_REQ("DELETE");
	q.key = key;
	char what[1200];
	s3r_describe(what, sizeof(what), "cannot delete", key);
	int rc = s3r_call(r, &q, what, e);
	free(q.resp.p);
	return rc;
}

/* ---- listing ---- */

struct list_page {
	s3_list_cb cb;
	void *arg;
	int cb_rc;
	char key[1024];
	char etag[80];
	char modified[40];
	int64_t size;
	bool truncated;
	char next[1024];
};

static void on_list_el(void *arg, const char *name, const char *parent, const char *text)
{
	struct list_page *p = arg;
	if (strcmp(parent, "Contents") == 0) {
		if (strcmp(name, "Key") == 0)
			snprintf(p->key, sizeof(p->key), "%s", text);
		else if (strcmp(name, "Size") == 0)
			p->size = strtoll(text, NULL, 10);
		else if (strcmp(name, "ETag") == 0)
			snprintf(p->etag, sizeof(p->etag), "%s", text[0] == '"' ? text + 1 : text);
		else if (strcmp(name, "LastModified") == 0)
			snprintf(p->modified, sizeof(p->modified), "%s", text);
	} else if (strcmp(name, "Contents") == 0) {
		char *qt = strchr(p->etag, '"');
		if (qt)
			*qt = '\0';
		struct s3_object o = {p->key, p->size, p->etag, p->modified};
		if (p->cb_rc == 0 && p->key[0])
			p->cb_rc = p->cb(p->arg, &o);
		p->key[0] = p->etag[0] = p->modified[0] = '\0';
		p->size = 0;
	} else if (strcmp(parent, "ListBucketResult") == 0) {
		if (strcmp(name, "IsTruncated") == 0)
			p->truncated = strcmp(text, "true") == 0;
		else if (strcmp(name, "NextContinuationToken") == 0)
			snprintf(p->next, sizeof(p->next), "%s", text);
	}
}

int s3_list(const struct s3_remote *r, const char *prefix, s3_list_cb cb, void *arg,
            struct s3_err *e)
{
	char what[1200];
	s3r_describe(what, sizeof(what), "cannot list", prefix);
	char token[1024] = "";
	for (int page = 0; page < 100000; page++) {
		char eprefix[3200], etoken[3200], query[6600];
		if (s3r_uri_encode(prefix, false, eprefix, sizeof(eprefix)) ||
		    s3r_uri_encode(token, false, etoken, sizeof(etoken))) {
			s3r_set_err(r, e, S3_PERMANENT, 0, NULL, what, "prefix or continuation token too long");
			return -ENAMETOOLONG;
		}
		/* canonical order: continuation-token < list-type < prefix */
		if (token[0])
			snprintf(query, sizeof(query), "continuation-token=%s&list-type=2&prefix=%s", etoken,
			         eprefix);
		else
			snprintf(query, sizeof(query), "list-type=2&prefix=%s", eprefix);
		struct s3r_req q = S3R_REQ("GET");
		q.query = query;
		int rc = s3r_call(r, &q, what, e);
		if (rc) {
			free(q.resp.p);
			return rc;
		}
		struct list_page p = {.cb = cb, .arg = arg};
		rc = s3r_xml_walk(q.resp.p ? q.resp.p : "", q.resp.len, on_list_el, &p);
		free(q.resp.p);
		if (rc) {
			s3r_set_err(r, e, S3_TRANSIENT, q.http, NULL, what, "the listing is not well-formed XML");
			return rc;
		}
		if (p.cb_rc)
			return p.cb_rc;
		if (!p.truncated)
			return 0;
		if (!p.next[0] || strcmp(p.next, token) == 0) {
			s3r_set_err(r, e, S3_PERMANENT, q.http, NULL, what,
			        "a truncated listing without a new continuation token");
			return -EPROTO;
		}
		snprintf(token, sizeof(token), "%s", p.next);
	}
	s3r_set_err(r, e, S3_PERMANENT, 0, NULL, what, "too many pages");
	return -E2BIG;
}

