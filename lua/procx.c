/* procx.c — the shepherd, the program and the job-run side of proc.run; the
 * next-run sweep. See procx.h for the process layout and guarantees.
 *
 * The shepherd and the program branch run after fork() in a process whose
 * heap belongs to the job-run child: they use system calls, stack buffers and
 * static arrays only (no malloc, no stdio streams, no Lua). */
#include "procx.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "jobvisor/procid.h"
#include "jobvisor/util.h"

#define TICK_MS 50
#define SCAN_MS 100 /* /proc scans of the shepherd: every tick while ending, else this often */
#define MAX_SCAN 32768
#define MAX_RECORDED 4096

/* Shepherd -> job-run child messages (fixed size: one write each, < PIPE_BUF). */
enum { M_STARTED = 1, M_EXECFAIL, M_EXIT, M_TOOMANY, M_DONE };
struct msg {
	int32_t kind, a;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void close_from(int low)
{
	if (syscall(SYS_close_range, (unsigned)low, ~0u, 0) == 0)
		return;
	for (int fd = low; fd < 65536; fd++)
		close(fd);
}

/* ---- /proc without malloc ---- */

struct pinfo {
	pid_t pid, ppid, pgid, sid;
	uint64_t start;
	uid_t uid;
	bool zombie;
};

/* /proc/<pid>/stat through the core's one parser (jv_proc_stat: a stack
 * buffer, no malloc, so the shepherd may call it); with_uid adds the owner. */
static int read_stat(pid_t pid, struct pinfo *p, bool with_uid)
{
	struct jv_proc_stat st;
	int rc = jv_proc_stat(pid, &st);
	if (rc < 0)
		return rc;
	p->pid = pid;
	p->ppid = st.ppid;
	p->pgid = st.pgid;
	p->sid = st.sid;
	p->start = st.start_time;
	p->zombie = st.state == 'Z' || st.state == 'X';
	p->uid = (uid_t)-1;
	if (with_uid) {
		char path[64];
		struct stat ps;
		snprintf(path, sizeof(path), "/proc/%d", (int)pid);
		if (stat(path, &ps) == 0)
			p->uid = ps.st_uid;
	}
	return 0;
}

static struct pinfo scan_buf[MAX_SCAN];

/* Every process in /proc (up to MAX_SCAN). Returns the count, or -errno.
 * getdents64 on a stack buffer rather than jv_proc_each: readdir allocates,
 * and the shepherd runs after fork in a copy of a process with a heap. */
static int scan_all(bool with_uid)
{
	int dfd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	char buf[8192];
	int n = 0;
	for (;;) {
		long got = syscall(SYS_getdents64, dfd, buf, sizeof(buf));
		if (got <= 0)
			break;
		for (long off = 0; off < got;) {
			struct {
				uint64_t ino;
				int64_t off;
				unsigned short reclen;
				unsigned char type;
				char name[];
			} *d = (void *)(buf + off);
			off += d->reclen;
			if (d->name[0] < '1' || d->name[0] > '9')
				continue;
			pid_t pid = (pid_t)strtol(d->name, NULL, 10);
			if (n < MAX_SCAN && read_stat(pid, &scan_buf[n], with_uid) == 0)
				n++;
		}
	}
	close(dfd);
	return n;
}

int procx_count_user(uid_t uid)
{
	int n = scan_all(true);
	if (n < 0)
		return -1;
	int c = 0;
	for (int i = 0; i < n; i++)
		c += scan_buf[i].uid == uid;
	return c;
}

/* ---- the program (after fork in the shepherd) ---- */

/* Descriptors in the shepherd after renumbering. */
enum { FD_IN = 3, FD_OUT, FD_ERR, FD_CTL, FD_ST, FD_CWD, FD_REC, FD_EXTRA, FD_FIRST_FREE };

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
		close_from(5);
	} else {
		close_from(4);
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

static pid_t recorded[MAX_RECORDED];
static int nrecorded;
static pid_t job_sid; /* the job-run child's session (the agent's or jobvisor run's): never recorded */

/* One "pid start pgid sid" line per process, durable before we rely on it; a
 * pgid or sid shared with the job-run child is written as 0 so a sweep can
 * never aim at the agent's own session. */
static void record(const struct pinfo *p)
{
	for (int i = 0; i < nrecorded; i++)
		if (recorded[i] == p->pid)
			return;
	if (nrecorded < MAX_RECORDED)
		recorded[nrecorded++] = p->pid;
	char line[128];
	int n = snprintf(line, sizeof(line), "%d %llu %d %d\n", (int)p->pid,
	                 (unsigned long long)p->start, p->sid == job_sid ? 0 : (int)p->pgid,
	                 p->sid == job_sid ? 0 : (int)p->sid);
	if (write(FD_REC, line, (size_t)n) == n)
		fdatasync(FD_REC);
}

static pid_t targets[MAX_SCAN];
static pid_t kids[MAX_SCAN];

/* The processes to end: the program's group, our children (orphans reparented
 * to us, and the program), and members of the groups and sessions those
 * children lead. Zombies are left to waitpid. Returns the count. */
static int find_targets(pid_t self, pid_t pgid)
{
	int n = scan_all(false);
	int nk = 0;
	for (int i = 0; i < n; i++)
		if (scan_buf[i].ppid == self)
			kids[nk++] = scan_buf[i].pid;
	int t = 0;
	for (int i = 0; i < n; i++) {
		const struct pinfo *p = &scan_buf[i];
		if (p->pid == self || p->zombie)
			continue;
		bool direct = p->pgid == pgid || p->ppid == self;
		bool mine = direct;
		for (int j = 0; !mine && j < nk; j++)
			mine = (p->pgid == kids[j] || p->sid == kids[j]) && p->sid != job_sid;
		if (mine) {
			targets[t++] = p->pid;
			record(p);
		}
	}
	return t;
}

static void signal_all(pid_t pgid, int nt, int sig)
{
	kill(-pgid, sig);
	for (int i = 0; i < nt; i++)
		kill(targets[i], sig);
}

static void shepherd(const struct procx_spec *s, int fds[FD_FIRST_FREE], struct rlimit nproc)
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
	close_from(FD_FIRST_FREE);
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

	pid_t self = getpid();
	struct pinfo me;
	job_sid = getsid(0);
	if (read_stat(self, &me, false) == 0)
		record(&me);
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
	if (read_stat(pid, &pi, false) == 0)
		record(&pi);
	send_msg(M_STARTED, pid);

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
		int64_t now = now_ms();
		if (killing || prog_done || start_kill || now - last_scan >= SCAN_MS) {
			last_scan = now;
			nt = find_targets(self, pid);
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
			deadline = now_ms() + s->grace_ms;
			signal_all(pid, nt, start_kill);
		} else if (killing && !hard && now_ms() >= deadline) {
			hard = true;
			signal_all(pid, nt, SIGKILL);
		} else if (hard) {
			signal_all(pid, nt, SIGKILL);
		}
		if (prog_done && nt == 0 && no_children) {
			send_msg(M_DONE, (int)leftovers);
			_exit(0);
		}
	}
}

/* ---- the job-run side ---- */

struct stream {
	int fd;
	int which;
	char *cap;
	size_t cap_len, cap_max;
	bool truncated;
	char line[PROCX_LINE_MAX];
	size_t line_len;
};

static bool feed(const struct procx_spec *s, struct stream *st, const char *buf, size_t n)
{
	if (st->cap_len < st->cap_max) {
		size_t k = n < st->cap_max - st->cap_len ? n : st->cap_max - st->cap_len;
		memcpy(st->cap + st->cap_len, buf, k);
		st->cap_len += k;
		if (k < n)
			st->truncated = true;
	} else if (n) {
		st->truncated = true;
	}
	bool ok = true;
	for (size_t i = 0; i < n && ok; i++) {
		if (buf[i] == '\n' || st->line_len == sizeof(st->line)) {
			size_t len = st->line_len;
			if (len && st->line[len - 1] == '\r')
				len--;
			if (s->on_line)
				ok = s->on_line(s->arg, st->which, st->line, len);
			st->line_len = 0;
			if (buf[i] == '\n')
				continue;
		}
		st->line[st->line_len++] = buf[i];
	}
	return ok;
}

static void ctl_send(int fd, char c)
{
	ssize_t w = write(fd, &c, 1);
	(void)w;
}

int procx_run(const struct procx_spec *s, struct procx_result *r, char *err, size_t errlen)
{
	memset(r, 0, sizeof(*r));
	r->exit_code = -1;
	err[0] = '\0';
	int64_t t0 = now_ms();
	int o[2] = {-1, -1}, e[2] = {-1, -1}, c[2] = {-1, -1}, st[2] = {-1, -1}, in[2] = {-1, -1};
	struct stream *so = calloc(1, sizeof(*so)), *se = calloc(1, sizeof(*se));
	int rc = 0;
	if (!so || !se) {
		rc = -ENOMEM;
		goto fail;
	}
	so->which = PROCX_STDOUT;
	se->which = PROCX_STDERR;
	so->cap_max = se->cap_max = s->capture_max;
	so->cap = malloc(s->capture_max + 1);
	se->cap = malloc(s->capture_max + 1);
	if (!so->cap || !se->cap) {
		rc = -ENOMEM;
		goto fail;
	}
	if (pipe2(o, O_CLOEXEC) < 0 || pipe2(e, O_CLOEXEC) < 0 || pipe2(c, O_CLOEXEC) < 0 ||
	    pipe2(st, O_CLOEXEC) < 0 ||
	    (s->stdin_data && pipe2(in, O_CLOEXEC) < 0)) {
		rc = -errno;
		snprintf(err, errlen, "cannot create pipes: %s", strerror(errno));
		goto fail;
	}
	/* RLIMIT_NPROC counts every process of the user: allow max_procs more than now. */
	struct rlimit nproc = {RLIM_INFINITY, RLIM_INFINITY};
	int have = procx_count_user(getuid());
	if (have >= 0 && getuid() != 0) {
		struct rlimit cur;
		rlim_t want = (rlim_t)have + (rlim_t)s->max_procs;
		if (getrlimit(RLIMIT_NPROC, &cur) == 0 && cur.rlim_max != RLIM_INFINITY &&
		    cur.rlim_max < want)
			want = cur.rlim_max;
		nproc.rlim_cur = nproc.rlim_max = want;
	}
	int fds[FD_FIRST_FREE];
	for (int i = 0; i < FD_FIRST_FREE; i++)
		fds[i] = -1;
	fds[FD_IN] = in[0];
	fds[FD_OUT] = o[1];
	fds[FD_ERR] = e[1];
	fds[FD_CTL] = c[0];
	fds[FD_ST] = st[1];
	fds[FD_CWD] = s->cwd_fd;
	fds[FD_REC] = s->record_fd;
	fds[FD_EXTRA] = s->extra_fd;
	pid_t sh = fork();
	if (sh < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot start '%s': fork: %s", s->path, strerror(errno));
		goto fail;
	}
	if (sh == 0)
		shepherd(s, fds, nproc); /* never returns */
	close(o[1]);
	close(e[1]);
	close(c[0]);
	close(st[1]);
	o[1] = e[1] = c[0] = st[1] = -1;
	if (in[0] >= 0) {
		close(in[0]);
		in[0] = -1;
		jv_set_nonblock(in[1]);
	}
	so->fd = o[0];
	se->fd = e[0];
	size_t in_off = 0;
	bool stop_sent = false, started = false, aborted = false;
	int exec_errno = 0, wstatus = -1;
	int64_t last_check = 0;
	for (;;) {
		struct pollfd p[4] = {
			{.fd = so->fd, .events = POLLIN},
			{.fd = se->fd, .events = POLLIN},
			{.fd = st[0], .events = POLLIN},
			{.fd = in[1], .events = POLLOUT},
		};
		if (so->fd < 0 && se->fd < 0 && st[0] < 0)
			break;
		int pn = poll(p, 4, TICK_MS);
		if (pn < 0 && errno != EINTR)
			break;
		char buf[65536];
		struct stream *ss[2] = {so, se};
		for (int i = 0; i < 2; i++) {
			if (ss[i]->fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t n = read(ss[i]->fd, buf, sizeof(buf));
			if (n > 0) {
				if (!aborted && !feed(s, ss[i], buf, (size_t)n))
					aborted = true;
			} else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
				close(ss[i]->fd);
				ss[i]->fd = -1;
			}
		}
		if (st[0] >= 0 && (p[2].revents & (POLLIN | POLLHUP | POLLERR))) {
			struct msg m;
			ssize_t n = read(st[0], &m, sizeof(m));
			if (n == (ssize_t)sizeof(m)) {
				if (m.kind == M_STARTED)
					started = true;
				else if (m.kind == M_EXECFAIL)
					exec_errno = m.a;
				else if (m.kind == M_EXIT)
					wstatus = m.a;
				else if (m.kind == M_TOOMANY && r->end == PROCX_EXITED)
					r->end = PROCX_TOO_MANY;
				else if (m.kind == M_DONE)
					r->leftovers = (unsigned)m.a;
			} else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
				close(st[0]);
				st[0] = -1;
			}
		}
		if (in[1] >= 0 && (p[3].revents & (POLLOUT | POLLERR | POLLHUP))) {
			ssize_t n = in_off < s->stdin_len
			                ? write(in[1], s->stdin_data + in_off, s->stdin_len - in_off)
			                : 0;
			if (n > 0)
				in_off += (size_t)n;
			if (in_off >= s->stdin_len || (n < 0 && errno != EAGAIN && errno != EINTR)) {
				close(in[1]);
				in[1] = -1;
			}
		}
		int64_t now = now_ms();
		if (!stop_sent && now - last_check >= TICK_MS) {
			last_check = now;
			if (aborted && r->end == PROCX_EXITED)
				r->end = PROCX_ABORTED;
			else if (s->cancelled && s->cancelled(s->arg))
				r->end = PROCX_CANCELLED;
			else if (s->timeout_ms > 0 && now - t0 >= s->timeout_ms)
				r->end = PROCX_TIMEOUT;
			if (r->end != PROCX_EXITED && r->end != PROCX_TOO_MANY && c[1] >= 0) {
				ctl_send(c[1], 'T');
				stop_sent = true;
			}
		}
		if (in[1] >= 0 && wstatus != -1) { /* nobody left to read stdin */
			close(in[1]);
			in[1] = -1;
		}
	}
	while (waitpid(sh, NULL, 0) < 0 && errno == EINTR)
		;
	if (!aborted) {
		struct stream *ss[2] = {so, se};
		for (int i = 0; i < 2; i++)
			if (ss[i]->line_len && s->on_line &&
			    !s->on_line(s->arg, ss[i]->which, ss[i]->line, ss[i]->line_len))
				aborted = true;
		if (aborted && r->end == PROCX_EXITED)
			r->end = PROCX_ABORTED;
	}
	if (!started || exec_errno) {
		rc = exec_errno ? -exec_errno : -ECHILD;
		snprintf(err, errlen, "cannot execute '%s': %s", s->path,
		         exec_errno ? strerror(exec_errno) : "the program did not start");
		goto fail;
	}
	if (wstatus != -1 && WIFEXITED(wstatus))
		r->exit_code = WEXITSTATUS(wstatus);
	else if (wstatus != -1 && WIFSIGNALED(wstatus))
		r->signal = WTERMSIG(wstatus);
	r->ms = now_ms() - t0;
	so->cap[so->cap_len] = '\0';
	se->cap[se->cap_len] = '\0';
	r->out = so->cap;
	r->out_len = so->cap_len;
	r->out_truncated = so->truncated;
	r->err = se->cap;
	r->err_len = se->cap_len;
	r->err_truncated = se->truncated;
	so->cap = se->cap = NULL;
	rc = 0;
fail:
	for (int i = 0; i < 2; i++) {
		int *pp[] = {o, e, c, st, in};
		for (size_t k = 0; k < sizeof(pp) / sizeof(pp[0]); k++)
			if (pp[k][i] >= 0)
				close(pp[k][i]);
	}
	if (so) {
		if (so->fd >= 0 && so->fd != o[0])
			close(so->fd);
		free(so->cap);
	}
	if (se) {
		if (se->fd >= 0 && se->fd != e[0])
			close(se->fd);
		free(se->cap);
	}
	free(so);
	free(se);
	return rc;
}

void procx_result_free(struct procx_result *r)
{
	if (!r)
		return;
	free(r->out);
	free(r->err);
	r->out = r->err = NULL;
}

/* ---- the next-run sweep ---- */

static bool in_list(const pid_t *v, int n, pid_t x)
{
	for (int i = 0; i < n; i++)
		if (v[i] == x)
			return true;
	return false;
}

static int read_all_at(int dirfd, const char *name, struct jv_buf *b)
{
	jv_buf_init(b, 4 << 20);
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	char chunk[4096];
	ssize_t n;
	int rc = 0;
	while ((n = read(fd, chunk, sizeof(chunk))) > 0)
		if ((rc = jv_buf_append(b, chunk, (size_t)n)) < 0)
			break;
	close(fd);
	if (rc == 0)
		rc = jv_buf_append(b, "", 1);
	return rc;
}

static pid_t groups[MAX_RECORDED * 3];
static pid_t killed[MAX_SCAN];
static int nkilled;

/* SIGKILL pid and count it once, however many rounds see it die. */
static void sweep_kill(pid_t pid, unsigned *ended)
{
	if (kill(pid, SIGKILL) != 0 || in_list(killed, nkilled, pid))
		return;
	if (nkilled < MAX_SCAN)
		killed[nkilled++] = pid;
	(*ended)++;
}

/* The ids of groups and sessions a record file names, and the recorded
 * processes still alive with their recorded start time (killed now). A group
 * or session id is trusted only while no other process owns that number with
 * a later start: a pid is not reused while a group or session still carries
 * it, so a number either still means the recorded group or is unused. */
static int sweep_file(const char *text, int ng, unsigned *ended)
{
	uint64_t newest = 0;
	for (int pass = 0; pass < 2; pass++) {
		for (const char *line = text; *line;) {
			char *end;
			long pid = strtol(line, &end, 10);
			unsigned long long start = strtoull(end, &end, 10);
			long pgid = strtol(end, &end, 10);
			long sid = strtol(end, &end, 10);
			const char *nl = strchr(end, '\n');
			if (!nl)
				break; /* a torn last line */
			line = nl + 1;
			if (pid <= 1)
				continue;
			if (pass == 0) {
				if (start > newest)
					newest = start;
				continue;
			}
			struct pinfo p;
			int rs = read_stat((pid_t)pid, &p, false);
			if (rs == 0 && p.start == start && !p.zombie)
				sweep_kill((pid_t)pid, ended);
			long ids[3] = {pid, pgid, sid};
			for (int k = 0; k < 3; k++) {
				if (ids[k] <= 1 || ng >= (int)JV_ARRAY_LEN(groups) ||
				    in_list(groups, ng, (pid_t)ids[k]))
					continue;
				struct pinfo g;
				if (read_stat((pid_t)ids[k], &g, false) == 0 && g.start > newest)
					continue; /* the number was given to a newer process */
				groups[ng++] = (pid_t)ids[k];
			}
		}
	}
	return ng;
}

int procx_sweep(int dirfd, unsigned *ended)
{
	*ended = 0;
	nkilled = 0;
	int lfd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (lfd < 0)
		return -errno;
	struct jv_buf names;
	jv_buf_init(&names, 1 << 20);
	char buf[8192];
	for (;;) {
		long got = syscall(SYS_getdents64, lfd, buf, sizeof(buf));
		if (got <= 0)
			break;
		for (long off = 0; off < got;) {
			struct {
				uint64_t ino;
				int64_t off;
				unsigned short reclen;
				unsigned char type;
				char name[];
			} *d = (void *)(buf + off);
			off += d->reclen;
			if (d->name[0] != '.')
				jv_buf_append(&names, d->name, strlen(d->name) + 1);
		}
	}
	int ng = 0;
	for (size_t off = 0; off < names.len;) {
		const char *name = names.data + off;
		off += strlen(name) + 1;
		struct jv_buf b;
		if (read_all_at(lfd, name, &b) == 0)
			ng = sweep_file(b.data, ng, ended);
		jv_buf_free(&b);
	}
	/* Members of the recorded groups and sessions; again while any appear (a
	 * member may fork between the scan and the kill). */
	for (int round = 0; round < 50 && ng > 0; round++) {
		int n = scan_all(false);
		unsigned hit = 0;
		for (int i = 0; i < n; i++) {
			const struct pinfo *p = &scan_buf[i];
			if (p->zombie || p->pid == getpid())
				continue;
			if ((in_list(groups, ng, p->pgid) || in_list(groups, ng, p->sid)) &&
			    kill(p->pid, 0) == 0) {
				sweep_kill(p->pid, ended);
				hit++;
			}
		}
		if (!hit)
			break;
		struct timespec ts = {0, 10 * 1000000};
		nanosleep(&ts, NULL);
	}
	/* The records go only now: a crash before this line sweeps again. */
	for (size_t off = 0; off < names.len;) {
		const char *name = names.data + off;
		off += strlen(name) + 1;
		unlinkat(lfd, name, 0);
	}
	jv_buf_free(&names);
	fsync(lfd);
	close(lfd);
	return 0;
}
