/* transport_internal.h — the parts of the agent's HTTP client (transport.c).
 *
 * transport_url.c: control plane URLs (http_parser's URL parser).
 * transport_http.c: the request's bytes, and the answer read with http_parser.
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

/* ---- HTTP ---- */
struct tp_answer {
	http_parser parser;
	struct jv_buf body;
	size_t max;
	bool too_large;
	bool complete;
	bool keep_alive;
	bool started; /* any byte of an answer arrived */
	bool in_value;       /* reading a header's value */
	bool in_retry_after; /* ... and it is Retry-After's */
	int64_t retry_after_ms; /* -1 when absent */
	char field[32];         /* the header name being read */
	size_t field_len;
	char value[64]; /* Retry-After's value being read */
	size_t value_len;
};

/* The whole request: request line, headers, body. auth is "Bearer <token>". */
int tp_request_format(struct jv_buf *out, const struct tp_url *u, const char *path,
                      const char *auth, const char *body);
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

#endif
