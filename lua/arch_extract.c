/* arch_extract.c — extract an untrusted archive into a fresh directory.
 *
 * libarchive only parses here; every entry is written by us through fsx
 * beneath the new directory with FSX_NO_SYMLINKS forced, so no path can pass
 * through a symlink (planted by the archive itself or by anyone else) and
 * nothing can land outside, whatever the entry names say. On top: an entry
 * type allow-list (files, directories, symlinks that stay inside, hard links
 * to files already extracted), a size cap and a free-space guard checked from
 * the headers before writing and again while streaming, and the optional
 * manifest checked entry by entry (file digests in batches of EXTRACT_BATCH,
 * all before the extraction succeeds; without a manifest files are not
 * hashed at all). Any failure or cancel removes the whole
 * directory again. Nothing is fsynced here, file by file: callers extract
 * into staging and publish the tree with fs.commit() / fs.swap(), which make
 * it durable with one syncfs of its filesystem before the rename (fsx.c,
 * sync_for_publish). A caller that leaves the tree where it was extracted
 * gets no durability guarantee for it. */
#include "arch_internal.h"

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsx.h"

/* Files whose digest is still being computed: checked against the manifest
 * in batches, so the hash worker is waited for once per batch rather than
 * once per file (thousands of small files in a game world). */
#define EXTRACT_BATCH 256

struct pending {
	struct hashq_stream st; /* queued on s->q; must not move */
	const struct arch_entry *me;
	char *path;
	uint64_t size;
};

struct xctx {
	struct fsx dx; /* beneath the destination, symlinks refused */
	const struct arch_extract_opts *o;
	struct arch_extract_result *r;
	struct arch_budget b;
	bool *seen;
	struct arch_src *s;
	struct pending *pend; /* EXTRACT_BATCH slots when there is a manifest */
	size_t npend;
};

/* Wait for the batch's digests and check each against the manifest; the
 * first mismatch (in archive order) fails. Empties the batch either way. */
static int check_batch(struct xctx *x, char *err, size_t errlen)
{
	if (x->npend == 0)
		return 0;
	int rc = hashq_wait(x->s->q) < 0 ? -ENOMEM : 0;
	if (rc < 0)
		arch_errf(err, errlen, "out of memory");
	for (size_t i = 0; i < x->npend; i++) {
		struct pending *p = &x->pend[i];
		if (rc == 0 && p->me)
			rc = arch_manifest_check_data(p->me, p->path, p->size, p->st.hex, err, errlen);
		hashq_discard(NULL, &p->st);
		free(p->path);
		p->path = NULL;
	}
	x->npend = 0;
	return rc;
}

static int describe(int rc, const char *path, const char *what, char *err, size_t errlen)
{
	if (rc == FSX_ESYMLINK)
		arch_errf(err, errlen, "entry '%s' passes through a symlink (refused)", path);
	else if (rc == -EEXIST)
		arch_errf(err, errlen, "entry '%s' appears twice or collides with an earlier entry", path);
	else if (rc == -ENOTDIR)
		arch_errf(err, errlen, "entry '%s' lies below something that is not a directory", path);
	else
		arch_errf(err, errlen, "cannot %s '%s': %s", what, path, fsx_strerror(rc));
	return rc;
}

/* Open the parent of path, creating the directories above it when missing. */
static int open_parent(struct xctx *x, const char *path, int *pfd, const char **last, char *err,
                       size_t errlen)
{
	int rc = fsx_parent(&x->dx, path, FSX_NO_SYMLINKS, pfd, last);
	const char *slash = strrchr(path, '/');
	if (rc == -ENOENT && slash) {
		char dir[FSX_PATH_MAX];
		memcpy(dir, path, (size_t)(slash - path));
		dir[slash - path] = '\0';
		rc = fsx_mkdir(&x->dx, dir, 0755, true);
		if (rc < 0)
			return describe(rc, path, "create the directory of", err, errlen);
		rc = fsx_parent(&x->dx, path, FSX_NO_SYMLINKS, pfd, last);
	}
	return rc < 0 ? describe(rc, path, "open the directory of", err, errlen) : 0;
}

static unsigned file_mode(struct archive_entry *ae)
{
	unsigned m = archive_entry_perm(ae) & 0777; /* never setuid/setgid/sticky */
	return m ? m | 0600 : 0644;
}

static int put_file(struct xctx *x, struct archive_entry *ae, const char *path,
                    const struct arch_entry *me, char *err, size_t errlen)
{
	uint64_t declared = archive_entry_size_is_set(ae) ? (uint64_t)archive_entry_size(ae) : 0;
	int rc = arch_budget_admit(&x->b, path, declared, err, errlen);
	if (rc < 0)
		return rc;
	int pfd;
	const char *last;
	rc = open_parent(x, path, &pfd, &last, err, errlen);
	if (rc < 0)
		return rc;
	int fd = openat(pfd, last, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	close(pfd);
	if (fd < 0)
		return describe(-errno, path, "create", err, errlen);
	uint64_t size = 0;
	/* Without a manifest nothing needs the digest: nothing is hashed. */
	struct pending *p = NULL;
	if (me) {
		p = &x->pend[x->npend++];
		*p = (struct pending){.me = NULL};
	}
	rc = arch_stream_entry_async(x->s, path, declared, fd, &x->b, p ? &p->st : NULL, &size, err,
	                             errlen);
	if (rc == 0 && p) {
		p->path = strdup(path);
		p->me = me;
		p->size = size;
		if (!p->path) {
			rc = -ENOMEM;
			arch_errf(err, errlen, "out of memory");
		}
	}
	if (rc == 0 && x->npend == EXTRACT_BATCH)
		rc = check_batch(x, err, errlen);
	if (rc == 0) {
		struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
		                         {.tv_sec = archive_entry_mtime(ae),
		                          .tv_nsec = archive_entry_mtime_nsec(ae)}};
		if (fchmod(fd, file_mode(ae)) < 0 || futimens(fd, ts) < 0)
			rc = describe(-errno, path, "set the mode of", err, errlen);
	}
	if (close(fd) < 0 && rc == 0)
		rc = describe(-errno, path, "write", err, errlen);
	if (rc == 0) {
		x->r->files++;
		x->r->bytes += size;
	}
	return rc;
}

static int put_dir(struct xctx *x, struct archive_entry *ae, const char *path, char *err,
                   size_t errlen)
{
	int rc = fsx_mkdir(&x->dx, path, 0755, true);
	if (rc < 0)
		return describe(rc, path, "create directory", err, errlen);
	int fd;
	rc = fsx_open(&x->dx, path, O_RDONLY | O_DIRECTORY, 0, FSX_NOFOLLOW, &fd);
	if (rc < 0)
		return describe(rc, path, "open directory", err, errlen);
	/* The owner keeps rwx so the rest of the archive (and later cleanup) can write. */
	unsigned m = (archive_entry_perm(ae) & 0777) | 0700;
	if (fchmod(fd, m) < 0)
		rc = describe(-errno, path, "set the mode of", err, errlen);
	close(fd);
	if (rc == 0)
		x->r->dirs++;
	return rc;
}

static int put_symlink(struct xctx *x, struct archive_entry *ae, const char *path, char *err,
                       size_t errlen)
{
	const char *target = archive_entry_symlink(ae);
	char joined[FSX_PATH_MAX];
	if (!target || !*target) {
		arch_errf(err, errlen, "symlink '%s' has no target", path);
		return -EINVAL;
	}
	int rc = fsx_join(path, target, joined);
	if (rc < 0) {
		arch_errf(err, errlen, "symlink '%s' points outside the destination ('%s'): refused", path,
		          target);
		return -EPERM;
	}
	int pfd;
	const char *last;
	rc = open_parent(x, path, &pfd, &last, err, errlen);
	if (rc < 0)
		return rc;
	if (symlinkat(target, pfd, last) < 0)
		rc = describe(-errno, path, "create symlink", err, errlen);
	close(pfd);
	if (rc == 0)
		x->r->symlinks++;
	return rc;
}

static int put_hardlink(struct xctx *x, struct archive_entry *ae, const char *path, char *err,
                        size_t errlen)
{
	char tpath[FSX_PATH_MAX];
	bool skip;
	int rc = arch_entry_path(archive_entry_hardlink(ae), x->o->strip, tpath, &skip, err, errlen);
	if (rc < 0)
		return rc;
	if (skip) {
		arch_errf(err, errlen, "hard link '%s' points to an entry outside the extracted part",
		          path);
		return -EPERM;
	}
	int tpfd, pfd;
	const char *tlast, *last;
	struct stat st;
	rc = fsx_parent(&x->dx, tpath, FSX_NO_SYMLINKS, &tpfd, &tlast);
	if (rc == 0 && fstatat(tpfd, tlast, &st, AT_SYMLINK_NOFOLLOW) < 0)
		rc = -errno;
	if (rc == 0 && !S_ISREG(st.st_mode))
		rc = -EPERM;
	if (rc < 0) {
		if (tpfd >= 0)
			close(tpfd);
		arch_errf(err, errlen,
		          "hard link '%s' must point to a regular file extracted before it ('%s')", path,
		          tpath);
		return rc;
	}
	rc = open_parent(x, path, &pfd, &last, err, errlen);
	if (rc == 0) {
		if (linkat(tpfd, tlast, pfd, last, 0) < 0)
			rc = describe(-errno, path, "create hard link", err, errlen);
		close(pfd);
	}
	close(tpfd);
	if (rc == 0)
		x->r->hardlinks++;
	return rc;
}

static const char *kind_name(struct archive_entry *ae)
{
	switch (archive_entry_filetype(ae)) {
	case AE_IFCHR:
		return "character device";
	case AE_IFBLK:
		return "block device";
	case AE_IFIFO:
		return "FIFO";
	case AE_IFSOCK:
		return "socket";
	default:
		return "special file";
	}
}

static int put_entry(struct xctx *x, struct archive_entry *ae, char *err, size_t errlen)
{
	char full[FSX_PATH_MAX], path[FSX_PATH_MAX];
	bool skip_full, skip;
	const char *raw = archive_entry_pathname(ae);
	int rc = arch_entry_path(raw, 0, full, &skip_full, err, errlen);
	if (rc == 0)
		rc = arch_entry_path(raw, x->o->strip, path, &skip, err, errlen);
	if (rc < 0)
		return rc;
	enum arch_type t = arch_entry_kind(ae);
	if (t == ARCH_OTHER) {
		arch_errf(err, errlen, "entry '%s' is a %s: refused", full, kind_name(ae));
		return -EPERM;
	}
	const struct arch_entry *me = NULL;
	if (x->o->manifest && !skip_full) {
		me = arch_manifest_check_entry(x->o->manifest, x->seen, full, ae, err, errlen);
		if (!me)
			return -EBADMSG;
	}
	if (skip)
		return 0;
	switch (t) {
	case ARCH_FILE:
		return put_file(x, ae, path, me, err, errlen);
	case ARCH_DIR:
		return put_dir(x, ae, path, err, errlen);
	case ARCH_SYMLINK:
		return put_symlink(x, ae, path, err, errlen);
	default:
		return put_hardlink(x, ae, path, err, errlen);
	}
}

int arch_extract(int file_dirfd, const char *file_name, int dst_parent_fd, const char *dst_name,
                 const struct arch_extract_opts *o, struct arch_extract_result *r, char *err,
                 size_t errlen)
{
	memset(r, 0, sizeof(*r));
	err[0] = '\0';
	struct arch_src s = {.fd = -1};
	struct xctx x = {.o = o, .r = r, .s = &s};
	int dstfd = -1, rc;
	bool created = false;
	const struct arch_manifest *m = o->manifest;
	if (m) {
		x.seen = calloc(m->n ? m->n : 1, sizeof(*x.seen));
		x.pend = calloc(EXTRACT_BATCH, sizeof(*x.pend));
		if (!x.seen || !x.pend) {
			free(x.seen);
			free(x.pend);
			arch_errf(err, errlen, "out of memory");
			return -ENOMEM;
		}
	}
	rc = arch_src_open(&s, file_dirfd, file_name, o->hooks, err, errlen);
	if (rc < 0)
		goto fail;
	if (mkdirat(dst_parent_fd, dst_name, 0755) < 0) {
		rc = -errno;
		if (rc == -EEXIST)
			arch_errf(err, errlen,
			          "destination '%s' already exists (archives are extracted only into a new "
			          "directory)",
			          dst_name);
		else
			arch_errf(err, errlen, "cannot create '%s': %s", dst_name, strerror(-rc));
		goto fail;
	}
	created = true;
	dstfd = openat(dst_parent_fd, dst_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dstfd < 0) {
		rc = -errno;
		arch_errf(err, errlen, "cannot open '%s': %s", dst_name, strerror(errno));
		goto fail;
	}
	fsx_init(&x.dx, dstfd);
	x.dx.force_how = FSX_NO_SYMLINKS;
	x.b = (struct arch_budget){.max_bytes = o->max_bytes, .reserve = o->reserve_bytes,
	                           .fs_fd = dstfd, .max_ratio = o->max_ratio, .src_size = s.size};
	if (o->max_ratio > 0) {
		double lim = o->max_ratio * (double)s.size;
		x.b.ratio_limit = lim >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)lim;
		if (x.b.ratio_limit < ARCH_RATIO_FLOOR)
			x.b.ratio_limit = ARCH_RATIO_FLOOR;
	}
	for (;;) {
		struct archive_entry *ae;
		rc = arch_src_next(&s, &ae, err, errlen);
		if (rc == 1) {
			rc = 0;
			break;
		}
		if (rc == 0)
			rc = put_entry(&x, ae, err, errlen);
		if (rc < 0)
			goto fail;
	}
	if (m) {
		rc = check_batch(&x, err, errlen);
		if (rc == 0)
			rc = arch_manifest_check_missing(m, x.seen, err, errlen);
		if (rc == 0)
			rc = arch_src_check(&s, m, err, errlen);
		if (rc < 0)
			goto fail;
	}
	close(dstfd);
	arch_src_close(&s);
	free(x.seen);
	free(x.pend);
	return 0;
fail:
	if (dstfd >= 0) {
		fsx_clear_dirfd(dstfd, NULL);
		close(dstfd);
	}
	if (created)
		unlinkat(dst_parent_fd, dst_name, AT_REMOVEDIR);
	arch_src_close(&s); /* the worker is done with every pending stream after this */
	for (size_t i = 0; i < x.npend; i++) {
		hashq_discard(NULL, &x.pend[i].st);
		free(x.pend[i].path);
	}
	free(x.seen);
	free(x.pend);
	return rc;
}
