/* procx_sweep.c — the next-run sweep: what a killed job run's programs left
 * behind, from the records the shepherd wrote (see procx.h). Runs in the
 * job-run child before the script; may allocate. */
#include "procx_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "jobvisor/util.h"

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

/* The sweep's working memory. */
struct sweep {
	struct pinfo scan[MAX_SCAN];
	pid_t groups[MAX_RECORDED * 3];
	int ng;
	pid_t killed[MAX_SCAN];
	int nkilled;
	unsigned ended;
};

/* SIGKILL pid and count it once, however many rounds see it die. */
static void sweep_kill(struct sweep *w, pid_t pid)
{
	if (kill(pid, SIGKILL) != 0 || in_list(w->killed, w->nkilled, pid))
		return;
	if (w->nkilled < MAX_SCAN)
		w->killed[w->nkilled++] = pid;
	w->ended++;
}

/* The ids of groups and sessions a record file names, and the recorded
 * processes still alive with their recorded start time (killed now). A group
 * or session id is trusted only while no other process owns that number with
 * a later start: a pid is not reused while a group or session still carries
 * it, so a number either still means the recorded group or is unused. */
static void sweep_file(struct sweep *w, const char *text)
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
			int rs = procx_read_stat((pid_t)pid, &p, false);
			if (rs == 0 && p.start == start && !p.zombie)
				sweep_kill(w, (pid_t)pid);
			long ids[3] = {pid, pgid, sid};
			for (int k = 0; k < 3; k++) {
				if (ids[k] <= 1 || w->ng >= (int)JV_ARRAY_LEN(w->groups) ||
				    in_list(w->groups, w->ng, (pid_t)ids[k]))
					continue;
				struct pinfo g;
				if (procx_read_stat((pid_t)ids[k], &g, false) == 0 && g.start > newest)
					continue; /* the number was given to a newer process */
				w->groups[w->ng++] = (pid_t)ids[k];
			}
		}
	}
}

/* Record names in the records directory (dot files aside), NUL-separated. */
static void add_name(void *ud, const char *name)
{
	if (name[0] != '.')
		jv_buf_append(ud, name, strlen(name) + 1);
}

/* Members of the recorded groups and sessions; again while any appear (a
 * member may fork between the scan and the kill). */
static void sweep_members(struct sweep *w)
{
	for (int round = 0; round < 50 && w->ng > 0; round++) {
		int n = procx_scan(w->scan, MAX_SCAN, false);
		unsigned hit = 0;
		for (int i = 0; i < n; i++) {
			const struct pinfo *p = &w->scan[i];
			if (p->zombie || p->pid == getpid())
				continue;
			if ((in_list(w->groups, w->ng, p->pgid) || in_list(w->groups, w->ng, p->sid)) &&
			    kill(p->pid, 0) == 0) {
				sweep_kill(w, p->pid);
				hit++;
			}
		}
		if (!hit)
			break;
		struct timespec ts = {0, 10 * 1000000};
		nanosleep(&ts, NULL);
	}
}

int procx_sweep(int dirfd, unsigned *ended)
{
	*ended = 0;
	struct sweep *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	int lfd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (lfd < 0) {
		int rc = -errno;
		free(w);
		return rc;
	}
	struct jv_buf names;
	jv_buf_init(&names, 1 << 20);
	procx_dirents(lfd, add_name, &names);
	for (size_t off = 0; off < names.len;) {
		const char *name = names.data + off;
		off += strlen(name) + 1;
		struct jv_buf b;
		if (read_all_at(lfd, name, &b) == 0)
			sweep_file(w, b.data);
		jv_buf_free(&b);
	}
	sweep_members(w);
	/* The records go only now: a crash before this line sweeps again. */
	for (size_t off = 0; off < names.len;) {
		const char *name = names.data + off;
		off += strlen(name) + 1;
		unlinkat(lfd, name, 0);
	}
	jv_buf_free(&names);
	fsync(lfd);
	close(lfd);
	*ended = w->ended;
	free(w);
	return 0;
}
