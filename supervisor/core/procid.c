/* procid.c — pid + start time + boot id identity, pidfd helpers.
 *
 * /proc/PID/stat is parsed after the last ')' because the command name in
 * field 2 may contain spaces and parentheses. */
#include "jobvisor/procid.h"

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

/* Fields after the command: index 0 is field 3 (state). */
static int read_stat_fields(pid_t pid, char *buf, size_t len, char **after)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	ssize_t n = read(fd, buf, len - 1);
	int err = errno;
	close(fd);
	if (n <= 0)
		return n < 0 ? (err == ESRCH ? -ESRCH : -err) : -ESRCH;
	buf[n] = '\0';
	char *rp = strrchr(buf, ')');
	if (!rp || rp[1] != ' ')
		return -EINVAL;
	*after = rp + 2;
	return 0;
}

/* Return field number `field` (1-based as in proc(5)) of the stat line. */
static int stat_field(pid_t pid, int field, unsigned long long *out)
{
	char buf[1024], *p = NULL;
	int rc = read_stat_fields(pid, buf, sizeof(buf), &p);
	if (rc)
		return rc;
	for (int i = 3; i < field; i++) {
		p = strchr(p, ' ');
		if (!p)
			return -EINVAL;
		p++;
	}
	char *end;
	errno = 0;
	*out = strtoull(p, &end, 10);
	if (errno || end == p)
		return -EINVAL;
	return 0;
}

int jv_proc_start_time(pid_t pid, uint64_t *out)
{
	if (pid <= 0)
		return -ESRCH;
	unsigned long long v;
	int rc = stat_field(pid, 22, &v);
	if (rc == 0)
		*out = v;
	return rc;
}

int jv_proc_pgid_sid(pid_t pid, pid_t *pgid, pid_t *sid)
{
	unsigned long long g, s;
	int rc = stat_field(pid, 5, &g);
	if (rc == 0)
		rc = stat_field(pid, 6, &s);
	if (rc == 0) {
		*pgid = (pid_t)g;
		*sid = (pid_t)s;
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
