/* test_agent_endpoints.c — the control-plane URL list (`url = A,B`): parsing,
 * errors, and which URL the agent uses after each kind of answer. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"
#include "endpoints.h"
#include "jobvisor/log.h"

static void quiet(void)
{
	jv_log_setup(JV_LOG_LOGFMT, JV_LOG_ERROR);
}

TestSuite(urls, .init = quiet);
TestSuite(endpoints, .init = quiet);

struct parsed {
	int rc;
	char *urls[CONFIG_URLS_MAX];
	size_t n;
	bool loopback;
	char err[512];
};

static void parse(const char *v, struct parsed *p)
{
	memset(p, 0, sizeof(*p));
	p->rc = config_parse_urls(v, p->urls, CONFIG_URLS_MAX, &p->n, &p->loopback, p->err,
	                          sizeof(p->err));
}

static void parsed_free(struct parsed *p)
{
	for (size_t i = 0; i < p->n; i++)
		free(p->urls[i]);
}

/* v parses into the NULL-terminated want[], with this loopback verdict. */
static void expect_ok(const char *v, bool loopback, const char *const *want)
{
	struct parsed p;
	parse(v, &p);
	cr_assert_eq(p.rc, 0, "'%s': %s", v, p.err);
	size_t n = 0;
	for (; want[n]; n++) {
		cr_assert_lt(n, p.n, "'%s' gave %zu URLs", v, p.n);
		cr_assert_str_eq(p.urls[n], want[n], "'%s' URL %zu", v, n + 1);
	}
	cr_assert_eq(p.n, n, "'%s' gave %zu URLs, want %zu", v, p.n, n);
	cr_assert_eq(p.loopback, loopback, "'%s' loopback", v);
	parsed_free(&p);
}

Test(urls, one_url_is_a_list_of_one)
{
	expect_ok("https://cp.example.com/base/", false,
	          (const char *const[]){"https://cp.example.com/base", NULL});
}

Test(urls, several_urls_keep_their_order_and_lose_spaces_and_trailing_slashes)
{
	expect_ok(" http://127.0.0.1:8001/ ,http://localhost:8002,\thttp://[::1]:8003/cp// ", true,
	          (const char *const[]){"http://127.0.0.1:8001", "http://localhost:8002",
	                                "http://[::1]:8003/cp", NULL});
}

Test(urls, loopback_only_when_every_host_is)
{
	expect_ok("http://127.0.0.1:8001,https://cp.example.com", false,
	          (const char *const[]){"http://127.0.0.1:8001", "https://cp.example.com", NULL});
}

static void expect_bad(const char *v, const char *needle)
{
	struct parsed p;
	parse(v, &p);
	cr_assert_eq(p.rc, -EINVAL, "'%s' accepted", v);
	cr_assert_eq(p.n, 0, "'%s' left %zu URLs behind", v, p.n);
	cr_assert(strstr(p.err, needle), "'%s' -> '%s' lacks '%s'", v, p.err, needle);
}

Test(urls, empty_items_are_refused_with_their_position)
{
	expect_bad("http://a,,http://b", "URL 2 of the list: empty (a stray ',')");
	expect_bad("http://a,", "URL 2 of the list: empty");
	expect_bad(",http://a", "URL 1 of the list: empty");
	expect_bad("http://a, ,http://b", "URL 2 of the list: empty");
	expect_bad("  ", "no URL given");
}

Test(urls, each_url_is_checked_and_named_by_position)
{
	expect_bad("http://a,ftp://b", "URL 2 of the list: 'ftp://b' must start with http:// or https://");
	expect_bad("http://a,http://b/?x=1", "URL 2 of the list: 'http://b/?x=1' must not have a query");
	expect_bad("https://u:secret@a,http://b", "URL 1 of the list: the URL must not contain user");
	expect_bad("ftp://a", "'ftp://a' must start with http:// or https://");
}

Test(urls, a_password_in_a_list_is_never_echoed)
{
	struct parsed p;
	parse("http://a,https://u:hunter2@b", &p);
	cr_assert_eq(p.rc, -EINVAL);
	cr_assert_null(strstr(p.err, "hunter2"), "%s", p.err);
}

Test(urls, the_same_replica_twice_is_refused)
{
	expect_bad("http://a,http://a", "URL 2 of the list ('http://a') repeats URL 1");
	expect_bad("http://a,http://A:80/", "repeats URL 1");
	expect_bad("https://a:443/x,http://b,https://A/x/", "URL 3 of the list ('https://A/x') repeats URL 1");
	expect_bad("http://[::1]:80,http://[::1]", "repeats URL 1");
}

Test(urls, different_ports_paths_or_schemes_are_different_replicas)
{
	expect_ok("http://a,http://a:8080", false, (const char *const[]){"http://a", "http://a:8080", NULL});
	expect_ok("http://a/x,http://a/y", false, (const char *const[]){"http://a/x", "http://a/y", NULL});
	expect_ok("http://a,https://a", false, (const char *const[]){"http://a", "https://a", NULL});
	expect_ok("http://a/X,http://a/x", false, (const char *const[]){"http://a/X", "http://a/x", NULL});
}

Test(urls, too_many_urls_are_refused)
{
	char v[1024] = "";
	for (int i = 0; i <= CONFIG_URLS_MAX; i++)
		snprintf(v + strlen(v), sizeof(v) - strlen(v), "%shttp://127.0.0.1:%d", i ? "," : "", 8000 + i);
	expect_bad(v, "9 URLs listed; at most 8");
}

static struct endpoints two(void)
{
	char *urls[] = {"http://a:1/", "http://b:2"};
	struct endpoints ep = {0};
	cr_assert_eq(endpoints_set(&ep, urls, 2), 0);
	cr_assert_str_eq(endpoints_current(&ep), "http://a:1");
	return ep;
}

Test(endpoints, no_answer_and_5xx_move_to_the_next_url_4xx_does_not)
{
	struct endpoints ep = two();
	const long stay[] = {200, 204, 400, 401, 404, 408, 409, 429};
	for (size_t i = 0; i < sizeof(stay) / sizeof(stay[0]); i++) {
		cr_assert_not(endpoints_report(&ep, ep.gen, stay[i], false, NULL));
		cr_assert_str_eq(endpoints_current(&ep), "http://a:1", "moved on HTTP %ld", stay[i]);
	}
	/* An answer too large to take is not the replica's failure either. */
	cr_assert_not(endpoints_report(&ep, ep.gen, 0, true, "answer larger than max_response"));
	cr_assert_str_eq(endpoints_current(&ep), "http://a:1");
	cr_assert(endpoints_report(&ep, ep.gen, 503, false, NULL));
	cr_assert_str_eq(endpoints_current(&ep), "http://b:2");
	cr_assert_not(endpoints_report(&ep, ep.gen, 200, false, NULL));
	cr_assert(endpoints_report(&ep, ep.gen, 0, false, "Connection refused"));
	cr_assert_str_eq(endpoints_current(&ep), "http://a:1");
	endpoints_clear(&ep);
}

Test(endpoints, requests_that_fail_together_move_the_agent_once)
{
	struct endpoints ep = two();
	uint64_t sent = ep.gen; /* poll, events and a report all went to a */
	cr_assert(endpoints_report(&ep, sent, 0, false, "Connection reset by peer"));
	cr_assert_str_eq(endpoints_current(&ep), "http://b:2");
	/* The others fail too: they retry at once on b, which stays current. */
	cr_assert(endpoints_report(&ep, sent, 0, false, "Connection reset by peer"));
	cr_assert(endpoints_report(&ep, sent, 502, false, NULL));
	cr_assert_str_eq(endpoints_current(&ep), "http://b:2");
	/* A late success from a changes nothing either. */
	cr_assert_not(endpoints_report(&ep, sent, 200, false, NULL));
	cr_assert_str_eq(endpoints_current(&ep), "http://b:2");
	endpoints_clear(&ep);
}

Test(endpoints, sticks_to_a_healthy_url_and_never_moves_back_by_itself)
{
	struct endpoints ep = two();
	cr_assert(endpoints_report(&ep, ep.gen, 0, false, "refused"));
	for (int i = 0; i < 1000; i++)
		cr_assert_not(endpoints_report(&ep, ep.gen, 200, false, NULL));
	cr_assert_str_eq(endpoints_current(&ep), "http://b:2");
	endpoints_clear(&ep);
}

Test(endpoints, once_every_url_failed_the_callers_back_off)
{
	char *urls[] = {"http://a", "http://b", "http://c"};
	struct endpoints ep = {0};
	cr_assert_eq(endpoints_set(&ep, urls, 3), 0);
	cr_assert(endpoints_report(&ep, ep.gen, 0, false, "refused"));      /* a -> b: try now */
	cr_assert(endpoints_report(&ep, ep.gen, 503, false, NULL));         /* b -> c: try now */
	cr_assert_not(endpoints_report(&ep, ep.gen, 0, false, "refused"));  /* c -> a: back off */
	cr_assert_str_eq(endpoints_current(&ep), "http://a");
	cr_assert_not(endpoints_report(&ep, ep.gen, 0, false, "refused"));  /* still backing off */
	cr_assert_str_eq(endpoints_current(&ep), "http://b");
	/* An answer starts a new round. */
	cr_assert_not(endpoints_report(&ep, ep.gen, 200, false, NULL));
	cr_assert(endpoints_report(&ep, ep.gen, 0, false, "refused"));
	cr_assert_str_eq(endpoints_current(&ep), "http://c");
	endpoints_clear(&ep);
}

Test(endpoints, one_url_never_moves)
{
	char *urls[] = {"http://a"};
	struct endpoints ep = {0};
	cr_assert_eq(endpoints_set(&ep, urls, 1), 0);
	cr_assert_not(endpoints_report(&ep, ep.gen, 0, false, "refused"));
	cr_assert_str_eq(endpoints_current(&ep), "http://a");
	endpoints_clear(&ep);
}

Test(endpoints, a_reload_keeps_the_url_in_use_if_still_listed)
{
	struct endpoints ep = two();
	cr_assert(endpoints_report(&ep, ep.gen, 0, false, "refused"));
	char *again[] = {"http://c:3", "http://a:1", "http://b:2/"};
	cr_assert_eq(endpoints_set(&ep, again, 3), 0);
	cr_assert_str_eq(endpoints_current(&ep), "http://b:2");
	char *other[] = {"http://d:4", "http://e:5"};
	cr_assert_eq(endpoints_set(&ep, other, 2), 0);
	cr_assert_str_eq(endpoints_current(&ep), "http://d:4");
	cr_assert_eq(endpoints_set(&ep, other, 0), -EINVAL);
	cr_assert_str_eq(endpoints_current(&ep), "http://d:4");
	endpoints_clear(&ep);
}

Test(endpoints, url_keys_compare_what_reaches_the_same_server)
{
	char a[256], b[256];
	cr_assert_eq(endpoints_url_key("HTTPS://CP.Example.com/Base/", a, sizeof(a)), 0);
	cr_assert_str_eq(a, "https://cp.example.com:443/Base");
	cr_assert_eq(endpoints_url_key("http://[::1]:8080", b, sizeof(b)), 0);
	cr_assert_str_eq(b, "http://[::1]:8080");
	cr_assert_eq(endpoints_url_key("http://[::1]", b, sizeof(b)), 0);
	cr_assert_str_eq(b, "http://[::1]:80");
	cr_assert_eq(endpoints_url_key("http://a", b, 8), -ENAMETOOLONG);
}
