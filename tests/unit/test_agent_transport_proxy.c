/* test_agent_transport_proxy.c — the agent's HTTP client through an HTTP proxy
 * (supervisor/agent/transport_proxy.c), against a real server on 127.0.0.1
 * (transport_server.h) and a real proxy in a thread: it forwards absolute-form
 * requests and opens CONNECT tunnels by connecting to the target and relaying
 * bytes. Debian's tinyproxy is not installed on the build machines, so the
 * proxy is this thread (it needs no config file or user either). */
#include <criterion/criterion.h>

#include <netdb.h>

#include "jobvisor/log.h"
#include "transport_internal.h"
#include "transport_server.h"

struct proxy {
	int lfd, port;
	pthread_t th;
	atomic_bool stop;
	atomic_int accepts, tunnels, forwards;
	const char *connect_answer; /* answer CONNECT with this and close ("HANG": never); NULL: tunnel */
	const char *need_auth;      /* the Proxy-Authorization value required; else 407 */
	char last_head[4096];       /* the last request head the proxy received */
};

/* Read one message (head and a Content-Length body) into buf; its length, or -1. */
static ssize_t read_msg(int fd, char *buf, size_t cap)
{
	size_t len = 0, want = 0;
	buf[0] = '\0';
	for (;;) {
		char *end = strstr(buf, "\r\n\r\n");
		if (end && !want) {
			const char *cl = strcasestr(buf, "\r\nContent-Length:");
			want = (size_t)(end + 4 - buf) + (cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0);
		}
		if (want && len >= want)
			return (ssize_t)len;
		if (len >= cap - 1)
			return -1;
		ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
		if (n <= 0)
			return -1;
		len += (size_t)n;
		buf[len] = '\0';
	}
}

static int dial(const char *hostport)
{
	char host[256], *port;
	snprintf(host, sizeof(host), "%s", hostport);
	port = strrchr(host, ':');
	if (!port)
		return -1;
	*port++ = '\0';
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
	if (getaddrinfo(host, port, &hints, &ai) != 0)
		return -1;
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

static void relay(int a, int b)
{
	char buf[16384];
	struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
	while (poll(p, 2, 20000) > 0) {
		for (int i = 0; i < 2; i++) {
			if (!p[i].revents)
				continue;
			ssize_t n = recv(p[i].fd, buf, sizeof(buf), 0);
			if (n <= 0 || send(p[1 - i].fd, buf, (size_t)n, MSG_NOSIGNAL) != n)
				return;
		}
	}
}

/* "POST http://host:port/path HTTP/1.1": to the server in origin form,
 * without Proxy-Authorization, and its answer back. */
static bool forward(struct proxy *px, int cfd, int *ufd, char *msg, size_t len)
{
	char target[300];
	if (sscanf(msg, "POST http://%299[^/ ]", target) != 1)
		return false;
	if (*ufd < 0 && (*ufd = dial(target)) < 0)
		return false;
	atomic_fetch_add(&px->forwards, 1);
	char *path = strchr(msg + 12, '/');
	char *pa = strcasestr(msg, "\r\nProxy-Authorization:");
	if (pa) {
		char *eol = strstr(pa + 2, "\r\n");
		memmove(pa, eol, strlen(eol) + 1);
		len -= (size_t)(eol - pa);
	}
	send(*ufd, "POST ", 5, MSG_NOSIGNAL);
	send(*ufd, path, len - (size_t)(path - msg), MSG_NOSIGNAL);
	char ans[8192];
	ssize_t n = read_msg(*ufd, ans, sizeof(ans));
	return n > 0 && send(cfd, ans, (size_t)n, MSG_NOSIGNAL) == n;
}

static void serve_client(struct proxy *px, int cfd)
{
	char msg[4096];
	int ufd = -1;
	ssize_t n;
	while ((n = read_msg(cfd, msg, sizeof(msg))) > 0) {
		snprintf(px->last_head, sizeof(px->last_head), "%.*s", (int)(strstr(msg, "\r\n\r\n") + 4 - msg), msg);
		char want[300];
		snprintf(want, sizeof(want), "\r\nProxy-Authorization: %s\r\n", px->need_auth ? px->need_auth : "");
		if (px->need_auth && !strstr(msg, want)) {
			const char *deny = "HTTP/1.1 407 Proxy Authentication Required\r\n"
			                   "Proxy-Authenticate: Basic realm=\"t\"\r\nContent-Length: 5\r\n\r\nnope\n";
			send(cfd, deny, strlen(deny), MSG_NOSIGNAL);
			continue;
		}
		char target[300];
		if (sscanf(msg, "CONNECT %299s HTTP/1.1", target) != 1) {
			if (!forward(px, cfd, &ufd, msg, (size_t)n))
				break;
			continue;
		}
		while (px->connect_answer && strcmp(px->connect_answer, "HANG") == 0 && !atomic_load(&px->stop))
			sleep_ms(10);
		if (px->connect_answer) {
			send(cfd, px->connect_answer, strlen(px->connect_answer), MSG_NOSIGNAL);
			break;
		}
		if ((ufd = dial(target)) < 0)
			break;
		atomic_fetch_add(&px->tunnels, 1);
		const char *ok = "HTTP/1.1 200 Connection established\r\n\r\n";
		send(cfd, ok, strlen(ok), MSG_NOSIGNAL);
		relay(cfd, ufd);
		break;
	}
	if (ufd >= 0)
		close(ufd);
}

static void *proxy_main(void *arg)
{
	struct proxy *px = arg;
	while (!atomic_load(&px->stop)) {
		int fd = accept_counted(px->lfd, &px->accepts);
		if (fd < 0)
			continue;
		serve_client(px, fd);
		close(fd);
	}
	return NULL;
}

static void proxy_start(struct proxy *px)
{
	px->lfd = listen_any(&px->port);
	cr_assert_eq(pthread_create(&px->th, NULL, proxy_main, px), 0);
}

static void proxy_stop(struct proxy *px)
{
	atomic_store(&px->stop, true);
	pthread_join(px->th, NULL);
	close(px->lfd);
}

static void quiet(void)
{
	jv_log_setup(JV_LOG_LOGFMT, JV_LOG_ERROR);
	/* Only what each test sets. */
	const char *vars[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
	                      "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"};
	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
}

TestSuite(proxy, .init = quiet, .timeout = 60);

static struct transport *client_via(char *const *urls, size_t n, const char *ca, const char *proxy,
                                    const char *no_proxy)
{
	struct transport_opts o = {.urls = urls, .nurls = n, .token = "tok3n", .ca_file = ca,
	                           .connect_timeout_ms = 2000, .proxy = proxy, .no_proxy = no_proxy};
	struct transport *tp = NULL;
	cr_assert_eq(transport_new(&o, &tp), 0);
	return tp;
}

static char *proxy_url(const char *userinfo, int port)
{
	char *u = NULL;
	cr_assert(asprintf(&u, "http://%s%s127.0.0.1:%d", userinfo ? userinfo : "", userinfo ? "@" : "", port) > 0);
	return u;
}

Test(proxy, http_goes_in_absolute_form_with_credentials_on_one_kept_connection)
{
	struct server s = {.answers = {OK_HELLO}};
	server_start(&s);
	struct proxy px = {.need_auth = "Basic dXNlcjpwQHNz"}; /* user:p@ss */
	proxy_start(&px);
	char *u = url_of("http", "127.0.0.1", s.port), *pu = proxy_url("user:p%40ss", px.port);
	struct transport *tp = client_via(&u, 1, NULL, pu, NULL);
	for (int i = 0; i < 3; i++) {
		struct got g = post(tp, 5000);
		cr_assert_eq(g.r.status, 200, "%ld %s", g.r.status, g.error);
		cr_assert_str_eq(g.body, "{\"hi\":true}");
	}
	char line[200];
	snprintf(line, sizeof(line), "POST http://127.0.0.1:%d/base/v1/x HTTP/1.1\r\n", s.port);
	cr_assert(strncmp(px.last_head, line, strlen(line)) == 0, "%s", px.last_head);
	cr_assert(strstr(px.last_head, "\r\nAuthorization: Bearer tok3n\r\n"), "%s", px.last_head);
	cr_assert(strstr(s.last_request, "POST /base/v1/x HTTP/1.1\r\n"), "%s", s.last_request);
	cr_assert_eq(atomic_load(&px.forwards), 3);
	cr_assert_eq(atomic_load(&px.accepts), 1, "%d connections to the proxy for 3 requests",
	             atomic_load(&px.accepts));
	transport_free(tp);
	proxy_stop(&px);
	server_stop(&s);
	free(u);
	free(pu);
}

Test(proxy, https_goes_through_a_connect_tunnel_verified_against_the_control_planes_name)
{
	make_certs();
	struct server s = {.answers = {OK_HELLO}};
	tls_server_setup(&s);
	server_start(&s);
	struct proxy px = {0};
	proxy_start(&px);
	char ca[300], other[300];
	snprintf(ca, sizeof(ca), "%s/ca.pem", tmpdir);
	snprintf(other, sizeof(other), "%s/other.pem", tmpdir);
	/* The certificate names localhost and 127.0.0.1; the proxy is reached as 127.0.0.1. */
	char *u = url_of("https", "localhost", s.port), *pu = proxy_url(NULL, px.port);
	struct transport *tp = client_via(&u, 1, ca, pu, NULL);
	for (int i = 0; i < 3; i++) {
		struct got g = post(tp, 10000);
		cr_assert_eq(g.r.status, 200, "%ld %s", g.r.status, g.error);
	}
	char line[200];
	snprintf(line, sizeof(line), "CONNECT localhost:%d HTTP/1.1\r\nHost: localhost:%d\r\n", s.port, s.port);
	cr_assert(strncmp(px.last_head, line, strlen(line)) == 0, "%s", px.last_head);
	cr_assert_null(strstr(px.last_head, "tok3n"), "the token reached the proxy in clear");
	cr_assert_eq(atomic_load(&px.tunnels), 1, "%d tunnels for 3 requests", atomic_load(&px.tunnels));
	cr_assert(strstr(s.last_request, "\r\nAuthorization: Bearer tok3n\r\n"), "%s", s.last_request);
	transport_free(tp);

	/* A CA that did not sign the server's certificate: refused before the request is sent. */
	int before = atomic_load(&s.requests);
	tp = client_via(&u, 1, other, pu, NULL);
	struct got g = post(tp, 10000);
	cr_assert_eq(g.r.status, 0);
	cr_assert(strstr(g.error, "verification failed"), "%s", g.error);
	cr_assert_eq(transport_classify(&g.r), TRANSPORT_RETRY);
	cr_assert_eq(atomic_load(&px.tunnels), 2);
	cr_assert_eq(atomic_load(&s.requests), before, "a request went through an unverified tunnel");
	transport_free(tp);
	proxy_stop(&px);
	server_stop(&s);
	tls_server_free(&s);
	free(u);
	free(pu);
}

/* POST through a proxy that fails the request; the error names the proxy. */
static struct got refused_by(struct proxy *px, const char *proxy_userinfo, const char *scheme)
{
	proxy_start(px);
	char *u = url_of(scheme, "127.0.0.1", 9), *pu = proxy_url(proxy_userinfo, px->port);
	struct transport *tp = client_via(&u, 1, NULL, pu, NULL);
	struct got g = post(tp, 5000);
	cr_assert_eq(g.r.status, 0, "HTTP %ld from the proxy counted as the control plane's", g.r.status);
	cr_assert_eq(transport_classify(&g.r), TRANSPORT_RETRY);
	cr_assert_null(strstr(g.error, "s3cret"), "%s", g.error);
	transport_free(tp);
	proxy_stop(px);
	free(u);
	free(pu);
	return g;
}

Test(proxy, a_proxy_refusing_or_garbling_the_tunnel_is_a_clear_retryable_error)
{
	struct proxy px = {.need_auth = "Basic bm9ib2R5Om5vdGhpbmc="};
	struct got g = refused_by(&px, NULL, "https");
	cr_assert(strstr(g.error, "refused the tunnel to 127.0.0.1 port 9: HTTP 407"), "%s", g.error);
	cr_assert(strstr(g.error, "credentials"), "%s", g.error);
	cr_assert_null(strstr(px.last_head, "Proxy-Authorization"));

	struct proxy px2 = {.need_auth = "Basic bm9ib2R5Om5vdGhpbmc="};
	g = refused_by(&px2, "me:s3cret", "https");
	cr_assert(strstr(g.error, "HTTP 407: it refused the user and password"), "%s", g.error);
	cr_assert(strstr(px2.last_head, "\r\nProxy-Authorization: Basic bWU6czNjcmV0\r\n"), "%s", px2.last_head);

	struct proxy px3 = {.connect_answer = "HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n"};
	g = refused_by(&px3, NULL, "https");
	cr_assert(strstr(g.error, "the proxy 127.0.0.1 port"), "%s", g.error);
	cr_assert(strstr(g.error, "refused the tunnel to 127.0.0.1 port 9: HTTP 403"), "%s", g.error);

	struct proxy px4 = {.connect_answer = "SSH-2.0-OpenSSH_9.2\r\n\r\n"};
	g = refused_by(&px4, NULL, "https");
	cr_assert(strstr(g.error, "answered CONNECT with something that is not HTTP"), "%s", g.error);

	/* A proxy that never answers CONNECT: the connect timeout (2 s here) covers the tunnel. */
	struct proxy px7 = {.connect_answer = "HANG"};
	g = refused_by(&px7, NULL, "https");
	cr_assert(strstr(g.error, "cannot connect to the proxy 127.0.0.1 port"), "%s", g.error);
	cr_assert(strstr(g.error, "timed out after 2000 ms"), "%s", g.error);
	cr_assert(g.r.elapsed_ms >= 2000 && g.r.elapsed_ms < 4000, "%lld ms", (long long)g.r.elapsed_ms);

	struct proxy px5 = {.connect_answer = "HTTP/1.1 200 OK\r\n\r\nsurprise"};
	g = refused_by(&px5, NULL, "https");
	cr_assert(strstr(g.error, "sent data after its answer to CONNECT"), "%s", g.error);

	/* A forward proxy's 407 is the proxy's answer too, not the control plane's. */
	struct proxy px6 = {.need_auth = "Basic bm9ib2R5Om5vdGhpbmc="};
	g = refused_by(&px6, "me:s3cret", "http");
	cr_assert(strstr(g.error, "asks for credentials (HTTP 407)"), "%s", g.error);
}

Test(proxy, a_proxy_that_is_down_fails_over_to_the_next_url)
{
	int dead_port;
	close(listen_any(&dead_port));
	struct server s = {.answers = {OK_HELLO}};
	server_start(&s);
	/* The first URL goes through the dead proxy; the second is in no_proxy. */
	char *urls[2] = {url_of("http", "cp.invalid", 80), url_of("http", "127.0.0.1", s.port)};
	char *pu = proxy_url(NULL, dead_port);
	struct transport *tp = client_via(urls, 2, NULL, pu, "localhost, 127.0.0.0/8");
	struct got g = post(tp, 5000);
	cr_assert_eq(g.r.status, 0);
	char want[200];
	snprintf(want, sizeof(want), "cannot connect to the proxy 127.0.0.1 port %d: Connection refused", dead_port);
	cr_assert(strstr(g.error, want), "%s", g.error);
	cr_assert(g.r.failover, "a dead proxy did not fail over");
	cr_assert_eq(post(tp, 5000).r.status, 200);
	transport_free(tp);
	server_stop(&s);
	free(urls[0]);
	free(urls[1]);
	free(pu);
}

/* POST once with the proxy variables of the environment; did it go through px? */
static bool env_uses_proxy(struct proxy *px, struct server *s)
{
	char *u = url_of("http", "127.0.0.1", s->port);
	struct transport *tp = client_via(&u, 1, NULL, NULL, NULL);
	int before = atomic_load(&px->forwards);
	struct got g = post(tp, 5000);
	cr_assert_eq(g.r.status, 200, "%ld %s", g.r.status, g.error);
	transport_free(tp);
	free(u);
	return atomic_load(&px->forwards) > before;
}

Test(proxy, the_environment_is_read_as_curl_reads_it)
{
	struct server s = {.answers = {OK_HELLO}};
	server_start(&s);
	struct proxy px = {0};
	proxy_start(&px);
	char *pu = proxy_url(NULL, px.port);
	cr_assert_not(env_uses_proxy(&px, &s));
	setenv("HTTP_PROXY", pu, 1); /* httpoxy: never for http:// */
	setenv("HTTPS_PROXY", pu, 1);
	cr_assert_not(env_uses_proxy(&px, &s), "HTTP_PROXY was used");
	setenv("http_proxy", pu + 7, 1); /* no scheme: http:// */
	cr_assert(env_uses_proxy(&px, &s), "http_proxy was not used");
	setenv("NO_PROXY", "other.example,127.0.0.1", 1);
	cr_assert_not(env_uses_proxy(&px, &s), "NO_PROXY was not used");
	setenv("no_proxy", "other.example", 1); /* the lower-case one wins */
	cr_assert(env_uses_proxy(&px, &s));
	unsetenv("http_proxy");
	setenv("ALL_PROXY", pu, 1);
	cr_assert(env_uses_proxy(&px, &s), "ALL_PROXY was not used");
	/* An unusable proxy fails each request with a clear error; the transport stays usable. */
	setenv("http_proxy", "socks5://127.0.0.1:1080", 1);
	char *u = url_of("http", "127.0.0.1", s.port);
	struct transport *tp = client_via(&u, 1, NULL, NULL, NULL);
	struct got g = post(tp, 5000);
	cr_assert_eq(g.r.status, 0);
	cr_assert(strstr(g.error, "the proxy in http_proxy: proxy scheme 'socks5' is not supported"), "%s",
	          g.error);
	transport_free(tp);
	tp = client_via(&u, 1, NULL, "direct", NULL); /* the setting overrides the environment */
	cr_assert_eq(post(tp, 5000).r.status, 200);
	transport_free(tp);
	proxy_stop(&px);
	server_stop(&s);
	free(u);
	free(pu);
}

Test(proxy, no_proxy_entries_match_as_in_curl)
{
	struct {
		const char *list, *host, *port;
		bool match;
	} c[] = {
	        {"*", "anything.example", "443", true},
	        {"", "cp.example.com", "443", false},
	        {"example.com", "example.com", "443", true},
	        {"example.com", "cp.example.com", "443", true},
	        {"example.com", "badexample.com", "443", false},
	        {".example.com", "cp.example.com", "443", true},
	        {".example.com", "example.com", "443", true},
	        {"example.com.", "CP.Example.COM.", "443", true},
	        {"a.test, ,example.com", "cp.example.com", "80", true},
	        {"cp.example.com", "example.com", "443", false},
	        {"10.0.0.0/8", "10.1.2.3", "443", true},
	        {"10.0.0.0/8", "11.1.2.3", "443", false},
	        {"192.168.1.7", "192.168.1.7", "443", true},
	        {"192.168.1.7", "192.168.1.70", "443", false},
	        {"192.168.0.0/23", "192.168.1.9", "443", true},
	        {"192.168.0.0/23", "192.168.2.9", "443", false},
	        {"fd00::/8", "fd12::1", "443", true},
	        {"::1", "::1", "443", true},
	        {"10.0.0.0/8", "ten.example", "443", false},
	        {"cp.example.com:8443", "cp.example.com", "8443", true},
	        {"cp.example.com:8443", "cp.example.com", "443", false},
	        {"[::1]:8080", "::1", "8080", true},
	        {"[::1]:8080", "::1", "80", false},
	        {"127.0.0.1:8080", "127.0.0.1", "8081", false},
	        {"*.example.com", "cp.example.com", "443", false}, /* curl has no wildcards but a lone * */
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
		cr_expect_eq(tp_no_proxy_match(c[i].list, c[i].host, c[i].port), c[i].match, "'%s' vs %s:%s",
		             c[i].list, c[i].host, c[i].port);
}

Test(proxy, proxy_urls_are_checked_without_showing_the_password)
{
	struct tp_proxy p;
	char err[300];
	cr_assert_eq(tp_proxy_parse("proxy.example", &p, err, sizeof(err)), 0);
	cr_assert_str_eq(p.authority, "proxy.example:1080");
	cr_assert_str_eq(p.auth, "");
	cr_assert_eq(tp_proxy_parse("HTTP://u:p%3Aw@[fd00::1]:3128/", &p, err, sizeof(err)), 0);
	cr_assert_str_eq(p.host, "fd00::1");
	cr_assert_str_eq(p.authority, "[fd00::1]:3128");
	cr_assert_str_eq(p.auth, "Basic dTpwOnc="); /* u:p:w */
	const char *bad[] = {"https://proxy:443", "socks5h://proxy:1080", "http://u:s3cret@", "http://u:s3cret@h:99999",
	                     "http://u:s3cret@h:x", "http://u:s3cret%zz@h:1", "http://[::1:3128",
	                     "http://u:s3cr/et@h:1"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_eq(tp_proxy_parse(bad[i], &p, err, sizeof(err)), -EINVAL, "%s accepted", bad[i]);
		cr_assert_null(strstr(err, "s3cr"), "%s", err);
		cr_assert_eq(transport_check_proxy(bad[i], err, sizeof(err)), -EINVAL);
	}
	cr_assert_eq(transport_check_proxy("direct", err, sizeof(err)), 0);
}
