/* test_agent_transport.c — the agent's HTTP client (supervisor/agent/transport*.c)
 * against a real server on 127.0.0.1: a thread that reads each request and
 * writes a scripted answer byte for byte, over plain TCP or TLS (mbedtls, with
 * certificates made by the openssl command in the test). */
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

#include "jobvisor/log.h"
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

static void quiet(void)
{
	jv_log_setup(JV_LOG_LOGFMT, JV_LOG_ERROR);
}

TestSuite(transport, .init = quiet, .timeout = 60);

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

struct io {
	int fd;
	mbedtls_ssl_context *ssl;
};

static int io_send(void *ctx, const unsigned char *b, size_t n)
{
	ssize_t w = send(*(int *)ctx, b, n, MSG_NOSIGNAL);
	return w < 0 ? MBEDTLS_ERR_SSL_INTERNAL_ERROR : (int)w;
}

static int io_recv(void *ctx, unsigned char *b, size_t n)
{
	ssize_t r = recv(*(int *)ctx, b, n, 0);
	return r < 0 ? MBEDTLS_ERR_SSL_INTERNAL_ERROR : (int)r;
}

static ssize_t s_read(struct io *io, char *b, size_t n)
{
	if (!io->ssl)
		return recv(io->fd, b, n, 0);
	int r = mbedtls_ssl_read(io->ssl, (unsigned char *)b, n);
	return r < 0 ? (r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ? 0 : -1) : r;
}

static void s_write(struct io *io, const char *b, size_t n)
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
static bool read_request(struct server *s, struct io *io)
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
static void serve_conn(struct server *s, struct io *io)
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

static void *server_main(void *arg)
{
	struct server *s = arg;
	while (!atomic_load(&s->stop)) {
		struct pollfd p = {.fd = s->lfd, .events = POLLIN};
		if (poll(&p, 1, 50) <= 0)
			continue;
		int fd = accept(s->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		atomic_fetch_add(&s->accepts, 1);
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

static int listen_any(int *port)
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

static void server_start(struct server *s)
{
	s->lfd = listen_any(&s->port);
	cr_assert_eq(pthread_create(&s->th, NULL, server_main, s), 0);
}

static void server_stop(struct server *s)
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

static void on_answer(void *ud, const struct transport_response *resp)
{
	struct got *g = ud;
	g->called = true;
	g->r = *resp;
	snprintf(g->body, sizeof(g->body), "%.*s", (int)resp->len, resp->body);
	snprintf(g->error, sizeof(g->error), "%s", resp->error ? resp->error : "");
	g->r.body = g->body;
	g->r.error = g->error;
}

static struct transport *client(char *const *urls, size_t n, const char *ca, size_t max)
{
	struct transport_opts o = {.urls = urls, .nurls = n, .token = "tok3n", .ca_file = ca,
	                           .connect_timeout_ms = 2000, .max_response = max};
	struct transport *tp = NULL;
	cr_assert_eq(transport_new(&o, &tp), 0);
	return tp;
}

/* POST and run the loop until the answer's callback ran. */
static struct got post(struct transport *tp, long timeout_ms)
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

static char *url_of(const char *scheme, const char *host, int port)
{
	char *u = NULL;
	cr_assert(asprintf(&u, "%s://%s:%d/base/", scheme, host, port) > 0);
	return u;
}

#define OK_HELLO "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"hi\":true}"

Test(transport, chunked_answer_in_pieces_and_the_request_it_answers)
{
	struct server s = {.answers = {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n|5\r\nhello\r|\n6\r\n world"
	                               "\r\n|0\r\n\r\n"}};
	server_start(&s);
	char *u = url_of("http", "127.0.0.1", s.port);
	struct transport *tp = client(&u, 1, NULL, 0);
	struct got g = post(tp, 5000);
	cr_assert_eq(g.r.status, 200, "%ld %s", g.r.status, g.error);
	cr_assert_str_eq(g.body, "hello world");
	cr_assert_eq(transport_classify(&g.r), TRANSPORT_OK);
	cr_assert(strstr(s.last_request, "POST /base/v1/x HTTP/1.1\r\n"), "%s", s.last_request);
	cr_assert(strstr(s.last_request, "\r\nAuthorization: Bearer tok3n\r\n"), "%s", s.last_request);
	cr_assert(strstr(s.last_request, "\r\n\r\n{\"a\":1}"), "%s", s.last_request);
	transport_free(tp);
	server_stop(&s);
	free(u);
}

Test(transport, keep_alive_reuses_one_connection_and_survives_a_server_closing_it)
{
	struct server s = {.answers = {OK_HELLO}};
	server_start(&s);
	char *u = url_of("http", "127.0.0.1", s.port);
	struct transport *tp = client(&u, 1, NULL, 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(post(tp, 5000).r.status, 200);
	cr_assert_eq(atomic_load(&s.accepts), 1, "%d connections for 3 requests", atomic_load(&s.accepts));
	s.close_after = true; /* the next answer closes the pooled connection */
	cr_assert_eq(post(tp, 5000).r.status, 200);
	struct got g = post(tp, 5000); /* sent on a new connection */
	cr_assert_eq(g.r.status, 200, "%s", g.error);
	cr_assert_eq(atomic_load(&s.accepts), 2);
	transport_free(tp);
	server_stop(&s);
	free(u);
}

Test(transport, an_answer_over_max_response_is_dropped)
{
	static char big[2200];
	snprintf(big, sizeof(big), "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n%02000d", 7);
	const char *chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	                      "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n"
	                      "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n0\r\n\r\n";
	struct server s = {.answers = {big, chunked}};
	server_start(&s);
	char *u = url_of("http", "127.0.0.1", s.port);
	struct transport *tp = client(&u, 1, NULL, 100);
	for (int i = 0; i < 2; i++) {
		struct got g = post(tp, 5000);
		cr_assert(g.r.too_large, "answer %d kept", i);
		cr_assert_eq(g.r.status, 0);
		cr_assert(strstr(g.error, "max_response"), "%s", g.error);
		cr_assert_eq(transport_classify(&g.r), TRANSPORT_RETRY);
	}
	transport_free(tp);
	server_stop(&s);
	free(u);
}

Test(transport, a_server_that_does_not_answer_times_out)
{
	struct server s = {.answers = {"HANG"}};
	server_start(&s);
	char *u = url_of("http", "127.0.0.1", s.port);
	struct transport *tp = client(&u, 1, NULL, 0);
	struct got g = post(tp, 300);
	cr_assert_eq(g.r.status, 0);
	cr_assert(strstr(g.error, "timed out after 300 ms"), "%s", g.error);
	cr_assert(g.r.elapsed_ms >= 300 && g.r.elapsed_ms < 2000, "%lld ms", (long long)g.r.elapsed_ms);
	cr_assert_eq(transport_classify(&g.r), TRANSPORT_RETRY);
	transport_free(tp);
	server_stop(&s);
	free(u);
}

Test(transport, connection_refused_moves_to_the_next_url)
{
	int dead_port;
	close(listen_any(&dead_port)); /* nothing listens there now */
	struct server s = {.answers = {OK_HELLO}};
	server_start(&s);
	char *urls[2] = {url_of("http", "127.0.0.1", dead_port), url_of("http", "127.0.0.1", s.port)};
	struct transport *tp = client(urls, 2, NULL, 0);
	struct got g = post(tp, 5000);
	cr_assert_eq(g.r.status, 0);
	cr_assert(strstr(g.error, "Connection refused"), "%s", g.error);
	cr_assert(g.r.failover, "a refused connection did not fail over");
	cr_assert_eq(strncmp(transport_current_url(tp), urls[1], strlen(urls[1]) - 1), 0, "%s",
	             transport_current_url(tp));
	cr_assert_eq(post(tp, 5000).r.status, 200);
	transport_free(tp);
	server_stop(&s);
	free(urls[0]);
	free(urls[1]);
}

Test(transport, retry_after_in_seconds_and_as_a_date)
{
	char date_answer[300];
	time_t t = time(NULL) + 120;
	struct tm tm;
	gmtime_r(&t, &tm);
	char d[64];
	strftime(d, sizeof(d), "%a, %d %b %Y %H:%M:%S GMT", &tm);
	snprintf(date_answer, sizeof(date_answer),
	         "HTTP/1.1 429 Too Many Requests\r\nRetry-After: %s\r\nContent-Length: 2\r\n\r\n{}", d);
	struct server s = {.answers = {"HTTP/1.1 503 Busy\r\nretry-after:  7\r\nContent-Length: 2\r\n\r\n{}",
	                               date_answer, OK_HELLO}};
	server_start(&s);
	char *u = url_of("http", "127.0.0.1", s.port);
	struct transport *tp = client(&u, 1, NULL, 0);
	struct got g = post(tp, 5000);
	cr_assert_eq(g.r.status, 503);
	cr_assert_eq(g.r.retry_after_ms, 7000);
	cr_assert_eq(transport_classify(&g.r), TRANSPORT_RETRY);
	g = post(tp, 5000);
	cr_assert_eq(g.r.status, 429);
	cr_assert(g.r.retry_after_ms > 110000 && g.r.retry_after_ms <= 120000, "%lld",
	          (long long)g.r.retry_after_ms);
	g = post(tp, 5000);
	cr_assert_eq(g.r.retry_after_ms, -1);
	transport_free(tp);
	server_stop(&s);
	free(u);
}

Test(transport, a_server_closing_mid_answer_gives_no_answer)
{
	struct server s = {.answers = {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\"|CLOSE"},
	                   .close_after = true};
	server_start(&s);
	char *u = url_of("http", "127.0.0.1", s.port);
	struct transport *tp = client(&u, 1, NULL, 0);
	struct got g = post(tp, 5000);
	cr_assert_eq(g.r.status, 0, "a cut answer counted as HTTP %ld", g.r.status);
	cr_assert(strstr(g.error, "closed the connection before the answer was complete"), "%s", g.error);
	cr_assert_eq(transport_classify(&g.r), TRANSPORT_RETRY);
	transport_free(tp);
	server_stop(&s);
	free(u);
}

/* ---- TLS ---- */

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

/* A CA, a server certificate it signed (127.0.0.1 and localhost), and another CA. */
static void make_certs(void)
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

static void tls_server_setup(struct server *s)
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

static void tls_server_free(struct server *s)
{
	mbedtls_ssl_config_free(&s->conf);
	mbedtls_x509_crt_free(&s->cert);
	mbedtls_pk_free(&s->key);
	mbedtls_ctr_drbg_free(&s->drbg);
	mbedtls_entropy_free(&s->entropy);
	sh("rm -r %s", tmpdir);
}

Test(transport, tls_with_the_right_ca_by_address_and_by_name_and_a_wrong_ca_refused)
{
	make_certs();
	struct server s = {.answers = {OK_HELLO}};
	tls_server_setup(&s);
	server_start(&s);
	char ca[300], other[300];
	snprintf(ca, sizeof(ca), "%s/ca.pem", tmpdir);
	snprintf(other, sizeof(other), "%s/other.pem", tmpdir);
	const char *hosts[] = {"127.0.0.1", "localhost"};
	for (size_t i = 0; i < 2; i++) {
		char *u = url_of("https", hosts[i], s.port);
		struct transport *tp = client(&u, 1, ca, 0);
		struct got g = post(tp, 10000);
		cr_assert_eq(g.r.status, 200, "%s: %s", hosts[i], g.error);
		cr_assert_str_eq(g.body, "{\"hi\":true}");
		cr_assert_eq(post(tp, 10000).r.status, 200); /* on the kept connection */
		transport_free(tp);

		tp = client(&u, 1, other, 0);
		g = post(tp, 10000);
		cr_assert_eq(g.r.status, 0, "%s: a certificate from an unknown CA was accepted", hosts[i]);
		cr_assert(strstr(g.error, "verification failed"), "%s", g.error);
		transport_free(tp);
		free(u);
	}
	int before = atomic_load(&s.requests);
	/* The system store does not know the test CA either. */
	char *u = url_of("https", "127.0.0.1", s.port);
	struct transport *tp = client(&u, 1, NULL, 0);
	cr_assert_eq(post(tp, 10000).r.status, 0);
	transport_free(tp);
	free(u);
	cr_assert_eq(atomic_load(&s.requests), before, "a request went through an unverified connection");
	server_stop(&s);
	tls_server_free(&s);
}
