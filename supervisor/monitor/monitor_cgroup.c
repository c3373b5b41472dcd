/* monitor_cgroup.c — the instance's cgroup v2 leaf, when one can be made.
 *
 * Where: the setting `cgroup_parent` (a directory in the cgroup2 mount that
 * this user may write, e.g. a systemd Delegate=yes subtree), else the
 * monitor's own cgroup. The leaf is "jobvisor-<instanceId>-<hash of the
 * instance dir>", so two data dirs never share one. A leaf under a cgroup
 * that still holds processes cannot get controllers (cgroup v2's "no internal
 * processes" rule): it then still gives tree tracking and cgroup.kill, but
 * memory/CPU/pids limits are only applied when the parent delegates those
 * controllers, and a warning says so otherwise.
 *
 * Everything here is best effort: without a writable cgroup2 mount the
 * monitor falls back to process-group signals (monitor_proc.c). */
#include "monitor_cgroup.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int read_small(int dirfd, const char *name, char *buf, size_t len)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, len - 1);
	int e = errno;
	close(fd);
	if (n < 0)
		return -e;
	buf[n] = '\0';
	return (int)n;
}

static int write_small(int dirfd, const char *name, const char *val)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, val, strlen(val));
	int e = errno;
	close(fd);
	return n < 0 ? -e : 0;
}

/* The cgroup2 mount point, from /proc/self/mountinfo. */
static int cgroup2_mount(char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -errno;
	char line[1024];
	int rc = -ENOENT;
	while (rc && fgets(line, sizeof(line), f)) {
		char *sep = strstr(line, " - cgroup2 ");
		if (!sep)
			continue;
		/* fields: id parent major:minor root mountpoint ... */
		char *p = line;
		for (int i = 0; i < 4 && p; i++) {
			p = strchr(p, ' ');
			if (p)
				p++;
		}
		char *end = p ? strchr(p, ' ') : NULL;
		if (end && (size_t)(end - p) < len) {
			memcpy(out, p, (size_t)(end - p));
			out[end - p] = '\0';
			rc = 0;
		}
	}
	fclose(f);
	return rc;
}

static int own_cgroup(char *out, size_t len)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	if (!f)
		return -errno;
	char line[1024];
	int rc = -ENOENT;
	while (rc && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "0::", 3) != 0)
			continue;
		line[strcspn(line, "\n")] = '\0';
		if (strlen(line + 3) < len) {
			snprintf(out, len, "%s", line + 3);
			rc = 0;
		}
	}
	fclose(f);
	return rc;
}

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

int cg_open_existing(struct monitor *m, const char *path)
{
	if (!path || path[0] != '/' || strlen(path) >= sizeof(m->cg.path))
		return -EINVAL;
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (faccessat(fd, "cgroup.procs", W_OK, 0) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	if (m->cg.dirfd >= 0)
		close(m->cg.dirfd);
	m->cg.dirfd = fd;
	snprintf(m->cg.path, sizeof(m->cg.path), "%s", path);
	m->cg.active = true;
	return 0;
}

int cg_create(struct monitor *m, char *err, size_t errlen)
{
	char mount[PATH_MAX], parent[PATH_MAX], own[PATH_MAX], leaf[PATH_MAX];
	const char *conf = jv_json_str(m->settings, "cgroup_parent", NULL);
	if (cgroup2_mount(mount, sizeof(mount)) < 0) {
		snprintf(err, errlen, "no cgroup2 mount");
		return -ENOENT;
	}
	if (conf) {
		if (conf[0] != '/' || strncmp(conf, mount, strlen(mount)) != 0) {
			snprintf(err, errlen, "cgroup_parent '%s' is not inside the cgroup2 mount '%s'", conf,
			         mount);
			return -EINVAL;
		}
		snprintf(parent, sizeof(parent), "%s", conf);
	} else {
		if (own_cgroup(own, sizeof(own)) < 0) {
			snprintf(err, errlen, "cannot read /proc/self/cgroup");
			return -ENOENT;
		}
		if (snprintf(parent, sizeof(parent), "%s%s", mount, strcmp(own, "/") == 0 ? "" : own) >=
		    (int)sizeof(parent))
			return -ENAMETOOLONG;
	}
	if (snprintf(leaf, sizeof(leaf), "%s/jobvisor-%s-%08llx", parent, m->instance_id,
	             (unsigned long long)(fnv1a(m->instance_dir) & 0xffffffffULL)) >= (int)sizeof(leaf))
		return -ENAMETOOLONG;
	if (mkdir(leaf, 0755) < 0 && errno != EEXIST) {
		snprintf(err, errlen, "cannot create '%s': %s", leaf, strerror(errno));
		return -errno;
	}
	int rc = cg_open_existing(m, leaf);
	if (rc < 0) {
		snprintf(err, errlen, "cannot use '%s': %s", leaf, strerror(-rc));
		rmdir(leaf);
	}
	return rc;
}

static void enable_controller(struct monitor *m, const char *name)
{
	char parent[PATH_MAX], have[512];
	snprintf(parent, sizeof(parent), "%s", m->cg.path);
	char *slash = strrchr(parent, '/');
	if (!slash)
		return;
	*slash = '\0';
	int pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (pfd < 0)
		return;
	if (read_small(pfd, "cgroup.subtree_control", have, sizeof(have)) >= 0 && !strstr(have, name)) {
		char add[32];
		snprintf(add, sizeof(add), "+%s", name);
		write_small(pfd, "cgroup.subtree_control", add);
	}
	close(pfd);
}

static void limit(struct monitor *m, const char *controller, const char *file, const char *val)
{
	enable_controller(m, controller);
	int rc = write_small(m->cg.dirfd, file, val);
	if (rc < 0)
		jv_warn(NULL, NULL,
		        "instance %s: limit %s=%s not applied (%s controller not delegated to '%s'): %s",
		        m->instance_id, file, val, controller, m->cg.path, strerror(-rc));
}

int cg_apply_limits(struct monitor *m)
{
	if (!m->cg.active || !m->spec)
		return 0;
	char v[64];
	if (m->spec->memory_mb > 0) {
		snprintf(v, sizeof(v), "%lld", m->spec->memory_mb * 1024 * 1024);
		limit(m, "memory", "memory.max", v);
	}
	if (m->spec->cpus > 0) {
		snprintf(v, sizeof(v), "%lld 100000", (long long)(m->spec->cpus * 100000));
		limit(m, "cpu", "cpu.max", v);
	}
	if (m->spec->pids > 0) {
		snprintf(v, sizeof(v), "%lld", m->spec->pids);
		limit(m, "pids", "pids.max", v);
	}
	return 0;
}

int cg_procs_fd(struct monitor *m)
{
	return m->cg.active ? openat(m->cg.dirfd, "cgroup.procs", O_WRONLY | O_CLOEXEC) : -1;
}

static size_t read_procs(struct monitor *m, pid_t *out, size_t max)
{
	char buf[8192];
	if (read_small(m->cg.dirfd, "cgroup.procs", buf, sizeof(buf)) < 0)
		return 0;
	size_t n = 0;
	for (char *p = buf; *p && n < max;) {
		char *end;
		long v = strtol(p, &end, 10);
		if (end == p)
			break;
		out[n++] = (pid_t)v;
		p = end;
		while (*p == '\n')
			p++;
	}
	return n;
}

bool cg_contains(struct monitor *m, pid_t pid)
{
	pid_t procs[1024];
	size_t n = read_procs(m, procs, JV_ARRAY_LEN(procs));
	for (size_t i = 0; i < n; i++)
		if (procs[i] == pid)
			return true;
	return false;
}

bool cg_populated(struct monitor *m)
{
	char buf[256];
	if (read_small(m->cg.dirfd, "cgroup.events", buf, sizeof(buf)) < 0)
		return false;
	return strstr(buf, "populated 1") != NULL;
}

void cg_signal(struct monitor *m, int sig)
{
	/* Members of our own leaf: a pid listed here cannot be reused while it is
	 * listed, and the race between reading and kill() is a few microseconds. */
	pid_t procs[1024];
	size_t n = read_procs(m, procs, JV_ARRAY_LEN(procs));
	for (size_t i = 0; i < n; i++)
		kill(procs[i], sig);
}

void cg_kill(struct monitor *m)
{
	if (write_small(m->cg.dirfd, "cgroup.kill", "1") < 0)
		cg_signal(m, SIGKILL); /* kernels before 5.14 */
}

uint64_t cg_oom_kills(struct monitor *m)
{
	char buf[512];
	if (read_small(m->cg.dirfd, "memory.events", buf, sizeof(buf)) < 0)
		return 0;
	const char *p = strstr(buf, "oom_kill ");
	return p ? strtoull(p + 9, NULL, 10) : 0;
}

void cg_remove(struct monitor *m)
{
	if (m->cg.dirfd >= 0)
		close(m->cg.dirfd);
	m->cg.dirfd = -1;
	if (m->cg.active && m->cg.path[0])
		rmdir(m->cg.path); /* fails while populated; then it stays for the next run */
	m->cg.active = false;
	m->cg.path[0] = '\0';
}
