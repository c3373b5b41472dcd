/* procid.c — pid + start time + boot id identity, pidfd helpers.
 *
 * /proc/PID/stat is parsed here only (jv_proc_stat), after the last ')'
 * because the command name in field 2 may contain spaces and parentheses. */
#include "jobvisor/procid.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

/* The fields after the command name, which may hold spaces and ')'. */
static int parse_stat(const char *line, struct jv_proc_stat *st)
{
	const char *rp = strrchr(line, ')');
	if (!rp || rp[1] != ' ' || !rp[2])
		return -EINVAL;
	memset(st, 0, sizeof(*st));
	st->state = rp[2];
	const char *p = rp + 3;
	for (int field = 4; field <= 22; field++) {
		if (*p != ' ')
			return -EINVAL;
		p++;
		char *end;
		errno = 0;
		long long v = strtoll(p, &end, 10);
		if (errno || end == p)
			return -EINVAL;
		switch (field) {
		case 4: st->ppid = (pid_t)v; break;
		case 5: st->pgid = (pid_t)v; break;
		case 6: st->sid = (pid_t)v; break;
		case 22: st->start_time = (uint64_t)v; break;
		default: break;
		}
		p = end;
	}
	return 0;
}

static int read_stat_at(int dirfd, const char *path, struct jv_proc_stat *st)
{
	char buf[1024];
	int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	int err = errno;
	close(fd);
	if (n <= 0)
		return n < 0 ? (err == ESRCH ? -ESRCH : -err) : -ESRCH;
	buf[n] = '\0';
	return parse_stat(buf, st);
}

int jv_proc_stat(pid_t pid, struct jv_proc_stat *st)
{
	if (pid <= 0)
		return -ESRCH;
	char path[64];
	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	return read_stat_at(AT_FDCWD, path, st);
}

int jv_proc_each(jv_proc_visit fn, void *ud)
{
	DIR *d = opendir("/proc");
	if (!d)
		return -errno;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		char path[300];
		snprintf(path, sizeof(path), "%s/stat", e->d_name);
		struct jv_proc_stat st;
		if (read_stat_at(dirfd(d), path, &st) == 0 && fn(ud, (pid_t)atol(e->d_name), &st))
			break;
	}
	closedir(d);
	return 0;
}

int jv_proc_start_time(pid_t pid, uint64_t *out)
{
	struct jv_proc_stat st;
	int rc = jv_proc_stat(pid, &st);
	if (rc == 0)
		*out = st.start_time;
	return rc;
}

int jv_proc_pgid_sid(pid_t pid, pid_t *pgid, pid_t *sid)
{
	struct jv_proc_stat st;
	int rc = jv_proc_stat(pid, &st);
	if (rc == 0) {
		*pgid = st.pgid;
		*sid = st.sid;
	}
	return rc;
}

int jv_boot_id(char out[JV_BOOT_ID_LEN])
{
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	char buf[64];
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 36)
		return -EIO;
	memcpy(out, buf, 36);
	out[36] = '\0';
	return 0;
}

int jv_pidfd_open(pid_t pid)
{
	long fd = syscall(SYS_pidfd_open, pid, 0);
	if (fd < 0)
		return -errno;
	return (int)fd; /* pidfds are always close-on-exec */
}

int jv_pidfd_signal(int pidfd, int sig)
{
	if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0)
		return -errno;
	return 0;
}

int jv_proc_open_verified(pid_t pid, uint64_t start_time, const char *boot_id, int *pidfd)
{
	*pidfd = -1;
	if (pid <= 1)
		return -ESRCH;
	if (boot_id && *boot_id) {
		char now[JV_BOOT_ID_LEN];
		if (jv_boot_id(now) == 0 && strcmp(now, boot_id) != 0)
			return -ESRCH; /* recorded during an earlier boot */
	}
	int fd = jv_pidfd_open(pid);
	if (fd < 0)
		return fd == -EINVAL ? -ESRCH : fd;
	/* The pidfd now pins whichever process has this pid; if that is not the
	 * one we recorded, its start time differs. */
	uint64_t st;
	int rc = jv_proc_start_time(pid, &st);
	if (rc == 0 && st != start_time)
		rc = -ESRCH;
	if (rc == 0 && jv_pidfd_exited(fd))
		rc = -ESRCH;
	if (rc) {
		close(fd);
		return rc;
	}
	*pidfd = fd;
	return 0;
}

bool jv_pidfd_exited(int pidfd)
{
	struct pollfd p = {.fd = pidfd, .events = POLLIN};
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}
