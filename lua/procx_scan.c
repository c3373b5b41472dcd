/* procx_scan.c — /proc without malloc, for the shepherd after fork (whose
 * heap belongs to the job-run child), the sweep and the process count:
 * system calls and stack buffers only. */
#include "procx_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "jobvisor/procid.h"

int64_t procx_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void procx_close_from(int low)
{
	if (syscall(SYS_close_range, (unsigned)low, ~0u, 0) == 0)
		return;
	for (int fd = low; fd < 65536; fd++)
		close(fd);
}

/* /proc/<pid>/stat through the core's one parser (jv_proc_stat: a stack
 * buffer, no malloc, so the shepherd may call it); with_uid adds the owner. */
int procx_read_stat(pid_t pid, struct pinfo *p, bool with_uid)
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

/* getdents64 on a stack buffer rather than readdir (which allocates). */
void procx_dirents(int dfd, void (*each)(void *ud, const char *name), void *ud)
{
	char buf[8192];
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
			each(ud, d->name);
		}
	}
}

struct scan {
	struct pinfo *out;
	int max, n;
	bool with_uid;
};

static void scan_one(void *ud, const char *name)
{
	struct scan *sc = ud;
	if (name[0] < '1' || name[0] > '9')
		return;
	pid_t pid = (pid_t)strtol(name, NULL, 10);
	if (sc->n < sc->max && procx_read_stat(pid, &sc->out[sc->n], sc->with_uid) == 0)
		sc->n++;
}

/* Not jv_proc_each: the shepherd must not allocate. */
int procx_scan(struct pinfo *out, int max, bool with_uid)
{
	int dfd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	struct scan sc = {.out = out, .max = max, .with_uid = with_uid};
	procx_dirents(dfd, scan_one, &sc);
	close(dfd);
	return sc.n;
}

int procx_count_user(uid_t uid)
{
	struct pinfo *buf = malloc(MAX_SCAN * sizeof(*buf));
	int n = buf ? procx_scan(buf, MAX_SCAN, true) : -ENOMEM;
	int c = 0;
	for (int i = 0; i < n; i++)
		c += buf[i].uid == uid;
	free(buf);
	return n < 0 ? -1 : c;
}
