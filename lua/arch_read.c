/* arch_read.c — reading archives: the hashing read source, streaming of entry
 * data under a size budget, and the read-only operations list and verify.
 *
 * The archive file is fed to libarchive through our own read callback, which
 * hashes every byte it hands over; after the last entry the rest of the file
 * is read and hashed too, so the whole-file SHA-256 comes out of the same pass
 * that checks the entries. No seek callback is given, so zip files are read in
 * streaming mode (local headers), the same way for every caller. */
#include "arch_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "fsx.h"
#include "jobvisor/durable.h"

#define READ_CHUNK (1u << 20)
#define SPACE_CHECK_EVERY (16u << 20)

/* The archive is read straight into a block of the archive hash queue: its
 * worker hashes the block while libarchive decompresses it, without a copy.
 * libarchive may use the block until it asks for the next one. */
static la_ssize_t src_read(struct archive *a, void *ud, const void **out)
{
	struct arch_src *s = ud;
	if (s->held) {
		hashq_release(s->aq, s->held);
		s->held = NULL;
	}
	unsigned char *b = hashq_acquire(s->aq);
	for (;;) {
		ssize_t n = read(s->fd, b, HASHQ_BLOCK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			hashq_submit(s->aq, &s->st, b, 0); /* gives the block back */
			archive_set_error(a, e, "%s", strerror(e));
			return -1;
		}
		hashq_submit_keep(s->aq, &s->st, b, (size_t)n);
		s->held = b;
		__atomic_store_n(&s->bytes, s->bytes + (uint64_t)n, __ATOMIC_RELAXED);
		*out = b;
		return n;
	}
}

/* The reader's read callback: the decompressed stream. */
static la_ssize_t pipe_read(struct archive *a, void *ud, const void **out)
{
	struct arch_src *s = ud;
	return arch_pipe_next(a, s->pipe, out);
}

int arch_src_open(struct arch_src *s, int dirfd, const char *name,
                  const struct jv_io_hooks *hooks, char *err, size_t errlen)
{
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0) {
		int rc = -errno;
		arch_errf(err, errlen, "cannot open archive '%s': %s", name,
		          rc == -ELOOP ? "it is a symlink" : strerror(errno));
		return rc;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		s->fd = fd;
		arch_errf(err, errlen, "cannot open archive '%s': not a regular file", name);
		return -EINVAL;
	}
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	return arch_src_open_fd(s, fd, name, (uint64_t)st.st_size, hooks, err, errlen);
}

int arch_src_open_fd(struct arch_src *s, int fd, const char *name, uint64_t size,
                     const struct jv_io_hooks *hooks, char *err, size_t errlen)
{
	memset(s, 0, sizeof(*s));
	s->fd = fd;
	s->name = name;
	s->hooks = hooks;
	s->size = size;
	s->buf = malloc(READ_CHUNK);
	s->a = archive_read_new();
	if (!s->buf || !s->a || hashq_new(&s->q, 8) < 0 || hashq_new(&s->aq, 4) < 0) {
		arch_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	hashq_begin(s->aq, &s->st);
	if (arch_pipe_start(&s->pipe, src_read, s) < 0) {
		arch_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	archive_read_support_format_tar(s->a);
	archive_read_support_format_zip_streamable(s->a);
	if (archive_read_open(s->a, s, NULL, pipe_read, NULL) != ARCHIVE_OK) {
		arch_errf(err, errlen, "cannot read archive '%s': %s", name,
		          archive_error_string(s->a) ? archive_error_string(s->a)
		                                     : "not a tar or zip archive");
		return -EINVAL;
	}
	return 0;
}

int arch_src_next(struct arch_src *s, struct archive_entry **ae, char *err, size_t errlen)
{
	if (jv_io_tick(s->hooks, __atomic_load_n(&s->bytes, __ATOMIC_RELAXED), s->size)) {
		arch_errf(err, errlen, "cancelled");
		return -ECANCELED;
	}
	int r = archive_read_next_header(s->a, ae);
	if (r == ARCHIVE_EOF)
		return 1;
	if (r < ARCHIVE_WARN) {
		arch_errf(err, errlen, "archive '%s' is damaged or truncated: %s", s->name,
		          archive_error_string(s->a) ? archive_error_string(s->a) : "unreadable header");
		return -EIO;
	}
	return 0;
}

static void fmt_size(uint64_t b, char *out, size_t len)
{
	if (b >= (1ull << 30))
		snprintf(out, len, "%.1f GiB", (double)b / (1u << 30));
	else if (b >= (1u << 20))
		snprintf(out, len, "%.1f MiB", (double)b / (1u << 20));
	else
		snprintf(out, len, "%llu bytes", (unsigned long long)b);
}

int arch_src_check(struct arch_src *s, const struct arch_manifest *m, char *err, size_t errlen)
{
	/* The decompressor stops where it is; what it did not read is hashed here. */
	arch_pipe_stop(s->pipe);
	s->pipe = NULL;
	for (;;) { /* what libarchive did not need (end padding, trailing bytes) */
		ssize_t n = read(s->fd, s->buf, READ_CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			arch_errf(err, errlen, "cannot read archive '%s': %s", s->name, strerror(errno));
			return -errno;
		}
		if (n == 0)
			break;
		hashq_update(s->aq, &s->st, s->buf, (size_t)n);
		s->bytes += (uint64_t)n;
	}
	hashq_final(s->aq, &s->st);
	if (hashq_wait(s->aq) < 0) {
		arch_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	const char *hex = s->st.hex;
	if (!m)
		return 0;
	if (m->has_bytes && m->bytes != s->bytes) {
		arch_errf(err, errlen, "archive '%s' is %llu bytes but its manifest says %llu", s->name,
		          (unsigned long long)s->bytes, (unsigned long long)m->bytes);
		return -EBADMSG;
	}
	if (m->sha256[0] && !jv_sha256_hex_equal(m->sha256, hex)) {
		arch_errf(err, errlen, "archive '%s' has sha256 %s but its manifest says %s", s->name,
		          hex, m->sha256);
		return -EBADMSG;
	}
	return 0;
}

void arch_src_close(struct arch_src *s)
{
	if (s->a)
		archive_read_free(s->a);
	arch_pipe_stop(s->pipe);
	if (s->held)
		hashq_release(s->aq, s->held);
	hashq_free(s->q);
	hashq_free(s->aq);
	hashq_discard(NULL, &s->st);
	free(s->buf);
	if (s->fd >= 0)
		close(s->fd);
	memset(s, 0, sizeof(*s));
	s->fd = -1;
}

enum arch_type arch_entry_kind(struct archive_entry *ae)
{
	if (archive_entry_hardlink(ae))
		return ARCH_HARDLINK;
	switch (archive_entry_filetype(ae)) {
	case AE_IFREG:
		return ARCH_FILE;
	case AE_IFDIR:
		return ARCH_DIR;
	case AE_IFLNK:
		return ARCH_SYMLINK;
	default:
		return ARCH_OTHER;
	}
}

static int budget_space(struct arch_budget *b, const char *path, uint64_t need, char *err,
                        size_t errlen)
{
	if (b->fs_fd < 0)
		return 0;
	struct statvfs sv;
	if (fstatvfs(b->fs_fd, &sv) < 0)
		return 0; /* cannot tell: the write itself will fail with ENOSPC */
	uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (avail < b->reserve || avail - b->reserve < need) {
		char a[32], r[32], n[32];
		fmt_size(avail, a, sizeof(a));
		fmt_size(b->reserve, r, sizeof(r));
		fmt_size(need, n, sizeof(n));
		arch_errf(err, errlen,
		          "not enough free space for entry '%s' (%s needed, %s free, %s kept in reserve)",
		          path, n, a, r);
		return -ENOSPC;
	}
	return 0;
}

/* The expansion-ratio guard: a build of real game data unpacks to 1.5-4 times
 * its compressed size (docs/security.md has the measurements); a
 * decompression bomb to hundreds of times. */
static int over_ratio(const struct arch_budget *b, const char *path, uint64_t more, char *err,
                      size_t errlen)
{
	if (!b->ratio_limit || (more <= b->ratio_limit && b->used <= b->ratio_limit - more))
		return 0;
	char a[32], l[32];
	fmt_size(b->src_size, a, sizeof(a));
	fmt_size(b->ratio_limit, l, sizeof(l));
	arch_errf(err, errlen,
	          "archive expands beyond %g times its own size (%s compressed, limit %s) at entry "
	          "'%s'; refusing a possible decompression bomb",
	          b->max_ratio, a, l, path);
	return -EFBIG;
}

int arch_budget_admit(struct arch_budget *b, const char *path, uint64_t size, char *err,
                      size_t errlen)
{
	if (b->max_bytes && (size > b->max_bytes || b->used > b->max_bytes - size)) {
		char m[32];
		fmt_size(b->max_bytes, m, sizeof(m));
		arch_errf(err, errlen,
		          "archive expands beyond the size cap of %s at entry '%s' (%llu bytes); "
		          "refusing a possible decompression bomb",
		          m, path, (unsigned long long)size);
		return -EFBIG;
	}
	int rrc = over_ratio(b, path, size, err, errlen);
	if (rrc < 0)
		return rrc;
	return budget_space(b, path, size, err, errlen);
}

/* Charge n more bytes while streaming (sizes a header did not declare, or lied about). */
static int budget_charge(struct arch_budget *b, const char *path, uint64_t n, char *err,
                         size_t errlen)
{
	int rrc = b->max_bytes && b->used + n > b->max_bytes ? 0 : over_ratio(b, path, n, err, errlen);
	if (rrc < 0)
		return rrc;
	b->used += n;
	if (b->max_bytes && b->used > b->max_bytes) {
		char m[32];
		fmt_size(b->max_bytes, m, sizeof(m));
		arch_errf(err, errlen,
		          "archive expands beyond the size cap of %s at entry '%s'; "
		          "refusing a possible decompression bomb",
		          m, path);
		return -EFBIG;
	}
	if (b->used >= b->next_check) {
		b->next_check = b->used + SPACE_CHECK_EVERY;
		return budget_space(b, path, 0, err, errlen);
	}
	return 0;
}

static void hash_zeros(struct hashq *q, struct hashq_stream *st, uint64_t n)
{
	static const unsigned char zeros[65536];
	while (n > 0) {
		size_t k = n < sizeof(zeros) ? (size_t)n : sizeof(zeros);
		hashq_update(q, st, zeros, k);
		n -= k;
	}
}

int arch_stream_entry_async(struct arch_src *s, const char *path, uint64_t declared, int out_fd,
                            struct arch_budget *b, struct hashq_stream *est, uint64_t *size,
                            char *err, size_t errlen)
{
	/* The worker hashes each block while this thread decompresses and writes the next. */
	if (est)
		hashq_begin(s->q, est);
	uint64_t pos = 0;
	int rc = 0;
	for (;;) {
		const void *buf;
		size_t len;
		la_int64_t off;
		int r = archive_read_data_block(s->a, &buf, &len, &off);
		if (r == ARCHIVE_EOF)
			break;
		if (r < ARCHIVE_WARN) {
			arch_errf(err, errlen, "archive '%s' is damaged or truncated at entry '%s': %s",
			          s->name, path,
			          archive_error_string(s->a) ? archive_error_string(s->a) : "read error");
			rc = -EIO;
			break;
		}
		if (off < 0 || (uint64_t)off < pos) {
			arch_errf(err, errlen, "entry '%s' has overlapping data blocks", path);
			rc = -EIO;
			break;
		}
		if ((uint64_t)off > pos) { /* a hole in a sparse entry */
			uint64_t gap = (uint64_t)off - pos;
			if (b && (rc = budget_charge(b, path, gap, err, errlen)) < 0)
				break;
			if (est)
				hash_zeros(s->q, est, gap);
			if (out_fd >= 0 && lseek(out_fd, off, SEEK_SET) < 0) {
				rc = -errno;
				arch_errf(err, errlen, "cannot write '%s': %s", path, strerror(errno));
				break;
			}
			pos = (uint64_t)off;
		}
		if (b && (rc = budget_charge(b, path, len, err, errlen)) < 0)
			break;
		if (est)
			hashq_update(s->q, est, buf, len);
		if (out_fd >= 0 && (rc = jv_write_all(out_fd, buf, len)) < 0) {
			arch_errf(err, errlen, "cannot write '%s': %s", path, strerror(-rc));
			break;
		}
		pos += len;
		if (jv_io_tick(s->hooks, __atomic_load_n(&s->bytes, __ATOMIC_RELAXED), s->size)) {
			arch_errf(err, errlen, "cancelled");
			rc = -ECANCELED;
			break;
		}
	}
	if (rc == 0 && declared > pos) { /* trailing hole */
		if (b && (rc = budget_charge(b, path, declared - pos, err, errlen)) == 0) {
			if (est)
				hash_zeros(s->q, est, declared - pos);
			if (out_fd >= 0 && ftruncate(out_fd, (off_t)declared) < 0) {
				rc = -errno;
				arch_errf(err, errlen, "cannot write '%s': %s", path, strerror(errno));
			}
			pos = declared;
		}
	}
	if (est)
		hashq_final(s->q, est);
	if (rc == 0)
		*size = pos;
	return rc;
}

int arch_stream_entry(struct arch_src *s, const char *path, uint64_t declared, int out_fd,
                      struct arch_budget *b, char hex[JV_SHA256_HEX], uint64_t *size, char *err,
                      size_t errlen)
{
	struct hashq_stream est = {0};
	int rc = arch_stream_entry_async(s, path, declared, out_fd, b, &est, size, err, errlen);
	if (hashq_wait(s->q) < 0 && rc == 0) {
		arch_errf(err, errlen, "out of memory");
		rc = -ENOMEM;
	}
	if (rc == 0)
		memcpy(hex, est.hex, JV_SHA256_HEX);
	hashq_discard(NULL, &est);
	return rc;
}

int arch_list(int file_dirfd, const char *file_name, struct arch_manifest *out,
              const struct jv_io_hooks *hooks, char *err, size_t errlen)
{
	struct arch_src s;
	arch_manifest_init(out);
	int rc = arch_src_open(&s, file_dirfd, file_name, hooks, err, errlen);
	while (rc == 0) {
		struct archive_entry *ae;
		rc = arch_src_next(&s, &ae, err, errlen);
		if (rc == 1) {
			rc = 0;
			break;
		}
		if (rc < 0)
			break;
		const char *p = archive_entry_pathname(ae);
		char norm[FSX_PATH_MAX], nerr[8];
		bool skip;
		/* Clean names ("world" rather than "./world/") where the name is safe. */
		if (arch_entry_path(p, 0, norm, &skip, nerr, sizeof(nerr)) == 0 && !skip)
			p = norm;
		struct arch_entry e = {
			.path = (char *)(p ? p : ""),
			.type = arch_entry_kind(ae),
			.size = archive_entry_size_is_set(ae) ? (uint64_t)archive_entry_size(ae) : 0,
			.mode = archive_entry_perm(ae),
			.mtime = archive_entry_mtime(ae),
		};
		if (e.type == ARCH_HARDLINK)
			e.target = (char *)archive_entry_hardlink(ae);
		else if (e.type == ARCH_SYMLINK)
			e.target = (char *)archive_entry_symlink(ae);
		rc = arch_manifest_add(out, &e);
		if (rc < 0)
			arch_errf(err, errlen, "out of memory");
		else if (archive_read_data_skip(s.a) < ARCHIVE_WARN) {
			arch_errf(err, errlen, "archive '%s' is damaged or truncated: %s", file_name,
			          archive_error_string(s.a));
			rc = -EIO;
		}
	}
	arch_src_close(&s);
	if (rc < 0)
		arch_manifest_free(out);
	return rc;
}

struct arch_entry *arch_manifest_check_entry(const struct arch_manifest *m, bool *seen,
                                             const char *path, struct archive_entry *ae,
                                             char *err, size_t errlen)
{
	struct arch_entry *me = arch_manifest_find(m, path);
	if (!me) {
		arch_errf(err, errlen, "entry '%s' is not in the manifest", path);
		return NULL;
	}
	size_t idx = (size_t)(me - m->v);
	if (seen[idx]) {
		arch_errf(err, errlen, "entry '%s' appears twice in the archive", path);
		return NULL;
	}
	seen[idx] = true;
	enum arch_type t = arch_entry_kind(ae);
	if (t == ARCH_HARDLINK) {
		char tp[FSX_PATH_MAX];
		bool skip;
		if (arch_entry_path(archive_entry_hardlink(ae), 0, tp, &skip, err, errlen) < 0)
			return NULL;
		struct arch_entry *te = arch_manifest_find(m, tp);
		if (me->type != ARCH_FILE || !te || te->type != ARCH_FILE || !seen[te - m->v] ||
		    !jv_sha256_hex_equal(te->sha256, me->sha256)) {
			arch_errf(err, errlen, "entry '%s' (a hard link to '%s') does not match the manifest",
			          path, tp);
			return NULL;
		}
		return me;
	}
	if (t != me->type) {
		arch_errf(err, errlen, "entry '%s' is a %s but the manifest says %s", path,
		          arch_type_name(t), arch_type_name(me->type));
		return NULL;
	}
	if (t == ARCH_SYMLINK) {
		const char *target = archive_entry_symlink(ae);
		if (!target || strcmp(target, me->target) != 0) {
			arch_errf(err, errlen, "symlink '%s' points to '%s' but the manifest says '%s'", path,
			          target ? target : "", me->target);
			return NULL;
		}
	}
	return me;
}

int arch_manifest_check_data(const struct arch_entry *me, const char *path, uint64_t size,
                             const char *hex, char *err, size_t errlen)
{
	if (size != me->size) {
		arch_errf(err, errlen, "entry '%s' is %llu bytes but the manifest says %llu", path,
		          (unsigned long long)size, (unsigned long long)me->size);
		return -EBADMSG;
	}
	if (!jv_sha256_hex_equal(hex, me->sha256)) {
		arch_errf(err, errlen, "entry '%s' has sha256 %s but the manifest says %s", path, hex,
		          me->sha256);
		return -EBADMSG;
	}
	return 0;
}

int arch_manifest_check_missing(const struct arch_manifest *m, const bool *seen, char *err,
                                size_t errlen)
{
	for (size_t i = 0; i < m->n; i++) {
		if (!seen[i]) {
			arch_errf(err, errlen, "entry '%s' is missing from the archive", m->v[i].path);
			return -EBADMSG;
		}
	}
	return 0;
}

/* The rules extraction enforces through the file system (arch_extract.c),
 * checked here without writing, so that a verified backup is one RESTORE can
 * extract: a symlink stays inside the tree, and no entry lies below a
 * symlink or a non-directory. Every entry is in the manifest (checked just
 * before), so an ancestor the manifest lists is the entry extraction would
 * find at that place, whatever the order in the archive. Same messages as
 * extraction. */
static int restorable(const struct arch_manifest *m, const char *path, struct archive_entry *ae,
                      char *err, size_t errlen)
{
	if (arch_entry_kind(ae) == ARCH_SYMLINK) {
		const char *target = archive_entry_symlink(ae);
		char joined[FSX_PATH_MAX];
		if (!target || !*target) {
			arch_errf(err, errlen, "symlink '%s' has no target", path);
			return -EBADMSG;
		}
		if (fsx_join(path, target, joined) < 0) {
			arch_errf(err, errlen, "symlink '%s' points outside the destination ('%s'): refused",
			          path, target);
			return -EBADMSG;
		}
	}
	char prefix[FSX_PATH_MAX];
	for (const char *sl = strchr(path, '/'); sl; sl = strchr(sl + 1, '/')) {
		size_t n = (size_t)(sl - path);
		memcpy(prefix, path, n);
		prefix[n] = '\0';
		const struct arch_entry *up = arch_manifest_find(m, prefix);
		if (up && up->type == ARCH_SYMLINK) {
			arch_errf(err, errlen, "entry '%s' passes through a symlink (refused)", path);
			return -EBADMSG;
		}
		if (up && up->type != ARCH_DIR) {
			arch_errf(err, errlen, "entry '%s' lies below something that is not a directory", path);
			return -EBADMSG;
		}
	}
	return 0;
}

static int verify_entry(struct arch_src *s, struct archive_entry *ae, const struct arch_manifest *m,
                        bool *seen, char *err, size_t errlen)
{
	char path[FSX_PATH_MAX];
	bool skip;
	int rc = arch_entry_path(archive_entry_pathname(ae), 0, path, &skip, err, errlen);
	if (rc < 0 || skip)
		return rc;
	struct arch_entry *me = arch_manifest_check_entry(m, seen, path, ae, err, errlen);
	if (!me)
		return -EBADMSG;
	rc = restorable(m, path, ae, err, errlen);
	if (rc < 0)
		return rc;
	if (arch_entry_kind(ae) != ARCH_FILE)
		return 0;
	char hex[JV_SHA256_HEX];
	uint64_t size = 0;
	uint64_t declared = archive_entry_size_is_set(ae) ? (uint64_t)archive_entry_size(ae) : 0;
	rc = arch_stream_entry(s, path, declared, -1, NULL, hex, &size, err, errlen);
	if (rc < 0)
		return rc;
	return arch_manifest_check_data(me, path, size, hex, err, errlen);
}

static int verify_src(struct arch_src *s, int rc, const struct arch_manifest *m, char *err,
                      size_t errlen)
{
	bool *seen = calloc(m->n ? m->n : 1, sizeof(*seen));
	if (!seen) {
		arch_src_close(s);
		arch_errf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	while (rc == 0) {
		struct archive_entry *ae;
		rc = arch_src_next(s, &ae, err, errlen);
		if (rc == 1) {
			rc = 0;
			break;
		}
		if (rc == 0)
			rc = verify_entry(s, ae, m, seen, err, errlen);
	}
	if (rc == 0)
		rc = arch_manifest_check_missing(m, seen, err, errlen);
	if (rc == 0)
		rc = arch_src_check(s, m, err, errlen);
	arch_src_close(s);
	free(seen);
	return rc;
}

int arch_verify(int file_dirfd, const char *file_name, const struct arch_manifest *m,
                const struct jv_io_hooks *hooks, char *err, size_t errlen)
{
	struct arch_src s;
	int rc = arch_src_open(&s, file_dirfd, file_name, hooks, err, errlen);
	return verify_src(&s, rc, m, err, errlen);
}

int arch_verify_fd(int fd, const char *label, uint64_t size, const struct arch_manifest *m,
                   const struct jv_io_hooks *hooks, char *err, size_t errlen)
{
	struct arch_src s;
	int rc = arch_src_open_fd(&s, fd, label, size, hooks, err, errlen);
	return verify_src(&s, rc, m, err, errlen);
}
