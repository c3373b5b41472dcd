/* procx_shepherd.c — the shepherd and the program of proc.run, both after
 * fork (see procx.h for the process layout and guarantees).
 *
 * They run in a process whose heap belongs to the job-run child: system
 * calls, stack buffers and one anonymous mapping only (no malloc, no stdio
 * streams, no Lua). */
#include "procx_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define SCAN_MS 100 /* /proc scans of the shepherd: every tick while ending, else this often */

/* ---- the program (after fork in the shepherd) ---- */

static void program(const struct procx_spec *s, pid_t shepherd, struct rlimit nproc, int exw)
{
	setpgid(0, 0);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != shepherd)
		_exit(127);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	struct rlimit rl = {0, 0};
	setrlimit(RLIMIT_CORE, &rl);
	rl.rlim_cur = rl.rlim_max = (rlim_t)s->nofile;
	struct rlimit cur;
	if (getrlimit(RLIMIT_NOFILE, &cur) == 0 && cur.rlim_max < rl.rlim_max)
		rl.rlim_cur = rl.rlim_max = cur.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	if (nproc.rlim_cur != RLIM_INFINITY)
		setrlimit(RLIMIT_NPROC, &nproc);
	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	int e = 0;
	if (dup2(FD_IN, 0) < 0 || dup2(FD_OUT, 1) < 0 || dup2(FD_ERR, 2) < 0 ||
	    (s->cwd_fd >= 0 && fchdir(FD_CWD) < 0) ||
	    dup2(exw, 3) < 0) {
		e = errno;
		ssize_t w = write(exw, &e, sizeof(e));
		(void)w;
		_exit(127);
	}
	/* Only 0-2, the exec-error pipe (CLOEXEC: its EOF tells the shepherd that
	 * execve worked) and, when given, the extra descriptor as 4 survive. */
	fcntl(3, F_SETFD, FD_CLOEXEC);
	if (s->extra_fd >= 0) {
		if (dup2(FD_EXTRA, 4) < 0) {
			e = errno;
			ssize_t w = write(3, &e, sizeof(e));
			(void)w;
			_exit(127);
		}
		procx_close_from(5);
	} else {
		procx_close_from(4);
	}
	execve(s->path, s->argv, s->envp);
	e = errno;
	ssize_t w = write(3, &e, sizeof(e));
	(void)w;
	_exit(127);
}

/* ---- the shepherd ---- */

static void send_msg(int kind, int a)
{
	struct msg m = {kind, a};
	ssize_t w = write(FD_ST, &m, sizeof(m));
	(void)w;
}

/* The shepherd's working memory, mapped once after fork (no malloc here). */
struct herd {
	struct pinfo scan[MAX_SCAN];
	pid_t targets[MAX_SCAN];
	pid_t kids[MAX_SCAN];
	pid_t recorded[MAX_RECORDED];
	int nrecorded;
	pid_t job_sid; /* the job-run child's session (the agent's or jobvisor run's): never recorded */
};

/* One "pid start pgid sid" line per process, durable before we rely on it; a
 * pgid or sid shared with the job-run child is written as 0 so a sweep can
 * never aim at the agent's own session. */
static void record(struct herd *h, const struct pinfo *p)
{
	for (int i = 0; i < h->nrecorded; i++)
		if (h->recorded[i] == p->pid)
			return;
	if (h->nrecorded < MAX_RECORDED)
		h->recorded[h->nrecorded++] = p->pid;
	char line[128];
	int n = snprintf(line, sizeof(line), "%d %llu %d %d\n", (int)p->pid,
	                 (unsigned long long)p->start, p->sid == h->job_sid ? 0 : (int)p->pgid,
	                 p->sid == h->job_sid ? 0 : (int)p->sid);
	if (write(FD_REC, line, (size_t)n) == n)
		fdatasync(FD_REC);
}

/* The processes to end: the program's group, our children (orphans reparented
 * to us, and the program), and members of the groups and sessions those
 * children lead. Zombies are left to waitpid. Returns the count. */
static int find_targets(struct herd *h, pid_t self, pid_t pgid)
{
	int n = procx_scan(h->scan, MAX_SCAN, false);
	int nk = 0;
	for (int i = 0; i < n; i++)
		if (h->scan[i].ppid == self)
			h->kids[nk++] = h->scan[i].pid;
	int t = 0;
	for (int i = 0; i < n; i++) {
		const struct pinfo *p = &h->scan[i];
		if (p->pid == self || p->zombie)
			continue;
		bool direct = p->pgid == pgid || p->ppid == self;
		bool mine = direct;
		for (int j = 0; !mine && j < nk; j++)
			mine = (p->pgid == h->kids[j] || p->sid == h->kids[j]) && p->sid != h->job_sid;
		if (mine) {
			h->targets[t++] = p->pid;
			record(h, p);
		}
	}
	return t;
}

static void signal_all(const struct herd *h, pid_t pgid, int nt, int sig)
{
	kill(-pgid, sig);
	for (int i = 0; i < nt; i++)
		kill(h->targets[i], sig);
}

/* The shepherd's own setup: what it keeps renumbered to FD_IN..FD_REC, its
 * own process group, subreaper, default signals but the stop ones ignored. */
static void shepherd_setup(int fds[FD_FIRST_FREE])
{
	/* Renumber what we keep to FD_IN..FD_REC (through high numbers first so
	 * no dup2 clobbers a descriptor still needed), then drop everything else:
	 * the instance lock, the event pipe, the agent's sockets. */
	int tmp[FD_FIRST_FREE];
	for (int i = FD_IN; i < FD_FIRST_FREE; i++)
		tmp[i] = fds[i] >= 0 ? fcntl(fds[i], F_DUPFD, 1000) : -1;
	int dn = open("/dev/null", O_RDWR | O_CLOEXEC);
	for (int i = FD_IN; i < FD_FIRST_FREE; i++) /* an empty slot holds /dev/null */
		dup2(tmp[i] >= 0 ? tmp[i] : dn, i);
	procx_close_from(FD_FIRST_FREE);
	setpgid(0, 0);
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	prctl(PR_SET_PDEATHSIG, 0);
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Fork the program; its exec failure comes back through a CLOEXEC pipe.
 * Returns its pid; on failure the shepherd reports it and exits. */
static pid_t spawn_program(struct herd *h, const struct procx_spec *s, pid_t self, struct rlimit nproc)
{
	struct pinfo me;
	h->job_sid = getsid(0);
	if (procx_read_stat(self, &me, false) == 0)
		record(h, &me);
	int ex[2];
	if (pipe2(ex, O_CLOEXEC) < 0) {
		send_msg(M_EXECFAIL, errno);
		_exit(0);
	}
	pid_t pid = fork();
	if (pid == 0)
		program(s, self, nproc, ex[1]);
	if (pid < 0) {
		send_msg(M_EXECFAIL, errno);
		_exit(0);
	}
	close(FD_IN);
	close(FD_OUT);
	close(FD_ERR);
	setpgid(pid, pid);
	close(ex[1]);
	int e = 0;
	ssize_t r;
	do
		r = read(ex[0], &e, sizeof(e));
	while (r < 0 && errno == EINTR);
	if (r == (ssize_t)sizeof(e)) {
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		send_msg(M_EXECFAIL, e);
		_exit(0);
	}
	close(ex[0]);
	struct pinfo pi;
	if (procx_read_stat(pid, &pi, false) == 0)
		record(h, &pi);
	send_msg(M_STARTED, pid);
	return pid;
}

/* Until the program and everything it started are gone: reap, rescan the
 * tree, stop it (SIGTERM, SIGKILL after the grace) on request, on too many
 * processes, or for leftovers. Never returns. */
__attribute__((noreturn)) static void watch(struct herd *h, const struct procx_spec *s, pid_t self, pid_t pid)
{
	bool prog_done = false, ctl_open = true, killing = false, hard = false;
	int64_t deadline = 0, last_scan = 0;
	int nt = 0;
	unsigned leftovers = 0;
	/* A pidfd wakes us the moment the program exits (no tick of latency);
	 * without one (kernel < 5.3) the tick finds it. */
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	for (;;) {
		struct pollfd pp[2] = {{.fd = ctl_open ? FD_CTL : -1, .events = POLLIN},
		                       {.fd = pidfd, .events = POLLIN}};
		poll(pp, 2, TICK_MS);
		if (pidfd >= 0 && (pp[1].revents & POLLIN)) {
			close(pidfd); /* level-triggered: once is enough */
			pidfd = -1;
		}
		struct pollfd p = pp[0];
		int start_kill = 0;
		if (ctl_open && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
			char c;
			ssize_t n = read(FD_CTL, &c, 1);
			if (n == 1 && c == 'K')
				start_kill = SIGKILL;
			else if (n == 1)
				start_kill = SIGTERM;
			else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
				ctl_open = false; /* the job-run child is gone */
				start_kill = SIGTERM;
			}
		}
		int st;
		pid_t w;
		bool no_children = false;
		while ((w = waitpid(-1, &st, WNOHANG)) != 0) {
			if (w < 0) {
				no_children = errno == ECHILD;
				if (errno != EINTR)
					break;
				continue;
			}
			if (w == pid) {
				prog_done = true;
				send_msg(M_EXIT, st);
			}
		}
		int64_t now = procx_now_ms();
		if (killing || prog_done || start_kill || now - last_scan >= SCAN_MS) {
			last_scan = now;
			nt = find_targets(h, self, pid);
		}
		if (!killing && nt > s->max_procs) {
			send_msg(M_TOOMANY, nt);
			start_kill = SIGKILL;
		}
		if (prog_done && nt > 0 && !killing && !start_kill) {
			leftovers = (unsigned)nt;
			start_kill = SIGTERM;
		}
		if (start_kill && (!killing || (start_kill == SIGKILL && !hard))) {
			killing = true;
			hard = start_kill == SIGKILL;
			deadline = procx_now_ms() + s->grace_ms;
			signal_all(h, pid, nt, start_kill);
		} else if (killing && !hard && procx_now_ms() >= deadline) {
			hard = true;
			signal_all(h, pid, nt, SIGKILL);
		} else if (hard) {
			signal_all(h, pid, nt, SIGKILL);
		}
		if (prog_done && nt == 0 && no_children) {
			send_msg(M_DONE, (int)leftovers);
			_exit(0);
		}
	}
}

void procx_shepherd(const struct procx_spec *s, int fds[FD_FIRST_FREE], struct rlimit nproc)
{
	shepherd_setup(fds);
	struct herd *h = mmap(NULL, sizeof(*h), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (h == MAP_FAILED) {
		send_msg(M_EXECFAIL, errno);
		_exit(0);
	}
	pid_t self = getpid();
	watch(h, s, self, spawn_program(h, s, self, nproc));
}
