/* test_instance_state.c — state.json as the client reads it, process identity,
 * and the monitor launcher's status line. */
#include <criterion/criterion.h>
#include <errno.h>
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
	strcpy(sa.sun_path, p);
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
