/* transport.h — HTTP requests to the control plane (the agent's HTTP client).
 *
 * Non-blocking: requests run on non-blocking sockets that the event loop
 * waits on through transport_wait() together with its own descriptors, and
 * transport_perform() drives transfers and calls each completion callback
 * once. Every request carries the Bearer token, verifies TLS (unless the
 * configuration explicitly disabled it for a loopback URL), has connect and
 * total timeouts and a cap on the answer's size. Nothing here retries:
 * transport_classify() tells the caller what an answer means and backoff.h
 * says when to try again. With several control-plane URLs every request goes
 * to the current one, and a failure moves the agent on (endpoints.h).
 * Requests go through an http:// proxy as libcurl's would (transport_proxy.c):
 * the `proxy` setting, else http_proxy / https_proxy / HTTPS_PROXY /
 * all_proxy / ALL_PROXY; no_proxy / NO_PROXY exempt hosts. */
#ifndef JOBVISOR_TRANSPORT_H
#define JOBVISOR_TRANSPORT_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct transport;
struct transport_req;

struct transport_opts {
	char *const *urls;     /* base URLs, borrowed; copied (endpoints.h) */
	size_t nurls;
	const char *token;     /* borrowed; copied and wiped on free */
	const char *ca_file;   /* borrowed, may be NULL */
	bool insecure;         /* skip TLS verification (loopback test URLs only) */
	long connect_timeout_ms;
	size_t max_response;   /* bytes */
	const char *proxy;     /* proxy URL, "direct", or NULL: from the environment */
	const char *no_proxy;  /* hosts never proxied, or NULL: from the environment */
};

struct transport_response {
	long status;            /* HTTP status, 0 when no answer arrived */
	const char *error;      /* transport error text when status == 0 or the body was cut */
	const char *body;       /* borrowed for the callback; NUL-terminated */
	size_t len;
	bool too_large;         /* the answer passed max_response and was dropped */
	int64_t retry_after_ms; /* Retry-After header, -1 when absent */
	int64_t elapsed_ms;
	bool failover;          /* failed on a URL the agent left for one worth trying at once */
};

enum transport_class {
	TRANSPORT_OK,       /* 2xx with a complete body */
	TRANSPORT_RETRY,    /* no answer, 408, 429, 5xx, cut body: back off and retry */
	TRANSPORT_GONE,     /* 409: this agent no longer holds the run */
	TRANSPORT_REJECTED, /* any other status: a bug on one side; do not retry forever */
};

/* resp is borrowed for the duration of the call; the request is gone after it. */
typedef void (*transport_cb)(void *ud, const struct transport_response *resp);

int transport_new(const struct transport_opts *opts, struct transport **out);
/* Replace URL, token and TLS settings for requests started from now on. */
int transport_configure(struct transport *tp, const struct transport_opts *opts);
/* Abort every request (no callbacks) and free. NULL ok. */
void transport_free(struct transport *tp);

/* The base URL requests go to now, and a number that changes whenever it does. */
const char *transport_current_url(const struct transport *tp);
uint64_t transport_url_gen(const struct transport *tp);

/* POST body (consumed: freed by the transport) as JSON to the current base URL + path.
 * timeout_ms bounds the whole request. *out (optional) is a borrowed handle
 * for transport_abort(), valid until the callback runs. Returns 0 or -errno
 * (the callback is then never called). */
int transport_post(struct transport *tp, const char *path, char *body, long timeout_ms,
                   transport_cb cb, void *ud, struct transport_req **out);
/* Cancel a request; its callback is not called. */
void transport_abort(struct transport *tp, struct transport_req *req);
size_t transport_active(const struct transport *tp);

/* Wait up to timeout_ms for network activity or one of fds (revents filled;
 * at most TRANSPORT_MAX_EXTRA_FDS). Returns 0 or -errno. */
#define TRANSPORT_MAX_EXTRA_FDS 1024
int transport_wait(struct transport *tp, struct pollfd *fds, unsigned nfds, int timeout_ms);
/* Run transfers and call the callbacks of finished requests. */
void transport_perform(struct transport *tp);

enum transport_class transport_classify(const struct transport_response *resp);
const char *transport_class_name(enum transport_class c);

/* Validate a control plane URL: http or https, a host, no user info, query or
 * fragment. *loopback tells whether the host is 127.0.0.0/8, ::1 or
 * localhost. Returns 0 or -EINVAL with a message in err. */
int transport_check_url(const char *url, bool *loopback, char *err, size_t errlen);

/* How requests to url go, for the log: 1 through a proxy, 0 directly, -EINVAL
 * when the proxy setting that concerns it is unusable (its requests fail with
 * that error); buf says which (never with credentials). */
int transport_route(const struct transport *tp, const char *url, char *buf, size_t len);

/* Validate the `proxy` setting: "direct" or [http://][user:password@]host[:port].
 * Returns 0 or -EINVAL with a message in err (never with the password). */
int transport_check_proxy(const char *proxy, char *err, size_t errlen);

/* Global init/cleanup (nothing global any more: kept for the start-up order). */
int transport_global_init(void);
void transport_global_cleanup(void);

#endif
