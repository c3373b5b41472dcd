/* arch_create.c — archive a directory tree: pax tar + zstd, one pass.
 *
 * The tree is scanned first (for the byte total that drives progress, and to
 * decide what is left out), then each entry is written while its SHA-256 is
 * computed on one of the per-file hash workers (files go to them in turn);
 * the tar stream is compressed into the blocks of the archive's own hash
 * worker, which hashes them on their way to the temp file (arch_zout.c), so
 * the manifest and the archive's own digest come out of the same pass with
 * no re-read. Files are opened again
 * through fsx beneath the source with FSX_NO_SYMLINKS, so a directory swapped
 * for a symlink during the backup cannot redirect the read. */
#include "arch.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fsx.h"
#include "arch_zout.h"
#include "hashq.h"
#include "jobvisor/durable.h"

#define CREATE_MAX_DEPTH 512
/* Files up to this size are hashed from packed copies (see copy_data). */
#define ARCH_SMALL_FILE (64u << 10)
/* Hash-queue pools, in blocks of HASHQ_BLOCK (1 MiB): per-file digests (in
 * all, shared by the workers, at least FILE_POOL_MIN each), and the
 * compressed archive on its way to the file. Sized so that a worker waiting
 * for a CPU on a busy host rarely holds up the reading thread (see
 * docs/performance.md). */
#define FILE_POOL 16
#define FILE_POOL_MIN 4
#define ARCHIVE_POOL 8
#define HASH_WORKERS_MAX 8

struct item {
	char *rel;
	struct stat st;
	char *target; /* symlinks */
};

struct scan {
	struct item *v;
	size_t n, cap;
	uint64_t total;
	dev_t skip_dev[2];
	ino_t skip_ino[2];
	int nskip;
	const struct arch_create_opts *o;
	struct arch_create_result *r;
};

/* Per-file digests, filled by the hashq workers (files go to them in turn);
 * manifest index of each item. */
struct digests {
	struct hashq *q[HASH_WORKERS_MAX];
	size_t nq, next;
	struct hashq_stream *st;
	size_t *mpos;
	unsigned char *small; /* read buffer for small files (ARCH_SMALL_FILE) */
};

static void errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

void arch_create_result_free(struct arch_create_result *r)
{
	if (!r)
		return;
	arch_manifest_free(&r->manifest);
	for (size_t i = 0; i < r->nskipped; i++)
		free(r->skipped[i]);
	free(r->skipped);
	memset(r, 0, sizeof(*r));
}

static int add_skipped(struct arch_create_result *r, const char *rel)
{
	char **v = realloc(r->skipped, (r->nskipped + 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	r->skipped = v;
	if (!(v[r->nskipped] = strdup(rel)))
		return -ENOMEM;
	r->nskipped++;
	return 0;
}

static int add_item(struct scan *s, const char *rel, const struct stat *st, const char *target)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 256;
		struct item *v = realloc(s->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		s->v = v;
		s->cap = cap;
	}
	struct item *it = &s->v[s->n];
	it->rel = strdup(rel);
	it->target = target ? strdup(target) : NULL;
	it->st = *st;
	if (!it->rel || (target && !it->target)) {
		free(it->rel);
		free(it->target);
		return -ENOMEM;
	}
	s->n++;
	if (S_ISREG(st->st_mode))
		s->total += (uint64_t)st->st_size;
	return 0;
}

static void free_items(struct scan *s)
{
	for (size_t i = 0; i < s->n; i++) {
		free(s->v[i].rel);
		free(s->v[i].target);
	}
	free(s->v);
}

static bool is_own_output(const struct scan *s, const struct stat *st)
{
	for (int i = 0; i < s->nskip; i++)
		if (st->st_dev == s->skip_dev[i] && st->st_ino == s->skip_ino[i])
			return true;
	return false;
}

static int scan_dir(struct scan *s, int dfd, const char *rel, int depth, char *err, size_t errlen)
{
	if (depth > CREATE_MAX_DEPTH) {
		errf(err, errlen, "directory '%s' is nested too deeply", rel);
		return -ELOOP;
	}
	struct fsx_list l;
	int rc = fsx_list_fd(dfd, &l);
	if (rc < 0) {
		errf(err, errlen, "cannot list '%s': %s", rel[0] ? rel : ".", strerror(-rc));
		return rc;
	}
	char child[FSX_PATH_MAX];
	for (size_t i = 0; i < l.n && rc == 0; i++) {
		const char *name = l.v[i].name;
		const struct stat *st = &l.v[i].st;
		int n = snprintf(child, sizeof(child), "%s%s%s", rel, rel[0] ? "/" : "", name);
		if (n < 0 || (size_t)n >= sizeof(child)) {
			errf(err, errlen, "path too long under '%s'", rel);
			rc = -ENAMETOOLONG;
			break;
		}
		if ((depth == 0 && strcmp(name, ".jobvisor") == 0) || is_own_output(s, st) ||
		    arch_excluded(child, s->o->exclude, s->o->nexclude))
			continue;
		if (S_ISREG(st->st_mode)) {
			rc = add_item(s, child, st, NULL);
		} else if (S_ISDIR(st->st_mode)) {
			rc = add_item(s, child, st, NULL);
			if (rc < 0)
				break;
			int sub = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0) {
				rc = -errno;
				errf(err, errlen, "cannot open '%s': %s", child, strerror(errno));
				break;
			}
			rc = scan_dir(s, sub, child, depth + 1, err, errlen);
			close(sub);
		} else if (S_ISLNK(st->st_mode)) {
			char target[FSX_PATH_MAX], joined[FSX_PATH_MAX];
			ssize_t tl = readlinkat(dfd, name, target, sizeof(target) - 1);
			if (tl < 0) {
				rc = -errno;
				errf(err, errlen, "cannot read symlink '%s': %s", child, strerror(errno));
				break;
			}
			target[tl] = '\0';
			/* A link leading out of the tree would be refused on restore: leave it out now. */
			if (fsx_join(child, target, joined) < 0)
				rc = add_skipped(s->r, child);
			else
				rc = add_item(s, child, st, target);
		} else {
			rc = add_skipped(s->r, child);
		}
		if (rc == -ENOMEM)
			errf(err, errlen, "out of memory while scanning '%s'", child);
	}
	fsx_list_free(&l);
	return rc;
}

/* pax tar, handed unblocked to the zstd stage (arch_zout.c). */
static int set_format(struct archive *a, char *err, size_t errlen)
{
	if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
	    archive_write_set_bytes_per_block(a, 0) != ARCHIVE_OK) {
		errf(err, errlen, "cannot set up tar: %s", archive_error_string(a));
		return -EINVAL;
	}
	return 0;
}

/* What identifies this version of the file, unless it changed so recently
 * (ARCH_RACY_NS) that a further change could keep the same timestamps. */
static struct arch_fileid file_id(const struct stat *st)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	int64_t age = ((int64_t)now.tv_sec - st->st_ctim.tv_sec) * 1000000000LL +
	              (now.tv_nsec - st->st_ctim.tv_nsec);
	if (age < ARCH_RACY_NS)
		return (struct arch_fileid){0};
	return (struct arch_fileid){.set = true, .ino = st->st_ino,
	                            .mtime_s = st->st_mtim.tv_sec, .mtime_ns = st->st_mtim.tv_nsec,
	                            .ctime_s = st->st_ctim.tv_sec, .ctime_ns = st->st_ctim.tv_nsec};
}

static bool same_id(const struct arch_fileid *a, const struct arch_fileid *b)
{
	return a->set && b->set && a->ino == b->ino && a->mtime_s == b->mtime_s &&
	       a->mtime_ns == b->mtime_ns && a->ctime_s == b->ctime_s && a->ctime_ns == b->ctime_ns;
}

/* The earlier digest of this very file version, or NULL. */
static const struct arch_entry *reusable(const struct arch_manifest *reuse, const char *rel,
                                         const struct stat *st, const struct arch_fileid *id)
{
	if (!reuse || !id->set)
		return NULL;
	const struct arch_entry *old = arch_manifest_find(reuse, rel);
	if (!old || old->type != ARCH_FILE || old->size != (uint64_t)st->st_size ||
	    !old->sha256[0] || !same_id(&old->fid, id))
		return NULL;
	return old;
}

/* Write one file's header and data; its digest is queued on st, or taken from
 * reuse when the file is the version an earlier archive hashed. */
/* Where one file's data goes: the archive, and the hash stream unless its
 * digest is reused (st NULL). */
struct copy {
	struct archive *a;
	struct hashq *q;
	struct hashq_stream *st;
	uint64_t *done, total;
	const struct jv_io_hooks *hooks;
	const char *rel;
	unsigned char *small; /* ARCH_SMALL_FILE bytes */
};

/* Copy size bytes from fd into the archive (and the hash). 0 or -errno with err. */
static int copy_data(const struct copy *c, int fd, uint64_t size, char *err, size_t errlen)
{
	uint64_t left = size;
	while (left > 0) {
		size_t want = left < HASHQ_BLOCK ? (size_t)left : HASHQ_BLOCK;
		/* A small file is read into our own buffer and its copy packed with
		 * others into a shared hash block (one hand-off for many files); a big
		 * one straight into a pool block of its own. */
		bool small = size <= ARCH_SMALL_FILE;
		unsigned char *buf = small ? c->small : hashq_acquire(c->q);
		ssize_t n = read(fd, buf, want);
		int e_ = errno;
		/* The worker hashes the block while libarchive compresses it; we hold
		 * it until archive_write_data is done (its output sink takes blocks too).
		 * A reused digest: the block only carries the data (released unhashed). */
		if (c->st && small && n > 0)
			hashq_update(c->q, c->st, buf, (size_t)n);
		else if (c->st && !small)
			hashq_submit_keep(c->q, c->st, buf, n > 0 ? (size_t)n : 0);
		bool written = n > 0 && archive_write_data(c->a, buf, (size_t)n) == n;
		if (!small)
			hashq_release(c->q, buf);
		if (n < 0 && e_ == EINTR)
			continue;
		if (n < 0) {
			errf(err, errlen, "cannot read '%s': %s", c->rel, strerror(e_));
			return -e_;
		}
		if (n == 0) {
			errf(err, errlen, "'%s' shrank while being archived (stop the server or exclude it)",
			     c->rel);
			return -EAGAIN;
		}
		if (!written) {
			errf(err, errlen, "cannot write archive: %s", archive_error_string(c->a));
			return -EIO;
		}
		left -= (uint64_t)n;
		*c->done += (uint64_t)n;
		if (jv_io_tick(c->hooks, *c->done, c->total)) {
			errf(err, errlen, "cancelled");
			return -ECANCELED;
		}
	}
	return 0;
}

/* A reused digest stands for what was read only if the file did not change
 * meanwhile (a running server writing it): then this archive holds a mix no
 * digest describes, and the backup must be taken again. */
static int unchanged_since(int fd, const struct stat *before, const struct arch_fileid *id,
                           const char *rel, char *err, size_t errlen)
{
	struct stat after;
	struct arch_fileid now_id = {0};
	if (fstat(fd, &after) == 0)
		now_id = (struct arch_fileid){.set = true, .ino = after.st_ino,
		                              .mtime_s = after.st_mtim.tv_sec,
		                              .mtime_ns = after.st_mtim.tv_nsec,
		                              .ctime_s = after.st_ctim.tv_sec,
		                              .ctime_ns = after.st_ctim.tv_nsec};
	if (!same_id(&now_id, id) || after.st_size != before->st_size) {
		errf(err, errlen, "'%s' changed while being archived (stop the server, use "
		     "quiesce, or exclude it)", rel);
		return -EAGAIN;
	}
	return 0;
}

static int write_file(struct archive *a, struct archive_entry *ae, const struct fsx *src,
                      struct item *it, struct arch_entry *e, struct digests *d,
                      struct hashq_stream *st, const struct arch_manifest *reuse,
                      uint64_t *done, uint64_t total, const struct jv_io_hooks *hooks,
                      struct arch_create_result *r, bool *skipped, char *err, size_t errlen)
{
	int fd;
	*skipped = false;
	/* O_NOATIME: a backup does not dirty the inode of every file it reads
	 * (relatime still writes the atime of each file changed since it was last
	 * read); only the owner (or CAP_FOWNER) may ask for it. */
	int flags = O_RDONLY | O_NONBLOCK | O_NOCTTY;
	int rc = fsx_open(src, it->rel, flags | O_NOATIME, 0, FSX_NOFOLLOW, &fd);
	if (rc == -EPERM)
		rc = fsx_open(src, it->rel, flags, 0, FSX_NOFOLLOW, &fd);
	if (rc == -ENOENT) { /* removed since the scan: nothing to keep */
		*skipped = true;
		return add_skipped(r, it->rel);
	}
	if (rc < 0) {
		errf(err, errlen, "cannot open '%s': %s", it->rel, fsx_strerror(rc));
		return rc;
	}
	struct stat st_;
	if (fstat(fd, &st_) < 0 || !S_ISREG(st_.st_mode)) {
		close(fd);
		errf(err, errlen, "'%s' changed type while being archived", it->rel);
		return -EAGAIN;
	}
	if (st_.st_size > ARCH_SMALL_FILE) /* smaller ones are read in one call */
		posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	archive_entry_set_filetype(ae, AE_IFREG);
	archive_entry_set_size(ae, st_.st_size);
	archive_entry_set_perm(ae, st_.st_mode & 07777);
	archive_entry_set_mtime(ae, st_.st_mtim.tv_sec, st_.st_mtim.tv_nsec);
	if (archive_write_header(a, ae) < ARCHIVE_WARN) {
		errf(err, errlen, "cannot write header of '%s': %s", it->rel, archive_error_string(a));
		close(fd);
		return -EIO;
	}
	e->fid = file_id(&st_);
	const struct arch_entry *old = reusable(reuse, it->rel, &st_, &e->fid);
	struct hashq *q = d->q[old ? 0 : d->next++ % d->nq];
	if (!old)
		hashq_begin(q, st);
	struct copy cp = {.a = a, .q = q, .st = old ? NULL : st, .done = done, .total = total,
	                  .hooks = hooks, .rel = it->rel, .small = d->small};
	rc = copy_data(&cp, fd, (uint64_t)st_.st_size, err, errlen);
	if (rc == 0 && old)
		rc = unchanged_since(fd, &st_, &e->fid, it->rel, err, errlen);
	close(fd);
	if (old) {
		memcpy(st->hex, old->sha256, JV_SHA256_HEX);
		if (rc == 0)
			r->reused++;
	} else {
		hashq_final(q, st);
	}
	if (rc == 0) {
		e->size = (uint64_t)st_.st_size;
		e->mode = st_.st_mode & 07777;
		r->files++;
		r->data_bytes += e->size;
	}
	return rc;
}

static int write_items(struct archive *a, const struct fsx *src, struct scan *s,
                       struct digests *d, struct arch_create_result *r, char *err, size_t errlen)
{
	const struct jv_io_hooks *hooks = s->o->hooks;
	struct archive_entry *ae = archive_entry_new();
	uint64_t done = 0;
	int rc = !ae ? -ENOMEM : 0;
	for (size_t i = 0; i < s->n && rc == 0; i++) {
		struct item *it = &s->v[i];
		if (jv_io_tick(hooks, done, s->total)) {
			errf(err, errlen, "cancelled");
			rc = -ECANCELED;
			break;
		}
		struct arch_entry e = {.path = it->rel, .mode = it->st.st_mode & 07777};
		archive_entry_clear(ae);
		archive_entry_copy_pathname(ae, it->rel);
		archive_entry_set_uid(ae, it->st.st_uid);
		archive_entry_set_gid(ae, it->st.st_gid);
		bool skipped = false;
		if (S_ISREG(it->st.st_mode)) {
			e.type = ARCH_FILE;
			rc = write_file(a, ae, src, it, &e, d, &d->st[i], s->o->reuse, &done, s->total,
			                hooks, r, &skipped, err, errlen);
		} else {
			archive_entry_set_perm(ae, it->st.st_mode & 07777);
			archive_entry_set_mtime(ae, it->st.st_mtim.tv_sec, it->st.st_mtim.tv_nsec);
			if (S_ISDIR(it->st.st_mode)) {
				e.type = ARCH_DIR;
				archive_entry_set_filetype(ae, AE_IFDIR);
				r->dirs++;
			} else {
				e.type = ARCH_SYMLINK;
				e.target = it->target;
				archive_entry_set_filetype(ae, AE_IFLNK);
				archive_entry_copy_symlink(ae, it->target);
				r->symlinks++;
			}
			if (archive_write_header(a, ae) < ARCHIVE_WARN) {
				errf(err, errlen, "cannot write header of '%s': %s", it->rel,
				     archive_error_string(a));
				rc = -EIO;
			}
		}
		if (rc == 0 && !skipped) {
			d->mpos[i] = r->manifest.n;
			rc = arch_manifest_add(&r->manifest, &e);
			if (rc < 0)
				errf(err, errlen, "out of memory");
		}
	}
	archive_entry_free(ae);
	return rc;
}

/* After the worker is done: per-file digests into the manifest. */
static void collect_digests(const struct scan *s, const struct digests *d,
                            struct arch_create_result *r)
{
	for (size_t i = 0; i < s->n; i++) {
		size_t m = d->mpos[i];
		if (m != SIZE_MAX && r->manifest.v[m].type == ARCH_FILE)
			memcpy(r->manifest.v[m].sha256, d->st[i].hex, JV_SHA256_HEX);
	}
}

/* The temp file beside dst (one a killed run with our pid left is replaced);
 * it and dst are never archived themselves. */
static int open_temp(int dst_dirfd, const char *tmp, const char *dst_name, struct scan *s,
                     struct arch_zout *w, char *err, size_t errlen)
{
	unlinkat(dst_dirfd, tmp, 0);
	w->fd = openat(dst_dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (w->fd < 0) {
		int rc = -errno;
		errf(err, errlen, "cannot create '%s': %s", tmp, strerror(errno));
		return rc;
	}
	struct stat st;
	if (fstat(w->fd, &st) == 0) {
		s->skip_dev[s->nskip] = st.st_dev;
		s->skip_ino[s->nskip++] = st.st_ino;
	}
	if (fstatat(dst_dirfd, dst_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		s->skip_dev[s->nskip] = st.st_dev;
		s->skip_ino[s->nskip++] = st.st_ino;
	}
	return 0;
}

/* Per-file hash workers: as many as zstd workers (at most HASH_WORKERS_MAX).
 * Files go to them in turn. With one worker, SHA-256 of every file ran on one
 * thread, the longest job of any thread here (1 GiB: about 0.85 s of CPU
 * against 0.7 s for each of two zstd workers), so the reading thread kept
 * waiting for pool blocks (2.4-2.6 s per 1 GiB backup on a busy 2-core host,
 * measured; 0.03-0.5 s with two workers), and on a host with more cores it
 * would cap the backup at one core's hashing speed. */
static size_t hash_workers(long threads)
{
	return threads < 1 ? 1 : threads > HASH_WORKERS_MAX ? HASH_WORKERS_MAX : (size_t)threads;
}

static int digests_start(struct digests *d, long threads)
{
	size_t n = hash_workers(threads);
	size_t pool = FILE_POOL / n < FILE_POOL_MIN ? FILE_POOL_MIN : FILE_POOL / n;
	for (size_t i = 0; i < n; i++) {
		int rc = hashq_new(&d->q[i], pool);
		if (rc < 0)
			return rc;
		d->nq++;
	}
	return 0;
}

/* Every queued digest is final; -ENOMEM if one could not be set up. */
static int digests_wait(struct digests *d)
{
	int rc = 0;
	for (size_t i = 0; i < d->nq; i++)
		if (hashq_wait(d->q[i]) < 0)
			rc = -ENOMEM;
	return rc;
}

static void digests_stop(struct digests *d)
{
	for (size_t i = 0; i < d->nq; i++)
		hashq_free(d->q[i]);
	d->nq = 0;
}

/* Write the scanned items through libarchive into the zstd stage, hashing
 * each file and the archive itself; returns when every digest is final. What
 * it allocates in d and w is freed by the caller. */
static int write_archive(struct scan *s, struct digests *d, struct arch_zout *w,
                         const struct fsx *src, struct arch_create_result *r, char *err,
                         size_t errlen)
{
	int rc = 0;
	const struct arch_create_opts *o = s->o;
	long threads = o->threads > 0 ? o->threads : sysconf(_SC_NPROCESSORS_ONLN);
	d->st = calloc(s->n ? s->n : 1, sizeof(*d->st));
	d->mpos = malloc((s->n ? s->n : 1) * sizeof(*d->mpos));
	d->small = malloc(ARCH_SMALL_FILE);
	struct archive *a = archive_write_new();
	if (!d->st || !d->mpos || !d->small || !a || (rc = digests_start(d, threads)) < 0) {
		rc = rc < 0 ? rc : -ENOMEM;
		errf(err, errlen, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < s->n; i++)
		d->mpos[i] = SIZE_MAX;
	/* The archive's own digest (and its writes) run on a second worker. */
	rc = arch_zout_open(w, o->level ? o->level : 3, threads < 1 ? 1 : threads, ARCHIVE_POOL,
	                    err, errlen);
	if (rc < 0 || (rc = set_format(a, err, errlen)) < 0)
		goto fail;
	if (archive_write_open(a, w, NULL, arch_zout_write, NULL) != ARCHIVE_OK) {
		rc = arch_zout_error(w) ? arch_zout_error(w) : -EIO;
		errf(err, errlen, "cannot start archive: %s", archive_error_string(a));
		goto fail;
	}
	rc = write_items(a, src, s, d, r, err, errlen);
	if (rc < 0)
		goto fail;
	if (archive_write_close(a) != ARCHIVE_OK) {
		rc = arch_zout_error(w) ? arch_zout_error(w) : -EIO;
		errf(err, errlen, "cannot finish archive: %s", archive_error_string(a));
		goto fail;
	}
	archive_write_free(a);
	a = NULL;
	if ((rc = arch_zout_finish(w, err, errlen)) < 0)
		return rc;
	if (digests_wait(d) < 0) {
		errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	return 0;
fail:
	if (a) {
		/* Not archive_write_fail(): with it libarchive skips the close that
		 * frees its buffers. */
		w->discard = true;
		archive_write_free(a);
	}
	return rc;
}

int arch_create(int src_dirfd, int dst_dirfd, const char *dst_name,
                const struct arch_create_opts *o, struct arch_create_result *r, char *err,
                size_t errlen)
{
	memset(r, 0, sizeof(*r));
	arch_manifest_init(&r->manifest);
	err[0] = '\0';
	char tmp[512] = "";
	int n = dst_name ? snprintf(tmp, sizeof(tmp), ".%s.tmp.%ld", dst_name, (long)getpid()) : 0;
	if (dst_name ? n < 0 || (size_t)n >= sizeof(tmp) || strchr(dst_name, '/') : !o->out) {
		errf(err, errlen, "bad archive name '%s'", dst_name ? dst_name : "(none)");
		return -EINVAL;
	}
	struct scan s = {.o = o, .r = r};
	struct arch_zout w = {.fd = -1, .out = o->out, .out_arg = o->out_arg};
	struct digests d = {0};
	struct fsx src;
	fsx_init(&src, src_dirfd);
	src.force_how = FSX_NO_SYMLINKS;
	int rc = dst_name ? open_temp(dst_dirfd, tmp, dst_name, &s, &w, err, errlen) : 0;
	if (rc < 0)
		goto fail;
	rc = scan_dir(&s, src_dirfd, "", 0, err, errlen);
	if (rc < 0)
		goto fail;
	rc = write_archive(&s, &d, &w, &src, r, err, errlen);
	if (rc < 0)
		goto fail;
	if (dst_name && (fsync(w.fd) < 0 || close(w.fd) < 0)) {
		rc = -errno;
		w.fd = -1;
		errf(err, errlen, "cannot write '%s': %s", dst_name, strerror(-rc));
		goto fail;
	}
	w.fd = -1;
	collect_digests(&s, &d, r);
	memcpy(r->manifest.sha256, w.st.hex, JV_SHA256_HEX);
	r->manifest.bytes = w.written;
	r->manifest.has_bytes = true;
	rc = arch_manifest_index(&r->manifest, err, errlen);
	if (rc < 0)
		goto fail;
	rc = dst_name ? jv_durable_rename_at(dst_dirfd, tmp, dst_dirfd, dst_name) : 0;
	if (rc < 0) {
		errf(err, errlen, "cannot move archive into place as '%s': %s", dst_name, strerror(-rc));
		goto fail;
	}
	digests_stop(&d);
	arch_zout_free(&w);
	free(d.st);
	free(d.mpos);
	free(d.small);
	free_items(&s);
	return 0;
fail:
	digests_stop(&d);
	arch_zout_free(&w); /* its worker writes to w.fd until here */
	if (w.fd >= 0)
		close(w.fd);
	if (dst_name)
		unlinkat(dst_dirfd, tmp, 0);
	for (size_t i = 0; d.st && i < s.n; i++)
		hashq_discard(NULL, &d.st[i]);
	free(d.st);
	free(d.mpos);
	free(d.small);
	free_items(&s);
	return rc;
}
