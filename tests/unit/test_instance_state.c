/* test_instance_state.c — state.json as the client reads it, process identity,
 * and the monitor launcher's status line. */
#include <criterion/criterion.h>
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jobvisor/instance_client.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/procid.h"

static char dir[PATH_MAX];

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/jv-state-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	char p[PATH_MAX + 16];
	snprintf(p, sizeof(p), "%s/.jobvisor", dir);
	mkdir(p, 0700);
}

static void teardown(void)
{
	char p[PATH_MAX + 32];
	snprintf(p, sizeof(p), "%s/.jobvisor/state.json", dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/.jobvisor/monitor.sock", dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/.jobvisor", dir);
	rmdir(p);
	rmdir(dir);
}

static void write_state(const char *fmt, ...)
{
	char p[PATH_MAX + 32], text[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	snprintf(p, sizeof(p), "%s/.jobvisor/state.json", dir);
	FILE *f = fopen(p, "w");
	cr_assert_not_null(f);
	fputs(text, f);
	fclose(f);
}

TestSuite(instance_state, .init = setup, .fini = teardown);

Test(instance_state, never_started_is_stopped)
{
	cJSON *st = NULL;
	cr_assert_eq(jv_instance_status(dir, &st), 0);
	cr_assert_str_eq(jv_json_str(st, "state", ""), "STOPPED");
	cr_assert(jv_json_bool(st, "neverStarted", false));
	cr_assert_not(jv_json_bool(st, "monitor", true));
	cJSON_Delete(st);
}

Test(instance_state, live_process_with_matching_start_time_is_an_orphan)
{
	uint64_t start;
	char boot[JV_BOOT_ID_LEN];
	cr_assert_eq(jv_proc_start_time(getpid(), &start), 0);
	cr_assert_eq(jv_boot_id(boot), 0);
	write_state("{\"state\":\"RUNNING\",\"pid\":%d,\"startTime\":%llu,\"bootId\":\"%s\"}", getpid(),
	            (unsigned long long)start, boot);
	cJSON *st = NULL;
	cr_assert_eq(jv_instance_status(dir, &st), 0);
	cr_assert_str_eq(jv_json_str(st, "state", ""), "RUNNING");
	cr_assert(jv_json_bool(st, "orphan", false));
	cr_assert(jv_json_bool(st, "alive", false));
	cJSON_Delete(st);
}

Test(instance_state, reused_pid_makes_a_stale_crashed_state)
{
	uint64_t start;
	cr_assert_eq(jv_proc_start_time(getpid(), &start), 0);
	write_state("{\"state\":\"RUNNING\",\"pid\":%d,\"startTime\":%llu}", getpid(),
	            (unsigned long long)start + 7);
	cJSON *st = NULL;
	cr_assert_eq(jv_instance_status(dir, &st), 0);
	cr_assert_str_eq(jv_json_str(st, "state", ""), "CRASHED");
	cr_assert(jv_json_bool(st, "stale", false));
	cr_assert_str_eq(jv_json_str(st, "recordedState", ""), "RUNNING");
	cr_assert_not(jv_json_bool(st, "orphan", true));
	cr_assert(cJSON_IsNull(cJSON_GetObjectItem(st, "pid")));
	cJSON_Delete(st);
}

Test(instance_state, other_boot_is_never_alive)
{
	uint64_t start;
	cr_assert_eq(jv_proc_start_time(getpid(), &start), 0);
	write_state("{\"state\":\"STOPPING\",\"pid\":%d,\"startTime\":%llu,\"bootId\":\"x\"}", getpid(),
	            (unsigned long long)start);
	cJSON *st = NULL;
	cr_assert_eq(jv_instance_status(dir, &st), 0);
	cr_assert_str_eq(jv_json_str(st, "state", ""), "CRASHED");
	cJSON_Delete(st);
}

Test(instance_state, final_states_are_kept)
{
	write_state("{\"state\":\"STOPPED\",\"pid\":null,\"lastExit\":{\"code\":0}}");
	cJSON *st = NULL;
	cr_assert_eq(jv_instance_status(dir, &st), 0);
	cr_assert_str_eq(jv_json_str(st, "state", ""), "STOPPED");
	cr_assert_not(jv_json_bool(st, "stale", false));
	cJSON_Delete(st);
}

Test(instance_state, garbage_state_file_is_an_error)
{
	write_state("{\"state\": ");
	cJSON *st = NULL;
	cr_assert_eq(jv_instance_status(dir, &st), -EINVAL);
	cr_assert_null(st);
}

Test(instance_state, stale_socket_means_no_monitor)
{
	char p[PATH_MAX + 32];
	snprintf(p, sizeof(p), "%s/.jobvisor/monitor.sock", dir);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	cr_assert_lt(strlen(p), sizeof(sa.sun_path));
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", p);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd); /* the file stays, nobody listens */
	struct jv_monconn *c = NULL;
	cr_assert_eq(jv_monconn_open(dir, &c), -ECONNREFUSED);
	cJSON *st = NULL;
	cr_assert_eq(jv_instance_status(dir, &st), 0);
	cr_assert_str_eq(jv_json_str(st, "state", ""), "STOPPED");
	cJSON_Delete(st);
}

Test(procid, verifies_pid_and_start_time)
{
	uint64_t start;
	int fd = -1;
	cr_assert_eq(jv_proc_start_time(getpid(), &start), 0);
	cr_assert_eq(jv_proc_open_verified(getpid(), start, NULL, &fd), 0);
	cr_assert_geq(fd, 0);
	cr_assert_not(jv_pidfd_exited(fd));
	close(fd);
	cr_assert_eq(jv_proc_open_verified(getpid(), start + 1, NULL, &fd), -ESRCH);
	cr_assert_eq(fd, -1);
	cr_assert_eq(jv_proc_start_time(0x3ffffff, &start), -ESRCH);
	cr_assert_eq(jv_proc_open_verified(1, 0, NULL, &fd), -ESRCH); /* never init */
}

Test(procid, sees_an_exit_through_the_pidfd)
{
	pid_t pid = fork();
	if (pid == 0) {
		pause();
		_exit(0);
	}
	uint64_t start;
	cr_assert_eq(jv_proc_start_time(pid, &start), 0);
	int fd;
	cr_assert_eq(jv_proc_open_verified(pid, start, NULL, &fd), 0);
	cr_assert_eq(jv_pidfd_signal(fd, SIGKILL), 0);
	waitpid(pid, NULL, 0);
	cr_assert(jv_pidfd_exited(fd));
	cr_assert_eq(jv_pidfd_signal(fd, SIGKILL), -ESRCH); /* reaped: cannot reach a new owner */
	close(fd);
}

static int launch_line(const char *line, char *msg, size_t len)
{
	int p[2];
	cr_assert_eq(pipe(p), 0);
	if (line)
		cr_assert_eq(write(p[1], line, strlen(line)), (ssize_t)strlen(line));
	close(p[1]);
	int rc = jv_monitor_launch_wait(p[0], 1000, msg, len);
	close(p[0]);
	return rc;
}

Test(monitor_launch, reads_the_status_line)
{
	char msg[256];
	cr_assert_eq(launch_line("ok started 42\n", msg, sizeof(msg)), 0);
	cr_assert_str_eq(msg, "started 42");
	cr_assert_eq(launch_line("busy another monitor is running for this instance\n", msg, sizeof(msg)),
	             -EBUSY);
	cr_assert_eq(launch_line("error instance.json: 'command' is missing\n", msg, sizeof(msg)), -EINVAL);
	cr_assert_str_eq(msg, "instance.json: 'command' is missing");
	cr_assert_eq(launch_line(NULL, msg, sizeof(msg)), -EIO);
	cr_assert(strstr(msg, "exited before reporting"), "%s", msg);
}

Test(monitor_launch, times_out_without_closing)
{
	int p[2];
	char msg[64];
	cr_assert_eq(pipe(p), 0);
	cr_assert_eq(jv_monitor_launch_wait(p[0], 50, msg, sizeof(msg)), -ETIMEDOUT);
	close(p[0]);
	close(p[1]);
}

/* state.json as the monitor writes it (monitor_state.c), read back as clients do. */
#include "monitor_state.h"

Test(instance_state, monitor_writes_state_json_atomically)
{
	struct monitor *m = calloc(1, sizeof(*m));
	cr_assert_not_null(m);
	char jv[PATH_MAX + 16];
	snprintf(jv, sizeof(jv), "%s/.jobvisor", dir);
	m->jv_fd = open(jv, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert_geq(m->jv_fd, 0);
	snprintf(m->instance_id, sizeof(m->instance_id), "alpha");
	m->state = MON_BACKOFF;
	m->since_real = 1795887780211;
	m->restarts = 2;
	m->restart_at = jv_now_mono_ms() + 5000;
	snprintf(m->message, sizeof(m->message), "exit code 3; restart 2 in 5.0s");
	m->last_exit = (struct mon_exit){.valid = true, .code = -1, .signal = SIGSEGV, .core = true,
	                                 .at_real_ms = 1795887780000, .uptime_ms = 1500};
	snprintf(m->last_exit.reason, sizeof(m->last_exit.reason), "killed by SIGSEGV (core dumped)");
	cr_assert_eq(state_write(m), 0);

	cJSON *st = NULL;
	cr_assert_eq(jv_instance_read_state(dir, &st), 0);
	cr_assert_str_eq(jv_json_str(st, "state", ""), "BACKOFF");
	cr_assert_str_eq(jv_json_str(st, "instanceId", ""), "alpha");
	cr_assert_str_eq(jv_json_str(st, "since", ""), "2026-11-28T17:43:00.211Z");
	cr_assert(cJSON_IsNull(cJSON_GetObjectItem(st, "pid")));
	cr_assert_eq(jv_json_int(st, "restarts", -1), 2);
	cr_assert_not_null(jv_json_str(st, "nextRestartAt", NULL));
	const cJSON *le = cJSON_GetObjectItem(st, "lastExit");
	cr_assert(cJSON_IsNull(cJSON_GetObjectItem(le, "code")));
	cr_assert_str_eq(jv_json_str(le, "signal", ""), "SIGSEGV");
	cr_assert(jv_json_bool(le, "core", false));
	cr_assert_not(jv_json_bool(le, "requested", true));
	cr_assert_float_eq(jv_json_num(le, "uptimeSeconds", 0), 1.5, 1e-9);
	cJSON_Delete(st);

	/* A running server: pid and start time are its identity. */
	m->state = MON_RUNNING;
	m->pid = getpid();
	m->start_time = 4242;
	m->spawned_mono = jv_now_mono_ms();
	m->spawned_real = jv_now_real_ms();
	cr_assert_eq(state_write(m), 0);
	cr_assert_eq(jv_instance_read_state(dir, &st), 0);
	cr_assert_eq(jv_json_int(st, "pid", 0), getpid());
	cr_assert_eq(jv_json_int(st, "startTime", 0), 4242);
	cr_assert_not_null(jv_json_str(st, "startedAt", NULL));
	cr_assert_null(jv_json_str(st, "nextRestartAt", NULL));
	cJSON_Delete(st);

	/* Only state.json is left: no temp files. */
	DIR *d = opendir(jv);
	struct dirent *e;
	while ((e = readdir(d)))
		cr_assert(strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
		              strcmp(e->d_name, "state.json") == 0,
		          "unexpected file '%s' next to state.json", e->d_name);
	closedir(d);
	close(m->jv_fd);
	free(m);
}
