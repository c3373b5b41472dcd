/* fsx.h — file operations confined beneath a root directory descriptor.
 *
 * The pure-C core of the `fs` Lua module (lua/api_fs.c), also used by the
 * archive and download cores. No Lua here. Every path is relative to the
 * root (an instance directory): it is first checked and normalised lexically
 * (fsx_norm: no absolute paths, no '..'), then resolved by the kernel with
 * openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) from the root descriptor,
 * so a symlink that leads outside (absolute, or '..' beyond the root) fails
 * with -EXDEV whatever races happen meanwhile. Where openat2 is missing
 * (ENOSYS) the same rules are applied by a per-component O_NOFOLLOW walk that
 * keeps a descriptor for every level, so '..' inside a symlink target pops to
 * a descriptor we hold and can never climb above the root (fsx_resolve.c).
 *
 * Symlinks that stay beneath the root are followed (e.g. `current ->
 * builds/7`), except where FSX_NO_SYMLINKS says otherwise: remove_tree,
 * link_swap and archive extraction never pass through a symlink.
 *
 * Errors: functions return 0 or a negative code: -errno, or one of FSX_E*
 * below; fsx_strerror() turns either into a lower-case phrase. */
#ifndef JOBVISOR_FSX_H
#define JOBVISOR_FSX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "iohooks.h"

/* Policy refusals (distinct from errno values, which are all < 4096). */
#define FSX_EABSOLUTE (-10001) /* absolute path */
#define FSX_EDOTDOT (-10002)   /* '..' component */
#define FSX_EEMPTY (-10003)    /* empty path or NUL inside */
#define FSX_EROOT (-10004)     /* the operation would act on the root itself */
#define FSX_ERESERVED (-10005) /* a write under .jobvisor/ outside staging */
#define FSX_ETOOLONG (-10006)  /* longer than PATH_MAX */
#define FSX_EESCAPE (-10007)   /* resolution would leave the root (symlink) */
#define FSX_ESYMLINK (-10008)  /* a symlink where FSX_NO_SYMLINKS/FSX_NOFOLLOW forbid one */

#define FSX_PATH_MAX 4096

/* Resolution flags. */
#define FSX_NOFOLLOW 0x1u    /* do not follow a symlink in the last component */
#define FSX_NO_SYMLINKS 0x2u /* no component may be a symlink (-ELOOP) */

struct fsx {
	int root_fd;        /* borrowed directory descriptor everything resolves beneath */
	bool walk_only;     /* use the userspace walk (set on ENOSYS; tests force it) */
	bool no_exchange;   /* swap() uses its rename fallback (tests force it) */
	unsigned force_how; /* ORed into every resolution (archive extraction: FSX_NO_SYMLINKS) */
};

void fsx_init(struct fsx *fx, int root_fd);

/* Lower-case description of an fsx error code or -errno. */
const char *fsx_strerror(int rc);
/* True for the policy refusals (a script error rather than an I/O failure):
 * every FSX_E* code. */
bool fsx_is_policy_error(int rc);

/* Check and normalise a relative path: collapses '//' and '.' components and
 * a trailing '/'; the root itself becomes ".". len is the byte length (so an
 * embedded NUL is caught). out must hold FSX_PATH_MAX bytes. */
int fsx_norm(const char *in, size_t len, char *out);

/* True when a normalised path is under .jobvisor/ but not inside a staging
 * directory (.jobvisor/staging/<run>/<dir>[/...]): scripts may read there but
 * not write. */
bool fsx_reserved(const char *norm);

/* Open a normalised path beneath the root. oflags are open(2) flags (O_CLOEXEC
 * is added); how is FSX_NOFOLLOW | FSX_NO_SYMLINKS. Returns-owned *fd. */
int fsx_open(const struct fsx *fx, const char *norm, int oflags, mode_t mode, unsigned how, int *fd);

/* Open the directory holding the last component of norm (O_RDONLY |
 * O_DIRECTORY, so it can be fsynced) and point *last at that component inside
 * norm. FSX_EROOT for ".". Returns-owned *dirfd. */
int fsx_parent(const struct fsx *fx, const char *norm, unsigned how, int *dirfd, const char **last);

/* lstat semantics: a symlink in the last component is described, not followed. */
int fsx_lstat(const struct fsx *fx, const char *norm, struct stat *st);

/* Read a symlink's target into buf (NUL-terminated). */
int fsx_readlink(const struct fsx *fx, const char *norm, char *buf, size_t len);

/* Directory listing: names (not "." or "..") sorted bytewise, with lstat data.
 * Returned-owned: fsx_list_free(). */
struct fsx_dirent {
	char *name;
	struct stat st;
};
struct fsx_list {
	struct fsx_dirent *v;
	size_t n;
};
int fsx_list(const struct fsx *fx, const char *norm, struct fsx_list *out);
/* Same for an open directory descriptor (borrowed). */
int fsx_list_fd(int dirfd, struct fsx_list *out);
void fsx_list_free(struct fsx_list *l);

/* mkdir; with parents, like mkdir -p (existing directories are fine). */
int fsx_mkdir(const struct fsx *fx, const char *norm, mode_t mode, bool parents);

/* Whole-file read of a regular file, at most max bytes (-EFBIG beyond).
 * Returned-owned *data (NUL-terminated): free(). */
int fsx_read(const struct fsx *fx, const char *norm, size_t max, char **data, size_t *len);

/* Atomic, durable write (temp + fsync + rename + fsync directory). */
int fsx_write(const struct fsx *fx, const char *norm, const void *data, size_t len, mode_t mode);

/* Remove a file, symlink or empty directory. *removed says whether it existed
 * (a missing path is not an error). Never the root. */
int fsx_remove(const struct fsx *fx, const char *norm, bool *removed);

/* Remove a whole tree. Never the root, never through a symlink: the path may
 * not pass through one, and symlinks inside are removed, not followed. */
int fsx_remove_tree(const struct fsx *fx, const char *norm, bool *removed,
                    const struct jv_io_hooks *hooks);

/* Remove the contents of an open directory (the descriptor stays usable). */
int fsx_clear_dirfd(int dirfd, const struct jv_io_hooks *hooks);

/* fsync every file and directory of a tree (or one file), without following
 * symlinks. */
int fsx_fsync_tree(const struct fsx *fx, const char *norm, const struct jv_io_hooks *hooks);

/* Make src durable (syncfs of its filesystem; an fsync of every file and
 * directory where syncfs is missing), rename it to dst (parents of dst
 * created), fsync both parent directories. Replaces a file or an empty directory at dst
 * the way rename(2) does; a non-empty directory at dst fails (-ENOTEMPTY). */
int fsx_commit(const struct fsx *fx, const char *src, const char *dst,
               const struct jv_io_hooks *hooks);

/* Join the directory of `from` (a normalised path) with a relative symlink
 * target, lexically, into out (FSX_PATH_MAX bytes, normalised); FSX_EESCAPE
 * when the target climbs above the root, FSX_EABSOLUTE for an absolute one. */
int fsx_join(const char *from, const char *target, char *out);

/* Make both trees durable (syncfs, as commit), atomically exchange the two
 * paths (renameat2 RENAME_EXCHANGE), then fsync both parents. On a filesystem without RENAME_EXCHANGE (EINVAL) it
 * falls back to three renames through a temporary name, which is not atomic:
 * a crash in between leaves b under ".<b>.swap" (documented in lua-api.md). */
int fsx_swap(const struct fsx *fx, const char *a, const char *b);

/* Point symlink `link` at `target` atomically: a new symlink under a temp name
 * in the same directory, the filesystem synced (so the target's tree is on
 * disk before the link names it), renamed over link, the directory fsynced. target
 * is relative to link's directory, must stay beneath the root and exist. */
int fsx_link_swap(const struct fsx *fx, const char *link, const char *target);

/* SHA-256 of a regular file as 64 lower-case hex digits; *size gets its size. */
int fsx_sha256(const struct fsx *fx, const char *norm, char hex[JV_SHA256_HEX], uint64_t *size,
               const struct jv_io_hooks *hooks);
/* Same from an open descriptor (read from its current offset to EOF). */
int fsx_sha256_fd(int fd, char hex[JV_SHA256_HEX], uint64_t *size, const struct jv_io_hooks *hooks);

/* chmod a regular file or directory (never through a symlink in the last
 * component: FSX_ESYMLINK). mode may hold only permission bits (0777):
 * -EPERM for setuid, setgid or sticky; -EINVAL for other file types. */
int fsx_chmod(const struct fsx *fx, const char *norm, mode_t mode);

/* Free and total bytes of the filesystem holding the root (fstatvfs). */
int fsx_free_space(const struct fsx *fx, uint64_t *avail, uint64_t *total);

/* Staging directories: .jobvisor/staging/<run_id>/<name>. fsx_staging_new
 * creates a fresh one (mode 0700) and writes its relative path to out
 * (FSX_PATH_MAX bytes). */
int fsx_staging_new(const struct fsx *fx, const char *run_id, char *out);
/* Run ids that have a staging directory, other than except (may be NULL).
 * Returned-owned: fsx_list_free(). */
int fsx_staging_runs(const struct fsx *fx, const char *except, struct fsx_list *out);
/* Remove .jobvisor/staging/<run_id> (a missing one is fine). */
int fsx_staging_clean(const struct fsx *fx, const char *run_id);

#endif
