/* archive_lazy.c — libarchive, loaded on first use.
 *
 * Like libcurl (supervisor/core/curl_lazy.c), libarchive brings a tail of shared
 * libraries (libxml2 with ICU and libstdc++, acl, lzma, bz2, lz4...) that were
 * mapped and relocated at every exec of jobvisor, including job runs that
 * never open an archive. This file defines the libarchive functions the
 * archive module uses; the first call dlopen()s libarchive.so.13 and each
 * function forwards to the real one. If the library cannot be loaded,
 * constructors return NULL and the rest ARCHIVE_FATAL (or 0/-1), which the
 * callers treat as any other libarchive failure. */
#include <archive.h>
#include <archive_entry.h>

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

#define ARCHIVE_SONAME "libarchive.so.13"

static void *sym(const char *name)
{
	static void *lib;
	static bool tried;
	if (!lib && !tried) {
		tried = true;
		lib = dlopen(ARCHIVE_SONAME, RTLD_NOW | RTLD_LOCAL);
	}
	return lib ? dlsym(lib, name) : NULL;
}

/* One forwarding definition per function: resolved once, then called. */
#define FWD(ret, name, params, args, fail)                                                        \
	ret name params                                                                           \
	{                                                                                         \
		static ret(*fn) params;                                                           \
		if (!fn)                                                                          \
			*(void **)&fn = sym(#name);                                               \
		if (!fn)                                                                          \
			return fail;                                                              \
		return fn args;                                                                   \
	}
#define FWD_VOID(name, params, args)                                                              \
	void name params                                                                          \
	{                                                                                         \
		static void(*fn) params;                                                          \
		if (!fn)                                                                          \
			*(void **)&fn = sym(#name);                                               \
		if (fn)                                                                           \
			fn args;                                                                  \
	}

typedef struct archive A;
typedef struct archive_entry E;

FWD(A *, archive_read_new, (void), (), NULL)
FWD(A *, archive_write_new, (void), (), NULL)
FWD(E *, archive_entry_new, (void), (), NULL)
FWD(E *, archive_entry_clear, (E * e), (e), NULL)
FWD_VOID(archive_entry_free, (E * e), (e))
FWD_VOID(archive_entry_copy_pathname, (E * e, const char *s), (e, s))
FWD_VOID(archive_entry_copy_symlink, (E * e, const char *s), (e, s))
FWD(__LA_MODE_T, archive_entry_filetype, (E * e), (e), 0)
FWD(__LA_MODE_T, archive_entry_perm, (E * e), (e), 0)
FWD(const char *, archive_entry_hardlink, (E * e), (e), NULL)
FWD(const char *, archive_entry_pathname, (E * e), (e), NULL)
FWD(const char *, archive_entry_symlink, (E * e), (e), NULL)
FWD(time_t, archive_entry_mtime, (E * e), (e), 0)
FWD(long, archive_entry_mtime_nsec, (E * e), (e), 0)
FWD(la_int64_t, archive_entry_size, (E * e), (e), 0)
FWD(int, archive_entry_size_is_set, (E * e), (e), 0)
FWD_VOID(archive_entry_set_filetype, (E * e, unsigned int t), (e, t))
FWD_VOID(archive_entry_set_gid, (E * e, la_int64_t v), (e, v))
FWD_VOID(archive_entry_set_uid, (E * e, la_int64_t v), (e, v))
FWD_VOID(archive_entry_set_mtime, (E * e, time_t t, long ns), (e, t, ns))
FWD_VOID(archive_entry_set_perm, (E * e, __LA_MODE_T m), (e, m))
FWD_VOID(archive_entry_set_size, (E * e, la_int64_t v), (e, v))
FWD(const char *, archive_error_string, (A * a), (a), "libarchive (" ARCHIVE_SONAME ") could not be loaded")
FWD(int, archive_errno, (A * a), (a), EIO)
FWD(int, archive_read_support_format_raw, (A * a), (a), ARCHIVE_FATAL)
FWD(int, archive_read_data_block, (A * a, const void **b, size_t *n, la_int64_t *off), (a, b, n, off), ARCHIVE_FATAL)
FWD(int, archive_read_data_skip, (A * a), (a), ARCHIVE_FATAL)
FWD(int, archive_read_free, (A * a), (a), ARCHIVE_FATAL)
FWD(int, archive_read_next_header, (A * a, E **e), (a, e), ARCHIVE_FATAL)
FWD(int, archive_read_open, (A * a, void *d, archive_open_callback *o, archive_read_callback *r, archive_close_callback *c), (a, d, o, r, c), ARCHIVE_FATAL)
FWD(int, archive_read_support_filter_gzip, (A * a), (a), ARCHIVE_FATAL)
FWD(int, archive_read_support_filter_xz, (A * a), (a), ARCHIVE_FATAL)
FWD(int, archive_read_support_filter_zstd, (A * a), (a), ARCHIVE_FATAL)
FWD(int, archive_read_support_format_tar, (A * a), (a), ARCHIVE_FATAL)
FWD(int, archive_read_support_format_zip_streamable, (A * a), (a), ARCHIVE_FATAL)
FWD(int, archive_write_add_filter_zstd, (A * a), (a), ARCHIVE_FATAL)
FWD(int, archive_write_close, (A * a), (a), ARCHIVE_FATAL)
FWD(la_ssize_t, archive_write_data, (A * a, const void *b, size_t n), (a, b, n), -1)
FWD(int, archive_write_fail, (A * a), (a), ARCHIVE_FATAL)
FWD(int, archive_write_free, (A * a), (a), ARCHIVE_FATAL)
FWD(int, archive_write_header, (A * a, E *e), (a, e), ARCHIVE_FATAL)
FWD(int, archive_write_open, (A * a, void *d, archive_open_callback *o, archive_write_callback *w, archive_close_callback *c), (a, d, o, w, c), ARCHIVE_FATAL)
FWD(int, archive_write_set_bytes_in_last_block, (A * a, int n), (a, n), ARCHIVE_FATAL)
FWD(int, archive_write_set_bytes_per_block, (A * a, int n), (a, n), ARCHIVE_FATAL)
FWD(int, archive_write_set_filter_option, (A * a, const char *m, const char *o, const char *v), (a, m, o, v), ARCHIVE_FATAL)
FWD(int, archive_write_set_format_pax_restricted, (A * a), (a), ARCHIVE_FATAL)

/* Variadic: format here, hand the real one a plain string. */
void archive_set_error(A *a, int err, const char *fmt, ...)
{
	static void (*fn)(A *, int, const char *, ...);
	if (!fn)
		*(void **)&fn = sym("archive_set_error");
	if (!fn)
		return;
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fn(a, err, "%s", msg);
}
