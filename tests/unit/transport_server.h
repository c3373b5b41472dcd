/* transport_server.h — a real HTTP(S) server on 127.0.0.1 for the transport
 * suites (test_agent_transport*.c): a thread that reads each request and
 * writes a scripted answer byte for byte, over plain TCP or TLS (mbedtls, with
 * certificates made by the openssl command in the test). Header-only; test
 * code only. */
#ifndef JV_TEST_TRANSPORT_SERVER_H
#define JV_TEST_TRANSPORT_SERVER_H

#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "jobvisor/util.h"
#include "transport.h"

/* An answer's pieces are separated by '|': the server sends each, then pauses
 * 30 ms. "HANG" answers nothing; "CLOSE" closes the connection at once. */
struct server {
	int lfd;
	int port;
	pthread_t th;
	atomic_bool stop;
	atomic_int accepts;
	atomic_int requests;
	const char *answers[8]; /* one per request, in order; the last repeats */
	bool close_after;       /* close the connection after each answer */
	char last_request[4096];
	bool tls;
	mbedtls_ssl_config conf;
	mbedtls_x509_crt cert;
	mbedtls_pk_context key;
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
};

static char tmpdir[256];


static inline void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

struct io {
	int fd;
	mbedtls_ssl_context *ssl;
};

static inline int io_send(void *ctx, const unsigned char *b, size_t n)
{
	ssize_t w = send(*(int *)ctx, b, n, MSG_NOSIGNAL);
	return w < 0 ? MBEDTLS_ERR_SSL_INTERNAL_ERROR : (int)w;
}

static inline int io_recv(void *ctx, unsigned char *b, size_t n)
{
	ssize_t r = recv(*(int *)ctx, b, n, 0);
	return r < 0 ? MBEDTLS_ERR_SSL_INTERNAL_ERROR : (int)r;
}

static inline ssize_t s_read(struct io *io, char *b, size_t n)
{
	if (!io->ssl)
		return recv(io->fd, b, n, 0);
	int r = mbedtls_ssl_read(io->ssl, (unsigned char *)b, n);
	return r < 0 ? (r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ? 0 : -1) : r;
}

static inline void s_write(struct io *io, const char *b, size_t n)
{
	while (n > 0) {
		ssize_t w = io->ssl ? mbedtls_ssl_write(io->ssl, (const unsigned char *)b, n)
		                    : send(io->fd, b, n, MSG_NOSIGNAL);
		if (w <= 0)
			return;
		b += w;
		n -= (size_t)w;
	}
}

/* Read one request (headers and Content-Length body). Returns false at the end. */
static inline bool read_request(struct server *s, struct io *io)
{
	char buf[4096];
	size_t len = 0;
	char *end = NULL;
	while (!(end = strstr(buf, "\r\n\r\n"))) {
		if (len >= sizeof(buf) - 1)
			return false;
		ssize_t n = s_read(io, buf + len, sizeof(buf) - 1 - len);
		if (n <= 0)
			return false;
		len += (size_t)n;
		buf[len] = '\0';
	}
	const char *cl = strcasestr(buf, "Content-Length:");
	size_t want = (size_t)(end + 4 - buf) + (cl ? strtoul(cl + 15, NULL, 10) : 0);
	while (len < want && len < sizeof(buf) - 1) {
		ssize_t n = s_read(io, buf + len, sizeof(buf) - 1 - len);
		if (n <= 0)
			return false;
		len += (size_t)n;
		buf[len] = '\0';
	}
	memcpy(s->last_request, buf, len + 1);
	return true;
}

/* Serve one connection; returns when it ends. */
static inline void serve_conn(struct server *s, struct io *io)
{
	for (;;) {
		if (!read_request(s, io))
			return;
		int i = atomic_fetch_add(&s->requests, 1), last = 0;
		while (last + 1 < 8 && s->answers[last + 1])
			last++;
		const char *a = s->answers[i < last ? i : last];
		if (strcmp(a, "HANG") == 0) {
			while (!atomic_load(&s->stop))
				sleep_ms(10);
			return;
		}
		for (const char *p = a; *p;) {
			size_t n = strcspn(p, "|");
			if (n == 5 && strncmp(p, "CLOSE", 5) == 0)
				return;
			s_write(io, p, n);
			p += n;
			if (*p == '|') {
				p++;
				sleep_ms(30);
			}
		}
		if (s->close_after)
			return;
	}
}

/* The next connection on lfd, counted, or -1 after 50 ms without one. */
static inline int accept_counted(int lfd, atomic_int *accepts)
{
	struct pollfd p = {.fd = lfd, .events = POLLIN};
	int fd = poll(&p, 1, 50) > 0 ? accept(lfd, NULL, NULL) : -1;
	if (fd >= 0)
		atomic_fetch_add(accepts, 1);
	return fd;
}

static inline void *server_main(void *arg)
{
	struct server *s = arg;
	while (!atomic_load(&s->stop)) {
		int fd = accept_counted(s->lfd, &s->accepts);
		if (fd < 0)
			continue;
		struct io io = {.fd = fd};
		mbedtls_ssl_context ssl;
		if (s->tls) {
			mbedtls_ssl_init(&ssl);
			mbedtls_ssl_setup(&ssl, &s->conf);
			mbedtls_ssl_set_bio(&ssl, &io.fd, io_send, io_recv, NULL);
			io.ssl = &ssl;
			if (mbedtls_ssl_handshake(&ssl) == 0)
				serve_conn(s, &io);
			mbedtls_ssl_free(&ssl);
		} else {
			serve_conn(s, &io);
		}
		close(fd);
	}
	return NULL;
}

static inline int listen_any(int *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(fd, 16), 0);
	socklen_t l = sizeof(a);
	getsockname(fd, (struct sockaddr *)&a, &l);
	*port = ntohs(a.sin_port);
	return fd;
}

static inline void server_start(struct server *s)
{
	s->lfd = listen_any(&s->port);
	cr_assert_eq(pthread_create(&s->th, NULL, server_main, s), 0);
}

static inline void server_stop(struct server *s)
{
	atomic_store(&s->stop, true);
	pthread_join(s->th, NULL);
	close(s->lfd);
}

/* ---- the client side ---- */

struct got {
	bool called;
	struct transport_response r;
	char body[8192];
	char error[300];
};

static inline void on_answer(void *ud, const struct transport_response *resp)
{
	struct got *g = ud;
	g->called = true;
	g->r = *resp;
	snprintf(g->body, sizeof(g->body), "%.*s", (int)resp->len, resp->body);
	snprintf(g->error, sizeof(g->error), "%s", resp->error ? resp->error : "");
	g->r.body = g->body;
	g->r.error = g->error;
}

/* POST and run the loop until the answer's callback ran. */
static inline struct got post(struct transport *tp, long timeout_ms)
{
	struct got g = {0};
	cr_assert_eq(transport_post(tp, "/v1/x", strdup("{\"a\":1}"), timeout_ms, on_answer, &g, NULL), 0);
	int64_t give_up = jv_now_mono_ms() + 20000;
	while (!g.called && jv_now_mono_ms() < give_up) {
		cr_assert_eq(transport_wait(tp, NULL, 0, 1000), 0);
		transport_perform(tp);
	}
	cr_assert(g.called, "no answer within 20 s");
	return g;
}

static inline char *url_of(const char *scheme, const char *host, int port)
{
	char *u = NULL;
	cr_assert(asprintf(&u, "%s://%s:%d/base/", scheme, host, port) > 0);
	return u;
}

#define OK_HELLO "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"hi\":true}"

/* ---- TLS ---- */

static inline void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

/* A CA, a server certificate it signed (127.0.0.1 and localhost), and another CA. */
static inline void make_certs(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/jv-unit-transport-XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir));
	const char *q = "2>/dev/null >/dev/null";
	sh("cd %s && for ca in ca other; do openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
	   "-nodes -days 2 -subj /CN=test-$ca -keyout $ca.key -out $ca.pem %s || exit 1; done", tmpdir, q);
	sh("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=server "
	   "-keyout srv.key -out srv.csr %s && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext && "
	   "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
	   "-extfile ext -out srv.pem %s", tmpdir, q, q);
}

static inline void tls_server_setup(struct server *s)
{
	char p[300];
	s->tls = true;
	mbedtls_ssl_config_init(&s->conf);
	mbedtls_x509_crt_init(&s->cert);
	mbedtls_pk_init(&s->key);
	mbedtls_entropy_init(&s->entropy);
	mbedtls_ctr_drbg_init(&s->drbg);
	cr_assert_eq(mbedtls_ctr_drbg_seed(&s->drbg, mbedtls_entropy_func, &s->entropy, NULL, 0), 0);
	snprintf(p, sizeof(p), "%s/srv.pem", tmpdir);
	cr_assert_eq(mbedtls_x509_crt_parse_file(&s->cert, p), 0);
	snprintf(p, sizeof(p), "%s/srv.key", tmpdir);
	cr_assert_eq(mbedtls_pk_parse_keyfile(&s->key, p, NULL), 0);
	mbedtls_ssl_config_defaults(&s->conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
	                            MBEDTLS_SSL_PRESET_DEFAULT);
	mbedtls_ssl_conf_rng(&s->conf, mbedtls_ctr_drbg_random, &s->drbg);
	cr_assert_eq(mbedtls_ssl_conf_own_cert(&s->conf, &s->cert, &s->key), 0);
}

static inline void tls_server_free(struct server *s)
{
	mbedtls_ssl_config_free(&s->conf);
	mbedtls_x509_crt_free(&s->cert);
	mbedtls_pk_free(&s->key);
	mbedtls_ctr_drbg_free(&s->drbg);
	mbedtls_entropy_free(&s->entropy);
	sh("rm -r %s", tmpdir);
}

#endif
