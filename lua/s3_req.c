/* s3_req.c — one S3 request over libcurl (see s3_req.h).
 *
 * One request is one easy handle: the URL (path-style or virtual-host), the
 * query in canonical (sorted, encoded) order, the body from memory with its
 * SHA-256 in x-amz-content-sha256, and libcurl's own SigV4 signing. libcurl,
 * libcrypto and libexpat are all loaded on first use (curl_lazy.c,
 * crypto_lazy.c, expat_lazy.c). `s3r_call` wraps a request in retries;
 * `classify` turns a curl code or an HTTP status plus S3 <Error> document into
 * the s3_class the caller acts on. The XML answers are read by one expat
 * walker that reports each closed element with its parent's name. Logging is
 * left to the binding. */
#define CURL_DISABLE_TYPECHECK 1
#include "s3_req.h"

#include <curl/curl.h>
#include <errno.h>
#include <expat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define RESPONSE_MAX (16u << 20) /* an XML answer (a list page is ~300 KiB) */
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/* ---- small helpers ---- */

int s3r_buf_add(struct s3r_buf *b, const void *d, size_t n)
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

int s3r_uri_encode(const char *in, bool keep_slash, char *out, size_t outlen)
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

bool s3r_digest(const EVP_MD *md, const void *d, size_t n, unsigned char *out, unsigned *outlen)
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	bool ok = c && EVP_DigestInit_ex(c, md, NULL) == 1 && EVP_DigestUpdate(c, d, n) == 1 &&
	          EVP_DigestFinal_ex(c, out, outlen) == 1;
	EVP_MD_CTX_free(c);
	if (!ok)
		*outlen = 0;
	return ok;
}

void s3r_base64(const unsigned char *in, size_t n, char *out)
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

void s3r_sha256_hex(const void *d, size_t n, char hex[JV_SHA256_HEX])
{
	unsigned char h[EVP_MAX_MD_SIZE];
	unsigned hl = 0;
	s3r_digest(EVP_sha256(), d, n, h, &hl);
	jv_hex(h, hl, hex);
}

/* ---- XML: report each closed element with its parent ---- */

#define XML_DEPTH 8

struct xml_walk {
	char names[XML_DEPTH][64];
	int depth;
	struct s3r_buf text;
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
	s3r_buf_add(&w->text, s, (size_t)len); /* text past the cap is cut, never overflows */
}

/* 0, or -EBADMSG when the document is not well-formed XML. */
int s3r_xml_walk(const char *doc, size_t len,
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

static size_t on_read(char *dst, size_t size, size_t nmemb, void *ud)
{
	struct s3r_req *q = ud;
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
	struct s3r_req *q = ud;
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
	if (s3r_buf_add(&q->resp, src, n) != 0)
		return 0;
	return n;
}

static size_t on_header(char *src, size_t size, size_t nmemb, void *ud)
{
	struct s3r_req *q = ud;
	size_t n = size * nmemb;
	char line[512];
	jv_header_line(src, n, line, sizeof(line));
	if (strncmp(line, "HTTP/", 5) == 0) {
		/* a new answer (after a redirect or 100-continue): forget the previous one's */
		q->http = strtol(strchr(line, ' ') ? strchr(line, ' ') + 1 : "0", NULL, 10);
		q->etag[0] = '\0';
		q->etag_not_md5 = false;
		q->total = -1;
	} else if (strncasecmp(line, "x-amz-server-side-encryption:", 29) == 0) {
		const char *v = line + 29;
		while (*v == ' ')
			v++;
		if (strncasecmp(v, "aws:kms", 7) == 0) /* aws:kms, aws:kms:dsse */
			q->etag_not_md5 = true;
	} else if (strncasecmp(line, "x-amz-server-side-encryption-customer-algorithm:", 48) == 0) {
		q->etag_not_md5 = true;
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
	struct s3r_req *q = ud;
	(void)dt;
	(void)ut;
	/* a cancel request stops the transfer at once */
	return jv_io_tick(q->hooks, (uint64_t)(dn + un), 0) ? 1 : 0;
}

static int build_url(const struct s3_remote *r, const char *key, const char *query, char *url,
                     size_t n)
{
	char ekey[3 * 1024 + 1] = "";
	if (key && s3r_uri_encode(key, true, ekey, sizeof(ekey)))
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

void s3r_set_err(const struct s3_remote *r, struct s3_err *e, enum s3_class cls, long http,
                    const char *code, const char *what, const char *detail)
{
	e->cls = cls;
	e->http = http;
	snprintf(e->code, sizeof(e->code), "%s", code ? code : "");
	snprintf(e->msg, sizeof(e->msg), "remote '%s': %s: %s", r->name, what, detail);
	scrub(r, e->msg);
}

/* Classify a finished request. 0 on a 2xx answer. */
static int classify(const struct s3_remote *r, struct s3r_req *q, CURLcode cc, const char *what,
                    const char *cerr, struct s3_err *e)
{
	if (q->sink_rc) {
		/* a full disk under a download is worth a retry once space is freed */
		bool full = q->sink_rc == -ENOSPC || q->sink_rc == -EDQUOT;
		s3r_set_err(r, e, full ? S3_TRANSIENT : S3_PERMANENT, q->http, NULL, what,
		        q->sink_rc == -EPROTO ? "the store ignored the Range header of a resumed download"
		                              : strerror(-q->sink_rc));
		return q->sink_rc;
	}
	if (cc == CURLE_ABORTED_BY_CALLBACK) {
		s3r_set_err(r, e, S3_PERMANENT, 0, NULL, what, "cancelled");
		return -ECANCELED;
	}
	if (cc != CURLE_OK) {
		char d[400];
		snprintf(d, sizeof(d), "%s", cerr[0] ? cerr : curl_easy_strerror(cc));
		if (cc == CURLE_OPERATION_TIMEDOUT)
			snprintf(d, sizeof(d), "no progress for %ld seconds (%s)", r->stall_s, cerr);
		s3r_set_err(r, e, transient_curl(cc) ? S3_TRANSIENT : S3_PERMANENT, 0, NULL, what, d);
		return cc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EIO;
	}
	struct xml_error x = {0};
	if (q->resp.len)
		s3r_xml_walk(q->resp.p, q->resp.len, on_error_el, &x);
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
	         strcmp(x.code, "RequestTimeout") == 0 || strcmp(x.code, "SlowDown") == 0 ||
	         /* the store's own integrity check refused bytes changed in transit */
	         strcmp(x.code, "BadDigest") == 0 || strcmp(x.code, "XAmzContentSHA256Mismatch") == 0)
		cls = S3_TRANSIENT;
	else if (q->http == 404 && strcmp(x.code, "NoSuchBucket") != 0)
		cls = S3_NOT_FOUND;
	else
		cls = S3_PERMANENT;
	if (q->http == 403 || q->http == 401)
		strncat(d, " (check the remote's credentials file and its permissions on the bucket)",
		        sizeof(d) - strlen(d) - 1);
	s3r_set_err(r, e, cls, q->http, x.code, what, d);
	return cls == S3_NOT_FOUND ? -ENOENT : cls == S3_TRANSIENT ? -EAGAIN : -EACCES;
}

/* The request's own header lines into *hdr (owned by the caller, also on
 * failure); false when out of memory. */
static bool request_headers(const struct s3r_req *q, struct curl_slist **hdr)
{
	char hsha[128], hmd5[128], hrange[96];
	char hashhex[JV_SHA256_HEX];
	if (q->bodylen)
		s3r_sha256_hex(q->body, q->bodylen, hashhex);
	snprintf(hsha, sizeof(hsha), "x-amz-content-sha256: %s", q->bodylen ? hashhex : EMPTY_SHA256);
	struct curl_slist *tmp;
	/* No "Expect:" line to suppress 100-continue: libcurl 7.88 signs such an
	 * emptied header and then does not send it (SignatureDoesNotMatch at a
	 * store that checks signatures); CURLOPT_EXPECT_100_TIMEOUT_MS is 0 instead. */
	bool ok = (tmp = curl_slist_append(*hdr, hsha)) && (*hdr = tmp);
	/* libcurl's POST would say application/x-www-form-urlencoded: S3 keeps a
	 * CreateMultipartUpload's Content-Type as the object's, and a signing
	 * server that parses such a body as a form computes another signature */
	if (ok && strcmp(q->method, "POST") == 0)
		ok = (tmp = curl_slist_append(*hdr, q->bodylen ? "Content-Type: application/xml"
		                                               : "Content-Type: application/octet-stream")) &&
		     (*hdr = tmp);
	if (ok && q->content_md5) {
		snprintf(hmd5, sizeof(hmd5), "Content-MD5: %s", q->content_md5);
		ok = (tmp = curl_slist_append(*hdr, hmd5)) && (*hdr = tmp);
	}
	if (ok && q->range_from >= 0) {
		if (q->range_len >= 0)
			snprintf(hrange, sizeof(hrange), "Range: bytes=%lld-%lld", (long long)q->range_from,
			         (long long)(q->range_from + q->range_len - 1));
		else
			snprintf(hrange, sizeof(hrange), "Range: bytes=%lld-", (long long)q->range_from);
		ok = (tmp = curl_slist_append(*hdr, hrange)) && (*hdr = tmp);
	}
	return ok;
}

int s3r_once(const struct s3_remote *r, struct s3r_req *q, const char *what, struct s3_err *e)
{
	char url[4096];
	int rc = build_url(r, q->key, q->query, url, sizeof(url));
	if (rc) {
		s3r_set_err(r, e, S3_PERMANENT, 0, NULL, what, "the object key is too long");
		return rc;
	}
	CURL *h = curl_easy_init();
	if (!h) {
		s3r_set_err(r, e, S3_PERMANENT, 0, NULL, what, "cannot load libcurl (libcurl.so.4)");
		return -ENOSYS;
	}
	q->resp.len = 0;
	q->resp.max = RESPONSE_MAX;
	q->http = 0;
	q->etag[0] = '\0';
	q->etag_not_md5 = false;
	q->total = -1;
	q->sent = 0;
	q->sink_rc = 0;
	char sigv4[128];
	snprintf(sigv4, sizeof(sigv4), "aws:amz:%s:s3", r->region);
	struct curl_slist *hdr = NULL;
	bool ok = request_headers(q, &hdr);
	if (!ok) {
		curl_slist_free_all(hdr);
		curl_easy_cleanup(h);
		s3r_set_err(r, e, S3_PERMANENT, 0, NULL, what, "out of memory");
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
	curl_easy_setopt(h, CURLOPT_EXPECT_100_TIMEOUT_MS, 0L);
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

bool s3r_backoff_sleep(const struct jv_io_hooks *hooks, long ms)
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
int s3r_call(const struct s3_remote *r, struct s3r_req *q, const char *what, struct s3_err *e)
{
	long delay = r->backoff_ms;
	int rc = 0;
	for (int attempt = 1;; attempt++) {
		rc = s3r_once(r, q, what, e);
		if (rc == 0 || e->cls != S3_TRANSIENT || attempt >= r->attempts)
			break;
		if (s3r_backoff_sleep(q->hooks, delay)) {
			s3r_set_err(r, e, S3_PERMANENT, 0, NULL, what, "cancelled");
			rc = -ECANCELED;
			break;
		}
		delay = delay * 2 > 8000 ? 8000 : delay * 2;
	}
	if (rc == 0)
		memset(e, 0, sizeof(*e));
	return rc;
}


void s3r_describe(char *what, size_t n, const char *verb, const char *key)
{
	snprintf(what, n, "%s '%s'", verb, key);
}


int s3r_put_checked(const struct s3_remote *r, struct s3r_req *q, const char *what, char etag[80],
                    char md5[33], struct s3_err *e)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned ml = 0;
	char b64[64];
	if (!s3r_digest(EVP_md5(), q->body ? q->body : "", q->bodylen, md, &ml)) {
		s3r_set_err(r, e, S3_PERMANENT, 0, NULL, what, "cannot load libcrypto (libcrypto.so.3)");
		return -ENOSYS;
	}
	s3r_base64(md, ml, b64);
	jv_hex(md, ml, md5);
	q->content_md5 = b64;
	int rc = 0;
	/* A plain-MD5 ETag must be this body's MD5: a store that does not check
	 * Content-MD5 itself stored bytes that changed in transit; send again.
	 * Under SSE-KMS and SSE-C the ETag is no MD5 (AWS says so, and S3 says
	 * which encryption it used in the answer): there the store's own
	 * Content-MD5 check is the per-part integrity. */
	for (int attempt = 1; attempt <= r->attempts; attempt++) {
		rc = s3r_call(r, q, what, e);
		if (rc == 0 && !q->etag_not_md5 && strlen(q->etag) == 32 && strcasecmp(q->etag, md5) != 0) {
			s3r_set_err(r, e, S3_TRANSIENT, q->http, NULL, what,
			            "the store's ETag does not match the MD5 of what was sent (the bytes "
			            "changed in transit)");
			rc = -EIO;
			continue;
		}
		if (rc == 0 && !q->etag[0]) {
			s3r_set_err(r, e, S3_TRANSIENT, q->http, NULL, what, "the answer holds no ETag");
			rc = -EPROTO;
		} else if (rc == 0) {
			snprintf(etag, 80, "%s", q->etag);
		}
		break;
	}
	free(q->resp.p);
	q->resp.p = NULL;
	return rc;
}
