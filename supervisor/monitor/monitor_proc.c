/* monitor_proc.c — the server process: spawn, adopt, signal the tree, reap.
 *
 * The server runs in its own session and process group (pgid == pid), in the
 * instance's cgroup leaf when there is one. Its stdin and stdout/stderr are
 * the console FIFOs opened read-write, so it never sees EOF or EPIPE while
 * no monitor is attached (see monitor_console.c).
 *
 * Pid safety: a child of ours is never reaped before the sweep ends, so its
 * pid and process-group id cannot be reused while we signal them; the
 * leader's exit is read with waitid(WNOWAIT). Processes the server orphans
 * reparent to us (PR_SET_CHILD_SUBREAPER) and are signalled as our own
 * children, which are equally safe. An adopted server (not our child) is
 * signalled through its pidfd, and its group only while a member of that
 * group is seen alive. Between fork and exec the child only calls
 * async-signal-safe functions plus getpwnam-free credential changes (the
 * passwd lookup happens before fork). */
#include "monitor_proc.h"
#include "monitor_cgroup.h"
#include "monitor_console.h"
#include "jobvisor/execpipe.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/sched.h> /* struct clone_args, CLONE_INTO_CGROUP */

extern char **environ;

void proc_shed_inheritance(void)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (int s = 1; s < NSIG; s++)
		if (s != SIGKILL && s != SIGSTOP)
			signal(s, SIG_DFL); /* fails harmlessly for libc-reserved signals */
	/* Limits a job run set for itself (CPU, file size, address space ...)
	 * must not reach the server. Without privilege we can only lift each soft
	 * limit to its hard limit; as root, lift the hard limits as well.
	 * RLIMIT_STACK is left alone: unlimited stacks change the mmap layout. */
	static const int res[] = {RLIMIT_CPU,  RLIMIT_FSIZE,   RLIMIT_DATA,   RLIMIT_AS,
	                          RLIMIT_RSS,  RLIMIT_NPROC,   RLIMIT_NOFILE, RLIMIT_MEMLOCK,
	                          RLIMIT_LOCKS, RLIMIT_SIGPENDING, RLIMIT_MSGQUEUE};
	bool root = geteuid() == 0;
	for (size_t i = 0; i < JV_ARRAY_LEN(res); i++) {
		struct rlimit rl;
		if (getrlimit(res[i], &rl) < 0)
			continue;
		if (root && res[i] != RLIMIT_NOFILE && res[i] != RLIMIT_NPROC &&
		    res[i] != RLIMIT_SIGPENDING && res[i] != RLIMIT_MSGQUEUE)
			rl.rlim_max = RLIM_INFINITY;
		if (root && res[i] == RLIMIT_NOFILE && rl.rlim_max < 1048576)
			rl.rlim_max = 1048576; /* the kernel's default nr_open */
		rl.rlim_cur = rl.rlim_max;
		if (res[i] == RLIMIT_NOFILE && rl.rlim_cur > 65536)
			rl.rlim_cur = 65536; /* some servers loop over every possible fd */
		if (setrlimit(res[i], &rl) < 0 && getrlimit(res[i], &rl) == 0) {
			/* could not raise the hard limit: soft = hard */
			rl.rlim_cur = res[i] == RLIMIT_NOFILE && rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
			setrlimit(res[i], &rl);
		}
	}
	umask(022);
	setsid(); /* leave the job's session and process group (EPERM if already a leader) */
}

struct child_scan {
	pid_t *out;
	size_t max, n;
	pid_t self;
};

static bool add_child(void *ud, pid_t pid, const struct jv_proc_stat *st)
{
	struct child_scan *cs = ud;
	if (st->ppid == cs->self && cs->n < cs->max)
		cs->out[cs->n++] = pid;
	return cs->n >= cs->max;
}

/* Our children, from /proc/self/task/<tid>/children (single-threaded). */
static size_t list_children(pid_t *out, size_t max)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/task/%ld/children", (long)getpid());
	size_t n = 0;
	FILE *f = fopen(path, "re");
	if (f) {
		long v;
		while (n < max && fscanf(f, "%ld", &v) == 1)
			out[n++] = (pid_t)v;
		fclose(f);
		return n;
	}
	/* Kernels without CONFIG_PROC_CHILDREN: scan /proc for our ppid. */
	struct child_scan cs = {out, max, 0, getpid()};
	jv_proc_each(add_child, &cs);
	return cs.n;
}

/* Reap every exited child except the leader (kept as a zombie on purpose). */
static void reap_others(struct monitor *m)
{
	pid_t kids[512];
	size_t n = list_children(kids, JV_ARRAY_LEN(kids));
	for (size_t i = 0; i < n; i++)
		if (kids[i] != m->pid || m->adopted)
			waitpid(kids[i], NULL, WNOHANG);
}

struct group_scan {
	pid_t pgid, leader;
	bool found;
};

static bool find_member(void *ud, pid_t pid, const struct jv_proc_stat *st)
{
	struct group_scan *g = ud;
	g->found = st->pgid == g->pgid && st->state != 'Z' && st->state != 'X' && pid != g->leader;
	return g->found;
}

/* Is a live (non-zombie) process other than the leader in process group pgid? */
static bool group_has_members(pid_t pgid, pid_t leader)
{
	struct group_scan g = {pgid, leader, false};
	jv_proc_each(find_member, &g);
	return g.found;
}

void proc_signal_tree(struct monitor *m, int sig)
{
	if (m->cg.active) {
		if (sig == SIGKILL)
			cg_kill(m);
		else
			cg_signal(m, sig);
	}
	if (m->pid > 0) {
		if (m->adopted) {
			bool alive = m->pidfd >= 0 && !jv_pidfd_exited(m->pidfd);
			if (alive)
				jv_pidfd_signal(m->pidfd, sig);
			/* While the leader lives its pgid cannot be reused; after that
			 * only while we still see a member of the group. */
			if (m->pgid > 1 && (alive || group_has_members(m->pgid, m->pid)))
				kill(-m->pgid, sig);
		} else {
			/* Our unreaped child: pid and pgid stay reserved. */
			kill(-m->pgid, sig);
			if (!m->leader_exited)
				kill(m->pid, sig);
		}
	}
	pid_t kids[512];
	size_t n = list_children(kids, JV_ARRAY_LEN(kids));
	for (size_t i = 0; i < n; i++)
		if (kids[i] != m->pid || m->adopted)
			kill(kids[i], sig);
}

bool proc_on_sigchld(struct monitor *m)
{
	bool leader_now = false;
	if (m->pid > 0 && !m->adopted && !m->leader_exited) {
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		if (waitid(P_PID, (id_t)m->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
		    si.si_pid == m->pid) {
			m->leader_exited = true;
			leader_now = true;
			if (si.si_code == CLD_EXITED) {
				m->leader_code = si.si_status;
				m->leader_sig = 0;
			} else {
				m->leader_code = -1;
				m->leader_sig = si.si_status;
				m->leader_core = si.si_code == CLD_DUMPED;
			}
		}
	}
	reap_others(m);
	return leader_now;
}

bool proc_on_pidfd(struct monitor *m)
{
	if (!m->adopted || m->leader_exited || m->pidfd < 0 || !jv_pidfd_exited(m->pidfd))
		return false;
	m->leader_exited = true;
	m->leader_code = -1;
	m->leader_sig = 0;
	return true;
}

bool proc_tree_empty(struct monitor *m)
{
	reap_others(m);
	if (m->pid > 0 && !m->leader_exited)
		return false;
	pid_t kids[8];
	size_t n = list_children(kids, JV_ARRAY_LEN(kids));
	for (size_t i = 0; i < n; i++)
		if (kids[i] != m->pid || m->adopted)
			return false;
	if (m->cg.active && cg_populated(m))
		return false;
	if (m->adopted && m->pgid > 1 && group_has_members(m->pgid, m->pid))
		return false;
	return true;
}

void proc_release(struct monitor *m)
{
	if (m->pid > 0 && !m->adopted)
		waitpid(m->pid, NULL, 0); /* exited already: does not block */
	if (m->pidfd >= 0)
		close(m->pidfd);
	m->pidfd = -1;
	m->pid = 0;
	m->pgid = 0;
	m->start_time = 0;
	m->adopted = false;
	m->leader_exited = false;
}

void proc_describe_exit(struct monitor *m, struct mon_exit *e)
{
	memset(e, 0, sizeof(*e));
	e->valid = true;
	e->at_real_ms = jv_now_real_ms();
	e->uptime_ms = jv_now_mono_ms() - m->spawned_mono;
	e->code = m->leader_code;
	e->signal = m->leader_sig;
	e->core = m->leader_core;
	e->unknown = m->adopted;
	if (m->cg.active && cg_oom_kills(m) > m->cg.oom_base)
		e->oom = true;
	if (e->unknown)
		snprintf(e->reason, sizeof(e->reason), "exited (status unknown: adopted process)");
	else if (e->signal)
		snprintf(e->reason, sizeof(e->reason), "killed by %s%s%s", jv_signal_name(e->signal),
		         e->oom ? " (out of memory)" : "", e->core ? " (core dumped)" : "");
	else
		snprintf(e->reason, sizeof(e->reason), "exit code %d%s", e->code,
		         e->oom ? " (a process was killed for memory)" : "");
	if (m->ready_timed_out) {
		size_t l = strlen(e->reason);
		snprintf(e->reason + l, sizeof(e->reason) - l, " after ready timeout");
	}
}

int proc_adopt(struct monitor *m, pid_t pid, uint64_t start_time, const char *cgroup)
{
	int fd;
	int rc = jv_proc_open_verified(pid, start_time, NULL, &fd);
	if (rc)
		return rc;
	pid_t pgid = 0, sid = 0;
	jv_proc_pgid_sid(pid, &pgid, &sid);
	m->pid = pid;
	m->pidfd = fd;
	m->pgid = pgid;
	m->start_time = start_time;
	m->adopted = true;
	m->leader_exited = false;
	if (cgroup && cg_open_existing(m, cgroup) == 0 && !cg_contains(m, pid))
		cg_remove(m);
	return 0;
}

/* Environment for the server: a small clean base, then the spec's entries. */
static char **build_env(struct monitor *m, const char *home, const char *user)
{
	size_t n = m->spec->nenv + 8;
	char **env = calloc(n + 1, sizeof(char *));
	if (!env)
		return NULL;
	size_t k = 0;
	char buf[PATH_MAX + 32];
	const char *base[][2] = {
		{"PATH", "/usr/local/bin:/usr/bin:/bin"},
		{"HOME", home},
		{"USER", user},
		{"LOGNAME", user},
		{"LANG", getenv("LANG")},
		{"TZ", getenv("TZ")},
		{"JOBVISOR_INSTANCE_ID", m->instance_id},
	};
	for (size_t i = 0; i < JV_ARRAY_LEN(base); i++) {
		if (!base[i][1])
			continue;
		snprintf(buf, sizeof(buf), "%s=%s", base[i][0], base[i][1]);
		bool overridden = false;
		size_t kl = strlen(base[i][0]) + 1;
		for (size_t j = 0; j < m->spec->nenv; j++)
			overridden = overridden || strncmp(m->spec->env[j], buf, kl) == 0;
		if (!overridden && !(env[k++] = strdup(buf)))
			goto fail;
	}
	for (size_t j = 0; j < m->spec->nenv; j++)
		if (!(env[k++] = strdup(m->spec->env[j])))
			goto fail;
	return env;
fail:
	for (size_t i = 0; i < k; i++)
		free(env[i]);
	free(env);
	return NULL;
}

static void free_env(char **env)
{
	for (size_t i = 0; env && env[i]; i++)
		free(env[i]);
	free(env);
}

/* fork() straight into the cgroup leaf (clone3 with CLONE_INTO_CGROUP): no
 * migration afterwards, so no wait for an RCU grace period on every start.
 * Like fork() for a single-threaded process; the child only does what
 * child_main() does. Returns the pid, 0 in the child, or -errno. */
static pid_t fork_into_cgroup(int cgfd)
{
#ifdef CLONE_INTO_CGROUP
	struct clone_args args;
	memset(&args, 0, sizeof(args));
	args.flags = CLONE_INTO_CGROUP;
	args.exit_signal = SIGCHLD;
	args.cgroup = (uint64_t)cgfd;
	long r = syscall(SYS_clone3, &args, sizeof(args));
	return r < 0 ? -errno : (pid_t)r;
#else
	(void)cgfd;
	return -ENOSYS;
#endif
}

/* Steps of child_main reported through the exec pipe (jv_exec_fail). */
enum { FAIL_CONSOLE = 1, FAIL_LIMITS, FAIL_CWD, FAIL_USER, FAIL_EXEC };

static void set_limit(int res, long long v)
{
	if (v < 0)
		return;
	struct rlimit rl = {(rlim_t)v, (rlim_t)v};
	if (setrlimit(res, &rl) < 0) {
		getrlimit(res, &rl); /* cannot raise the hard limit: go as high as allowed */
		rl.rlim_cur = (rlim_t)v < rl.rlim_max ? (rlim_t)v : rl.rlim_max;
		setrlimit(res, &rl);
	}
}

static void child_main(struct monitor *m, int errfd, int procsfd, char **env, bool drop,
                       uid_t uid, gid_t gid, const char *user)
{
	setsid();
	if (procsfd >= 0)
		(void)!write(procsfd, "0\n", 2);
	/* The console FIFOs, read-write: see the file header. */
	int in = openat(m->jv_fd, "console.in", O_RDWR | O_NOFOLLOW);
	int out = openat(m->jv_fd, "console.out", O_RDWR | O_NOFOLLOW);
	if (in < 0 || out < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)
		jv_exec_fail(errfd, FAIL_CONSOLE, errno);
	sigset_t none;
	sigemptyset(&none);
	for (int s = 1; s < NSIG; s++)
		if (s != SIGKILL && s != SIGSTOP)
			signal(s, SIG_DFL);
	sigprocmask(SIG_SETMASK, &none, NULL);
	set_limit(RLIMIT_NOFILE, m->spec->nofile);
	set_limit(RLIMIT_NPROC, m->spec->nproc);
	set_limit(RLIMIT_CORE, m->spec->core);
	if (drop) {
		if (initgroups(user, gid) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
			jv_exec_fail(errfd, FAIL_USER, errno);
	}
	if (chdir(m->spec->cwd) < 0)
		jv_exec_fail(errfd, FAIL_CWD, errno);
	int keep[] = {errfd};
	jv_close_fds_from(3, keep, 1);
	execve(m->spec->exe, m->spec->argv, env);
	jv_exec_fail(errfd, FAIL_EXEC, errno);
}

/* Who the server runs as: with the agent as root and a `user` setting, that
 * user (drop when not root itself) and its home; else ourselves and cwd. */
struct run_as {
	bool drop;
	uid_t uid;
	gid_t gid;
	const char *user; /* borrowed from m->user, NULL when not switching */
	char home[PATH_MAX];
};

static int resolve_run_as(struct monitor *m, struct run_as *ra, char *err, size_t errlen)
{
	memset(ra, 0, sizeof(*ra));
	snprintf(ra->home, sizeof(ra->home), "%s", m->spec->cwd);
	if (!m->user || !m->user[0] || geteuid() != 0)
		return 0;
	struct passwd *pw = getpwnam(m->user);
	if (!pw) {
		snprintf(err, errlen, "user '%s' (setting 'user') does not exist", m->user);
		return -ENOENT;
	}
	ra->drop = pw->pw_uid != 0;
	ra->uid = pw->pw_uid;
	ra->gid = pw->pw_gid;
	ra->user = m->user;
	if (pw->pw_dir && pw->pw_dir[0] == '/')
		snprintf(ra->home, sizeof(ra->home), "%s", pw->pw_dir);
	return 0;
}

/* What the child reported through the CLOEXEC pipe before exec: 0 when it
 * exec'd (EOF), else -errno with the reason in err (the child is reaped). */
static int exec_outcome(struct monitor *m, pid_t pid, int rfd, char *err, size_t errlen)
{
	static const char *const stages[] = {"", "cannot open the console FIFOs",
	                                     "cannot set limits", "cannot change to cwd",
	                                     "cannot switch user", "cannot execute"};
	int stage, e;
	if (!jv_exec_wait(rfd, pid, &stage, &e))
		return 0;
	const char *what = stage > 0 && stage < (int)JV_ARRAY_LEN(stages) ? stages[stage] : "failed";
	const char *subject = stage == FAIL_CWD ? m->spec->cwd : stage == FAIL_USER ? m->user : m->spec->exe;
	snprintf(err, errlen, "%s '%s': %s", what, subject ? subject : "", strerror(e));
	return -e;
}

/* The server runs: remember it, check it joined its cgroup. */
static void track_spawned(struct monitor *m, pid_t pid)
{
	m->pid = pid;
	m->pgid = pid;
	m->adopted = false;
	m->leader_exited = false;
	m->leader_code = -1;
	m->leader_sig = 0;
	m->leader_core = false;
	m->spawned_mono = jv_now_mono_ms();
	m->spawned_real = jv_now_real_ms();
	if (jv_proc_start_time(pid, &m->start_time) < 0)
		m->start_time = 0;
	if (m->cg.active) {
		if (!cg_contains(m, pid)) {
			jv_warn(NULL, NULL, "instance %s: server did not join cgroup '%s'", m->instance_id,
			        m->cg.path);
			cg_remove(m);
		} else {
			m->cg.oom_base = cg_oom_kills(m);
		}
	}
	jv_info(NULL, NULL, "instance %s: started '%s' pid %ld%s%s", m->instance_id, m->spec->exe,
	        (long)pid, m->cg.active ? " in cgroup " : "", m->cg.active ? m->cg.path : "");
}

int proc_spawn(struct monitor *m, char *err, size_t errlen)
{
	struct run_as ra;
	int rc = resolve_run_as(m, &ra, err, errlen);
	if (rc)
		return rc;
	if (!m->cg.active && jv_json_bool(m->settings, "cgroups", true)) {
		char cgerr[256] = "";
		if (cg_create(m, cgerr, sizeof(cgerr)) < 0 && cgerr[0])
			jv_info(NULL, NULL, "instance %s: no cgroup, using process-group signals: %s",
			        m->instance_id, cgerr);
	}
	if (m->cg.active)
		cg_apply_limits(m);
	char **env = build_env(m, ra.home, ra.user);
	if (!env) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	int errpipe[2];
	if (pipe2(errpipe, O_CLOEXEC) < 0) {
		int e = errno;
		free_env(env);
		snprintf(err, errlen, "cannot create a pipe: %s", strerror(e));
		return -e;
	}
	con_drain_input(m); /* commands sent to a previous run must not reach this one */
	int procsfd = -1;
	pid_t pid = m->cg.active ? fork_into_cgroup(m->cg.dirfd) : -ENOSYS;
	if (pid < 0 && m->cg.active) {
		/* No clone3 (kernels before 5.7) or not allowed: the child joins by
		 * writing cgroup.procs itself, which is slower (an RCU grace period). */
		procsfd = cg_procs_fd(m);
	}
	if (pid < 0)
		pid = fork();
	if (pid == 0)
		child_main(m, errpipe[1], procsfd, env, ra.drop, ra.uid, ra.gid, ra.user);
	int fork_err = errno;
	close(errpipe[1]);
	if (procsfd >= 0)
		close(procsfd);
	free_env(env);
	if (pid < 0) {
		close(errpipe[0]);
		snprintf(err, errlen, "cannot fork: %s", strerror(fork_err));
		return -fork_err;
	}
	rc = exec_outcome(m, pid, errpipe[0], err, errlen);
	close(errpipe[0]);
	if (rc)
		return rc;
	track_spawned(m, pid);
	return 0;
}
