/* arch.h — archives for backups, builds and mods: create (pax tar + zstd with
 * a per-file SHA-256 manifest), extract (hostile input expected), verify, list.
 *
 * The pure-C core of the `archive` Lua module (lua/api_archive.c); libarchive
 * is used only here (arch_create.c, arch_read.c, arch_extract.c, and
 * arch_pipe.c, which decompresses on a thread of its own, with libzstd
 * directly for zstd; arch_zout.c compresses with libzstd directly), the manifest format only in arch_manifest.c (read,
 * build) and arch_mfwrite.c (written to a file, streaming). Directory arguments are
 * descriptors the caller resolved beneath the instance root (fsx); names are
 * single components. Errors come back as 0 / -errno (-ECANCELED when the hook
 * asked to stop) with a lower-case message in err naming the entry at fault.
 *
 * Manifest (JSON, documented in docs/lua-api.md):
 *   {"format":1, "sha256":"<hex of the archive file>", "bytes":<archive size>,
 *    "files":[{"path":"rel/path", "type":"file|dir|symlink", "size":N,
 *              "sha256":"hex", "mode":420, "target":"for symlinks",
 *              "stat":"ino:mtime_s.ns:ctime_s.ns (files, when create recorded it)"}, ...]} */
#ifndef JOBVISOR_ARCH_H
#define JOBVISOR_ARCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "iohooks.h"

enum arch_type { ARCH_FILE = 0, ARCH_DIR, ARCH_SYMLINK, ARCH_HARDLINK, ARCH_OTHER };

struct arch_entry {
	char *path;        /* relative, normalised */
	enum arch_type type;
	uint64_t size;     /* files */
	char sha256[JV_SHA256_HEX]; /* files; "" when unknown */
	unsigned mode;     /* permission bits */
	char *target;      /* symlink target, or hard link target path; NULL otherwise */
	int64_t mtime;     /* seconds (list only) */
	/* Files written by create: what identifies this version of the file on
	 * the host (inode, mtime, ctime), so the next create can reuse sha256
	 * without reading the file's bytes through SHA-256. Unset for files
	 * changed within ARCH_RACY_NS before they were archived. */
	struct arch_fileid {
		bool set;
		uint64_t ino;
		int64_t mtime_s, ctime_s;
		long mtime_ns, ctime_ns;
	} fid;
};

/* A file whose ctime is this close to the moment it is archived may still
 * change within the same timestamp tick: its digest is never reused. */
#define ARCH_RACY_NS 2000000000LL

struct arch_manifest {
	char sha256[JV_SHA256_HEX]; /* of the archive file; "" when not given */
	bool has_bytes;
	uint64_t bytes;
	struct arch_entry *v;
	size_t n, cap;
	struct arch_entry **index; /* sorted by path (arch_manifest_index) */
};

void arch_manifest_init(struct arch_manifest *m);
void arch_manifest_free(struct arch_manifest *m);
/* Append (path and target are copied). Returns 0 or -ENOMEM. */
int arch_manifest_add(struct arch_manifest *m, const struct arch_entry *e);
/* Build the lookup index; -EINVAL with err naming a duplicate path. */
int arch_manifest_index(struct arch_manifest *m, char *err, size_t errlen);
struct arch_entry *arch_manifest_find(const struct arch_manifest *m, const char *path);
/* JSON <-> struct. from_json validates every field and indexes. Returned-owned
 * cJSON from to_json: cJSON_Delete. */
int arch_manifest_from_json(const cJSON *j, struct arch_manifest *m, char *err, size_t errlen);
cJSON *arch_manifest_to_json(const struct arch_manifest *m);
/* The parts of from_json: the top-level members (format, sha256, bytes; not
 * files) into m, and entry i (0-based, for messages) into e, whose path and
 * target borrow from f. 0 or -EINVAL with err. */
int arch_manifest_top_from_json(const cJSON *j, struct arch_manifest *m, char *err, size_t errlen);
int arch_entry_from_json(const cJSON *f, size_t i, struct arch_entry *e, char *err, size_t errlen);
/* Read a manifest document from fd (at its current offset) into m, one
 * "files" entry at a time (arch_mfread.c): memory for the entries in m, not
 * for the text or a JSON tree of the whole list. *top (when top is not NULL)
 * gets the other top-level members as a cJSON object (caller frees). Checks
 * as from_json, and "complete", when present, must be true. 0 or -errno
 * with err: "is not JSON (...)", "is not marked complete", "is not a
 * manifest (...)" (to follow the file's name), or from_json's "manifest: ...". */
int arch_manifest_read_fd(int fd, struct arch_manifest *m, cJSON **top, char *err, size_t errlen);
/* Write m as JSON to dirfd/name durably (temp file, fsync, rename, fsync
 * directory), streaming entry by entry (arch_mfwrite.c): the same document
 * as arch_manifest_to_json(), with the members of extra (a JSON object, or
 * NULL) after "format". extra must not hold a reserved member
 * (arch_manifest_reserved). 0 or -errno with err. */
int arch_manifest_write_at(int dirfd, const char *name, const struct arch_manifest *m,
                           const cJSON *extra, char *err, size_t errlen);
/* "format", "sha256", "bytes", "files": the members the manifest itself writes. */
bool arch_manifest_reserved(const char *key);
/* The canonical "stat" string of a file id: "<ino>:<mtime s>.<ns>:<ctime s>.<ns>". */
void arch_fileid_format(const struct arch_fileid *id, char *out, size_t len);
const char *arch_type_name(enum arch_type t);

/* Lexical check of an entry path from an archive: strips a leading "./",
 * refuses absolute paths and '..', drops strip leading components. *skip is
 * set when nothing is left (the entry is ignored). out: FSX_PATH_MAX bytes. */
int arch_entry_path(const char *in, int strip, char *out, bool *skip, char *err, size_t errlen);

struct arch_create_opts {
	int level;                   /* zstd level; 0 = default 3 */
	int threads;                 /* zstd workers; 0 = number of online CPUs */
	const char *const *exclude;  /* fnmatch patterns (see arch_excluded) */
	size_t nexclude;
	const struct jv_io_hooks *hooks;
	/* Optional manifest of an earlier archive of the same tree: a file whose
	 * path, size, inode, mtime and ctime match an entry with a recorded
	 * "stat" gets that entry's sha256 instead of being hashed again. */
	const struct arch_manifest *reuse;
	/* Optional: every compressed byte, in order, also goes to out (a streamed
	 * upload) as it is produced; a negative return stops the archive with that
	 * -errno. The bytes are a function of the tree and these options only
	 * (file order, metadata, compression settings): the same tree gives the
	 * same bytes again. */
	int (*out)(void *arg, const void *buf, size_t n);
	void *out_arg;
};

struct arch_create_result {
	struct arch_manifest manifest;
	uint64_t files, dirs, symlinks, data_bytes;
	uint64_t reused; /* files whose digest came from opts->reuse */
	char **skipped; /* relative paths left out (sockets, FIFOs, devices, links leading out) */
	size_t nskipped;
};
void arch_create_result_free(struct arch_create_result *r);

/* Pattern semantics: a pattern without '/' matches the name of an entry at
 * any depth ("*.log"); one with '/' matches the whole relative path from the
 * source root ("world/session.lock", "logs/old-?"; a leading '/' is ignored). A matched directory is
 * left out with everything below it. */
bool arch_excluded(const char *rel, const char *const *pats, size_t n);

/* Archive the tree under src_dirfd into dst_dirfd/dst_name (pax tar + zstd).
 * result is filled in (manifest with the archive's sha256 and bytes); free it
 * with arch_create_result_free() whatever the outcome.
 * Symlinks are stored as symlinks, never followed; those leading outside the
 * tree, sockets, FIFOs and devices are skipped (listed in result->skipped). A
 * top-level ".jobvisor" and the output file itself are never archived. The
 * archive is written to a temp name beside dst, fsynced, renamed, and the
 * directory fsynced; on any failure or cancel the temp file is removed.
 * dst_name NULL (with o->out): no file, out gets the only copy. */
int arch_create(int src_dirfd, int dst_dirfd, const char *dst_name,
                const struct arch_create_opts *o, struct arch_create_result *result,
                char *err, size_t errlen);

struct arch_extract_opts {
	int strip;                        /* strip_components */
	uint64_t max_bytes;               /* total uncompressed size cap; 0 = none */
	double max_ratio;                 /* unpack at most this many times the archive's own size
	                                     (never less than ARCH_RATIO_FLOOR); 0 = none */
	uint64_t reserve_bytes;           /* free space to leave on the filesystem */
	const struct arch_manifest *manifest; /* optional: check while extracting */
	const struct jv_io_hooks *hooks;
};

/* The ratio guard leaves small archives alone: any archive may expand to this. */
#define ARCH_RATIO_FLOOR (64ull << 20)

struct arch_extract_result {
	uint64_t files, dirs, symlinks, hardlinks, bytes;
};

/* Extract archive file (file_dirfd/file_name; tar with none/gzip/xz/zstd, or
 * zip) into dst_parent_fd/dst_name, which must not exist: it is created for
 * this extraction and removed again on any failure or cancel. Entries are
 * written through beneath-resolution that refuses every symlink, so nothing
 * can land outside dst; allowed: regular files, directories, symlinks whose
 * target stays inside, hard links to files already extracted. With a manifest,
 * each file's SHA-256 and size, each type and symlink target are checked as
 * they stream, an extra or missing entry fails, and so does an archive whose
 * own SHA-256/size differs. */
int arch_extract(int file_dirfd, const char *file_name, int dst_parent_fd, const char *dst_name,
                 const struct arch_extract_opts *o, struct arch_extract_result *result,
                 char *err, size_t errlen);

/* Re-read the archive and check it against the manifest: the archive's own
 * SHA-256 and size, then every entry's type, size and SHA-256; missing and
 * extra entries fail. err names the first bad entry. */
int arch_verify(int file_dirfd, const char *file_name, const struct arch_manifest *m,
                const struct jv_io_hooks *hooks, char *err, size_t errlen);

/* The same over a stream: fd (consumed, closed) delivers the archive's bytes
 * in order; label names it in messages; size is for progress. */
int arch_verify_fd(int fd, const char *label, uint64_t size, const struct arch_manifest *m,
                   const struct jv_io_hooks *hooks, char *err, size_t errlen);

/* The entries of an archive (no hashes). */
int arch_list(int file_dirfd, const char *file_name, struct arch_manifest *out,
              const struct jv_io_hooks *hooks, char *err, size_t errlen);

#endif
