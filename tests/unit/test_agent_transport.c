/* test_agent_transport.c — the agent's HTTP client (supervisor/agent/transport*.c)
 * against a real server on 127.0.0.1 (transport_server.h). */
#include <criterion/criterion.h>

#include "jobvisor/log.h"
#include "transport_server.h"

static void quiet(void)
{
	jv_log_setup(JV_LOG_LOGFMT, JV_LOG_ERROR);
}

TestSuite(transport, .init = quiet, .timeout = 60);

static struct transport *client(char *const *urls, size_t n, const char *ca, size_t max)
{
	struct transport_opts o = {.urls = urls, .nurls = n, .token = "tok3n", .ca_file = ca,
	                           .connect_timeout_ms = 2000, .max_response = max};
	struct transport *tp = NULL;
	cr_assert_eq(transport_new(&o, &tp), 0);
	return tp;
}

/* The last request the server read is post()'s, whole: line, token, body. */
static void assert_whole_request(const struct server *s)
{
	cr_assert(strstr(s->last_request, "POST /base/v1/x HTTP/1.1\r\n"), "%s", s->last_request);
	cr_assert(strstr(s->last_request, "\r\nAuthorization: Bearer tok3n\r\n"), "%s", s->last_request);
	cr_assert(strstr(s->last_request, "\r\n\r\n{\"a\":1}"), "%s", s->last_request);
}

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
	assert_whole_request(&s);
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

Test(transport, a_kept_connection_closed_unanswered_sends_the_request_again_whole)
{
	/* The second request reaches the server on the kept connection, which then closes it
	 * without answering (an idle timeout racing the request): sent again on a new one. */
	struct server s = {.answers = {OK_HELLO, "CLOSE", OK_HELLO}};
	server_start(&s);
	char *u = url_of("http", "127.0.0.1", s.port);
	struct transport *tp = client(&u, 1, NULL, 0);
	cr_assert_eq(post(tp, 5000).r.status, 200);
	struct got g = post(tp, 5000);
	cr_assert_eq(g.r.status, 200, "%ld %s", g.r.status, g.error);
	cr_assert_eq(atomic_load(&s.requests), 3);
	cr_assert_eq(atomic_load(&s.accepts), 2);
	assert_whole_request(&s);
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
