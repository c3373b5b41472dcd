/* util.h — small helpers: time stamps, UUIDs, a growable buffer with a cap.
 *
 * Nothing here logs; failures come back as -errno. */
#ifndef JOBVISOR_UTIL_H
#define JOBVISOR_UTIL_H

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define JV_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* A whole number within int64 (NaN, infinities and |d| >= 9.2e18 are not), and
 * llround of 0 <= x < 2^53: without libm, which jobvisor loads on first use
 * (supervisor/core/math_lazy.c) and which the paths every job run takes (JSON
 * numbers, percents, durations) then never need. */
static inline bool jv_whole_in_int64(double d)
{
	return d > -9.2e18 && d < 9.2e18 && d == (double)(int64_t)d;
}
static inline int64_t jv_round_nonneg(double x)
{
	int64_t i = (int64_t)x;
	return i + (x - (double)i >= 0.5);
}

/* Milliseconds on CLOCK_MONOTONIC / CLOCK_REALTIME. */
int64_t jv_now_mono_ms(void);
int64_t jv_now_real_ms(void);

/* ISO-8601 UTC with milliseconds: "2026-11-28T17:24:10.123Z" (needs 25 bytes). */
#define JV_ISO8601_LEN 25
void jv_iso8601(int64_t real_ms, char out[JV_ISO8601_LEN]);
/* Parse the format above (milliseconds optional, 'Z' required). Returns 0 or -EINVAL. */
int jv_iso8601_parse(const char *s, int64_t *real_ms);

/* Random version-4 UUID, 36 chars + NUL. Returns 0 or -errno. */
#define JV_UUID_LEN 37
int jv_uuid4(char out[JV_UUID_LEN]);

/* Random 64-bit value from getrandom(). */
uint64_t jv_random_u64(void);

/* Growable byte buffer with a hard cap; data is always NUL-terminated. */
struct jv_buf {
	char *data;
	size_t len;
	size_t cap;
	size_t limit; /* 0 = unlimited */
};
void jv_buf_init(struct jv_buf *b, size_t limit);
/* Returns 0, -ENOMEM, or -EFBIG when the limit would be passed (nothing appended). */
int jv_buf_append(struct jv_buf *b, const void *data, size_t len);
int jv_buf_printf(struct jv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void jv_buf_consume(struct jv_buf *b, size_t n); /* drop n bytes from the front */
void jv_buf_free(struct jv_buf *b);

/* Signal name <-> number ("SIGTERM" or "TERM"); -1 when unknown. */
int jv_signal_parse(const char *name);
const char *jv_signal_name(int sig);

/* Set O_CLOEXEC / O_NONBLOCK on an fd. Return 0 or -errno. */
int jv_set_cloexec(int fd);
int jv_set_nonblock(int fd);

/* A directory stream on a duplicate of dirfd (CLOEXEC), read from the top
 * (the duplicate shares dirfd's position). *out returned-owned: closedir(),
 * which leaves dirfd open. 0 or -errno. */
int jv_opendir_at(int dirfd, DIR **out);

/* Close every descriptor >= lowfd except those listed. */
void jv_close_fds_from(int lowfd, const int *keep, size_t nkeep);

#endif
