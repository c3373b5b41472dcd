/* transport.c — libcurl multi requests to the control plane.
 *
 * Each request owns its easy handle, its body and its header list; the
 * multi handle keeps connections alive between requests. Completion is
 * reported once per request from transport_perform(), one message at a
 * time, so a callback may start or abort other requests safely (curl drops
 * the pending message of a handle removed from the multi). The token lives in
 * one header string that is wiped when replaced or freed, and never appears
 * in an error text: curl's error buffer does not include request headers. */
#include "transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "endpoints.h"
#include "jobvisor/util.h"

struct transport_req {
	struct transport *tp;
	CURL *easy;
	struct curl_slist *headers;
	char *body;
	struct jv_buf resp;
	bool too_large;
	char errbuf[CURL_ERROR_SIZE];
	transport_cb cb;
	void *ud;
	int64_t started_ms;
	uint64_t ep_gen; /* the endpoints generation it was sent in */
	struct transport_req *prev, *next;
};

struct transport {
	CURLM *multi;
	struct endpoints ep;
	char *auth_header; /* "Authorization: Bearer <token>" */
	char *ca_file;
	bool insecure;
	long connect_timeout_ms;
	size_t max_response;
	struct transport_req *reqs; /* in flight */
	size_t active;
};

int transport_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

void transport_global_cleanup(void)
{
	curl_global_cleanup();
}

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

int transport_configure(struct transport *tp, const struct transport_opts *opts)
{
	struct jv_buf auth;
	jv_buf_init(&auth, 0);
	char *ca = opts->ca_file ? strdup(opts->ca_file) : NULL;
	int rc = jv_buf_printf(&auth, "Authorization: Bearer %s", opts->token ? opts->token : "");
	if (rc == 0 && opts->ca_file && !ca)
		rc = -ENOMEM;
	if (rc == 0)
		rc = endpoints_set(&tp->ep, opts->urls, opts->nurls); /* the last step that can fail */
	if (rc) {
		if (auth.data)
			explicit_bzero(auth.data, auth.len);
		jv_buf_free(&auth);
		free(ca);
		return rc;
	}
	wipe_free(tp->auth_header);
	tp->auth_header = auth.data; /* ownership moves out of the buffer */
	free(tp->ca_file);
	tp->ca_file = ca;
	tp->insecure = opts->insecure;
	tp->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 10000;
	tp->max_response = opts->max_response ? opts->max_response : 4u << 20;
	return 0;
}

int transport_new(const struct transport_opts *opts, struct transport **out)
{
	*out = NULL;
	struct transport *tp = calloc(1, sizeof(*tp));
	if (!tp)
		return -ENOMEM;
	tp->multi = curl_multi_init();
	if (!tp->multi) {
		free(tp);
		return -ENOMEM;
	}
	int rc = transport_configure(tp, opts);
	if (rc) {
		curl_multi_cleanup(tp->multi);
		free(tp);
		return rc;
	}
	*out = tp;
	return 0;
}

static void req_free(struct transport_req *r)
{
	if (!r)
		return;
	if (r->easy)
		curl_easy_cleanup(r->easy);
	curl_slist_free_all(r->headers);
	free(r->body);
	jv_buf_free(&r->resp);
	free(r);
}

static void req_unlink(struct transport *tp, struct transport_req *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		tp->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
	tp->active--;
}

void transport_abort(struct transport *tp, struct transport_req *req)
{
	if (!tp || !req)
		return;
	curl_multi_remove_handle(tp->multi, req->easy);
	req_unlink(tp, req);
	req_free(req);
}

void transport_free(struct transport *tp)
{
	if (!tp)
		return;
	while (tp->reqs)
		transport_abort(tp, tp->reqs);
	curl_multi_cleanup(tp->multi);
	endpoints_clear(&tp->ep);
	wipe_free(tp->auth_header);
	free(tp->ca_file);
	free(tp);
}

const char *transport_current_url(const struct transport *tp)
{
	return tp ? endpoints_current(&tp->ep) : "";
}

uint64_t transport_url_gen(const struct transport *tp)
{
	return tp ? tp->ep.gen : 0;
}

size_t transport_active(const struct transport *tp)
{
	return tp ? tp->active : 0;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud)
{
	struct transport_req *r = ud;
	size_t n = size * nmemb;
	if (jv_buf_append(&r->resp, data, n) != 0) {
		r->too_large = true;
		return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
	}
	return n;
}

int transport_post(struct transport *tp, const char *path, char *body, long timeout_ms,
                   transport_cb cb, void *ud, struct transport_req **out)
{
	if (out)
		*out = NULL;
	struct transport_req *r = calloc(1, sizeof(*r));
	if (!r) {
		free(body);
		return -ENOMEM;
	}
	r->tp = tp;
	r->body = body;
	r->cb = cb;
	r->ud = ud;
	jv_buf_init(&r->resp, tp->max_response);
	struct jv_buf url;
	jv_buf_init(&url, 0);
	int rc = -ENOMEM;
	r->ep_gen = tp->ep.gen;
	if (jv_buf_printf(&url, "%s%s", endpoints_current(&tp->ep), path))
		goto fail;
	r->easy = curl_easy_init();
	if (!r->easy)
		goto fail;
	struct curl_slist *h = NULL;
	const char *hdrs[] = {"Content-Type: application/json", "Accept: application/json",
	                      "Expect:", tp->auth_header};
	for (size_t i = 0; i < JV_ARRAY_LEN(hdrs); i++) {
		struct curl_slist *nh = curl_slist_append(h, hdrs[i]);
		if (!nh) {
			curl_slist_free_all(h);
			goto fail;
		}
		h = nh;
	}
	r->headers = h;
	CURL *e = r->easy;
	CURLcode cc = CURLE_OK;
#define SET(opt, val) \
	if (cc == CURLE_OK) \
	cc = curl_easy_setopt(e, opt, val)
	SET(CURLOPT_URL, url.data);
	SET(CURLOPT_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_FOLLOWLOCATION, 0L);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_POST, 1L);
	SET(CURLOPT_POSTFIELDS, r->body ? r->body : "{}");
	SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(r->body ? strlen(r->body) : 2));
	SET(CURLOPT_HTTPHEADER, r->headers);
	SET(CURLOPT_USERAGENT, "jobvisor/" JV_VERSION);
	SET(CURLOPT_CONNECTTIMEOUT_MS, tp->connect_timeout_ms);
	SET(CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : 30000L);
	SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)tp->max_response);
	SET(CURLOPT_WRITEFUNCTION, on_write);
	SET(CURLOPT_WRITEDATA, r);
	SET(CURLOPT_ERRORBUFFER, r->errbuf);
	SET(CURLOPT_PRIVATE, r);
	SET(CURLOPT_TCP_KEEPALIVE, 1L);
	SET(CURLOPT_SSL_VERIFYPEER, tp->insecure ? 0L : 1L);
	SET(CURLOPT_SSL_VERIFYHOST, tp->insecure ? 0L : 2L);
	if (tp->ca_file)
		SET(CURLOPT_CAINFO, tp->ca_file);
#undef SET
	if (cc != CURLE_OK) {
		rc = -EINVAL;
		goto fail;
	}
	if (curl_multi_add_handle(tp->multi, e) != CURLM_OK) {
		rc = -ENOMEM;
		goto fail;
	}
	jv_buf_free(&url); /* curl copied the URL */
	r->started_ms = jv_now_mono_ms();
	r->next = tp->reqs;
	if (tp->reqs)
		tp->reqs->prev = r;
	tp->reqs = r;
	tp->active++;
	if (out)
		*out = r;
	return 0;
fail:
	jv_buf_free(&url);
	req_free(r);
	return rc;
}

int transport_wait(struct transport *tp, struct pollfd *fds, unsigned nfds, int timeout_ms)
{
	struct curl_waitfd wfds[TRANSPORT_MAX_EXTRA_FDS];
	if (nfds > JV_ARRAY_LEN(wfds))
		nfds = JV_ARRAY_LEN(wfds);
	for (unsigned i = 0; i < nfds; i++) {
		wfds[i].fd = fds[i].fd;
		wfds[i].events = (short)((fds[i].events & POLLIN ? CURL_WAIT_POLLIN : 0) |
		                         (fds[i].events & POLLOUT ? CURL_WAIT_POLLOUT : 0) |
		                         (fds[i].events & POLLPRI ? CURL_WAIT_POLLPRI : 0));
		wfds[i].revents = 0;
	}
	CURLMcode mc = curl_multi_poll(tp->multi, wfds, nfds, timeout_ms < 0 ? 0 : timeout_ms, NULL);
	/* curl reports only POLLIN/POLLOUT/POLLPRI for extra descriptors, and a
	 * pipe whose writer is gone signals POLLHUP alone: ask the kernel
	 * directly (no wait) so a hang-up is seen and does not spin the loop. */
	if (nfds > 0 && poll(fds, nfds, 0) < 0)
		for (unsigned i = 0; i < nfds; i++)
			fds[i].revents = 0;
	return mc == CURLM_OK ? 0 : -EIO;
}

void transport_perform(struct transport *tp)
{
	int running = 0;
	curl_multi_perform(tp->multi, &running);
	CURLMsg *msg;
	int left = 0;
	while ((msg = curl_multi_info_read(tp->multi, &left))) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		struct transport_req *r = NULL;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
		CURLcode result = msg->data.result;
		if (!r)
			continue;
		curl_multi_remove_handle(tp->multi, r->easy);
		req_unlink(tp, r);

		struct transport_response resp = {.retry_after_ms = -1};
		long status = 0;
		curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
		curl_off_t ra = -1;
		if (curl_easy_getinfo(r->easy, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
			resp.retry_after_ms = (int64_t)(ra > 86400 ? 86400 : ra) * 1000;
		if (result == CURLE_FILESIZE_EXCEEDED)
			r->too_large = true;
		resp.too_large = r->too_large;
		/* A transfer that failed half-way has no trustworthy answer. */
		resp.status = result == CURLE_OK ? status : 0;
		if (r->too_large)
			resp.error = "answer larger than max_response";
		else if (result != CURLE_OK)
			resp.error = r->errbuf[0] ? r->errbuf : curl_easy_strerror(result);
		resp.body = r->resp.data ? r->resp.data : "";
		resp.len = r->resp.len;
		resp.elapsed_ms = jv_now_mono_ms() - r->started_ms;
		resp.failover = endpoints_report(&tp->ep, r->ep_gen, resp.status,
		                                 resp.too_large, resp.error);
		if (r->cb)
			r->cb(r->ud, &resp);
		req_free(r);
	}
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

static bool host_is_loopback(const char *host)
{
	if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0 ||
	    strcmp(host, "::1") == 0)
		return true;
	struct in_addr a;
	if (inet_pton(AF_INET, host, &a) == 1)
		return (ntohl(a.s_addr) >> 24) == 127;
	return false;
}

int transport_check_url(const char *url, bool *loopback, char *err, size_t errlen)
{
	*loopback = false;
	int rc = -EINVAL;
	char *scheme = NULL, *host = NULL, *user = NULL, *query = NULL, *frag = NULL;
	CURLU *u = curl_url();
	if (!u) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
		snprintf(err, errlen, "'%.200s' is not a URL", url);
		goto out;
	}
	curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
	curl_url_get(u, CURLUPART_HOST, &host, 0);
	curl_url_get(u, CURLUPART_USER, &user, 0);
	curl_url_get(u, CURLUPART_QUERY, &query, 0);
	curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0);
	if (!scheme || (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)) {
		snprintf(err, errlen, "'%.200s' must start with http:// or https://", url);
		goto out;
	}
	if (strncasecmp(url, scheme, strlen(scheme)) != 0) {
		snprintf(err, errlen, "'%.200s' must start with http:// or https://", url);
		goto out;
	}
	if (!host || !*host) {
		snprintf(err, errlen, "'%.200s' has no host", url);
		goto out;
	}
	if (user) {
		/* Never echo the URL here: it holds credentials. */
		snprintf(err, errlen, "the URL must not contain user name or password (use token_file)");
		goto out;
	}
	if (query || frag) {
		snprintf(err, errlen, "'%.200s' must not have a query or fragment", url);
		goto out;
	}
	*loopback = host_is_loopback(host);
	rc = 0;
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(user);
	curl_free(query);
	curl_free(frag);
	curl_url_cleanup(u);
	return rc;
}
