/* dl.h — downloads over HTTP(S) with libcurl: verified, resumable, cached.
 *
 * The pure-C core of the `http` Lua module (lua/api_http.c); libcurl is used
 * for downloads only here. Only http and https are accepted, for the first
 * URL and after every redirect (at most 5); TLS is always verified. Transient
 * failures (connection errors, timeouts, a body cut short, 408/429/5xx) are
 * retried with exponential backoff, resuming with a Range request into
 * "<dst>.part"; 4xx answers, checksum mismatches and refused redirects are
 * not. The SHA-256 is computed while streaming and checked before the file is
 * renamed into place (then the directory is fsynced). With a cache directory
 * the verified file is also kept as cache/<sha256> and the next download of
 * the same digest is a hard link (or a copy across filesystems).
 *
 * Disk full: a download stops before the destination's free space drops
 * below reserve_bytes (known sizes are refused before the first byte), and a
 * download that fails for lack of space (the guard, or ENOSPC/EDQUOT from the
 * kernel) removes its "<dst>.part": the space goes back to the host at once,
 * and -ENOSPC tells the caller to retry once space was freed. Other failures
 * keep the .part for resuming.
 *
 * Errors: 0 / -errno (-ECANCELED when the hook asked to stop) and a
 * lower-case message in err. No logging here. */
#ifndef JOBVISOR_DL_H
#define JOBVISOR_DL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "iohooks.h"
#include "jobvisor/util.h"

struct dl_opts {
	const char *sha256;         /* expected digest (hex); NULL only with insecure_no_checksum */
	bool insecure_no_checksum;  /* the script said so explicitly */
	int64_t size;               /* expected size, or -1 */
	uint64_t max_bytes;         /* size cap; 0 = DL_DEFAULT_MAX */
	bool resume;                /* keep and resume "<dst>.part" */
	int max_attempts;           /* 0 = 5 */
	long retry_delay_ms;        /* first backoff; 0 = 1000, doubling, capped at 30 s */
	long connect_timeout_s;     /* 0 = 15 */
	long low_speed_time_s;      /* abort when under 1 byte/s this long; 0 = 30 */
	long total_timeout_s;       /* whole transfer; 0 = none (downloads), 60 (dl_get) */
	const char *ca_file;        /* extra CA bundle (tests); NULL = system */
	int cache_fd;               /* <data-dir>/cache, or -1 */
	int mode;                   /* permission bits of the result (masked to 0777); -1 = 0644 */
	uint64_t reserve_bytes;     /* free space the download never eats into (checked against
	                               Content-Length and while writing); 0 = none */
	const struct jv_io_hooks *hooks;
};

#define DL_DEFAULT_MAX (64ull << 30)
#define DL_DEFAULT_RESERVE (128ull << 20) /* as archive.extract's reserve */

void dl_opts_init(struct dl_opts *o);

struct dl_result {
	uint64_t bytes;
	char sha256[JV_SHA256_HEX];
	bool from_cache;
	bool resumed;  /* a .part from before was continued */
	int attempts;  /* requests made (0 when served from the cache) */
};

/* Download url to dst_dirfd/dst_name (a single component). */
int dl_download(const char *url, const struct dl_opts *o, int dst_dirfd, const char *dst_name,
                struct dl_result *r, char *err, size_t errlen);

/* GET url into out (capped at max bytes), with the same protocol rules,
 * timeouts and retries; a status other than 2xx fails. out is initialised
 * here; free it with jv_buf_free() whatever the outcome. */
int dl_get(const char *url, const struct dl_opts *o, size_t max, struct jv_buf *out, char *err,
           size_t errlen);

/* Only http:// and https:// URLs (checked with curl's URL parser). */
int dl_check_url(const char *url, char *err, size_t errlen);

#endif
