/* fsx_resolve.c — path checks and race-free resolution beneath a root fd.
 *
 * Responsible for turning a script-supplied relative path into a descriptor
 * that is guaranteed to lie beneath the root: lexical checks first (fsx_norm),
 * then openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS), or on kernels without
 * openat2 a walk that opens one component at a time with O_NOFOLLOW, expands
 * symlinks itself and keeps a descriptor per level so that '..' never climbs
 * above the root even if directories are renamed meanwhile. The operations on
 * top (fsx.c) only ever use the *at() calls on descriptors from here. */
#include "fsx.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FSX_MAX_SYMLINKS 40

void fsx_init(struct fsx *fx, int root_fd)
{
	fx->root_fd = root_fd;
	fx->walk_only = false;
	fx->no_exchange = false;
	fx->force_how = 0;
}

const char *fsx_strerror(int rc)
{
	switch (rc) {
	case FSX_EABSOLUTE:
		return "absolute paths are not allowed (paths are relative to the instance directory)";
	case FSX_EDOTDOT:
		return "'..' is not allowed in paths";
	case FSX_EEMPTY:
		return "empty path or NUL byte in path";
	case FSX_EROOT:
		return "refusing to act on the instance directory itself";
	case FSX_ERESERVED:
		return ".jobvisor/ belongs to jobvisor (scripts may write there only inside staging directories)";
	case FSX_ETOOLONG:
		return "path too long";
	case FSX_EESCAPE:
		return "path leads outside the instance directory (through a symlink)";
	case FSX_ESYMLINK:
		return "path is or passes through a symlink, which this operation does not follow";
	default:
		return strerror(rc < 0 ? -rc : rc);
	}
}

bool fsx_is_policy_error(int rc)
{
	return rc <= FSX_EABSOLUTE && rc >= FSX_ESYMLINK;
}

int fsx_norm(const char *in, size_t len, char *out)
{
	if (!in || len == 0 || memchr(in, '\0', len))
		return FSX_EEMPTY;
	if (in[0] == '/')
		return FSX_EABSOLUTE;
	if (len >= FSX_PATH_MAX)
		return FSX_ETOOLONG;
	size_t o = 0, i = 0;
	while (i < len) {
		while (i < len && in[i] == '/')
			i++;
		size_t start = i;
		while (i < len && in[i] != '/')
			i++;
		size_t n = i - start;
		if (n == 0 || (n == 1 && in[start] == '.'))
			continue;
		if (n == 2 && in[start] == '.' && in[start + 1] == '.')
			return FSX_EDOTDOT;
		if (o > 0)
			out[o++] = '/';
		memcpy(out + o, in + start, n);
		o += n;
	}
	if (o == 0)
		out[o++] = '.';
	out[o] = '\0';
	return 0;
}

/* Length of the first component of p. */
static size_t comp_len(const char *p)
{
	const char *s = strchr(p, '/');
	return s ? (size_t)(s - p) : strlen(p);
}

bool fsx_reserved(const char *norm)
{
	static const char top[] = ".jobvisor";
	size_t n = comp_len(norm);
	if (n != sizeof(top) - 1 || memcmp(norm, top, n) != 0)
		return false;
	/* Allowed: .jobvisor/staging/<run>/<dir>[/...] */
	const char *p = norm + n;
	if (*p != '/' || strncmp(p + 1, "staging/", 8) != 0)
		return true;
	p += 9; /* at <run> */
	size_t run = comp_len(p);
	if (run == 0 || p[run] != '/' || p[run + 1] == '\0')
		return true;
	return false;
}

/* ---- the userspace walk ------------------------------------------------ */

struct walk {
	int *fds; /* fds[0] is the root (borrowed) */
	size_t n, cap;
};

static int walk_push(struct walk *w, int fd)
{
	if (w->n == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 16;
		int *v = realloc(w->fds, cap * sizeof(*v));
		if (!v) {
			close(fd);
			return -ENOMEM;
		}
		w->fds = v;
		w->cap = cap;
	}
	w->fds[w->n++] = fd;
	return 0;
}

static void walk_release(struct walk *w)
{
	for (size_t i = 1; i < w->n; i++)
		close(w->fds[i]);
	free(w->fds);
}

static bool is_symlink_at(int dirfd, const char *name)
{
	struct stat st;
	return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
}

/* Replace rem with "<target of dirfd/name>/<rest>". */
static int walk_expand(int dirfd, const char *name, const char *rest, char *rem, int *links)
{
	char target[FSX_PATH_MAX];
	if (++*links > FSX_MAX_SYMLINKS)
		return -ELOOP;
	ssize_t n = readlinkat(dirfd, name, target, sizeof(target));
	if (n < 0)
		return -errno;
	if ((size_t)n >= sizeof(target))
		return -ENAMETOOLONG;
	target[n] = '\0';
	if (n == 0)
		return -ENOENT;
	if (target[0] == '/')
		return FSX_EESCAPE;
	size_t rl = strlen(rest);
	if ((size_t)n + 1 + rl + 1 > FSX_PATH_MAX)
		return -ENAMETOOLONG;
	/* rest may point into rem: move it first. */
	memmove(rem + n + 1, rest, rl + 1);
	memcpy(rem, target, (size_t)n);
	rem[n] = '/';
	return 0;
}

/* comp in cur is a symlink: refused (FSX_ESYMLINK) when refuse is set, else
 * its target is spliced into rem for the walk to go on from. */
static int follow_link(int cur, const char *comp, const char *rest, char *rem, int *links,
                       unsigned refuse)
{
	if (refuse)
		return FSX_ESYMLINK;
	return walk_expand(cur, comp, rest, rem, links);
}

static int walk_open(int root, const char *path, int oflags, mode_t mode, unsigned how, int *out)
{
	struct walk w = {0};
	char *rem = malloc(FSX_PATH_MAX);
	char comp[FSX_PATH_MAX];
	int links = 0, rc;
	if (!rem)
		return -ENOMEM;
	size_t plen = strlen(path);
	if (plen >= FSX_PATH_MAX) {
		free(rem);
		return -ENAMETOOLONG;
	}
	memcpy(rem, path, plen + 1);
	rc = walk_push(&w, root);
	if (rc < 0)
		goto fail;
	const char *p = rem;
	for (;;) {
		int cur = w.fds[w.n - 1];
		while (*p == '/')
			p++;
		size_t n = comp_len(p);
		const char *rest = p + n;
		while (*rest == '/')
			rest++;
		bool last = *rest == '\0';
		if (n == 0) { /* path exhausted: the current directory itself */
			int fd = openat(cur, ".", oflags | O_CLOEXEC, mode);
			rc = fd < 0 ? -errno : 0;
			if (fd >= 0)
				*out = fd;
			goto fail;
		}
		memcpy(comp, p, n);
		comp[n] = '\0';
		if (strcmp(comp, ".") == 0 || strcmp(comp, "..") == 0) {
			if (comp[1] == '.') {
				if (w.n == 1) {
					rc = FSX_EESCAPE;
					goto fail;
				}
				close(w.fds[--w.n]);
			}
			p = rest; /* when last, the next round opens "." of the new top */
			continue;
		}
		if (!last) {
			int fd = openat(cur, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (fd >= 0) {
				rc = walk_push(&w, fd);
				if (rc < 0)
					goto fail;
				p = rest;
				continue;
			}
			rc = -errno;
			if ((rc == -ENOTDIR || rc == -ELOOP) && is_symlink_at(cur, comp)) {
				rc = follow_link(cur, comp, rest, rem, &links, how & FSX_NO_SYMLINKS);
				if (rc < 0)
					goto fail;
				p = rem;
				continue;
			}
			goto fail;
		}
		int fd = openat(cur, comp, oflags | O_NOFOLLOW | O_CLOEXEC, mode);
		if (fd >= 0) {
			struct stat st;
			/* O_PATH | O_NOFOLLOW opens a symlink itself: follow it unless asked not to. */
			if ((oflags & O_PATH) && !(how & FSX_NOFOLLOW) && fstat(fd, &st) == 0 &&
			    S_ISLNK(st.st_mode)) {
				close(fd);
				rc = follow_link(cur, comp, rest, rem, &links, how & FSX_NO_SYMLINKS);
				if (rc < 0)
					goto fail;
				p = rem;
				continue;
			}
			*out = fd;
			rc = 0;
			goto fail;
		}
		rc = -errno;
		if ((rc == -ELOOP || rc == -ENOTDIR) && is_symlink_at(cur, comp)) {
			rc = follow_link(cur, comp, rest, rem, &links, how & (FSX_NOFOLLOW | FSX_NO_SYMLINKS));
			if (rc < 0)
				goto fail;
			p = rem;
			continue;
		}
		goto fail;
	}
fail:
	walk_release(&w);
	free(rem);
	return rc;
}

/* ---- entry points -------------------------------------------------------- */

static int openat2_beneath(int root, const char *path, int oflags, mode_t mode, unsigned how)
{
	struct open_how oh = {
		.flags = (uint64_t)(oflags | O_CLOEXEC),
		.mode = (oflags & O_CREAT) ? mode : 0,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
	};
	if (how & FSX_NOFOLLOW)
		oh.flags |= O_NOFOLLOW;
	if (how & FSX_NO_SYMLINKS)
		oh.resolve |= RESOLVE_NO_SYMLINKS;
	for (int tries = 0;; tries++) {
		long fd = syscall(SYS_openat2, root, path, &oh, sizeof(oh));
		if (fd >= 0)
			return (int)fd;
		/* EAGAIN: a concurrent rename raced a '..'; try again a few times. */
		if (errno != EAGAIN || tries >= 16)
			return -errno;
	}
}

int fsx_open(const struct fsx *fx, const char *norm, int oflags, mode_t mode, unsigned how, int *fd)
{
	*fd = -1;
	int rc = -ENOSYS;
	how |= fx->force_how;
	if (!fx->walk_only) {
		rc = openat2_beneath(fx->root_fd, norm, oflags, mode, how);
		if (rc >= 0) {
			*fd = rc;
			return 0;
		}
	}
	if (rc == -ENOSYS || rc == -EAGAIN) {
		int out = -1;
		rc = walk_open(fx->root_fd, norm, oflags, mode, how, &out);
		if (rc == 0) {
			*fd = out;
			return 0;
		}
	}
	if (rc == -EXDEV)
		return FSX_EESCAPE;
	if (rc == -ELOOP && (how & (FSX_NO_SYMLINKS | FSX_NOFOLLOW)))
		return FSX_ESYMLINK;
	return rc;
}

int fsx_parent(const struct fsx *fx, const char *norm, unsigned how, int *dirfd, const char **last)
{
	*dirfd = -1;
	if (strcmp(norm, ".") == 0)
		return FSX_EROOT;
	const char *slash = strrchr(norm, '/');
	*last = slash ? slash + 1 : norm;
	char dir[FSX_PATH_MAX];
	if (slash) {
		size_t n = (size_t)(slash - norm);
		memcpy(dir, norm, n);
		dir[n] = '\0';
	} else {
		dir[0] = '.';
		dir[1] = '\0';
	}
	return fsx_open(fx, dir, O_RDONLY | O_DIRECTORY, 0, (how | fx->force_how) & FSX_NO_SYMLINKS,
	                dirfd);
}
