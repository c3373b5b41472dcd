/* jobrun_spawn.c — the job-run child's spec and setup (jobrun_spawn.h).
 *
 * Fork constraints: the child branch runs between fork() and execv() in a
 * single-threaded parent, so it only makes system calls and never allocates.
 * Everything it needs (argv, the spec memfd; for jobvisor run's direct child,
 * which runs the job without an exec, the spec tree) is prepared before fork(). */
#include "jobrun_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "jobvisor/durable.h"
#include "jobvisor/execpipe.h"
#include "jobvisor/jobchild.h"
#include "jobvisor/util.h"

#define CHILD_NOFILE 1024

cJSON *jobrun_build_spec(const struct jobrun_spec *s)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "jobId", s->job_id);
	cJSON_AddStringToObject(j, "jobRunId", s->run_id);
	cJSON_AddStringToObject(j, "instanceId", s->instance_id ? s->instance_id : "");
	cJSON_AddStringToObject(j, "type", s->by_type && s->type ? s->type : "");
	if (s->by_type && s->type)
		cJSON_AddStringToObject(j, "expectType", s->type);
	cJSON_AddNumberToObject(j, "attempt", s->attempt > 0 ? s->attempt : 1);
	cJSON_AddItemToObject(j, "params",
	                      s->params ? cJSON_Duplicate(s->params, true) : cJSON_CreateObject());
	cJSON_AddStringToObject(j, "dataDir", s->data_dir);
	cJSON_AddStringToObject(j, "script", s->script);
	if (s->jobs_dir)
		cJSON_AddStringToObject(j, "jobsDir", s->jobs_dir);
	char builtin[PATH_MAX];
	cJSON_AddStringToObject(j, "builtinJobsDir", jobrun_builtin_jobs_dir(builtin));
	if (s->mem_limit)
		cJSON_AddNumberToObject(j, "memLimit", (double)s->mem_limit);
	if (s->settings)
		cJSON_AddItemToObject(j, "settings", cJSON_Duplicate(s->settings, true));
	if (s->created_at)
		cJSON_AddStringToObject(j, "createdAt", s->created_at);
	if (s->log_format)
		cJSON_AddStringToObject(j, "logFormat", s->log_format);
	if (s->log_level)
		cJSON_AddStringToObject(j, "logLevel", s->log_level);
	if (s->fresh_job_id)
		cJSON_AddBoolToObject(j, "recordCompletion", false);
	return j;
}

static void child_fail(int errfd, enum exec_stage stage)
{
	jv_exec_fail(errfd, stage, errno);
}

/* Every disposition back to the default, glibc's own signals (32, 33, which
 * its sigaction refuses) included: an ignored signal survives fork and exec,
 * and the child must not inherit what some ancestor of the agent ignored.
 * The kernel's sigaction is used for those: its first field is the handler
 * on x86 and ARM, and an all-zero rest is SIG_DFL with no flags. */
static void reset_signals(void)
{
	struct {
		void (*handler)(int);
		unsigned long rest[4];
	} cur, dfl = {.handler = SIG_DFL};
	for (int s = 1; s < NSIG; s++) {
		if (signal(s, SIG_DFL) != SIG_ERR || s == SIGKILL || s == SIGSTOP)
			continue;
		memset(&cur, 0, sizeof(cur));
		if (syscall(SYS_rt_sigaction, s, NULL, &cur, sizeof(unsigned long)) == 0 && cur.handler == SIG_IGN)
			syscall(SYS_rt_sigaction, s, &dfl, NULL, sizeof(unsigned long));
	}
}

void jobrun_child_exec(int spec_fd, cJSON *spec, int ev_fd, int err_fd, pid_t parent, int uid,
                       int gid, char **argv, int (*child_main)(cJSON *))
{
	setpgid(0, 0);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(127); /* nobody is reading */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	reset_signals();
	/* Soft limits only: a monitor born from this child must be able to give
	 * the game server its own limits back (a script cannot raise them). */
	struct rlimit rl;
	if (getrlimit(RLIMIT_CORE, &rl) == 0) {
		rl.rlim_cur = 0;
		setrlimit(RLIMIT_CORE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		if (rl.rlim_cur > CHILD_NOFILE)
			rl.rlim_cur = CHILD_NOFILE;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	/* Clear of the dup2s below (it is CLOEXEC already). */
	int f2 = err_fd > JV_CHILD_EVENT_FD ? err_fd : fcntl(err_fd, F_DUPFD_CLOEXEC, JV_CHILD_EVENT_FD + 1);
	if (f2 < 0)
		_exit(127);
	int s2 = child_main ? -1 : fcntl(spec_fd, F_DUPFD, 10);
	int e2 = fcntl(ev_fd, F_DUPFD, 10);
	int devnull = open("/dev/null", O_RDWR);
	if ((!child_main && s2 < 0) || e2 < 0 || devnull < 0)
		child_fail(f2, EXEC_FDS);
	dup2(devnull, STDIN_FILENO);
	dup2(STDERR_FILENO, STDOUT_FILENO);
	if (child_main)
		close(JV_CHILD_SPEC_FD); /* whatever the parent had there: no exec closes it */
	else
		dup2(s2, JV_CHILD_SPEC_FD);
	dup2(e2, JV_CHILD_EVENT_FD);
	jv_close_fds_from(JV_CHILD_EVENT_FD + 1, &f2, 1);
	if (chdir("/") < 0)
		child_fail(f2, EXEC_CWD);
	if (gid >= 0 && getuid() == 0) {
		if (setgroups(0, NULL) < 0 || setgid((gid_t)gid) < 0)
			child_fail(f2, EXEC_USER);
	}
	if (uid >= 0 && getuid() == 0) {
		if (setuid((uid_t)uid) < 0)
			child_fail(f2, EXEC_USER);
	}
	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	if (child_main) {
		close(f2); /* tells wait_exec the setup succeeded, as an exec would */
		/* exit, as main's return would after an exec: the child's own atexit
		 * work and, in a sanitizer build, its leak check. The parent flushed
		 * its stdio before the fork and registers no atexit handlers. */
		exit(child_main(spec));
	}
	execv("/proc/self/exe", argv);
	child_fail(f2, EXEC_EXEC);
}

int jobrun_spec_memfd(const cJSON *sj, int *fd)
{
	char *text = cJSON_PrintUnformatted(sj);
	if (!text)
		return -ENOMEM;
	int rc = 0;
	*fd = memfd_create("jobvisor-spec", MFD_CLOEXEC);
	if (*fd < 0)
		rc = -errno;
	else
		rc = jv_write_all(*fd, text, strlen(text));
	free(text);
	return rc;
}

bool jobrun_pin_to_this_cpu(cpu_set_t *allowed)
{
	int cpu = sched_getcpu();
	if (cpu < 0 || sched_getaffinity(0, sizeof(*allowed), allowed) < 0)
		return false;
	cpu_set_t here;
	CPU_ZERO(&here);
	CPU_SET(cpu, &here);
	return sched_setaffinity(0, sizeof(here), &here) == 0;
}
