/* transport_internal.h — the parts of the agent's HTTP client (transport.c).
 *
 * transport_url.c: control plane URLs (http_parser's URL parser).
 * transport_http.c: the request's bytes, and the answer read with http_parser.
 * transport_proxy.c: which proxy a URL goes through (proxy settings, no_proxy).
 * transport_conn.c: the pool of connections kept alive.
 * transport_dns.c: name resolution on a short-lived thread, so a hung resolver
 *   never stalls the event loop.
 * transport_tls.c: TLS over mbedtls (linked statically; its pages are only
 *   touched by https). */
#ifndef JOBVISOR_TRANSPORT_INTERNAL_H
#define JOBVISOR_TRANSPORT_INTERNAL_H

#include <http_parser.h>
#include <netdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "jobvisor/util.h"

/* ---- URLs ---- */
struct tp_url {
	bool https;
	char host[256];      /* without IPv6 brackets */
	char port[8];
	char authority[300]; /* the Host header: host[:port], IPv6 in brackets */
	char path[1024];     /* the base URL's path, no trailing slash ("" for none) */
	char key[320];       /* "https://host:port": connections are shared per key */
};

/* Parse a base URL (http or https, a host, no user info, query or fragment).
 * Returns 0 or -EINVAL with a message in err. */
int tp_url_parse(const char *url, struct tp_url *u, char *err, size_t errlen);
bool tp_host_is_loopback(const char *host);

/* ---- proxies ---- */
struct tp_proxy {
	char host[256];      /* without IPv6 brackets */
	char port[8];
	char authority[300]; /* host:port, IPv6 in brackets */
	char auth[1024];     /* "Basic ..." for Proxy-Authorization, "" for none (wiped) */
};

struct tp_proxies {
	struct tp_proxy *http, *https; /* for http:// and https:// URLs; NULL: direct */
	char *http_err, *https_err;    /* the proxy setting for them cannot be used */
	const char *http_from, *https_from; /* where each came from ("https_proxy", ...) */
	char *no_proxy;                /* hosts reached directly (curl's syntax) */
};

/* Parse a proxy URL: [http://][user[:password]@]host[:port][/]. Returns 0 or
 * -EINVAL with a message in err that never holds the password. */
int tp_proxy_parse(const char *url, struct tp_proxy *p, char *err, size_t errlen);
/* Is host:port one of no_proxy's hosts? */
bool tp_no_proxy_match(const char *no_proxy, const char *host, const char *port);
/* proxy: a proxy URL, "direct", or NULL for the environment's (http_proxy,
 * https_proxy, HTTPS_PROXY, all_proxy, ALL_PROXY); no_proxy: NULL for the
 * environment's. An unusable proxy is not an error here: requests it concerns
 * fail with *_err. Returns 0 or -ENOMEM. */
int tp_proxies_load(struct tp_proxies *ps, const char *proxy, const char *no_proxy);
void tp_proxies_clear(struct tp_proxies *ps);
/* The proxy for u (NULL: direct, or *err when the setting is unusable). */
const struct tp_proxy *tp_proxy_for(const struct tp_proxies *ps, const struct tp_url *u,
                                    const char **err);

/* How requests to url go: 1 through a proxy, 0 directly, -EINVAL when its
 * proxy setting is unusable; a sentence for the log in buf (no credentials). */
int tp_route_describe(const struct tp_proxies *ps, const char *url, char *buf, size_t len);

/* ---- HTTP ---- */
struct tp_answer {
	http_parser parser;
	struct jv_buf body;
	size_t max;
	bool too_large;
	bool complete;
	bool keep_alive;
	bool started; /* any byte of an answer arrived */
	bool head_only; /* the answer to CONNECT: no body is read */
	size_t extra;   /* bytes received after the complete answer */
	bool in_value;       /* reading a header's value */
	bool in_retry_after; /* ... and it is Retry-After's */
	int64_t retry_after_ms; /* -1 when absent */
	char field[32];         /* the header name being read */
	size_t field_len;
	char value[64]; /* Retry-After's value being read */
	size_t value_len;
};

/* The whole request: request line, headers, body. auth is "Bearer <token>".
 * proxy_auth NULL: to the server itself; else through a proxy (absolute-form
 * request line, and Proxy-Authorization unless proxy_auth is ""). */
int tp_request_format(struct jv_buf *out, const struct tp_url *u, const char *path,
                      const char *auth, const char *proxy_auth, const char *body);
/* CONNECT u's host:port, for a tunnel through a proxy. */
int tp_connect_format(struct jv_buf *out, const struct tp_url *u, const char *proxy_auth);
void tp_answer_init(struct tp_answer *a, size_t max);
void tp_answer_free(struct tp_answer *a);
/* Feed received bytes; len 0 means the peer closed the connection. Returns 0
 * (more wanted, or a->complete), -EFBIG (a->too_large) or -EPROTO. */
int tp_answer_feed(struct tp_answer *a, const char *data, size_t len);
/* Retry-After: delta-seconds or an HTTP date; milliseconds from now, capped
 * at a day, or -1. */
int64_t tp_parse_retry_after(const char *v, int64_t now_real_ms);

/* ---- DNS ---- */
struct tp_resolve;
/* Start resolving host:port (TCP, IPv6 and IPv4). A numeric address is
 * resolved at once. Returns 0 or -errno. */
int tp_resolve_start(const char *host, const char *port, struct tp_resolve **out);
/* A descriptor that becomes readable when the result is in, -1 when it already is. */
int tp_resolve_fd(const struct tp_resolve *r);
/* 0 with *ai (owned by the caller: freeaddrinfo), -EAGAIN while running, or
 * another -errno with a message in err. */
int tp_resolve_result(struct tp_resolve *r, struct addrinfo **ai, char *err, size_t errlen);
/* Forget the lookup; its thread frees what is left when it ends. NULL ok. */
void tp_resolve_cancel(struct tp_resolve *r);

/* ---- TLS ---- */
struct tp_tls_conf;
struct tp_tls;
/* Verification settings shared by the connections made with them (reference
 * counted). Returns 0 or -errno. The CA certificates are parsed when a
 * handshake needs them and dropped once no handshake runs. */
int tp_tls_conf_new(const char *ca_file, bool insecure, struct tp_tls_conf **out);
void tp_tls_conf_put(struct tp_tls_conf *c);
int tp_tls_new(struct tp_tls_conf *c, int fd, const char *host, struct tp_tls **out,
               char *err, size_t errlen);
void tp_tls_free(struct tp_tls *t);
/* 0 when done; -EAGAIN with *want (POLLIN or POLLOUT); else -errno with err. */
int tp_tls_handshake(struct tp_tls *t, short *want, char *err, size_t errlen);
/* Send (writing) or receive: bytes moved, 0 for the end of the stream
 * (receiving), -EAGAIN with *want, or -EIO with err. */
ssize_t tp_tls_io(struct tp_tls *t, bool writing, void *buf, size_t len, short *want, char *err,
                  size_t errlen);

/* ---- connections ---- */
struct tp_conn {
	int fd;
	struct tp_tls *tls;
	struct tp_tls_conf *tls_conf; /* the settings it was made with (not owned) */
	char key[640];                /* the URL's scheme://host:port, and the proxy's */
	int64_t idle_since;
	struct tp_conn *next;
};

void tp_conn_close(struct tp_conn *c); /* NULL ok */
void tp_pool_clear(struct tp_conn **pool);
/* A live idle connection for key made with tls (when it has TLS), or NULL. */
struct tp_conn *tp_pool_take(struct tp_conn **pool, const char *key, const struct tp_tls_conf *tls);
/* Keep c for later (closed when made with other TLS settings, or the pool is full). */
void tp_pool_put(struct tp_conn **pool, struct tp_conn *c, const struct tp_tls_conf *tls);

#endif
