/* transport_http.c — the request's bytes, and the answer read with http_parser.
 *
 * http_parser frames the answer: Content-Length, chunked transfer coding, or
 * a body that ends when the server closes; it also says whether the
 * connection may carry the next request. Only the status, Retry-After and the
 * body are kept; the body stops at max bytes. transport_classify() says what
 * an answer means to the caller. */
#include "transport_internal.h"

#include "transport.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define DAY_MS (86400LL * 1000)

/* "Proxy-Authorization: Basic ...\r\n", or "" */
static const char *proxy_auth_line(const char *proxy_auth, char *line, size_t cap)
{
	line[0] = '\0';
	if (proxy_auth && *proxy_auth)
		snprintf(line, cap, "Proxy-Authorization: %s\r\n", proxy_auth);
	return line;
}

int tp_request_format(struct jv_buf *out, const struct tp_url *u, const char *path,
                      const char *auth, const char *proxy_auth, const char *body)
{
	const char *b = body ? body : "{}";
	size_t blen = strlen(b);
	char pa[1100];
	int rc = jv_buf_printf(out,
	                       "POST %s%s%s%s%s HTTP/1.1\r\n"
	                       "Host: %s\r\n"
	                       "%s"
	                       "User-Agent: jobvisor/" JV_VERSION "\r\n"
	                       "Accept: application/json\r\n"
	                       "Content-Type: application/json\r\n"
	                       "Authorization: %s\r\n"
	                       "Content-Length: %zu\r\n\r\n",
	                       proxy_auth ? "http://" : "", proxy_auth ? u->authority : "", u->path, path,
	                       proxy_auth && !u->path[0] && !path[0] ? "/" : "", u->authority,
	                       proxy_auth_line(proxy_auth, pa, sizeof(pa)), auth, blen);
	explicit_bzero(pa, sizeof(pa));
	return rc ? rc : jv_buf_append(out, b, blen);
}

int tp_connect_format(struct jv_buf *out, const struct tp_url *u, const char *proxy_auth)
{
	bool v6 = strchr(u->host, ':') != NULL;
	char pa[1100];
	int rc = jv_buf_printf(out,
	                       "CONNECT %s%s%s:%s HTTP/1.1\r\n"
	                       "Host: %s%s%s:%s\r\n"
	                       "%s"
	                       "User-Agent: jobvisor/" JV_VERSION "\r\n\r\n",
	                       v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, v6 ? "[" : "", u->host,
	                       v6 ? "]" : "", u->port, proxy_auth_line(proxy_auth, pa, sizeof(pa)));
	explicit_bzero(pa, sizeof(pa));
	return rc;
}

int64_t tp_parse_retry_after(const char *v, int64_t now_real_ms)
{
	while (*v == ' ' || *v == '\t')
		v++;
	int64_t ms = -1;
	if (isdigit((unsigned char)*v)) {
		char *end;
		unsigned long long s = strtoull(v, &end, 10);
		while (*end == ' ' || *end == '\t')
			end++;
		if (*end)
			return -1;
		ms = s > 86400 ? DAY_MS : (int64_t)s * 1000;
	} else {
		struct tm tm = {0};
		const char *end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
		if (!end)
			return -1;
		ms = (int64_t)timegm(&tm) * 1000 - now_real_ms;
		if (ms > DAY_MS)
			ms = DAY_MS;
	}
	/* As before (libcurl's CURLINFO_RETRY_AFTER): zero or a past date means none. */
	return ms >= 1000 ? ms : -1;
}

static void header_done(struct tp_answer *a)
{
	if (a->in_retry_after) {
		a->value[a->value_len] = '\0';
		a->retry_after_ms = tp_parse_retry_after(a->value, jv_now_real_ms());
	}
	a->in_value = a->in_retry_after = false;
	a->field_len = a->value_len = 0;
}

static void append(char *dst, size_t cap, size_t *used, const char *at, size_t len)
{
	size_t room = cap - 1 - *used;
	if (len > room)
		len = room;
	memcpy(dst + *used, at, len);
	*used += len;
	dst[*used] = '\0';
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
	struct tp_answer *a = p->data;
	if (a->in_value)
		header_done(a);
	append(a->field, sizeof(a->field), &a->field_len, at, len);
	return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
	struct tp_answer *a = p->data;
	if (!a->in_value) {
		a->in_value = true;
		a->in_retry_after = strcasecmp(a->field, "retry-after") == 0;
	}
	if (a->in_retry_after)
		append(a->value, sizeof(a->value), &a->value_len, at, len);
	return 0;
}

static int on_headers_complete(http_parser *p)
{
	struct tp_answer *a = p->data;
	if (a->in_value)
		header_done(a);
	if (p->status_code >= 100 && p->status_code < 200)
		return 0; /* an interim answer; the real one follows */
	if (a->head_only)
		return 1; /* the tunnel, or the proxy's refusal: the body does not matter */
	/* A declared length over the cap fails before the body is read. */
	if ((p->flags & F_CONTENTLENGTH) && p->content_length > a->max) {
		a->too_large = true;
		return -1;
	}
	return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
	struct tp_answer *a = p->data;
	if (jv_buf_append(&a->body, at, len) != 0) {
		a->too_large = true;
		return -1;
	}
	return 0;
}

static int on_message_complete(http_parser *p)
{
	struct tp_answer *a = p->data;
	if (p->status_code >= 100 && p->status_code < 200)
		return 0;
	a->complete = true;
	a->keep_alive = http_should_keep_alive(p);
	http_parser_pause(p, 1); /* nothing after the answer belongs to it */
	return 0;
}

static const http_parser_settings settings = {
	.on_header_field = on_header_field,
	.on_header_value = on_header_value,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
};

void tp_answer_init(struct tp_answer *a, size_t max)
{
	memset(a, 0, sizeof(*a));
	http_parser_init(&a->parser, HTTP_RESPONSE);
	a->parser.data = a;
	a->max = max;
	a->retry_after_ms = -1;
	jv_buf_init(&a->body, max);
}

void tp_answer_free(struct tp_answer *a)
{
	jv_buf_free(&a->body);
}

int tp_answer_feed(struct tp_answer *a, const char *data, size_t len)
{
	if (a->complete)
		return 0;
	if (len)
		a->started = true;
	size_t n = http_parser_execute(&a->parser, &settings, data, len);
	if (a->too_large)
		return -EFBIG;
	if (a->complete) {
		a->extra = len - n;
		return 0;
	}
	if (HTTP_PARSER_ERRNO(&a->parser) != HPE_OK || n != len)
		return -EPROTO;
	return 0;
}

enum transport_class transport_classify(const struct transport_response *resp)
{
	long s = resp->status;
	if (s == 0 || resp->too_large || s == 408 || s == 429 || (s >= 500 && s <= 599))
		return TRANSPORT_RETRY;
	if (s >= 200 && s <= 299)
		return TRANSPORT_OK;
	if (s == 409)
		return TRANSPORT_GONE;
	return TRANSPORT_REJECTED;
}

const char *transport_class_name(enum transport_class c)
{
	switch (c) {
	case TRANSPORT_OK:
		return "ok";
	case TRANSPORT_RETRY:
		return "retry";
	case TRANSPORT_GONE:
		return "gone";
	case TRANSPORT_REJECTED:
		return "rejected";
	}
	return "?";
}
