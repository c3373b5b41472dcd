/* durable.c — atomic, durable file replacement and small file I/O helpers.
 *
 * The pattern is always: write a temp file in the target directory, fsync it,
 * rename over the final name, fsync the directory. An fsync failure is final:
 * the temp file is removed and the error returned (see fsyncgate: after a
 * failed fsync, retrying may report success for data that is gone). */
#include "jobvisor/durable.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int jv_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

int jv_fsync_dirfd(int dirfd)
{
	if (fsync(dirfd) < 0 && errno != EINVAL) /* EINVAL: fs without dir fsync */
		return -errno;
	return 0;
}

int jv_fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = jv_fsync_dirfd(fd);
	close(fd);
	return rc;
}

/* Write temp, [fsync], rename, [fsync dir]. */
static int write_replace_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode,
                            bool durable)
{
	char tmp[NAME_MAX + 1];
	int n = snprintf(tmp, sizeof(tmp), ".%s.tmp.%ld", name, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp) || strchr(name, '/'))
		return -ENAMETOOLONG;
	int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0)
		return -errno;
	int rc = jv_write_all(fd, data, len);
	if (rc == 0 && durable && fsync(fd) < 0)
		rc = -errno;
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		rc = -errno;
	if (rc != 0) {
		unlinkat(dirfd, tmp, 0);
		return rc;
	}
	return durable ? jv_fsync_dirfd(dirfd) : 0;
}

int jv_durable_write_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode)
{
	return write_replace_at(dirfd, name, data, len, mode, true);
}

int jv_atomic_write_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode)
{
	return write_replace_at(dirfd, name, data, len, mode, false);
}

int jv_durable_write(const char *path, const void *data, size_t len, mode_t mode)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(path, '/');
	const char *name = slash ? slash + 1 : path;
	if (!slash) {
		snprintf(dir, sizeof(dir), ".");
	} else if (slash == path) {
		snprintf(dir, sizeof(dir), "/");
	} else {
		size_t n = (size_t)(slash - path);
		if (n >= sizeof(dir))
			return -ENAMETOOLONG;
		memcpy(dir, path, n);
		dir[n] = '\0';
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	int rc = jv_durable_write_at(dfd, name, data, len, mode);
	close(dfd);
	return rc;
}

static bool is_durable_temp(const char *name)
{
	if (name[0] != '.')
		return false;
	const char *t = strstr(name, ".tmp.");
	if (!t || t == name)
		return false;
	const char *d = t + 5;
	if (!*d)
		return false;
	for (; *d; d++)
		if (*d < '0' || *d > '9')
			return false;
	return true;
}

int jv_durable_cleanup_temps(int dirfd)
{
	int fd = dup(dirfd);
	if (fd < 0)
		return 0;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return 0;
	}
	rewinddir(d);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (is_durable_temp(e->d_name) && unlinkat(dirfd, e->d_name, 0) == 0)
			n++;
	closedir(d);
	if (n > 0)
		jv_fsync_dirfd(dirfd);
	return n;
}

int jv_durable_rename_at(int olddirfd, const char *oldname, int newdirfd, const char *newname)
{
	if (renameat(olddirfd, oldname, newdirfd, newname) < 0)
		return -errno;
	int rc = jv_fsync_dirfd(newdirfd);
	if (rc == 0 && olddirfd != newdirfd)
		rc = jv_fsync_dirfd(olddirfd);
	return rc;
}

int jv_read_file_at(int dirfd, const char *name, size_t max, char **out, size_t *outlen)
{
	*out = NULL;
	if (outlen)
		*outlen = 0;
	/* O_NONBLOCK: opening a FIFO for reading would wait for a writer. Harmless
	 * for the regular files this reads. */
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	struct stat st = {0};
	errno = 0;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		int rc = errno == 0 ? -EINVAL : -errno;
		if (S_ISDIR(st.st_mode))
			rc = -EISDIR;
		close(fd);
		return rc;
	}
	size_t cap = (size_t)st.st_size + 1, len = 0;
	if ((size_t)st.st_size > max) {
		close(fd);
		return -EFBIG;
	}
	char *buf = malloc(cap);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	for (;;) {
		if (len + 1 >= cap) {
			if (cap > max + 1) {
				free(buf);
				close(fd);
				return -EFBIG;
			}
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				close(fd);
				return -ENOMEM;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t r = read(fd, buf + len, cap - 1 - len);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			int rc = -errno;
			free(buf);
			close(fd);
			return rc;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	if (len > max) {
		free(buf);
		return -EFBIG;
	}
	buf[len] = '\0';
	*out = buf;
	if (outlen)
		*outlen = len;
	return 0;
}

/* mkdir of every prefix of tmp (edited in place and restored), then of tmp. */
static int mkdir_walk(char *tmp, mode_t mode)
{
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int jv_mkdir_p(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof(tmp))
		return -ENAMETOOLONG;
	memcpy(tmp, path, n + 1);
	/* Mostly the directory is there already and one mkdir says so; the walk
	 * from the root only when a parent is missing. */
	if (mkdir(tmp, mode) < 0 && errno != EEXIST) {
		if (errno != ENOENT)
			return -errno;
		int rc = mkdir_walk(tmp, mode);
		if (rc < 0)
			return rc;
	}
	struct stat st;
	if (stat(tmp, &st) < 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

const char *jv_read_strerror(int rc)
{
	return rc == -EINVAL ? "not a regular file" : strerror(-rc);
}
