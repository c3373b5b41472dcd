/* s3.c — S3-compatible object storage over libcurl (see s3.h).
 *
 * One request is one easy handle: the URL (path-style or virtual-host), the
 * query in canonical (sorted, encoded) order, the body from memory with its
 * SHA-256 in x-amz-content-sha256, and libcurl's own SigV4 signing. libcurl,
 * libcrypto and libexpat are all loaded on first use (curl_lazy.c,
 * crypto_lazy.c, expat_lazy.c). `call`
 * wraps a request in retries; `classify` turns a curl code or an HTTP status
 * plus S3 <Error> document into the s3_class the caller acts on. The XML
 * answers are read by one expat walker that reports each closed element with
 * its parent's name. Logging is left to the binding. */
#define CURL_DISABLE_TYPECHECK 1
#include "s3.h"

#include <curl/curl.h>
#include <errno.h>
#include <expat.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RESPONSE_MAX (16u << 20) /* an XML answer (a list page is ~300 KiB) */
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

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

/* ---- small helpers ---- */

struct buf {
	char *p;
	size_t len, cap, max;
};

static int buf_add(struct buf *b, const void *d, size_t n)
{
	if (b->len + n > b->max)
		return -EFBIG;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, d, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

/* Percent-encode everything but S3's unreserved set (and '/' when keep_slash). */
static int uri_encode(const char *in, bool keep_slash, char *out, size_t outlen)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
		bool plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		             (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' ||
		             *p == '~' || (keep_slash && *p == '/');
		if (o + 4 >= outlen)
			return -ENAMETOOLONG;
		if (plain) {
			out[o++] = (char)*p;
		} else {
			out[o++] = '%';
			out[o++] = hex[*p >> 4];
			out[o++] = hex[*p & 15];
		}
	}
	out[o] = '\0';
	return 0;
}

/* One digest of a buffer; false when libcrypto is unavailable. */
static bool digest(const EVP_MD *md, const void *d, size_t n, unsigned char *out, unsigned *outlen)
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	bool ok = c && EVP_DigestInit_ex(c, md, NULL) == 1 && EVP_DigestUpdate(c, d, n) == 1 &&
	          EVP_DigestFinal_ex(c, out, outlen) == 1;
	EVP_MD_CTX_free(c);
	if (!ok)
		*outlen = 0;
	return ok;
}

/* Base64 of a digest for Content-MD5 (out: 4 * ceil(n / 3) + 1 bytes). */
static void base64(const unsigned char *in, size_t n, char *out)
{
	static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) |
		             (i + 2 < n ? in[i + 2] : 0);
		out[o++] = t[(v >> 18) & 63];
		out[o++] = t[(v >> 12) & 63];
		out[o++] = i + 1 < n ? t[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? t[v & 63] : '=';
	}
	out[o] = '\0';
}

static void sha256_hex(const void *d, size_t n, char hex[JV_SHA256_HEX])
{
	unsigned char h[EVP_MAX_MD_SIZE];
	unsigned hl = 0;
	digest(EVP_sha256(), d, n, h, &hl);
	jv_hex(h, hl, hex);
}

/* ---- XML: report each closed element with its parent ---- */

#define XML_DEPTH 8

struct xml_walk {
	char names[XML_DEPTH][64];
	int depth;
	struct buf text;
	void (*on_end)(void *arg, const char *name, const char *parent, const char *text);
	void *arg;
};

static void XMLCALL x_start(void *ud, const XML_Char *name, const XML_Char **attrs)
{
	(void)attrs;
	struct xml_walk *w = ud;
	if (w->depth < XML_DEPTH)
		snprintf(w->names[w->depth], sizeof(w->names[0]), "%s", name);
	w->depth++;
	w->text.len = 0;
	if (w->text.p)
		w->text.p[0] = '\0';
}

static void XMLCALL x_end(void *ud, const XML_Char *name)
{
	struct xml_walk *w = ud;
	w->depth--;
	const char *parent = w->depth >= 1 && w->depth <= XML_DEPTH ? w->names[w->depth - 1] : "";
	w->on_end(w->arg, name, parent, w->text.p ? w->text.p : "");
	w->text.len = 0;
	if (w->text.p)
		w->text.p[0] = '\0';
}

static void XMLCALL x_text(void *ud, const XML_Char *s, int len)
{
	struct xml_walk *w = ud;
	buf_add(&w->text, s, (size_t)len); /* text past the cap is cut, never overflows */
}

/* 0, or -EBADMSG when the document is not well-formed XML. */
static int xml_walk(const char *doc, size_t len,
                    void (*on_end)(void *, const char *, const char *, const char *), void *arg)
{
	XML_Parser p = XML_ParserCreate("UTF-8");
	if (!p)
		return -ENOSYS; /* libexpat.so.1 missing (or out of memory) */
	struct xml_walk w = {.on_end = on_end, .arg = arg, .text = {.max = 64 * 1024}};
	XML_SetUserData(p, &w);
	XML_SetElementHandler(p, x_start, x_end);
	XML_SetCharacterDataHandler(p, x_text);
	int rc = XML_Parse(p, doc, (int)len, 1) == XML_STATUS_OK ? 0 : -EBADMSG;
	XML_ParserFree(p);
	free(w.text.p);
	return rc;
}

struct xml_error {
	char code[64];
	char message[256];
	bool is_error;
};

static void on_error_el(void *arg, const char *name, const char *parent, const char *text)
{
	struct xml_error *x = arg;
	if (strcmp(name, "Error") == 0)
		x->is_error = true;
	else if (strcmp(parent, "Error") == 0 && strcmp(name, "Code") == 0)
		snprintf(x->code, sizeof(x->code), "%s", text);
	else if (strcmp(parent, "Error") == 0 && strcmp(name, "Message") == 0)
		snprintf(x->message, sizeof(x->message), "%s", text);
}

/* ---- one request ---- */

struct req {
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
	struct buf resp;
	char etag[80];
	int64_t total;        /* from Content-Range or Content-Length, -1 unknown */
	int64_t delivered;    /* bytes handed to sink */
	int sink_rc;
	size_t sent;
};

static size_t on_read(char *dst, size_t size, size_t nmemb, void *ud)
{
	struct req *q = ud;
	size_t n = size * nmemb;
	size_t left = q->bodylen - q->sent;
	if (n > left)
		n = left;
	memcpy(dst, (const char *)q->body + q->sent, n);
	q->sent += n;
	return n;
}

static size_t on_write(char *src, size_t size, size_t nmemb, void *ud)
{
	struct req *q = ud;
	size_t n = size * nmemb;
	if (q->sink && q->http >= 200 && q->http < 300) {
		if (q->range_from > 0 && q->http != 206) {
			/* a store that ignored Range sends the object from byte 0:
			 * appending it would corrupt what is already there */
			q->sink_rc = -EPROTO;
			return 0;
		}
		int rc = q->sink(q->sink_arg, src, n);
		if (rc) {
			q->sink_rc = rc;
			return 0;
		}
		q->delivered += (int64_t)n;
		return n;
	}
	if (buf_add(&q->resp, src, n) != 0)
		return 0;
	return n;
}

static size_t on_header(char *src, size_t size, size_t nmemb, void *ud)
{
	struct req *q = ud;
	size_t n = size * nmemb;
	char line[512];
	size_t l = n < sizeof(line) - 1 ? n : sizeof(line) - 1;
	memcpy(line, src, l);
	line[l] = '\0';
	while (l && (line[l - 1] == '\r' || line[l - 1] == '\n'))
		line[--l] = '\0';
	if (strncmp(line, "HTTP/", 5) == 0) {
		/* a new answer (after a redirect or 100-continue): forget the previous one's */
		q->http = strtol(strchr(line, ' ') ? strchr(line, ' ') + 1 : "0", NULL, 10);
		q->etag[0] = '\0';
		q->total = -1;
	} else if (strncasecmp(line, "etag:", 5) == 0) {
		const char *v = line + 5;
		while (*v == ' ' || *v == '"')
			v++;
		snprintf(q->etag, sizeof(q->etag), "%s", v);
		char *qt = strchr(q->etag, '"');
		if (qt)
			*qt = '\0';
	} else if (strncasecmp(line, "content-range:", 14) == 0) {
		const char *slash = strrchr(line, '/');
		if (slash && slash[1] != '*')
			q->total = strtoll(slash + 1, NULL, 10);
	} else if (strncasecmp(line, "content-length:", 15) == 0 && q->range_from < 0) {
		q->total = strtoll(line + 15, NULL, 10);
	}
	return n;
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	struct req *q = ud;
	(void)dt;
	(void)ut;
	/* a cancel request stops the transfer at once */
	return jv_io_tick(q->hooks, (uint64_t)(dn + un), 0) ? 1 : 0;
}

static int build_url(const struct s3_remote *r, const char *key, const char *query, char *url,
                     size_t n)
{
	char ekey[3 * 1024 + 1] = "";
	if (key && uri_encode(key, true, ekey, sizeof(ekey)))
		return -ENAMETOOLONG;
	const char *sep = strstr(r->endpoint, "://");
	if (!sep)
		return -EINVAL;
	int len;
	if (r->path_style)
		len = snprintf(url, n, "%s/%s%s%s%s%s", r->endpoint, r->bucket, key ? "/" : "/", ekey,
		               query ? "?" : "", query ? query : "");
	else
		len = snprintf(url, n, "%.*s%s.%s/%s%s%s", (int)(sep + 3 - r->endpoint), r->endpoint,
		               r->bucket, sep + 3, ekey, query ? "?" : "", query ? query : "");
	return len < 0 || (size_t)len >= n ? -ENAMETOOLONG : 0;
}

static bool transient_curl(CURLcode cc)
{
	switch (cc) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR:
		return true;
	default:
		return false;
	}
}

/* Never let the secret reach a message, whatever a server echoes back. */
static void scrub(const struct s3_remote *r, char *msg)
{
	size_t sl = strlen(r->secret);
	if (sl < 4)
		return;
	for (char *p = strstr(msg, r->secret); p; p = strstr(p, r->secret))
		memset(p, '*', sl);
}

static void set_err(const struct s3_remote *r, struct s3_err *e, enum s3_class cls, long http,
                    const char *code, const char *what, const char *detail)
{
	e->cls = cls;
	e->http = http;
	snprintf(e->code, sizeof(e->code), "%s", code ? code : "");
	snprintf(e->msg, sizeof(e->msg), "remote '%s': %s: %s", r->name, what, detail);
	scrub(r, e->msg);
}

/* Classify a finished request. 0 on a 2xx answer. */
static int classify(const struct s3_remote *r, struct req *q, CURLcode cc, const char *what,
                    const char *cerr, struct s3_err *e)
{
	if (q->sink_rc) {
		/* a full disk under a download is worth a retry once space is freed */
		bool full = q->sink_rc == -ENOSPC || q->sink_rc == -EDQUOT;
		set_err(r, e, full ? S3_TRANSIENT : S3_PERMANENT, q->http, NULL, what,
		        q->sink_rc == -EPROTO ? "the store ignored the Range header of a resumed download"
		                              : strerror(-q->sink_rc));
		return q->sink_rc;
	}
	if (cc == CURLE_ABORTED_BY_CALLBACK) {
		set_err(r, e, S3_PERMANENT, 0, NULL, what, "cancelled");
		return -ECANCELED;
	}
	if (cc != CURLE_OK) {
		char d[400];
		snprintf(d, sizeof(d), "%s", cerr[0] ? cerr : curl_easy_strerror(cc));
		if (cc == CURLE_OPERATION_TIMEDOUT)
			snprintf(d, sizeof(d), "no progress for %ld seconds (%s)", r->stall_s, cerr);
		set_err(r, e, transient_curl(cc) ? S3_TRANSIENT : S3_PERMANENT, 0, NULL, what, d);
		return cc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EIO;
	}
	struct xml_error x = {0};
	if (q->resp.len)
		xml_walk(q->resp.p, q->resp.len, on_error_el, &x);
	if (q->http >= 200 && q->http < 300 && !x.is_error)
		return 0;
	char d[400];
	if (x.code[0])
		snprintf(d, sizeof(d), "HTTP %ld %s%s%s", q->http, x.code, x.message[0] ? ": " : "",
		         x.message);
	else
		snprintf(d, sizeof(d), "HTTP %ld", q->http);
	enum s3_class cls;
	if (q->http >= 200 && q->http < 300) /* <Error> in a 200 (CompleteMultipartUpload) */
		cls = strcmp(x.code, "InternalError") == 0 || strcmp(x.code, "SlowDown") == 0 ? S3_TRANSIENT
		                                                                              : S3_PERMANENT;
	else if (q->http == 408 || q->http == 429 || q->http >= 500 ||
	         strcmp(x.code, "RequestTimeout") == 0 || strcmp(x.code, "SlowDown") == 0)
		cls = S3_TRANSIENT;
	else if (q->http == 404 && strcmp(x.code, "NoSuchBucket") != 0)
		cls = S3_NOT_FOUND;
	else
		cls = S3_PERMANENT;
	if (q->http == 403 || q->http == 401)
		strncat(d, " (check the remote's credentials file and its permissions on the bucket)",
		        sizeof(d) - strlen(d) - 1);
	set_err(r, e, cls, q->http, x.code, what, d);
	return cls == S3_NOT_FOUND ? -ENOENT : cls == S3_TRANSIENT ? -EAGAIN : -EACCES;
}

static int once(const struct s3_remote *r, struct req *q, const char *what, struct s3_err *e)
{
	char url[4096];
	int rc = build_url(r, q->key, q->query, url, sizeof(url));
	if (rc) {
		set_err(r, e, S3_PERMANENT, 0, NULL, what, "the object key is too long");
		return rc;
	}
	CURL *h = curl_easy_init();
	if (!h) {
		set_err(r, e, S3_PERMANENT, 0, NULL, what, "cannot load libcurl (libcurl.so.4)");
		return -ENOSYS;
	}
	q->resp.len = 0;
	q->resp.max = RESPONSE_MAX;
	q->http = 0;
	q->etag[0] = '\0';
	q->total = -1;
	q->sent = 0;
	q->sink_rc = 0;
	char sigv4[128], hsha[128], hmd5[128], hrange[96];
	char hashhex[JV_SHA256_HEX];
	snprintf(sigv4, sizeof(sigv4), "aws:amz:%s:s3", r->region);
	if (q->bodylen)
		sha256_hex(q->body, q->bodylen, hashhex);
	snprintf(hsha, sizeof(hsha), "x-amz-content-sha256: %s", q->bodylen ? hashhex : EMPTY_SHA256);
	struct curl_slist *hdr = NULL, *tmp;
	bool ok = (tmp = curl_slist_append(hdr, hsha)) && (hdr = tmp) &&
	          (tmp = curl_slist_append(hdr, "Expect:")) && (hdr = tmp);
	if (ok && q->content_md5) {
		snprintf(hmd5, sizeof(hmd5), "Content-MD5: %s", q->content_md5);
		ok = (tmp = curl_slist_append(hdr, hmd5)) && (hdr = tmp);
	}
	if (ok && q->range_from >= 0) {
		if (q->range_len >= 0)
			snprintf(hrange, sizeof(hrange), "Range: bytes=%lld-%lld", (long long)q->range_from,
			         (long long)(q->range_from + q->range_len - 1));
		else
			snprintf(hrange, sizeof(hrange), "Range: bytes=%lld-", (long long)q->range_from);
		ok = (tmp = curl_slist_append(hdr, hrange)) && (hdr = tmp);
	}
	if (!ok) {
		curl_slist_free_all(hdr);
		curl_easy_cleanup(h);
		set_err(r, e, S3_PERMANENT, 0, NULL, what, "out of memory");
		return -ENOMEM;
	}
	char cerr[CURL_ERROR_SIZE] = "";
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
	curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4);
	curl_easy_setopt(h, CURLOPT_USERNAME, r->key_id);
	curl_easy_setopt(h, CURLOPT_PASSWORD, r->secret);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, r->connect_timeout_s);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, r->stall_s);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, q);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, q);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(h, CURLOPT_XFERINFODATA, q);
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	if (r->bandwidth_limit > 0)
		curl_easy_setopt(h, CURLOPT_MAX_SEND_SPEED_LARGE, (curl_off_t)r->bandwidth_limit);
	if (strcmp(q->method, "PUT") == 0) {
		curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(h, CURLOPT_READDATA, q);
		curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)q->bodylen);
	} else if (strcmp(q->method, "POST") == 0) {
		curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->body ? q->body : "");
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->bodylen);
	} else if (strcmp(q->method, "HEAD") == 0) {
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	} else if (strcmp(q->method, "DELETE") == 0) {
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "DELETE");
	}
	CURLcode cc = curl_easy_perform(h);
	long code = 0;
	if (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK && code)
		q->http = code;
	curl_easy_cleanup(h);
	curl_slist_free_all(hdr);
	return classify(r, q, cc, what, cerr, e);
}

/* Sleep ms in slices, stopping early (true) when the hook asks to cancel. */
static bool backoff_sleep(const struct jv_io_hooks *hooks, long ms)
{
	while (ms > 0) {
		long slice = ms < 100 ? ms : 100;
		struct timespec ts = {slice / 1000, (slice % 1000) * 1000000L};
		nanosleep(&ts, NULL);
		ms -= slice;
		if (jv_io_tick(hooks, 0, 0))
			return true;
	}
	return false;
}

/* A request with retries of transient failures. */
static int call(const struct s3_remote *r, struct req *q, const char *what, struct s3_err *e)
{
	long delay = r->backoff_ms;
	int rc = 0;
	for (int attempt = 1;; attempt++) {
		rc = once(r, q, what, e);
		if (rc == 0 || e->cls != S3_TRANSIENT || attempt >= r->attempts)
			break;
		if (backoff_sleep(q->hooks, delay)) {
			set_err(r, e, S3_PERMANENT, 0, NULL, what, "cancelled");
			rc = -ECANCELED;
			break;
		}
		delay = delay * 2 > 8000 ? 8000 : delay * 2;
	}
	if (rc == 0)
		memset(e, 0, sizeof(*e));
	return rc;
}

#define REQ(m) {.method = (m), .range_from = -1, .range_len = -1, .total = -1}

static void describe(char *what, size_t n, const char *verb, const char *key)
{
	snprintf(what, n, "%s '%s'", verb, key);
}

int s3_put(const struct s3_remote *r, const char *key, const void *data, size_t len,
           struct s3_err *e)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned ml = 0;
	char b64[64];
	char what[1200];
	describe(what, sizeof(what), "cannot upload", key);
	if (!digest(EVP_md5(), data, len, md, &ml)) {
		set_err(r, e, S3_PERMANENT, 0, NULL, what, "cannot load libcrypto (libcrypto.so.3)");
		return -ENOSYS;
	}
	base64(md, ml, b64);
	struct req q = REQ("PUT");
	q.key = key;
	q.body = data;
	q.bodylen = len;
	q.content_md5 = b64;
	int rc = call(r, &q, what, e);
	free(q.resp.p);
	return rc;
}

static int mem_sink(void *arg, const void *d, size_t n)
{
	return buf_add(arg, d, n);
}

int s3_get_mem(const struct s3_remote *r, const char *key, size_t max, char **data, size_t *len,
               struct s3_err *e)
{
	struct buf b = {.max = max};
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
	describe(what, sizeof(what), "cannot download", key);
	int64_t got = 0;
	long delay = r->backoff_ms;
	int rc = 0;
	/* Attempts count failures without progress: a transfer that moved bytes
	 * before it was cut starts the count again (a long download over a flaky
	 * link must not fail for the sum of its hiccups). */
	for (int attempt = 1;; attempt++) {
		struct req q = REQ("GET");
		q.key = key;
		q.hooks = hooks;
		q.sink = sink;
		q.sink_arg = arg;
		q.range_from = from + got;
		q.range_len = len < 0 ? -1 : len - got;
		if (len >= 0 && q.range_len == 0)
			break;
		rc = once(r, &q, what, e);
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
		if (backoff_sleep(hooks, delay)) {
			set_err(r, e, S3_PERMANENT, 0, NULL, what, "cancelled");
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
	struct req q = REQ("HEAD");
	q.key = key;
	char what[1200];
	describe(what, sizeof(what), "cannot look up", key);
	int rc = call(r, &q, what, e);
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
	struct req q = REQ("DELETE");
	q.key = key;
	char what[1200];
	describe(what, sizeof(what), "cannot delete", key);
	int rc = call(r, &q, what, e);
	free(q.resp.p);
	return rc;
}

/* ---- multipart ---- */

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
	struct req q = REQ("POST");
	q.key = key;
	q.query = "uploads=";
	char what[1200];
	describe(what, sizeof(what), "cannot start a multipart upload of", key);
	int rc = call(r, &q, what, e);
	if (rc == 0) {
		struct upload_id u = {id, idlen, false};
		if (xml_walk(q.resp.p ? q.resp.p : "", q.resp.len, on_initiate_el, &u) || !u.found) {
			set_err(r, e, S3_TRANSIENT, q.http, NULL, what, "the answer holds no UploadId");
			rc = -EPROTO;
		}
	}
	free(q.resp.p);
	return rc;
}

static int id_query(const char *id, int n, char *out, size_t outlen)
{
	char eid[1100];
	if (uri_encode(id, false, eid, sizeof(eid)))
		return -ENAMETOOLONG;
	int l = n > 0 ? snprintf(out, outlen, "partNumber=%d&uploadId=%s", n, eid)
	              : snprintf(out, outlen, "uploadId=%s", eid);
	return l < 0 || (size_t)l >= outlen ? -ENAMETOOLONG : 0;
}

int s3_mpu_part(const struct s3_remote *r, const char *key, const char *id, int n, int fd,
                off_t off, size_t len, char etag[80], const struct jv_io_hooks *hooks,
                struct s3_err *e)
{
	char what[1200];
	snprintf(what, sizeof(what), "cannot upload part %d of '%s'", n, key);
	char query[1200];
	if (id_query(id, n, query, sizeof(query))) {
		set_err(r, e, S3_PERMANENT, 0, NULL, what, "upload id too long");
		return -ENAMETOOLONG;
	}
	char *data = len ? malloc(len) : NULL;
	if (len && !data) {
		set_err(r, e, S3_TRANSIENT, 0, NULL, what, "out of memory");
		return -ENOMEM;
	}
	size_t got = 0;
	while (got < len) {
		ssize_t k = pread(fd, data + got, len - got, off + (off_t)got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			int rc = k < 0 ? -errno : -EIO;
			set_err(r, e, S3_PERMANENT, 0, NULL, what,
			        k < 0 ? strerror(errno) : "the file is shorter than the part");
			free(data);
			return rc;
		}
		got += (size_t)k;
	}
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned ml = 0;
	char b64[64], mdhex[40];
	if (!digest(EVP_md5(), data ? data : "", len, md, &ml)) {
		set_err(r, e, S3_PERMANENT, 0, NULL, what, "cannot load libcrypto (libcrypto.so.3)");
		free(data);
		return -ENOSYS;
	}
	base64(md, ml, b64);
	jv_hex(md, ml, mdhex);
	struct req q = REQ("PUT");
	q.key = key;
	q.query = query;
	q.body = data;
	q.bodylen = len;
	q.content_md5 = b64;
	q.hooks = hooks;
	int rc = call(r, &q, what, e);
	if (rc == 0) {
		/* A plain-MD5 ETag must be this part's MD5 (stores that do not check
		 * Content-MD5 themselves, or a proxy that changed the bytes). */
		if (strlen(q.etag) == 32 && strcasecmp(q.etag, mdhex) != 0) {
			set_err(r, e, S3_TRANSIENT, q.http, NULL, what,
			        "the store's ETag does not match the part's MD5 (the bytes changed in transit)");
			rc = -EIO;
		} else if (!q.etag[0]) {
			set_err(r, e, S3_TRANSIENT, q.http, NULL, what, "the answer holds no ETag");
			rc = -EPROTO;
		} else {
			snprintf(etag, 80, "%s", q.etag);
		}
	}
	free(q.resp.p);
	free(data);
	return rc;
}

int s3_mpu_complete(const struct s3_remote *r, const char *key, const char *id,
                    const struct s3_part *parts, size_t nparts, struct s3_err *e)
{
	char what[1200];
	describe(what, sizeof(what), "cannot complete the multipart upload of", key);
	char query[1200];
	if (id_query(id, 0, query, sizeof(query))) {
		set_err(r, e, S3_PERMANENT, 0, NULL, what, "upload id too long");
		return -ENAMETOOLONG;
	}
	struct buf b = {.max = 2u << 20};
	int rc = buf_add(&b, "<CompleteMultipartUpload>", 25);
	for (size_t i = 0; rc == 0 && i < nparts; i++) {
		char one[200];
		int l = snprintf(one, sizeof(one), "<Part><PartNumber>%d</PartNumber><ETag>\"%s\"</ETag></Part>",
		                 parts[i].n, parts[i].etag);
		rc = buf_add(&b, one, (size_t)l);
	}
	if (rc == 0)
		rc = buf_add(&b, "</CompleteMultipartUpload>", 26);
	if (rc) {
		free(b.p);
		set_err(r, e, S3_PERMANENT, 0, NULL, what, "too many parts");
		return rc;
	}
	struct req q = REQ("POST");
	q.key = key;
	q.query = query;
	q.body = b.p;
	q.bodylen = b.len;
	rc = call(r, &q, what, e);
	free(q.resp.p);
	free(b.p);
	return rc;
}

int s3_mpu_abort(const struct s3_remote *r, const char *key, const char *id, struct s3_err *e)
{
	char what[1200];
	describe(what, sizeof(what), "cannot abort the multipart upload of", key);
	char query[1200];
	if (id_query(id, 0, query, sizeof(query))) {
		set_err(r, e, S3_PERMANENT, 0, NULL, what, "upload id too long");
		return -ENAMETOOLONG;
	}
	struct req q = REQ("DELETE");
	q.key = key;
	q.query = query;
	int rc = call(r, &q, what, e);
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
	describe(what, sizeof(what), "cannot list", prefix);
	char token[1024] = "";
	for (int page = 0; page < 100000; page++) {
		char eprefix[3200], etoken[3200], query[6600];
		if (uri_encode(prefix, false, eprefix, sizeof(eprefix)) ||
		    uri_encode(token, false, etoken, sizeof(etoken))) {
			set_err(r, e, S3_PERMANENT, 0, NULL, what, "prefix or continuation token too long");
			return -ENAMETOOLONG;
		}
		/* canonical order: continuation-token < list-type < prefix */
		if (token[0])
			snprintf(query, sizeof(query), "continuation-token=%s&list-type=2&prefix=%s", etoken,
			         eprefix);
		else
			snprintf(query, sizeof(query), "list-type=2&prefix=%s", eprefix);
		struct req q = REQ("GET");
		q.query = query;
		int rc = call(r, &q, what, e);
		if (rc) {
			free(q.resp.p);
			return rc;
		}
		struct list_page p = {.cb = cb, .arg = arg};
		rc = xml_walk(q.resp.p ? q.resp.p : "", q.resp.len, on_list_el, &p);
		free(q.resp.p);
		if (rc) {
			set_err(r, e, S3_TRANSIENT, q.http, NULL, what, "the listing is not well-formed XML");
			return rc;
		}
		if (p.cb_rc)
			return p.cb_rc;
		if (!p.truncated)
			return 0;
		if (!p.next[0] || strcmp(p.next, token) == 0) {
			set_err(r, e, S3_PERMANENT, q.http, NULL, what,
			        "a truncated listing without a new continuation token");
			return -EPROTO;
		}
		snprintf(token, sizeof(token), "%s", p.next);
	}
	set_err(r, e, S3_PERMANENT, 0, NULL, what, "too many pages");
	return -E2BIG;
}
