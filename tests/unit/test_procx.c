/* test_procx.c — the program-running core (lua/procx.c) without Lua: capture
 * and lines, exit codes and signals, the environment given and nothing else,
 * timeout ending a SIGTERM-ignoring program, leftovers of a program that
 * exits ending with it, the record file, and procx_sweep ending a recorded
 * process (and only when its start time still matches). Real processes. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "procx.h"

struct lines {
	char buf[8192];
	size_t len;
	int n;
};

static bool collect(void *arg, int stream, const char *line, size_t len)
{
	struct lines *l = arg;
	l->len += (size_t)snprintf(l->buf + l->len, sizeof(l->buf) - l->len, "%s:%.*s|",
	                           stream == PROCX_STDOUT ? "out" : "err", (int)len, line);
	l->n++;
	return true;
}

static char *env_none[] = {"PATH=/usr/bin:/bin", "ONLY=this", NULL};

static struct procx_spec spec(char **argv, struct lines *l)
{
	struct procx_spec s = {
		.path = argv[0], .argv = argv, .envp = env_none, .cwd_fd = AT_FDCWD,
		.grace_ms = 500, .max_procs = 32, .nofile = 256, .capture_max = 4096,
		.record_fd = -1, .extra_fd = -1, .on_line = collect, .arg = l,
	};
	return s;
}

static bool alive(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *q = strrchr(buf, ')');
	return q && q[2] != 'Z' && q[2] != 'X';
}

static int cwd_fd(void)
{
	int fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert(fd >= 0);
	return fd;
}

Test(procx, captures_lines_and_the_exit_code_with_only_the_given_environment)
{
	struct lines l = {0};
	char *argv[] = {"/bin/sh", "-c", "echo one; echo two >&2; env; exit 3", NULL};
	struct procx_spec s = spec(argv, &l);
	s.cwd_fd = cwd_fd();
	struct procx_result r;
	char err[256];
	cr_assert_eq(procx_run(&s, &r, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(r.end, PROCX_EXITED);
	cr_assert_eq(r.exit_code, 3);
	cr_assert_eq(r.signal, 0);
	cr_assert(strstr(r.out, "one\n") == r.out, "%s", r.out);
	cr_assert_str_eq(r.err, "two\n");
	cr_assert(strstr(r.out, "ONLY=this\n"), "%s", r.out);
	cr_assert_null(strstr(r.out, "HOME="), "an inherited variable leaked: %s", r.out);
	cr_assert(strstr(l.buf, "out:one|"), "%s", l.buf);
	cr_assert(strstr(l.buf, "err:two|"), "%s", l.buf);
	procx_result_free(&r);
	close(s.cwd_fd);
}

Test(procx, the_extra_descriptor_is_the_programs_fd_4_and_nothing_else_is_open)
{
	struct lines l = {0};
	char *argv[] = {"/bin/sh", "-c", "cat /proc/self/fd/4; ls /proc/self/fd | sort -n | tr '\\n' ' '", NULL};
	struct procx_spec s = spec(argv, &l);
	int p[2];
	cr_assert(pipe(p) == 0);
	cr_assert(write(p[1], "login bob pw\n", 13) == 13);
	close(p[1]);
	s.extra_fd = p[0];
	struct procx_result r;
	char err[256];
	cr_assert_eq(procx_run(&s, &r, err, sizeof(err)), 0, "%s", err);
	close(p[0]);
	/* fd 4 holds the data; ls sees 0-2, 4 and its own directory descriptor (3) */
	cr_assert(strncmp(r.out, "login bob pw\n", 13) == 0, "%s", r.out);
	cr_assert_str_eq(r.out + 13, "0 1 2 3 4 ", "open descriptors: %s", r.out + 13);
	procx_result_free(&r);
}

Test(procx, a_missing_program_is_an_error_naming_it)
{
	struct lines l = {0};
	char *argv[] = {"/nonexistent/prog", NULL};
	struct procx_spec s = spec(argv, &l);
	struct procx_result r;
	char err[256];
	cr_assert_eq(procx_run(&s, &r, err, sizeof(err)), -ENOENT);
	cr_assert(strstr(err, "cannot execute '/nonexistent/prog'"), "%s", err);
}

Test(procx, timeout_ends_a_sigterm_ignoring_program_with_sigkill_after_the_grace)
{
	struct lines l = {0};
	char *argv[] = {"/bin/sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.05; done", NULL};
	struct procx_spec s = spec(argv, &l);
	s.timeout_ms = 300;
	s.grace_ms = 400;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	struct procx_result r;
	char err[256];
	cr_assert_eq(procx_run(&s, &r, err, sizeof(err)), 0, "%s", err);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	cr_assert_eq(r.end, PROCX_TIMEOUT);
	cr_assert_eq(r.signal, SIGKILL);
	cr_assert_geq(took, 0.7, "ended after %.2f s, before timeout + grace", took);
	cr_assert_str_eq(r.out, "up\n");
	procx_result_free(&r);
}

Test(procx, what_a_program_leaves_behind_is_ended_and_recorded)
{
	char tmpl[] = "/tmp/jv-procx-XXXXXX";
	cr_assert(mkdtemp(tmpl));
	char rec[128], pidf[128];
	snprintf(rec, sizeof(rec), "%s/record", tmpl);
	snprintf(pidf, sizeof(pidf), "%s/pid", tmpl);
	int rfd = open(rec, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	cr_assert(rfd >= 0);
	struct lines l = {0};
	char script[512];
	/* a setsid'd grandchild that would outlive the program */
	snprintf(script, sizeof(script),
	         "setsid sh -c 'echo $$ > %s; exec sleep 600' </dev/null >/dev/null 2>&1 & "
	         "while [ ! -s %s ]; do sleep 0.02; done; sleep 0.3; exit 0", pidf, pidf);
	char *argv[] = {"/bin/sh", "-c", script, NULL};
	struct procx_spec s = spec(argv, &l);
	s.record_fd = rfd;
	struct procx_result r;
	char err[256];
	cr_assert_eq(procx_run(&s, &r, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(r.exit_code, 0);
	cr_assert_geq(r.leftovers, 1);
	FILE *f = fopen(pidf, "r");
	int daemon = 0;
	cr_assert(f && fscanf(f, "%d", &daemon) == 1);
	fclose(f);
	cr_assert_not(alive(daemon), "the setsid'd process %d outlived the program", daemon);
	close(rfd);
	/* the record names the daemon */
	f = fopen(rec, "r");
	cr_assert(f);
	char line[128];
	bool found = false;
	while (fgets(line, sizeof(line), f))
		found = found || atoi(line) == daemon;
	fclose(f);
	cr_assert(found, "pid %d not recorded", daemon);
	procx_result_free(&r);
	unlink(rec);
	unlink(pidf);
	rmdir(tmpl);
}

Test(procx, sweep_ends_recorded_processes_and_their_groups_but_not_reused_pids)
{
	char tmpl[] = "/tmp/jv-sweep-XXXXXX";
	cr_assert(mkdtemp(tmpl));
	/* a "leftover": its own session with a child in it */
	pid_t leader = fork();
	cr_assert(leader >= 0);
	if (leader == 0) {
		setsid();
		if (fork() == 0) {
			execl("/bin/sleep", "sleep", "600", (char *)NULL);
			_exit(127);
		}
		execl("/bin/sleep", "sleep", "600", (char *)NULL);
		_exit(127);
	}
	/* wait until the leader has its session and its child */
	pid_t member = 0;
	for (int i = 0; i < 500 && !member; i++) {
		char p[64], kids[256] = "";
		snprintf(p, sizeof(p), "/proc/%d/task/%d/children", (int)leader, (int)leader);
		FILE *f = fopen(p, "r");
		if (f) {
			if (fgets(kids, sizeof(kids), f))
				member = (pid_t)atoi(kids);
			fclose(f);
		}
		if (!member)
			usleep(10000);
	}
	cr_assert(member > 0);
	char stat[512], path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)leader);
	FILE *f = fopen(path, "r");
	cr_assert(f && fgets(stat, sizeof(stat), f));
	fclose(f);
	char *q = strrchr(stat, ')') + 2;
	unsigned long long start = 0;
	for (int field = 3; *q && field < 22; q++)
		if (*q == ' ' && ++field == 22)
			start = strtoull(q + 1, NULL, 10);
	cr_assert(start > 0);
	char rec[128];
	snprintf(rec, sizeof(rec), "%s/run.1", tmpl);
	f = fopen(rec, "w");
	/* a line with a wrong start time for our own pid must not kill us */
	fprintf(f, "%d %llu 0 0\n%d %llu %d %d\n", (int)getpid(), start + 12345, (int)leader, start,
	        (int)leader, (int)leader);
	fprintf(f, "999999");  /* a torn last line is ignored */
	fclose(f);
	int dfd = open(tmpl, O_RDONLY | O_DIRECTORY);
	unsigned ended = 0;
	cr_assert_eq(procx_sweep(dfd, &ended), 0);
	close(dfd);
	cr_assert_geq(ended, 2);
	int st;
	cr_assert_eq(waitpid(leader, &st, 0), leader);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	for (int i = 0; i < 200 && alive(member); i++)
		usleep(10000);
	cr_assert_not(alive(member), "the session member %d survived the sweep", member);
	cr_assert_eq(access(rec, F_OK), -1, "the record was not removed");
	rmdir(tmpl);
}
