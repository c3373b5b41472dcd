/* Unit tests of the shared helpers: identifiers, time, UUIDs, buffers,
 * signal names, JSON getters and the durable write. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/procid.h"
#include "jobvisor/util.h"

Test(ident, accepts_valid_identifiers)
{
	cr_assert(jv_ident_valid("world1"));
	cr_assert(jv_ident_valid("A.b_c-d"));
	cr_assert(jv_ident_valid("0"));
	char max[65];
	memset(max, 'a', 64);
	max[64] = '\0';
	cr_assert(jv_ident_valid(max));
}

Test(ident, refuses_escapes_and_junk)
{
	const char *bad[] = {"", ".", "..", "../x", "a/b", ".hidden", "-flag", "_x", "a b", "a\nb",
	                     "é", "a:b", NULL};
	for (int i = 0; bad[i]; i++)
		cr_assert_not(jv_ident_valid(bad[i]), "accepted '%s'", bad[i]);
	cr_assert_not(jv_ident_valid(NULL));
	char long_id[66];
	memset(long_id, 'a', 65);
	long_id[65] = '\0';
	cr_assert_not(jv_ident_valid(long_id));
}

Test(ident, job_types_and_run_ids)
{
	cr_assert(jv_job_type_valid("BACKUP_INSTANCE"));
	cr_assert_not(jv_job_type_valid("backup"));
	cr_assert_not(jv_job_type_valid("../X"));
	cr_assert(jv_run_id_valid("3f2c-11:aa.b_c"));
	cr_assert_not(jv_run_id_valid(".."));
	cr_assert_not(jv_run_id_valid("a/b"));
	cr_assert_not(jv_run_id_valid(""));
}

Test(util, iso8601_round_trips_with_milliseconds)
{
	char s[JV_ISO8601_LEN];
	jv_iso8601(1790000000123LL, s);
	cr_assert_str_eq(s, "2026-09-21T14:13:20.123Z");
	int64_t back = 0;
	cr_assert_eq(jv_iso8601_parse(s, &back), 0);
	cr_assert_eq(back, 1790000000123LL);
	cr_assert_eq(jv_iso8601_parse("2026-09-21T14:13:20Z", &back), 0);
	cr_assert_eq(back, 1790000000000LL);
	cr_assert_eq(jv_iso8601_parse("2026-09-21 14:13:20", &back), -EINVAL);
	cr_assert_eq(jv_iso8601_parse("2026-09-21T14:13:20.5+02:00", &back), -EINVAL);
}

/* The arithmetic UTC conversion agrees with gmtime_r + strftime everywhere a
 * clock can be: leap days, century years, the epoch, before it, far ahead. */
Test(util, iso8601_matches_gmtime)
{
	const int64_t fixed[] = {0, -1, 951782400000LL, 951868799999LL, 4107542400000LL, 4107456000001LL,
	                         253402300799999LL, 1709164800000LL};
	int64_t v = -2208988800000LL; /* 1900 */
	for (int i = 0; i < 20000; i++) {
		int64_t ms = i < (int)(sizeof(fixed) / sizeof(fixed[0])) ? fixed[i] : (v += 23456789123LL);
		if (ms > 253402300799999LL)
			break;
		time_t secs = (time_t)(ms / 1000);
		int frac = (int)(ms % 1000);
		if (frac < 0) {
			frac += 1000;
			secs -= 1;
		}
		struct tm tm;
		cr_assert_not_null(gmtime_r(&secs, &tm));
		char want[64], base[40], got[JV_ISO8601_LEN];
		strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
		snprintf(want, sizeof(want), "%s.%03dZ", base, frac);
		jv_iso8601(ms, got);
		cr_assert_str_eq(got, want, "%lld", (long long)ms);
	}
}

Test(util, uuid4_has_version_and_variant)
{
	char a[JV_UUID_LEN], b[JV_UUID_LEN];
	cr_assert_eq(jv_uuid4(a), 0);
	cr_assert_eq(jv_uuid4(b), 0);
	cr_assert_eq(strlen(a), 36);
	cr_assert_eq(a[14], '4');
	cr_assert(strchr("89ab", a[19]));
	cr_assert_str_neq(a, b);
}

Test(util, buffer_refuses_to_grow_past_its_limit)
{
	struct jv_buf b;
	jv_buf_init(&b, 10);
	cr_assert_eq(jv_buf_append(&b, "hello", 5), 0);
	cr_assert_eq(jv_buf_printf(&b, "%d", 1234), 0);
	cr_assert_str_eq(b.data, "hello1234");
	cr_assert_eq(jv_buf_append(&b, "xy", 2), -EFBIG);
	cr_assert_str_eq(b.data, "hello1234");
	jv_buf_consume(&b, 5);
	cr_assert_str_eq(b.data, "1234");
	jv_buf_free(&b);
}

Test(util, signal_names_both_ways)
{
	cr_assert_eq(jv_signal_parse("SIGTERM"), SIGTERM);
	cr_assert_eq(jv_signal_parse("int"), SIGINT);
	cr_assert_eq(jv_signal_parse("SIGNOPE"), -1);
	cr_assert_str_eq(jv_signal_name(SIGKILL), "SIGKILL");
}

Test(jsonutil, typed_getters_fall_back_on_wrong_types)
{
	const char *text = "{\"s\":\"x\",\"n\":2.5,\"i\":7,\"b\":true,\"big\":1e300}";
	cJSON *j = jv_json_parse(text, strlen(text));
	cr_assert_not_null(j);
	cr_assert_str_eq(jv_json_str(j, "s", "d"), "x");
	cr_assert_str_eq(jv_json_str(j, "n", "d"), "d");
	cr_assert_eq(jv_json_int(j, "i", 0), 7);
	cr_assert_eq(jv_json_int(j, "n", -1), -1);
	cr_assert_eq(jv_json_int(j, "big", -1), -1);
	cr_assert(jv_json_bool(j, "b", false));
	cr_assert_not(jv_json_bool(j, "s", false));
	cJSON_Delete(j);
}

Test(jsonutil, parse_refuses_trailing_garbage)
{
	cr_assert_null(jv_json_parse("{} x", 4));
	cr_assert_null(jv_json_parse("{\"a\":", 5));
	cJSON *ok = jv_json_parse("{}  \n", 5);
	cr_assert_not_null(ok);
	cJSON_Delete(ok);
}

static char *tmpdir(void)
{
	char tmpl[] = "/tmp/jv-unit-XXXXXX";
	char *d = mkdtemp(tmpl);
	cr_assert_not_null(d);
	return strdup(d);
}

static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' || (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")))
			n++;
	closedir(d);
	return n;
}

typedef int (*write_at_fn)(int dirfd, const char *name, const void *data, size_t len, mode_t mode);

static void check_replaces_and_leaves_no_temp(write_at_fn write_at)
{
	char *dir = tmpdir();
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	cr_assert_eq(write_at(dfd, "state.json", "{\"a\":1}", 7, 0640), 0);
	cr_assert_eq(write_at(dfd, "state.json", "{\"a\":2}", 7, 0640), 0);
	char *data = NULL;
	size_t len = 0;
	cr_assert_eq(jv_read_file_at(dfd, "state.json", 1024, &data, &len), 0);
	cr_assert_str_eq(data, "{\"a\":2}");
	free(data);
	cr_assert_eq(count_entries(dir), 1);
	close(dfd);
	free(dir);
}

Test(durable, replaces_file_atomically_and_leaves_no_temp)
{
	check_replaces_and_leaves_no_temp(jv_durable_write_at);
}

/* The same without the fsyncs (the run marker's first write). */
Test(durable, atomic_write_replaces_and_leaves_no_temp)
{
	check_replaces_and_leaves_no_temp(jv_atomic_write_at);
}

Test(durable, failed_rename_removes_the_temp_file)
{
	char *dir = tmpdir();
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	cr_assert_eq(mkdirat(dfd, "target", 0700), 0);
	mkdirat(dfd, "target/sub", 0700);
	char sub[512];
	snprintf(sub, sizeof(sub), "%s/target/sub", dir);
	cr_assert_eq(jv_durable_write_at(dfd, "target", "x", 1, 0640), -EISDIR);
	cr_assert_eq(count_entries(dir), 1);
	close(dfd);
	free(dir);
}

Test(durable, read_file_caps_size_and_refuses_symlinks)
{
	char *dir = tmpdir();
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	cr_assert_eq(jv_durable_write_at(dfd, "big", "0123456789", 10, 0640), 0);
	char *data = NULL;
	cr_assert_eq(jv_read_file_at(dfd, "big", 5, &data, NULL), -EFBIG);
	cr_assert_null(data);
	cr_assert_eq(symlinkat("/etc/passwd", dfd, "link"), 0);
	cr_assert_eq(jv_read_file_at(dfd, "link", 1 << 20, &data, NULL), -ELOOP);
	close(dfd);
	free(dir);
}

Test(durable, read_file_refuses_a_fifo_without_blocking, .timeout = 10)
{
	char *dir = tmpdir();
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	cr_assert_eq(mkfifoat(dfd, "instance.json", 0600), 0);
	char *data = NULL;
	cr_assert_eq(jv_read_file_at(dfd, "instance.json", 1 << 20, &data, NULL), -EINVAL);
	cr_assert_null(data);
	cr_assert_str_eq(jv_read_strerror(-EINVAL), "not a regular file");
	close(dfd);
	free(dir);
}

Test(durable, mkdir_p_creates_parents_and_refuses_files)
{
	char *dir = tmpdir();
	char p[512];
	snprintf(p, sizeof(p), "%s/a/b/c", dir);
	cr_assert_eq(jv_mkdir_p(p, 0750), 0);
	cr_assert_eq(jv_mkdir_p(p, 0750), 0);
	snprintf(p, sizeof(p), "%s/file", dir);
	cr_assert_eq(jv_durable_write(p, "x", 1, 0640), 0);
	cr_assert_eq(jv_mkdir_p(p, 0750), -ENOTDIR);
	free(dir);
}

Test(durable, cleanup_removes_only_temps_of_killed_writers)
{
	char *dir = tmpdir();
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	const char *keep[] = {"run.X.json", ".hidden", ".a.tmp.", ".a.tmp.12x", "a.tmp.12"};
	const char *temps[] = {".run.X.json.tmp.4242", ".state.json.tmp.1"};
	for (size_t i = 0; i < 5; i++)
		cr_assert_eq(jv_durable_write_at(dfd, keep[i], "x", 1, 0640), 0);
	for (size_t i = 0; i < 2; i++)
		close(openat(dfd, temps[i], O_CREAT | O_WRONLY, 0640));
	cr_assert_eq(jv_durable_cleanup_temps(dfd), 2);
	cr_assert_eq(count_entries(dir), 5);
	for (size_t i = 0; i < 2; i++)
		cr_assert_eq(faccessat(dfd, temps[i], F_OK, 0), -1);
	close(dfd);
	free(dir);
}

Test(jsonutil, parse_refuses_hostile_nesting)
{
	char deep[4001];
	memset(deep, '[', 2000);
	memset(deep + 2000, ']', 2000);
	deep[4000] = '\0';
	cr_assert_null(jv_json_parse(deep, 4000));
	const char *ok = "{\"s\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\",\"a\":[[1]]}";
	cJSON *j = jv_json_parse(ok, strlen(ok));
	cr_assert_not_null(j);
	cJSON_Delete(j);
}

struct seen {
	pid_t want;
	bool found;
	struct jv_proc_stat st;
};

static bool look_for(void *ud, pid_t pid, const struct jv_proc_stat *st)
{
	struct seen *s = ud;
	if (pid != s->want)
		return false;
	s->found = true;
	s->st = *st;
	return true;
}

Test(procid, stat_parser_survives_hostile_command_names)
{
	int ready[2];
	cr_assert_eq(pipe(ready), 0);
	pid_t kid = fork();
	cr_assert_geq(kid, 0);
	if (kid == 0) {
		setpgid(0, 0);
		prctl(PR_SET_NAME, "x) S 1 1 1 (y");
		(void)!write(ready[1], "r", 1);
		pause();
		_exit(0);
	}
	char c;
	cr_assert_eq(read(ready[0], &c, 1), 1);
	struct jv_proc_stat st;
	cr_assert_eq(jv_proc_stat(kid, &st), 0);
	cr_expect_eq(st.ppid, getpid());
	cr_expect_eq(st.pgid, kid);
	cr_expect_eq(st.sid, getsid(0));
	uint64_t t0 = 0;
	cr_expect_eq(jv_proc_start_time(kid, &t0), 0);
	cr_expect_eq(t0, st.start_time);
	cr_expect_gt(st.start_time, 0);
	struct seen s = {.want = kid};
	cr_expect_eq(jv_proc_each(look_for, &s), 0);
	cr_expect(s.found);
	cr_expect_eq(s.st.pgid, kid);
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	cr_expect_eq(jv_proc_stat(kid, &st), -ESRCH);
	close(ready[0]);
	close(ready[1]);
}

/* In a child: open descriptors, keep some, close the rest from 3 up. */
Test(util, close_fds_from_keeps_only_the_listed_descriptors)
{
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		int fds[6];
		for (int i = 0; i < 6; i++)
			fds[i] = open("/dev/null", O_RDONLY);
		int keep[] = {fds[4], fds[1], 1000 /* not open: ignored */};
		jv_close_fds_from(3, keep, 3);
		int bad = 0;
		for (int i = 0; i < 6; i++) {
			bool open_now = fcntl(fds[i], F_GETFD) >= 0;
			bool kept = i == 1 || i == 4;
			bad += open_now != kept;
		}
		bad += fcntl(0, F_GETFD) < 0; /* below lowfd: untouched */
		_exit(bad);
	}
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st));
	cr_assert_eq(WEXITSTATUS(st), 0, "%d descriptors in the wrong state", WEXITSTATUS(st));
}
