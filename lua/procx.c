/* procx.c — the job-run side of proc.run: pipes, the shepherd's fork, the
 * output streams and their lines, stdin, the stop request and the result.
 * The shepherd and the program are in procx_shepherd.c, the next-run sweep
 * in procx_sweep.c, /proc reading in procx_scan.c; see procx.h for the
 * process layout and guarantees. */
#include "procx_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jobvisor/util.h"

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

/* A stream capturing up to cap_max bytes; NULL when out of memory. */
static struct stream *new_stream(int which, size_t cap_max)
{
	struct stream *ss = calloc(1, sizeof(*ss));
	if (!ss)
		return NULL;
	ss->fd = -1;
	ss->which = which;
	ss->cap_max = cap_max;
	ss->cap = malloc(cap_max + 1);
	if (!ss->cap) {
		free(ss);
		return NULL;
	}
	return ss;
}

/* pipe_fd: the pipe end already closed by the caller, if ss still names it. */
static void free_stream(struct stream *ss, int pipe_fd)
{
	if (!ss)
		return;
	if (ss->fd >= 0 && ss->fd != pipe_fd)
		close(ss->fd);
	free(ss->cap);
	free(ss);
}

/* The captured output moves into the result. */
static void take_output(struct procx_result *r, struct stream *so, struct stream *se)
{
	so->cap[so->cap_len] = '\0';
	se->cap[se->cap_len] = '\0';
	r->out = so->cap;
	r->out_len = so->cap_len;
	r->out_truncated = so->truncated;
	r->err = se->cap;
	r->err_len = se->cap_len;
	r->err_truncated = se->truncated;
	so->cap = se->cap = NULL;
}

/* RLIMIT_NPROC counts every process of the user: allow max_procs more than now. */
static struct rlimit nproc_limit(int max_procs)
{
	struct rlimit nproc = {RLIM_INFINITY, RLIM_INFINITY};
	int have = procx_count_user(getuid());
	if (have >= 0 && getuid() != 0) {
		struct rlimit cur;
		rlim_t want = (rlim_t)have + (rlim_t)max_procs;
		if (getrlimit(RLIMIT_NPROC, &cur) == 0 && cur.rlim_max != RLIM_INFINITY &&
		    cur.rlim_max < want)
			want = cur.rlim_max;
		nproc.rlim_cur = nproc.rlim_max = want;
	}
	return nproc;
}

/* The job-run side of a running program: its output streams, the
 * shepherd's status pipe (st: read end), the program's stdin (in: write
 * end), the control pipe to the shepherd (ctl: write end). */
struct pump {
	const struct procx_spec *s;
	struct procx_result *r;
	struct stream *so, *se;
	int *st, *in, ctl;
	int64_t t0;
	bool started, aborted;
	int exec_errno, wstatus;
};

/* Until the output and status pipes close: read output (lines to on_line),
 * the shepherd's messages, feed stdin, and ask the shepherd to stop the
 * program on an on_line error, a cancel or the timeout. */
static void pump(struct pump *pm)
{
	const struct procx_spec *s = pm->s;
	struct procx_result *r = pm->r;
	struct stream *so = pm->so, *se = pm->se;
	int *st = pm->st, *in = pm->in; /* st[0] and in[0] here are the caller's st[0], in[0] */
	size_t in_off = 0;
	bool stop_sent = false;
	int64_t last_check = 0;
	for (;;) {
		struct pollfd p[4] = {
			{.fd = so->fd, .events = POLLIN},
			{.fd = se->fd, .events = POLLIN},
			{.fd = st[0], .events = POLLIN},
			{.fd = in[0], .events = POLLOUT},
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
				if (!pm->aborted && !feed(s, ss[i], buf, (size_t)n))
					pm->aborted = true;
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
					pm->started = true;
				else if (m.kind == M_EXECFAIL)
					pm->exec_errno = m.a;
				else if (m.kind == M_EXIT)
					pm->wstatus = m.a;
				else if (m.kind == M_TOOMANY && r->end == PROCX_EXITED)
					r->end = PROCX_TOO_MANY;
				else if (m.kind == M_DONE)
					r->leftovers = (unsigned)m.a;
			} else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
				close(st[0]);
				st[0] = -1;
			}
		}
		if (in[0] >= 0 && (p[3].revents & (POLLOUT | POLLERR | POLLHUP))) {
			ssize_t n = in_off < s->stdin_len
			                ? write(in[0], s->stdin_data + in_off, s->stdin_len - in_off)
			                : 0;
			if (n > 0)
				in_off += (size_t)n;
			if (in_off >= s->stdin_len || (n < 0 && errno != EAGAIN && errno != EINTR)) {
				close(in[0]);
				in[0] = -1;
			}
		}
		int64_t now = procx_now_ms();
		if (!stop_sent && now - last_check >= TICK_MS) {
			last_check = now;
			if (pm->aborted && r->end == PROCX_EXITED)
				r->end = PROCX_ABORTED;
			else if (s->cancelled && s->cancelled(s->arg))
				r->end = PROCX_CANCELLED;
			else if (s->timeout_ms > 0 && now - pm->t0 >= s->timeout_ms)
				r->end = PROCX_TIMEOUT;
			if (r->end != PROCX_EXITED && r->end != PROCX_TOO_MANY && pm->ctl >= 0) {
				ctl_send(pm->ctl, 'T');
				stop_sent = true;
			}
		}
		if (in[0] >= 0 && pm->wstatus != -1) { /* nobody left to read stdin */
			close(in[0]);
			in[0] = -1;
		}
	}
}

int procx_run(const struct procx_spec *s, struct procx_result *r, char *err, size_t errlen)
{
	memset(r, 0, sizeof(*r));
	r->exit_code = -1;
	err[0] = '\0';
	int64_t t0 = procx_now_ms();
	int o[2] = {-1, -1}, e[2] = {-1, -1}, c[2] = {-1, -1}, st[2] = {-1, -1}, in[2] = {-1, -1};
	struct stream *so = new_stream(PROCX_STDOUT, s->capture_max);
	struct stream *se = new_stream(PROCX_STDERR, s->capture_max);
	int rc = 0;
	if (!so || !se) {
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
	struct rlimit nproc = nproc_limit(s->max_procs);
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
		procx_shepherd(s, fds, nproc); /* never returns */
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
	struct pump pm = {.s = s, .r = r, .so = so, .se = se, .st = &st[0], .in = &in[1], .ctl = c[1],
	                  .t0 = t0, .wstatus = -1};
	pump(&pm);
	bool aborted = pm.aborted;
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
	if (!pm.started || pm.exec_errno) {
		rc = pm.exec_errno ? -pm.exec_errno : -ECHILD;
		snprintf(err, errlen, "cannot execute '%s': %s", s->path,
		         pm.exec_errno ? strerror(pm.exec_errno) : "the program did not start");
		goto fail;
	}
	if (pm.wstatus != -1 && WIFEXITED(pm.wstatus))
		r->exit_code = WEXITSTATUS(pm.wstatus);
	else if (pm.wstatus != -1 && WIFSIGNALED(pm.wstatus))
		r->signal = WTERMSIG(pm.wstatus);
	r->ms = procx_now_ms() - t0;
	take_output(r, so, se);
	rc = 0;
fail:
	for (int i = 0; i < 2; i++) {
		int *pp[] = {o, e, c, st, in};
		for (size_t k = 0; k < sizeof(pp) / sizeof(pp[0]); k++)
			if (pp[k][i] >= 0)
				close(pp[k][i]);
	}
	free_stream(so, o[0]);
	free_stream(se, e[0]);
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
