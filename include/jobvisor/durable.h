/* durable.h — the one durability helper: write temp, fsync, rename, fsync dir.
 *
 * Every atomic file write in jobvisor (markers, state.json, manifests, spool
 * records, instance.json) goes through jv_durable_write_at(). An fsync error
 * fails the operation and is never retried-and-ignored: after a failed fsync
 * the page cache may have dropped the data, so the caller must treat the
 * write as lost. */
#ifndef JOBVISOR_DURABLE_H
#define JOBVISOR_DURABLE_H

#include <stddef.h>
#include <sys/types.h>

/* Atomically replace dirfd/name with len bytes of data (mode for a new file).
 * The temp file is ".<name>.tmp.<pid>" in the same directory; it is removed on
 * failure. Returns 0 or -errno. */
int jv_durable_write_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode);

/* The same without the two fsyncs: readers see the old or the new content, never
 * a mix, and the new one survives the writer's death (kill -9), but not a power
 * cut. For records whose durability the caller arranges later, when it matters
 * (the run marker, lua/api_job.c). */
int jv_atomic_write_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode);

/* Same, with a path (relative to cwd or absolute); the parent must exist. */
int jv_durable_write(const char *path, const void *data, size_t len, mode_t mode);

/* Remove temp files jv_durable_write_at() left in dirfd when its writer was
 * killed (".<name>.tmp.<pid>"). Only safe while the caller holds whatever lock
 * serialises writers of that directory. Returns how many were removed. */
int jv_durable_cleanup_temps(int dirfd);

/* fsync a directory given by descriptor or path. Returns 0 or -errno. */
int jv_fsync_dirfd(int dirfd);
int jv_fsync_dir(const char *path);

/* rename within/between directories, then fsync both parents. Returns 0 or -errno. */
int jv_durable_rename_at(int olddirfd, const char *oldname, int newdirfd, const char *newname);

/* Write all of buf to fd, retrying on EINTR and short writes. Returns 0 or -errno. */
int jv_write_all(int fd, const void *buf, size_t len);

/* Read a whole regular file below dirfd (no symlink follow on the last component)
 * into a NUL-terminated malloc'd buffer, at most max bytes (-EFBIG beyond).
 * Opened non-blocking, so a FIFO never blocks: anything but a regular file is
 * -EINVAL (-EISDIR for a directory). Returned-owned: free(). Returns 0 or -errno. */
int jv_read_file_at(int dirfd, const char *name, size_t max, char **out, size_t *outlen);
/* The message for a jv_read_file_at() error: "not a regular file" for -EINVAL. */
const char *jv_read_strerror(int rc);

/* mkdir -p for a path made of existing parents; mode for created dirs. Returns 0 or -errno. */
int jv_mkdir_p(const char *path, mode_t mode);

#endif
