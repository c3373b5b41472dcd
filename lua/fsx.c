/* fsx.c — the confined file operations behind the `fs` module.
 *
 * Every operation resolves its path(s) through fsx_open/fsx_parent
 * (fsx_resolve.c) and then acts with *at() calls on the descriptors it got,
 * so nothing here can be redirected outside the root by a symlink planted
 * between a check and a use. Durability follows the one pattern of
 * include/jobvisor/durable.h: data fsynced, renamed, parent fsynced; an fsync
 * error fails the operation. What publishes a tree (commit, swap, link_swap)
 * makes it durable with one syncfs of its filesystem before the rename
 * (sync_for_publish). Staging directories live under
 * .jobvisor/staging/<runId>/. No Lua and no logging here: callers turn the
 * returned codes into messages (fsx_strerror). */
#include "fsx.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/util.h"

#define FSX_IO_CHUNK (1u << 20)
#define FSX_MAX_DEPTH 1024

int fsx_lstat(const struct fsx *fx, const char *norm, struct stat *st)
{
	if (strcmp(norm, ".") == 0)
		return fstat(fx->root_fd, st) < 0 ? -errno : 0;
	int pfd;
	const char *last;
	int rc = fsx_parent(fx, norm, 0, &pfd, &last);
	if (rc < 0)
		return rc;
	if (fstatat(pfd, last, st, AT_SYMLINK_NOFOLLOW) < 0)
		rc = -errno;
	close(pfd);
	return rc;
}

int fsx_readlink(const struct fsx *fx, const char *norm, char *buf, size_t len)
{
	int pfd;
	const char *last;
	int rc = fsx_parent(fx, norm, 0, &pfd, &last);
	if (rc < 0)
		return rc;
	ssize_t n = readlinkat(pfd, last, buf, len);
	if (n < 0)
		rc = -errno;
	else if ((size_t)n >= len)
		rc = -ENAMETOOLONG;
	else
		buf[n] = '\0';
	close(pfd);
	return rc;
}

static int dirent_cmp(const void *a, const void *b)
{
	return strcmp(((const struct fsx_dirent *)a)->name, ((const struct fsx_dirent *)b)->name);
}

int fsx_list_fd(int dfd, struct fsx_list *out)
{
	out->v = NULL;
	out->n = 0;
	DIR *d;
	int rc = jv_opendir_at(dfd, &d);
	if (rc)
		return rc;
	size_t cap = 0;
	struct dirent *de;
	for (;;) {
		errno = 0;
		de = readdir(d);
		if (!de) {
			rc = -errno;
			break;
		}
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (out->n == cap) {
			size_t nc = cap ? cap * 2 : 32;
			struct fsx_dirent *v = realloc(out->v, nc * sizeof(*v));
			if (!v) {
				rc = -ENOMEM;
				break;
			}
			out->v = v;
			cap = nc;
		}
		struct fsx_dirent *e = &out->v[out->n];
		if (fstatat(dfd, de->d_name, &e->st, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno == ENOENT) /* vanished meanwhile */
				continue;
			rc = -errno;
			break;
		}
		e->name = strdup(de->d_name);
		if (!e->name) {
			rc = -ENOMEM;
			break;
		}
		out->n++;
	}
	closedir(d);
	if (rc < 0) {
		fsx_list_free(out);
		return rc;
	}
	if (out->n > 1)
		qsort(out->v, out->n, sizeof(*out->v), dirent_cmp);
	return 0;
}

int fsx_list(const struct fsx *fx, const char *norm, struct fsx_list *out)
{
	out->v = NULL;
	out->n = 0;
	int fd;
	int rc = fsx_open(fx, norm, O_RDONLY | O_DIRECTORY, 0, 0, &fd);
	if (rc < 0)
		return rc;
	rc = fsx_list_fd(fd, out);
	close(fd);
	return rc;
}

void fsx_list_free(struct fsx_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].name);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

/* mkdir of one normalised path whose parent exists; an existing directory is fine
 * when ok_exists. */
static int mkdir_one(const struct fsx *fx, const char *norm, mode_t mode, bool ok_exists)
{
	int pfd;
	const char *last;
	int rc = fsx_parent(fx, norm, 0, &pfd, &last);
	if (rc < 0)
		return rc;
	if (mkdirat(pfd, last, mode) < 0) {
		rc = -errno;
		if (rc == -EEXIST && ok_exists) {
			/* Fine if it is (or leads, beneath the root, to) a directory. */
			int dfd;
			rc = fsx_open(fx, norm, O_PATH | O_DIRECTORY, 0, 0, &dfd);
			if (rc == 0)
				close(dfd);
		}
	}
	close(pfd);
	return rc;
}

int fsx_mkdir(const struct fsx *fx, const char *norm, mode_t mode, bool parents)
{
	if (strcmp(norm, ".") == 0)
		return parents ? 0 : -EEXIST;
	if (!parents)
		return mkdir_one(fx, norm, mode, false);
	char pre[FSX_PATH_MAX];
	size_t len = strlen(norm);
	for (size_t i = 1; i <= len; i++) {
		if (norm[i] != '/' && norm[i] != '\0')
			continue;
		memcpy(pre, norm, i);
		pre[i] = '\0';
		int rc = mkdir_one(fx, pre, mode, true);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Open a regular file for reading; FIFOs and devices are refused without blocking. */
static int open_regular(const struct fsx *fx, const char *norm, int *fd, struct stat *st)
{
	int rc = fsx_open(fx, norm, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0, 0, fd);
	if (rc < 0)
		return rc;
	if (fstat(*fd, st) < 0 || !S_ISREG(st->st_mode)) {
		rc = S_ISDIR(st->st_mode) ? -EISDIR : -EINVAL;
		close(*fd);
		*fd = -1;
		return rc;
	}
	int fl = fcntl(*fd, F_GETFL);
	if (fl >= 0)
		fcntl(*fd, F_SETFL, fl & ~O_NONBLOCK);
	return 0;
}

int fsx_read(const struct fsx *fx, const char *norm, size_t max, char **data, size_t *len)
{
	*data = NULL;
	*len = 0;
	int fd;
	struct stat st;
	int rc = open_regular(fx, norm, &fd, &st);
	if (rc < 0)
		return rc;
	if ((uint64_t)st.st_size > max) {
		close(fd);
		return -EFBIG;
	}
	struct jv_buf b;
	jv_buf_init(&b, max);
	char chunk[65536];
	for (;;) {
		ssize_t n = read(fd, chunk, sizeof(chunk));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		if (n == 0)
			break;
		rc = jv_buf_append(&b, chunk, (size_t)n);
		if (rc < 0)
			break;
	}
	close(fd);
	if (rc < 0) {
		jv_buf_free(&b);
		return rc;
	}
	if (!b.data) { /* empty file: still hand back a string */
		b.data = calloc(1, 1);
		if (!b.data)
			return -ENOMEM;
	}
	*data = b.data;
	*len = b.len;
	return 0;
}

int fsx_write(const struct fsx *fx, const char *norm, const void *data, size_t len, mode_t mode)
{
	int pfd;
	const char *last;
	int rc = fsx_parent(fx, norm, 0, &pfd, &last);
	if (rc < 0)
		return rc;
	rc = jv_durable_write_at(pfd, last, data, len, mode);
	close(pfd);
	return rc;
}

int fsx_remove(const struct fsx *fx, const char *norm, bool *removed)
{
	*removed = false;
	int pfd;
	const char *last;
	int rc = fsx_parent(fx, norm, 0, &pfd, &last);
	if (rc == -ENOENT)
		return 0;
	if (rc < 0)
		return rc;
	if (unlinkat(pfd, last, 0) < 0) {
		rc = -errno;
		if (rc == -EISDIR && unlinkat(pfd, last, AT_REMOVEDIR) == 0)
			rc = 0;
		else if (rc == -EISDIR)
			rc = -errno;
	}
	if (rc == 0)
		*removed = true;
	else if (rc == -ENOENT)
		rc = 0;
	close(pfd);
	return rc;
}

/* unlinkat that, on EACCES/EPERM, makes the directory writable once (extracted
 * trees may contain read-only directories we own) and retries. */
static int unlink_entry(int dfd, const char *name, int flags)
{
	if (unlinkat(dfd, name, flags) == 0)
		return 0;
	int rc = -errno;
	if (rc == -EACCES || rc == -EPERM) {
		struct stat st;
		if (fstat(dfd, &st) == 0 && fchmod(dfd, (st.st_mode & 07777) | 0700) == 0 &&
		    unlinkat(dfd, name, flags) == 0)
			return 0;
	}
	return rc == -ENOENT ? 0 : rc;
}

static int clear_dir(int dfd, int depth, uint64_t *count, const struct jv_io_hooks *hooks)
{
	if (depth > FSX_MAX_DEPTH)
		return -ELOOP;
	/* Make sure we may delete inside (a read-only directory we own). */
	struct stat dst;
	if (fstat(dfd, &dst) == 0 && (dst.st_mode & 0700) != 0700)
		fchmod(dfd, (dst.st_mode & 07777) | 0700);
	for (int pass = 0; pass < 3; pass++) {
		struct fsx_list l;
		int rc = fsx_list_fd(dfd, &l);
		if (rc < 0)
			return rc;
		if (l.n == 0) {
			fsx_list_free(&l);
			return 0;
		}
		for (size_t i = 0; i < l.n && rc == 0; i++) {
			const char *name = l.v[i].name;
			if (jv_io_tick(hooks, ++*count, 0)) {
				rc = -ECANCELED;
				break;
			}
			if (S_ISDIR(l.v[i].st.st_mode)) {
				int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
				if (sub < 0) {
					rc = (errno == ENOTDIR || errno == ELOOP) ? unlink_entry(dfd, name, 0)
					                                          : (errno == ENOENT ? 0 : -errno);
					continue;
				}
				rc = clear_dir(sub, depth + 1, count, hooks);
				close(sub);
				if (rc == 0)
					rc = unlink_entry(dfd, name, AT_REMOVEDIR);
			} else {
				rc = unlink_entry(dfd, name, 0);
			}
		}
		fsx_list_free(&l);
		if (rc < 0)
			return rc;
	}
	return -ENOTEMPTY; /* something keeps refilling it */
}

int fsx_clear_dirfd(int dirfd, const struct jv_io_hooks *hooks)
{
	uint64_t count = 0;
	return clear_dir(dirfd, 0, &count, hooks);
}

int fsx_remove_tree(const struct fsx *fx, const char *norm, bool *removed,
                    const struct jv_io_hooks *hooks)
{
	*removed = false;
	int pfd;
	const char *last;
	int rc = fsx_parent(fx, norm, FSX_NO_SYMLINKS, &pfd, &last);
	if (rc == -ENOENT)
		return 0;
	if (rc < 0)
		return rc;
	struct stat st;
	if (fstatat(pfd, last, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		rc = errno == ENOENT ? 0 : -errno;
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		int dfd = openat(pfd, last, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (dfd < 0) {
			rc = -errno;
			goto out;
		}
		rc = fsx_clear_dirfd(dfd, hooks);
		close(dfd);
		if (rc == 0)
			rc = unlink_entry(pfd, last, AT_REMOVEDIR);
	} else {
		rc = unlink_entry(pfd, last, 0);
	}
	if (rc == 0)
		*removed = true;
out:
	close(pfd);
	return rc;
}

static int fsync_dir_tree(int dfd, int depth, const struct jv_io_hooks *hooks)
{
	if (depth > FSX_MAX_DEPTH)
		return -ELOOP;
	struct fsx_list l;
	int rc = fsx_list_fd(dfd, &l);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < l.n && rc == 0; i++) {
		mode_t m = l.v[i].st.st_mode;
		if (!S_ISDIR(m) && !S_ISREG(m))
			continue; /* symlinks live in the directory, fsynced below */
		if (jv_io_tick(hooks, 0, 0)) {
			rc = -ECANCELED;
			break;
		}
		int fl = S_ISDIR(m) ? O_RDONLY | O_DIRECTORY : O_RDONLY | O_NONBLOCK;
		int fd = openat(dfd, l.v[i].name, fl | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
		if (fd < 0) {
			rc = -errno;
			break;
		}
		if (S_ISDIR(m))
			rc = fsync_dir_tree(fd, depth + 1, hooks);
		else if (fsync(fd) < 0)
			rc = -errno;
		close(fd);
	}
	fsx_list_free(&l);
	if (rc == 0)
		rc = jv_fsync_dirfd(dfd);
	return rc;
}

int fsx_fsync_tree(const struct fsx *fx, const char *norm, const struct jv_io_hooks *hooks)
{
	struct stat st;
	int rc = fsx_lstat(fx, norm, &st);
	if (rc < 0)
		return rc;
	if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
		return 0;
	int fd;
	rc = fsx_open(fx, norm, S_ISDIR(st.st_mode) ? O_RDONLY | O_DIRECTORY : O_RDONLY | O_NONBLOCK,
	              0, FSX_NOFOLLOW, &fd);
	if (rc < 0)
		return rc;
	if (S_ISDIR(st.st_mode))
		rc = fsync_dir_tree(fd, 0, hooks);
	else if (fsync(fd) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

/* Make a tree published by a rename durable: one syncfs(2) (every dirty file,
 * directory and the journal; one call instead of an fsync per file, and since
 * Linux 5.8 it reports writeback errors). Without syncfs, every file and
 * directory of the trees (normalised paths; t2 may be NULL) is fsynced. */
static int sync_for_publish(const struct fsx *fx, int dirfd, const char *t1, const char *t2,
                            const struct jv_io_hooks *hooks)
{
	if (syncfs(dirfd) == 0)
		return 0;
	int rc = -errno;
	if (rc != -ENOSYS)
		return rc;
	rc = fsx_fsync_tree(fx, t1, hooks);
	if (rc == 0 && t2)
		rc = fsx_fsync_tree(fx, t2, hooks);
	return rc;
}

int fsx_commit(const struct fsx *fx, const char *src, const char *dst,
               const struct jv_io_hooks *hooks)
{
	if (strcmp(src, ".") == 0 || strcmp(dst, ".") == 0)
		return FSX_EROOT;
	int rc;
	struct stat st;
	bool new_parent = false;
	const char *slash = strrchr(dst, '/');
	if (slash) {
		char dir[FSX_PATH_MAX];
		memcpy(dir, dst, (size_t)(slash - dst));
		dir[slash - dst] = '\0';
		new_parent = fsx_lstat(fx, dir, &st) < 0;
		rc = fsx_mkdir(fx, dir, 0755, true);
		if (rc < 0)
			return rc;
	}
	int spfd = -1, dpfd = -1;
	const char *slast, *dlast;
	rc = fsx_parent(fx, src, 0, &spfd, &slast);
	if (rc == 0)
		rc = fsx_parent(fx, dst, 0, &dpfd, &dlast);
	/* src's whole tree and dst's new parents reach the disk before the rename
	 * makes them visible under dst; a lone file into an existing directory
	 * needs its own fsync only, not a syncfs of what others wrote. */
	bool lone = rc == 0 && !new_parent && fsx_lstat(fx, src, &st) == 0 && S_ISREG(st.st_mode);
	if (rc == 0)
		rc = lone ? fsx_fsync_tree(fx, src, hooks) : sync_for_publish(fx, spfd, src, NULL, hooks);
	if (rc == 0 && renameat(spfd, slast, dpfd, dlast) < 0)
		rc = errno == EEXIST ? -ENOTEMPTY : -errno;
	if (rc == 0)
		rc = jv_fsync_dirfd(dpfd);
	if (rc == 0)
		rc = jv_fsync_dirfd(spfd);
	if (spfd >= 0)
		close(spfd);
	if (dpfd >= 0)
		close(dpfd);
	return rc;
}

/* The non-atomic fallback for filesystems without RENAME_EXCHANGE: b moves to a
 * temporary name next to itself, a takes b's place, the temporary takes a's. */
static int swap_fallback(int pa, const char *la, int pb, const char *lb)
{
	char tmp[256];
	int n = snprintf(tmp, sizeof(tmp), ".%s.swap.%ld", lb, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return -ENAMETOOLONG;
	if (renameat(pb, lb, pb, tmp) < 0)
		return -errno;
	if (renameat(pa, la, pb, lb) < 0) {
		int rc = -errno;
		renameat(pb, tmp, pb, lb);
		return rc;
	}
	if (renameat(pb, tmp, pa, la) < 0) {
		int rc = -errno;
		if (renameat(pb, lb, pa, la) == 0)
			renameat(pb, tmp, pb, lb);
		return rc;
	}
	return 0;
}

int fsx_swap(const struct fsx *fx, const char *a, const char *b)
{
	if (strcmp(a, ".") == 0 || strcmp(b, ".") == 0)
		return FSX_EROOT;
	int pa = -1, pb = -1;
	const char *la, *lb;
	struct stat st;
	int rc = fsx_parent(fx, a, 0, &pa, &la);
	if (rc == 0)
		rc = fsx_parent(fx, b, 0, &pb, &lb);
	if (rc == 0 && fstatat(pa, la, &st, AT_SYMLINK_NOFOLLOW) < 0)
		rc = -errno;
	if (rc == 0 && fstatat(pb, lb, &st, AT_SYMLINK_NOFOLLOW) < 0)
		rc = -errno;
	/* Both trees are durable before either appears under the other's name. */
	if (rc == 0)
		rc = sync_for_publish(fx, pa, a, b, NULL);
	if (rc == 0) {
		if (fx->no_exchange || renameat2(pa, la, pb, lb, RENAME_EXCHANGE) < 0) {
			rc = fx->no_exchange ? -EINVAL : -errno;
			if (rc == -EINVAL || rc == -ENOSYS)
				rc = swap_fallback(pa, la, pb, lb);
		}
	}
	if (rc == 0)
		rc = jv_fsync_dirfd(pa);
	if (rc == 0)
		rc = jv_fsync_dirfd(pb);
	if (pa >= 0)
		close(pa);
	if (pb >= 0)
		close(pb);
	return rc;
}

int fsx_join(const char *link, const char *target, char *out)
{
	if (target[0] == '\0')
		return FSX_EEMPTY;
	if (target[0] == '/')
		return FSX_EABSOLUTE;
	char buf[FSX_PATH_MAX];
	const char *slash = strrchr(link, '/');
	size_t o = slash ? (size_t)(slash - link) : 0;
	memcpy(buf, link, o);
	const char *p = target;
	while (*p) {
		while (*p == '/')
			p++;
		const char *s = p;
		while (*p && *p != '/')
			p++;
		size_t n = (size_t)(p - s);
		if (n == 0 || (n == 1 && s[0] == '.'))
			continue;
		if (n == 2 && s[0] == '.' && s[1] == '.') {
			if (o == 0)
				return FSX_EESCAPE;
			while (o > 0 && buf[o - 1] != '/')
				o--;
			if (o > 0)
				o--; /* drop the separator */
			continue;
		}
		if (o + 1 + n + 1 > sizeof(buf))
			return FSX_ETOOLONG;
		if (o > 0)
			buf[o++] = '/';
		memcpy(buf + o, s, n);
		o += n;
	}
	buf[o] = '\0';
	return fsx_norm(buf[0] ? buf : ".", buf[0] ? o : 1, out);
}

int fsx_link_swap(const struct fsx *fx, const char *link, const char *target)
{
	char joined[FSX_PATH_MAX];
	int rc = fsx_join(link, target, joined);
	if (rc < 0)
		return rc;
	int tfd;
	rc = fsx_open(fx, joined, O_PATH, 0, 0, &tfd);
	if (rc < 0)
		return rc;
	close(tfd);
	int pfd;
	const char *last;
	rc = fsx_parent(fx, link, FSX_NO_SYMLINKS, &pfd, &last);
	if (rc < 0)
		return rc;
	char tmp[256];
	int n = snprintf(tmp, sizeof(tmp), ".%s.lnk.%ld", last, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		close(pfd);
		return -ENAMETOOLONG;
	}
	unlinkat(pfd, tmp, 0); /* a leftover of a killed earlier attempt */
	if (symlinkat(target, pfd, tmp) < 0) {
		rc = -errno;
	} else if ((rc = sync_for_publish(fx, pfd, joined, NULL, NULL)) < 0) {
		/* what the link will point to must be on disk before it does */
		unlinkat(pfd, tmp, 0);
	} else if (renameat(pfd, tmp, pfd, last) < 0) {
		rc = -errno;
		unlinkat(pfd, tmp, 0);
	} else {
		rc = jv_fsync_dirfd(pfd);
	}
	close(pfd);
	return rc;
}

int fsx_sha256_fd(int fd, char hex[JV_SHA256_HEX], uint64_t *size, const struct jv_io_hooks *hooks)
{
	struct stat st;
	uint64_t total = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0, done = 0;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	int rc = 0;
	unsigned char *buf = malloc(FSX_IO_CHUNK);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (!buf || !ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		rc = -ENOMEM;
		goto fail;
	}
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	for (;;) {
		ssize_t n = read(fd, buf, FSX_IO_CHUNK);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			goto fail;
		}
		if (n == 0)
			break;
		EVP_DigestUpdate(ctx, buf, (size_t)n);
		done += (uint64_t)n;
		if (jv_io_tick(hooks, done, total)) {
			rc = -ECANCELED;
			goto fail;
		}
	}
	EVP_DigestFinal_ex(ctx, md, &mdlen);
	jv_hex(md, mdlen, hex);
	if (size)
		*size = done;
fail:
	EVP_MD_CTX_free(ctx);
	free(buf);
	return rc;
}

int fsx_sha256(const struct fsx *fx, const char *norm, char hex[JV_SHA256_HEX], uint64_t *size,
               const struct jv_io_hooks *hooks)
{
	int fd;
	struct stat st;
	int rc = open_regular(fx, norm, &fd, &st);
	if (rc < 0)
		return rc;
	rc = fsx_sha256_fd(fd, hex, size, hooks);
	close(fd);
	return rc;
}

int fsx_chmod(const struct fsx *fx, const char *norm, mode_t mode)
{
	if (mode & ~(mode_t)0777)
		return -EPERM;
	int fd;
	int rc = fsx_open(fx, norm, O_PATH, 0, FSX_NOFOLLOW, &fd);
	if (rc < 0)
		return rc;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
	} else if (S_ISLNK(st.st_mode)) {
		rc = FSX_ESYMLINK;
	} else if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
		rc = -EINVAL;
	} else {
		/* An O_PATH descriptor cannot be fchmod()ed; its /proc magic link names
		 * exactly the inode we resolved, so no symlink swapped in later counts. */
		char self[64];
		snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
		if (chmod(self, mode) < 0)
			rc = -errno;
		if (rc == -ENOENT) { /* no /proc mounted: reopen for reading, then fchmod */
			int rfd;
			rc = fsx_open(fx, norm, O_RDONLY, 0, FSX_NOFOLLOW, &rfd);
			if (rc == 0) {
				rc = fchmod(rfd, mode) < 0 ? -errno : 0;
				close(rfd);
			}
		}
	}
	close(fd);
	return rc;
}

int fsx_free_space(const struct fsx *fx, uint64_t *avail, uint64_t *total)
{
	struct statvfs sv;
	if (fstatvfs(fx->root_fd, &sv) < 0)
		return -errno;
	*avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (total)
		*total = (uint64_t)sv.f_blocks * sv.f_frsize;
	return 0;
}

#define STAGING_DIR ".jobvisor/staging"

int fsx_staging_new(const struct fsx *fx, const char *run_id, char *out)
{
	if (!jv_run_id_valid(run_id))
		return -EINVAL;
	char dir[256]; /* run ids are at most 128 characters */
	snprintf(dir, sizeof(dir), STAGING_DIR "/%s", run_id);
	int rc = fsx_mkdir(fx, dir, 0700, true);
	if (rc < 0)
		return rc;
	for (int tries = 0; tries < 16; tries++) {
		snprintf(out, FSX_PATH_MAX, "%s/stage-%08x", dir, (unsigned)jv_random_u64());
		rc = mkdir_one(fx, out, 0700, false);
		if (rc != -EEXIST)
			return rc;
	}
	return -EEXIST;
}

int fsx_staging_runs(const struct fsx *fx, const char *except, struct fsx_list *out)
{
	int rc = fsx_list(fx, STAGING_DIR, out);
	if (rc == -ENOENT)
		return 0;
	if (rc < 0)
		return rc;
	size_t k = 0;
	for (size_t i = 0; i < out->n; i++) {
		if (S_ISDIR(out->v[i].st.st_mode) && (!except || strcmp(out->v[i].name, except) != 0))
			out->v[k++] = out->v[i];
		else
			free(out->v[i].name);
	}
	out->n = k;
	return 0;
}

int fsx_staging_clean(const struct fsx *fx, const char *run_id)
{
	if (!jv_run_id_valid(run_id))
		return -EINVAL;
	char dir[256];
	snprintf(dir, sizeof(dir), STAGING_DIR "/%s", run_id);
	bool removed;
	return fsx_remove_tree(fx, dir, &removed, NULL);
}
