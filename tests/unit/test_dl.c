/* test_dl.c — the download core (lua/dl.c) against a real, misbehaving HTTP
 * server on 127.0.0.1 (tests/lib/fsapi_httpd.py): checksums, refused schemes
 * and redirects, 404 without retry, 500 then success, truncated and stalled
 * bodies, resume, size caps, the content cache, cancel, TLS verification. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "dl.h"
#include "fsapi_util.h"

static struct scratch S;
static char *outside_before;
static pid_t srv_pid = -1;
static int srv_stdin = -1;
static int port;
static int cache_fd = -1;

static void start_server(const char *const *extra)
{
	/* ctest sets JV_SOURCE_DIR; run by hand, find the tree from this file's path. */
	const char *src = getenv("JV_SOURCE_DIR");
	char script[PATH_MAX];
	if (src)
		PFMT(script, "%s/tests/lib/fsapi_httpd.py", src);
	else
		PFMT(script, "%.*s/../lib/fsapi_httpd.py", (int)(strrchr(__FILE__, '/') - __FILE__),
		     __FILE__);
	int in[2], out[2];
	cr_assert(pipe(in) == 0 && pipe(out) == 0);
	srv_pid = fork();
	cr_assert(srv_pid >= 0);
	if (srv_pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[1]);
		close(out[0]);
		const char *argv[8] = {"python3", script};
		int k = 2;
		for (; extra && *extra && k < 7; extra++)
			argv[k++] = *extra;
		argv[k] = NULL;
		execvp("python3", (char *const *)argv);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	srv_stdin = in[1];
	char line[64] = "";
	size_t n = 0;
	while (n < sizeof(line) - 1) {
		ssize_t r = read(out[0], line + n, 1);
		if (r <= 0 || line[n] == '\n')
			break;
		n++;
	}
	line[n] = '\0';
	close(out[0]);
	cr_assert(sscanf(line, "PORT %d", &port) == 1, "server said '%s'", line);
}

static void setup(void)
{
	scratch_setup(&S);
	outside_before = snapshot(S.outside);
	char p[PATH_MAX];
	PFMT(p, "%s/cache", S.top);
	cr_assert(mkdir(p, 0755) == 0);
	cache_fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	start_server(NULL);
}

static void teardown(void)
{
	if (srv_pid > 0) {
		close(srv_stdin);
		kill(srv_pid, SIGTERM);
		waitpid(srv_pid, NULL, 0);
	}
	char *after = snapshot(S.outside);
	cr_expect_str_eq(after, outside_before, "the directory outside the root changed");
	free(after);
	free(outside_before);
	if (cache_fd >= 0)
		close(cache_fd);
	scratch_teardown(&S);
}

TestSuite(dl, .init = setup, .fini = teardown, .timeout = 60);

/* The server's content: byte i is i % 251. */
static unsigned char *pattern(size_t start, size_t len)
{
	unsigned char *b = malloc(len ? len : 1);
	for (size_t i = 0; i < len; i++)
		b[i] = (unsigned char)((start + i) % 251);
	return b;
}

static void pattern_sha(size_t size, char hex[JV_SHA256_HEX])
{
	unsigned char *b = pattern(0, size);
	unsigned char md[32];
	unsigned int ml;
	EVP_Digest(b, size, md, &ml, EVP_sha256(), NULL);
	jv_hex(md, 32, hex);
	free(b);
}

static const char *url(const char *path)
{
	static char buf[512];
	snprintf(buf, sizeof(buf), "http://127.0.0.1:%d%s", port, path);
	return buf;
}

static int count(const char *path)
{
	struct dl_opts o;
	dl_opts_init(&o);
	char u[512], err[256];
	snprintf(u, sizeof(u), "/count%s", path);
	struct jv_buf b;
	int rc = dl_get(url(u), &o, 100, &b, err, sizeof(err));
	cr_assert_eq(rc, 0, "%s", err);
	int n = atoi(b.data);
	jv_buf_free(&b);
	return n;
}

static struct dl_opts fast_opts(const char *sha)
{
	struct dl_opts o;
	dl_opts_init(&o);
	o.sha256 = sha;
	o.retry_delay_ms = 20;
	o.low_speed_time_s = 2;
	return o;
}

static bool in_root(const char *rel)
{
	char p[PATH_MAX];
	struct stat st;
	return lstat(inpath(&S, rel, p), &st) == 0;
}

static void expect_content(const char *rel, size_t size)
{
	char p[PATH_MAX];
	size_t len = 0;
	char *d = slurp(inpath(&S, rel, p), &len);
	cr_assert(d, "%s missing", rel);
	unsigned char *want = pattern(0, size);
	cr_expect(len == size && memcmp(d, want, size) == 0, "%s has the wrong content", rel);
	free(want);
	free(d);
}

Test(dl, downloads_and_verifies)
{
	char sha[JV_SHA256_HEX], err[512];
	pattern_sha(300000, sha);
	struct dl_opts o = fast_opts(sha);
	struct dl_result r;
	cr_assert_eq(dl_download(url("/blob/a?size=300000"), &o, S.root_fd, "a.bin", &r, err,
	                         sizeof(err)),
	             0, "%s", err);
	cr_expect_eq(r.bytes, 300000);
	cr_expect_eq(r.attempts, 1);
	cr_expect_str_eq(r.sha256, sha);
	expect_content("a.bin", 300000);
	cr_expect(!in_root("a.bin.part"));
}

Test(dl, wrong_checksum_fails_and_leaves_nothing)
{
	char sha[JV_SHA256_HEX], err[512];
	pattern_sha(1000, sha);
	struct dl_opts o = fast_opts(sha);
	struct dl_result r;
	int rc = dl_download(url("/blob/a?size=2000"), &o, S.root_fd, "a.bin", &r, err, sizeof(err));
	cr_expect_eq(rc, -EBADMSG);
	cr_expect(strstr(err, "checksum mismatch") != NULL, "%s", err);
	cr_expect(!in_root("a.bin") && !in_root("a.bin.part"));
}

Test(dl, needs_a_checksum_unless_told_otherwise)
{
	char err[512];
	struct dl_opts o = fast_opts(NULL);
	struct dl_result r;
	cr_expect_eq(dl_download(url("/blob/a"), &o, S.root_fd, "a", &r, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "sha256") != NULL, "%s", err);
	o.sha256 = "abc";
	cr_expect_eq(dl_download(url("/blob/a"), &o, S.root_fd, "a", &r, err, sizeof(err)), -EINVAL);
	o.sha256 = NULL;
	o.insecure_no_checksum = true;
	cr_assert_eq(dl_download(url("/blob/a?size=1000"), &o, S.root_fd, "a", &r, err, sizeof(err)),
	             0, "%s", err);
	expect_content("a", 1000);
	cr_expect(count("/blob/a") == 1);
}

Test(dl, refuses_other_schemes)
{
	char err[512], sha[JV_SHA256_HEX];
	pattern_sha(10, sha);
	struct dl_opts o = fast_opts(sha);
	struct dl_result r;
	const char *bad[] = {"file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/",
	                     "not a url"};
	for (size_t i = 0; i < 4; i++) {
		cr_expect(dl_download(bad[i], &o, S.root_fd, "x", &r, err, sizeof(err)) < 0, "%s", bad[i]);
		cr_expect(strstr(err, "only http and https") || strstr(err, "not a valid URL"), "%s", err);
	}
	cr_expect(!in_root("x") && !in_root("x.part"));
}

Test(dl, refuses_redirects_to_other_schemes_and_too_many)
{
	char err[512], sha[JV_SHA256_HEX], u[256];
	pattern_sha(1000, sha);
	struct dl_opts o = fast_opts(sha);
	struct dl_result r;
	cr_expect_eq(dl_download(url("/redirect?to=file:///etc/passwd"), &o, S.root_fd, "x", &r, err,
	                         sizeof(err)),
	             -EPROTONOSUPPORT, "%s", err);
	cr_expect(strstr(err, "not http or https") != NULL, "%s", err);
	cr_expect_eq(dl_download(url("/redirect?to=ftp://127.0.0.1/x"), &o, S.root_fd, "x", &r, err,
	                         sizeof(err)),
	             -EPROTONOSUPPORT, "%s", err);
	cr_expect(!in_root("x") && !in_root("x.part"));
	cr_assert_eq(dl_download(url("/chain/5?size=1000"), &o, S.root_fd, "x", &r, err, sizeof(err)),
	             0, "%s", err);
	snprintf(u, sizeof(u), "/chain/6?size=1000");
	cr_expect_eq(dl_download(url(u), &o, S.root_fd, "y", &r, err, sizeof(err)), -ELOOP, "%s", err);
	cr_expect(!in_root("y"));
}

Test(dl, not_found_is_not_retried)
{
	char err[512], sha[JV_SHA256_HEX];
	pattern_sha(10, sha);
	struct dl_opts o = fast_opts(sha);
	struct dl_result r;
	cr_expect_eq(dl_download(url("/status/404"), &o, S.root_fd, "x", &r, err, sizeof(err)), -ENOENT);
	cr_expect(strstr(err, "HTTP 404") != NULL, "%s", err);
	cr_expect_eq(r.attempts, 1);
	cr_expect_eq(count("/status/404"), 1);
	cr_expect(!in_root("x") && !in_root("x.part"));
}

Test(dl, server_errors_are_retried_until_success)
{
	char err[512], sha[JV_SHA256_HEX];
	pattern_sha(5000, sha);
	struct dl_opts o = fast_opts(sha);
	struct dl_result r;
	cr_assert_eq(dl_download(url("/flaky/k1?size=5000&fails=2"), &o, S.root_fd, "x", &r, err,
	                         sizeof(err)),
	             0, "%s", err);
	cr_expect_eq(r.attempts, 3);
	expect_content("x", 5000);
	/* Always failing: gives up after max_attempts with the last status. */
	o.max_attempts = 3;
	cr_expect_eq(dl_download(url("/status/503"), &o, S.root_fd, "y", &r, err, sizeof(err)), -EIO);
	cr_expect(strstr(err, "HTTP 503") && strstr(err, "after 3 attempts"), "%s", err);
	cr_expect_eq(count("/status/503"), 3);
}

Test(dl, truncated_body_is_resumed_with_range)
{
	char err[512], sha[JV_SHA256_HEX];
	size_t size = 3u << 20;
	pattern_sha(size, sha);
	struct dl_opts o = fast_opts(sha);
	struct dl_result r;
	char u[128];
	snprintf(u, sizeof(u), "/truncate/t1?size=%zu&times=1", size);
	cr_assert_eq(dl_download(url(u), &o, S.root_fd, "x", &r, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(r.attempts, 2);
	expect_content("x", size);
	/* Without retries the short body fails the download and keeps the .part to resume. */
	o.max_attempts = 1;
	snprintf(u, sizeof(u), "/truncate/t2?size=%zu&times=1", size);
	cr_expect(dl_download(url(u), &o, S.root_fd, "y", &r, err, sizeof(err)) < 0);
	cr_expect(in_root("y.part") && !in_root("y"));
	cr_assert_eq(dl_download(url(u), &o, S.root_fd, "y", &r, err, sizeof(err)), 0, "%s", err);
	cr_expect(r.resumed);
	expect_content("y", size);
}

Test(dl, stale_part_that_is_not_a_prefix_is_redone)
{
	char err[512], sha[JV_SHA256_HEX], p[PATH_MAX];
	pattern_sha(100000, sha);
	write_file(inpath(&S, "x.part", p), "garbage that is not the start of the file", 42);
	struct dl_opts o = fast_opts(sha);
	struct dl_result r;
	cr_assert_eq(dl_download(url("/blob/g?size=100000"), &o, S.root_fd, "x", &r, err, sizeof(err)),
	             0, "%s", err);
	expect_content("x", 100000);
	/* A server ignoring Range sends the whole file again: start over. */
	write_file(inpath(&S, "z.part", p), "junk", 4);
	cr_assert_eq(dl_download(url("/norange/g?size=100000"), &o, S.root_fd, "z", &r, err,
	                         sizeof(err)),
	             0, "%s", err);
	expect_content("z", 100000);
}

Test(dl, stalled_server_times_out)
{
	char err[512], sha[JV_SHA256_HEX];
	pattern_sha(1u << 20, sha);
	struct dl_opts o = fast_opts(sha);
	o.max_attempts = 2;
	o.resume = false;
	struct dl_result r;
	int64_t t0 = jv_now_mono_ms();
	cr_expect(dl_download(url("/stall/s?size=1048576"), &o, S.root_fd, "x", &r, err, sizeof(err)) <
	          0);
	int64_t ms = jv_now_mono_ms() - t0;
	cr_expect(ms < 15000, "took %lld ms", (long long)ms);
	cr_expect(strstr(err, "after 2 attempts") != NULL, "%s", err);
	cr_expect(!in_root("x") && !in_root("x.part"));
}

Test(dl, size_cap_and_declared_size)
{
	char err[512], sha[JV_SHA256_HEX];
	pattern_sha(5000, sha);
	struct dl_opts o = fast_opts(sha);
	struct dl_result r;
	o.max_bytes = 1000;
	cr_expect_eq(dl_download(url("/blob/c?size=5000"), &o, S.root_fd, "x", &r, err, sizeof(err)),
	             -EFBIG, "%s", err);
	cr_expect(strstr(err, "larger than the limit") != NULL, "%s", err);
	o.max_bytes = 0;
	o.size = 4000;
	cr_expect_eq(dl_download(url("/blob/c?size=5000"), &o, S.root_fd, "x", &r, err, sizeof(err)),
	             -EFBIG, "%s", err);
	cr_expect(!in_root("x") && !in_root("x.part"));
}

Test(dl, cache_serves_the_second_download)
{
	char err[512], sha[JV_SHA256_HEX], p[PATH_MAX];
	pattern_sha(20000, sha);
	struct dl_opts o = fast_opts(sha);
	o.cache_fd = cache_fd;
	struct dl_result r;
	cr_assert_eq(dl_download(url("/blob/k?size=20000"), &o, S.root_fd, "one", &r, err, sizeof(err)),
	             0, "%s", err);
	cr_expect(!r.from_cache);
	cr_assert_eq(dl_download(url("/blob/k?size=20000"), &o, S.root_fd, "two", &r, err, sizeof(err)),
	             0, "%s", err);
	cr_expect(r.from_cache);
	cr_expect_eq(r.attempts, 0);
	cr_expect_eq(count("/blob/k"), 1);
	expect_content("two", 20000);
	/* A damaged cache entry is dropped and the file fetched again. */
	char cp[PATH_MAX];
	PFMT(cp, "%s/cache/%s", S.top, sha);
	cr_assert(unlink(inpath(&S, "one", p)) == 0 && unlink(inpath(&S, "two", p)) == 0);
	write_file(cp, "tampered", 8);
	cr_assert_eq(dl_download(url("/blob/k?size=20000"), &o, S.root_fd, "three", &r, err,
	                         sizeof(err)),
	             0, "%s", err);
	cr_expect(!r.from_cache);
	expect_content("three", 20000);
	cr_expect_eq(count("/blob/k"), 2);
}

static bool cancel_soon(void *arg, uint64_t done, uint64_t total)
{
	return done > 0 || (*(int *)arg)-- <= 0;
}

Test(dl, cancel_stops_the_transfer)
{
	char err[512], sha[JV_SHA256_HEX];
	pattern_sha(64u << 20, sha);
	struct dl_opts o = fast_opts(sha);
	o.resume = false;
	int n = 3;
	struct jv_io_hooks h = {cancel_soon, &n};
	o.hooks = &h;
	struct dl_result r;
	cr_expect_eq(dl_download(url("/blob/big?size=67108864"), &o, S.root_fd, "x", &r, err,
	                         sizeof(err)),
	             -ECANCELED, "%s", err);
	cr_expect(!in_root("x") && !in_root("x.part"));
}

Test(dl, get_json_with_cap)
{
	char err[512];
	struct dl_opts o;
	dl_opts_init(&o);
	o.retry_delay_ms = 20;
	struct jv_buf b;
	cr_assert_eq(dl_get(url("/json?bytes=100"), &o, 4096, &b, err, sizeof(err)), 0, "%s", err);
	cr_expect(strstr(b.data, "\"ok\": true") != NULL, "%s", b.data);
	jv_buf_free(&b);
	cr_expect_eq(dl_get(url("/json?bytes=100000"), &o, 4096, &b, err, sizeof(err)), -EFBIG);
	jv_buf_free(&b);
	cr_expect_eq(dl_get(url("/status/404"), &o, 4096, &b, err, sizeof(err)), -ENOENT);
	jv_buf_free(&b);
	cr_expect(dl_get("file:///etc/passwd", &o, 4096, &b, err, sizeof(err)) < 0);
	jv_buf_free(&b);
}

static void run_cmd(const char *const *argv)
{
	pid_t pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 1);
		dup2(null, 2);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	int st;
	waitpid(pid, &st, 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s failed", argv[0]);
}

Test(dl, tls_is_verified)
{
	char cert[PATH_MAX], key[PATH_MAX], err[512], sha[JV_SHA256_HEX];
	PFMT(cert, "%s/cert.pem", S.top);
	PFMT(key, "%s/key.pem", S.top);
	const char *gen[] = {"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
	                     "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
	                     "subjectAltName=IP:127.0.0.1", NULL};
	run_cmd(gen);
	/* Replace the plain server with a TLS one. */
	close(srv_stdin);
	kill(srv_pid, SIGTERM);
	waitpid(srv_pid, NULL, 0);
	const char *extra[] = {"--tls", cert, key, NULL};
	start_server(extra);
	pattern_sha(1000, sha);
	struct dl_opts o = fast_opts(sha);
	struct dl_result r;
	char u[256];
	snprintf(u, sizeof(u), "https://127.0.0.1:%d/blob/t?size=1000", port);
	cr_expect_eq(dl_download(u, &o, S.root_fd, "x", &r, err, sizeof(err)), -EPERM, "%s", err);
	cr_expect(strstr(err, "certificate") != NULL || strstr(err, "SSL") != NULL, "%s", err);
	cr_expect(!in_root("x"));
	o.ca_file = cert;
	cr_assert_eq(dl_download(u, &o, S.root_fd, "x", &r, err, sizeof(err)), 0, "%s", err);
	expect_content("x", 1000);
}
