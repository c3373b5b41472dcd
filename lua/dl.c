/* dl.c — libcurl downloads for the `http` module: one easy handle per
 * attempt, the body streamed into "<dst>.part" (or memory for dl_get) while
 * SHA-256 is computed, resume with Range, retries with backoff, the content
 * cache, and the final checked rename. See dl.h for the rules.
 *
 * Resume correctness: the digest context always covers exactly the bytes in
 * the .part file. A response that ignores our Range (200) or answers another
 * range restarts the file and the digest from zero. */
#include "dl.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "fsx.h"
#include "hashq.h"
#include "jobvisor/durable.h"

#define DL_MAX_REDIRS 5L
#define DL_BACKOFF_CAP_MS 30000L
#define DL_RETRY_AFTER_CAP_S 60L
#define DL_WRITEBACK_EVERY (32ull << 20) /* start writeback early: the final fsync stays short */
#define DL_SPACE_CHECK_EVERY (4ull << 20)

static void errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

void dl_opts_init(struct dl_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->size = -1;
	o->resume = true;
	o->cache_fd = -1;
	o->mode = -1;
}

int dl_check_url(const char *url, char *err, size_t errlen)
{
	CURLU *u = curl_url();
	char *scheme = NULL;
	int rc = 0;
	if (!u)
		return -ENOMEM;
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK) {
		errf(err, errlen, "'%s' is not a valid URL", url);
		rc = -EINVAL;
	} else if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0) {
		errf(err, errlen, "unsupported URL scheme '%s' (only http and https are allowed)", scheme);
		rc = -EPROTONOSUPPORT;
	}
	curl_free(scheme);
	curl_url_cleanup(u);
	return rc;
}

/* ---- one transfer ------------------------------------------------------ */

struct xfer {
	int fd;             /* the .part file, or -1 */
	struct jv_buf *mem; /* dl_get */
	struct hashq *q;    /* downloads: the digest runs on the hashq worker */
	struct hashq_stream st;
	uint64_t synced;    /* file offset up to which writeback was started */
	uint64_t offset;    /* bytes already in the file before this response */
	uint64_t written;   /* bytes of this response taken */
	uint64_t cap;
	uint64_t expect_total; /* 0 = unknown */
	long status;
	bool body_started, refused, over_cap, range_bad, cancelled;
	int write_err;
	uint64_t reserve;      /* free space to leave; 0 = none */
	uint64_t next_space_check;
	char space_msg[200];   /* why the reserve guard stopped the download */
	int64_t range_start; /* from Content-Range; -1 none */
	long retry_after;    /* seconds; -1 none */
	const struct jv_io_hooks *hooks;
	CURL *h;
};

static int restart_file(struct xfer *x)
{
	hashq_wait(x->q);
	hashq_discard(x->q, &x->st);
	if (ftruncate(x->fd, 0) < 0 || lseek(x->fd, 0, SEEK_SET) < 0)
		return -errno;
	x->offset = 0;
	x->synced = 0;
	return hashq_begin(x->q, &x->st);
}

static void fmt_mib(uint64_t b, char *out, size_t len)
{
	snprintf(out, len, "%.1f MiB", (double)b / (1u << 20));
}

/* The reserve guard: false (and x->write_err = -ENOSPC) when writing need
 * more bytes would leave less than x->reserve free. */
static bool space_ok(struct xfer *x, uint64_t need)
{
	struct statvfs sv;
	if (x->fd < 0 || !x->reserve || fstatvfs(x->fd, &sv) < 0)
		return true; /* cannot tell: the write itself reports ENOSPC */
	uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (avail >= x->reserve && avail - x->reserve >= need)
		return true;
	char a[32], r[32], n[32];
	fmt_mib(avail, a, sizeof(a));
	fmt_mib(x->reserve, r, sizeof(r));
	fmt_mib(need, n, sizeof(n));
	snprintf(x->space_msg, sizeof(x->space_msg),
	         "not enough free space for the download (%s more needed, %s free, %s kept in reserve)",
	         n, a, r);
	x->write_err = -ENOSPC;
	return false;
}

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	size_t len = size * n;
	char line[256];
	jv_header_line(buf, len, line, sizeof(line));
	if (strncmp(line, "HTTP/", 5) == 0) { /* a new response (after a redirect, 100) */
		x->range_start = -1;
		x->retry_after = -1;
	} else if (strncasecmp(line, "content-range:", 14) == 0) {
		unsigned long long s;
		if (sscanf(line + 14, " bytes %llu-", &s) == 1)
			x->range_start = (int64_t)s;
	} else if (strncasecmp(line, "retry-after:", 12) == 0) {
		long v;
		if (sscanf(line + 12, " %ld", &v) == 1 && v >= 0)
			x->retry_after = v;
	}
	return len;
}

static size_t on_body(char *buf, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	size_t len = size * n;
	if (!x->body_started) {
		x->body_started = true;
		curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &x->status);
		if (x->status < 200 || x->status >= 300) {
			x->refused = true;
			return 0;
		}
		if (x->fd >= 0 && x->status == 206 && x->range_start != (int64_t)x->offset) {
			x->range_bad = true;
			return 0;
		}
		if (x->fd >= 0 && x->status != 206 && x->offset > 0) {
			int rc = restart_file(x); /* the server sent the whole thing */
			if (rc < 0) {
				x->write_err = rc;
				return 0;
			}
		}
		curl_off_t cl = -1;
		curl_easy_getinfo(x->h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
		if (x->fd >= 0 && !space_ok(x, cl > 0 ? (uint64_t)cl : 0))
			return 0;
		x->next_space_check = x->offset + DL_SPACE_CHECK_EVERY;
	}
	if (x->offset + x->written + len > x->cap) {
		x->over_cap = true;
		return 0;
	}
	int rc = x->fd >= 0 ? jv_write_all(x->fd, buf, len) : jv_buf_append(x->mem, buf, len);
	if (rc < 0) {
		x->write_err = rc;
		return 0;
	}
	if (x->q)
		hashq_update(x->q, &x->st, buf, len);
	x->written += len;
	uint64_t end = x->offset + x->written;
	if (x->fd >= 0 && end >= x->next_space_check) {
		x->next_space_check = end + DL_SPACE_CHECK_EVERY;
		if (!space_ok(x, 0))
			return 0;
	}
	if (x->fd >= 0 && end - x->synced >= DL_WRITEBACK_EVERY) {
		sync_file_range(x->fd, (off_t)x->synced, (off_t)(end - x->synced), SYNC_FILE_RANGE_WRITE);
		x->synced = end;
	}
	return len;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ult,
                       curl_off_t uln)
{
	struct xfer *x = ud;
	uint64_t total = x->expect_total ? x->expect_total
	                                 : (dltotal > 0 ? x->offset + (uint64_t)dltotal : 0);
	if (jv_io_tick(x->hooks, x->offset + x->written, total)) {
		x->cancelled = true;
		return 1;
	}
	return 0;
}

enum outcome { OK, RETRY, FAIL };

static bool curl_transient(CURLcode c)
{
	switch (c) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_PARTIAL_FILE:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR:
		return true;
	default:
		return false;
	}
}

/* Every option of one attempt: the URL, http(s) only, TLS checks,
 * timeouts, the callbacks into x, a size cap and a resume range. Returns
 * the header list to free after the transfer. range and ebuf must outlive it. */
static struct curl_slist *set_options(CURL *h, struct xfer *x, const char *url,
                                      const struct dl_opts *o, bool get_json, char *range,
                                      size_t rangelen, char *ebuf)
{
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(h, CURLOPT_MAXREDIRS, DL_MAX_REDIRS);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	if (o->ca_file)
		curl_easy_setopt(h, CURLOPT_CAINFO, o->ca_file);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, o->connect_timeout_s ? o->connect_timeout_s : 15L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, o->low_speed_time_s ? o->low_speed_time_s : 30L);
	long total_to = o->total_timeout_s ? o->total_timeout_s : (get_json ? 60L : 0L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, total_to);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "jobvisor/" JV_VERSION);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ebuf);
	curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 512L * 1024);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(h, CURLOPT_XFERINFODATA, x);
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	if (x->cap > x->offset)
		curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)(x->cap - x->offset));
	struct curl_slist *hdrs = NULL;
	if (get_json) {
		hdrs = curl_slist_append(NULL, "Accept: application/json");
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	}
	if (x->fd >= 0 && x->offset > 0) {
		snprintf(range, rangelen, "%llu-", (unsigned long long)x->offset);
		curl_easy_setopt(h, CURLOPT_RANGE, range);
	}
	return hdrs;
}

/* What an attempt that ended with curl code c and HTTP status came to. */
static enum outcome classify(struct xfer *x, const char *url, CURLcode c, long status,
                             const char *ebuf, int *rc, char *err, size_t errlen)
{
	*rc = 0;
	if (x->cancelled || c == CURLE_ABORTED_BY_CALLBACK) {
		*rc = -ECANCELED;
		errf(err, errlen, "cancelled");
		return FAIL;
	}
	if (x->write_err) {
		*rc = x->write_err == -EDQUOT ? -ENOSPC : x->write_err;
		if (x->space_msg[0])
			errf(err, errlen, "%s", x->space_msg);
		else
			errf(err, errlen, "cannot store the download: %s", strerror(-x->write_err));
		return FAIL;
	}
	if (x->over_cap || c == CURLE_FILESIZE_EXCEEDED) {
		*rc = -EFBIG;
		errf(err, errlen, "download of '%s' is larger than the limit of %llu bytes", url,
		     (unsigned long long)x->cap);
		return FAIL;
	}
	if (c == CURLE_UNSUPPORTED_PROTOCOL) {
		*rc = -EPROTONOSUPPORT;
		errf(err, errlen, "'%s' redirected to a URL that is not http or https: refused", url);
		return FAIL;
	}
	if (c == CURLE_TOO_MANY_REDIRECTS) {
		*rc = -ELOOP;
		errf(err, errlen, "'%s' redirected more than %ld times", url, DL_MAX_REDIRS);
		return FAIL;
	}
	if (x->range_bad || status == 416) {
		*rc = -EAGAIN;
		errf(err, errlen, "the server did not honour the resume request for '%s'", url);
		if (x->fd >= 0 && (*rc = restart_file(x)) < 0)
			return FAIL;
		*rc = -EAGAIN;
		return RETRY;
	}
	if (status >= 300 && (c == CURLE_OK || x->refused)) {
		bool transient = status == 408 || status == 429 || status >= 500;
		*rc = status == 404 ? -ENOENT : (status == 401 || status == 403 ? -EACCES : -EIO);
		errf(err, errlen, "'%s' answered HTTP %ld", url, status);
		return transient ? RETRY : FAIL;
	}
	if (c != CURLE_OK) {
		*rc = c == CURLE_PEER_FAILED_VERIFICATION ? -EPERM : -EIO;
		errf(err, errlen, "cannot download '%s': %s", url, ebuf[0] ? ebuf : curl_easy_strerror(c));
		return curl_transient(c) ? RETRY : FAIL;
	}
	if (x->expect_total && x->offset < x->expect_total) {
		*rc = -EIO;
		errf(err, errlen, "download of '%s' ended after %llu of %llu bytes", url,
		     (unsigned long long)x->offset, (unsigned long long)x->expect_total);
		return RETRY;
	}
	return OK;
}

static enum outcome perform(struct xfer *x, const char *url, const struct dl_opts *o,
                            bool get_json, int *rc, char *err, size_t errlen)
{
	char ebuf[CURL_ERROR_SIZE] = "";
	char range[48];
	CURL *h = curl_easy_init();
	if (!h) {
		*rc = -ENOMEM;
		errf(err, errlen, "out of memory");
		return FAIL;
	}
	x->h = h;
	x->written = 0;
	x->status = 0;
	x->body_started = x->refused = x->over_cap = x->range_bad = false;
	x->range_start = -1;
	x->retry_after = -1;
	struct curl_slist *hdrs = set_options(h, x, url, o, get_json, range, sizeof(range), ebuf);
	CURLcode c = curl_easy_perform(h);
	long status = 0;
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(h);
	curl_slist_free_all(hdrs);
	x->h = NULL;
	if (x->fd >= 0 || x->mem) /* bytes now in the file/buffer belong to the next attempt's offset */
		x->offset += x->written;
	return classify(x, url, c, status, ebuf, rc, err, errlen);
}

/* Sleep ms in slices, asking the hook; true when cancelled. */
static bool backoff_sleep(long ms, const struct jv_io_hooks *h, uint64_t done, uint64_t total)
{
	while (ms > 0) {
		if (jv_io_tick(h, done, total))
			return true;
		long slice = ms < 100 ? ms : 100;
		struct timespec ts = {0, slice * 1000000L};
		nanosleep(&ts, NULL);
		ms -= slice;
	}
	return jv_io_tick(h, done, total);
}

static long backoff_ms(const struct dl_opts *o, int attempt, long retry_after)
{
	long base = o->retry_delay_ms ? o->retry_delay_ms : 1000L;
	long d = base;
	for (int i = 1; i < attempt && d < DL_BACKOFF_CAP_MS; i++)
		d *= 2;
	if (d > DL_BACKOFF_CAP_MS)
		d = DL_BACKOFF_CAP_MS;
	d += (long)(jv_random_u64() % (uint64_t)(d / 4 + 1)); /* jitter */
	if (retry_after > 0) {
		long ra = (retry_after > DL_RETRY_AFTER_CAP_S ? DL_RETRY_AFTER_CAP_S : retry_after) * 1000;
		if (ra > d)
			d = ra;
	}
	return d;
}

/* Run attempts until OK or FAIL. */
static int transfer(struct xfer *x, const char *url, const struct dl_opts *o, bool get_json,
                    int *attempts, char *err, size_t errlen)
{
	int max = o->max_attempts > 0 ? o->max_attempts : 5;
	int rc = 0;
	for (int a = 1; a <= max; a++) {
		*attempts = a;
		enum outcome out = perform(x, url, o, get_json, &rc, err, errlen);
		if (out == OK)
			return 0;
		if (out == FAIL || a == max)
			break;
		if (x->mem) { /* dl_get cannot resume: start over */
			jv_buf_free(x->mem);
			jv_buf_init(x->mem, x->cap);
			x->offset = 0;
		}
		if (backoff_sleep(backoff_ms(o, a, x->retry_after), o->hooks, x->offset, x->expect_total)) {
			errf(err, errlen, "cancelled");
			return -ECANCELED;
		}
	}
	if (max > 1 && rc != -ECANCELED) {
		size_t n = strlen(err);
		snprintf(err + n, errlen - n, " (after %d attempt%s)", *attempts, *attempts == 1 ? "" : "s");
	}
	return rc < 0 ? rc : -EIO;
}

/* ---- cache --------------------------------------------------------------- */

static int copy_fd(int in, int out)
{
	char buf[1 << 16];
	for (;;) {
		ssize_t n = copy_file_range(in, NULL, out, NULL, 1 << 30, 0);
		if (n > 0)
			continue;
		if (n == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
			return -errno;
		break; /* plain copy below */
	}
	for (;;) {
		ssize_t n = read(in, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return 0;
		int rc = jv_write_all(out, buf, (size_t)n);
		if (rc < 0)
			return rc;
	}
}

/* The permission bits a placed download gets: opts.mode, else 0644. */
static int dl_mode(const struct dl_opts *o)
{
	return o->mode >= 0 ? (o->mode & 0777) : 0644;
}

/* Put from_dirfd/from_name at to_dirfd/to_name durably: a hard link, or a copy
 * when linking is not possible (another filesystem) or when mode (>= 0) differs
 * from the source's permission bits: a hard link shares its mode, so linking
 * would change the mode of every other copy. */
static int place(int from_dirfd, const char *from_name, int to_dirfd, const char *to_name,
                 int mode)
{
	char tmp[512];
	int n = snprintf(tmp, sizeof(tmp), ".%s.tmp.%ld", to_name, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return -ENAMETOOLONG;
	unlinkat(to_dirfd, tmp, 0);
	int rc = 0;
	struct stat st;
	bool same_mode = mode < 0 || (fstatat(from_dirfd, from_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	                              (int)(st.st_mode & 0777) == mode);
	if (!same_mode || linkat(from_dirfd, from_name, to_dirfd, tmp, 0) < 0) {
		if (same_mode && errno != EXDEV && errno != EPERM && errno != EMLINK &&
		    errno != EOPNOTSUPP)
			return -errno;
		int in = openat(from_dirfd, from_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (in < 0)
			return -errno;
		struct stat ist;
		if (fstat(in, &ist) < 0 || !S_ISREG(ist.st_mode)) {
			close(in);
			return -EINVAL;
		}
		int out = openat(to_dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
		if (out < 0) {
			rc = -errno;
			close(in);
			return rc;
		}
		rc = copy_fd(in, out);
		if (rc == 0 && mode >= 0 && fchmod(out, (mode_t)mode) < 0)
			rc = -errno;
		if (rc == 0 && fsync(out) < 0)
			rc = -errno;
		if (close(out) < 0 && rc == 0)
			rc = -errno;
		close(in);
	}
	if (rc == 0)
		rc = jv_durable_rename_at(to_dirfd, tmp, to_dirfd, to_name);
	if (rc < 0)
		unlinkat(to_dirfd, tmp, 0);
	return rc;
}

/* A verified cache hit placed at dst: 1; no (usable) entry: 0; error: < 0. */
static int from_cache(const struct dl_opts *o, const char *hex, int dst_dirfd,
                      const char *dst_name, struct dl_result *r)
{
	int fd = openat(o->cache_fd, hex, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return 0;
	struct stat st;
	char got[JV_SHA256_HEX];
	uint64_t size = 0;
	bool good = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	            (o->size < 0 || (uint64_t)st.st_size == (uint64_t)o->size) &&
	            fsx_sha256_fd(fd, got, &size, o->hooks) == 0 && jv_sha256_hex_equal(got, hex);
	close(fd);
	if (!good) { /* damaged (or modified through a hard link): drop it */
		unlinkat(o->cache_fd, hex, 0);
		return 0;
	}
	int rc = place(o->cache_fd, hex, dst_dirfd, dst_name, dl_mode(o));
	if (rc < 0)
		return rc;
	r->from_cache = true;
	r->bytes = size;
	memcpy(r->sha256, got, sizeof(r->sha256));
	return 1;
}

/* ---- entry points ------------------------------------------------------ */

/* Final digest of the .part into r. */
static void finish_digest(struct xfer *x, struct dl_result *r)
{
	hashq_final(x->q, &x->st);
	hashq_wait(x->q);
	memcpy(r->sha256, x->st.hex, sizeof(r->sha256));
	r->bytes = x->offset;
}

/* Queue an existing .part prefix for hashing; truncate it when it cannot be a prefix. */
static int load_part(struct xfer *x, const struct dl_opts *o)
{
	struct stat st;
	if (fstat(x->fd, &st) < 0)
		return -errno;
	uint64_t n = (uint64_t)st.st_size;
	if (!o->resume || n == 0 || n > x->cap)
		return restart_file(x);
	uint64_t done = 0;
	if (lseek(x->fd, 0, SEEK_SET) < 0)
		return -errno;
	while (done < n) {
		void *b = hashq_acquire(x->q);
		ssize_t k = read(x->fd, b, HASHQ_BLOCK);
		if (k < 0 && errno == EINTR) {
			hashq_submit(x->q, &x->st, b, 0);
			continue;
		}
		hashq_submit(x->q, &x->st, b, k > 0 ? (size_t)k : 0);
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		done += (uint64_t)k;
		if (jv_io_tick(o->hooks, done, x->expect_total))
			return -ECANCELED;
	}
	x->offset = done;
	x->synced = done;
	return 0;
}

/* The arguments of a download: an http(s) URL, the expected digest (into
 * want, lower case) unless waived, a plain destination name (part: its
 * ".part" name). 0 or -EINVAL with err. */
static int check_download(const char *url, const struct dl_opts *o, const char *dst_name,
                          char *part, size_t partlen, char *want, char *err, size_t errlen)
{
	int rc = dl_check_url(url, err, errlen);
	if (rc < 0)
		return rc;
	if (!o->sha256 && !o->insecure_no_checksum) {
		errf(err, errlen, "a download needs the expected sha256 (or insecure_no_checksum = true)");
		return -EINVAL;
	}
	if (o->sha256 && !jv_sha256_hex_valid(o->sha256)) {
		errf(err, errlen, "sha256 must be 64 hex digits");
		return -EINVAL;
	}
	int n = snprintf(part, partlen, "%s.part", dst_name);
	if (n < 0 || (size_t)n >= 256 || strchr(dst_name, '/') || !strcmp(dst_name, ".") ||
	    !strcmp(dst_name, "..")) {
		errf(err, errlen, "bad destination name '%s'", dst_name);
		return -EINVAL;
	}
	if (o->sha256) {
		for (int i = 0; i <= 64; i++) {
			char c = o->sha256[i];
			want[i] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c;
		}
	}
	return 0;
}

/* Transfer into the open .part (resumed where it ends) and check the digest;
 * a resumed .part that was not a prefix of this content is fetched once more
 * from zero. -EBADMSG (and an emptied .part) on a mismatch. */
static int fetch_verified(struct xfer *x, const char *url, const struct dl_opts *o,
                          const char *want, struct dl_result *r, char *err, size_t errlen)
{
	int rc = 0;
	/* A complete .part from an earlier run needs no request. */
	if (!(x->expect_total && x->offset == x->expect_total))
		rc = transfer(x, url, o, false, &r->attempts, err, errlen);
	if (rc < 0)
		return rc;
	finish_digest(x, r);
	if (want[0] && r->resumed && !jv_sha256_hex_equal(want, r->sha256)) {
		rc = restart_file(x);
		int more = 0;
		if (rc == 0)
			rc = transfer(x, url, o, false, &more, err, errlen);
		r->attempts += more;
		r->resumed = false;
		if (rc < 0)
			return rc;
		finish_digest(x, r);
	}
	if (want[0] && !jv_sha256_hex_equal(want, r->sha256)) {
		errf(err, errlen, "checksum mismatch for '%s': expected sha256 %s, got %s (%llu bytes)",
		     url, want, r->sha256, (unsigned long long)r->bytes);
		ftruncate(x->fd, 0); /* wrong content: nothing worth resuming */
		return -EBADMSG;
	}
	return 0;
}

int dl_download(const char *url, const struct dl_opts *o, int dst_dirfd, const char *dst_name,
                struct dl_result *r, char *err, size_t errlen)
{
	memset(r, 0, sizeof(*r));
	err[0] = '\0';
	char part[512];
	char want[JV_SHA256_HEX] = "";
	int rc = check_download(url, o, dst_name, part, sizeof(part), want, err, errlen);
	if (rc < 0)
		return rc;
	if (want[0] && o->cache_fd >= 0) {
		rc = from_cache(o, want, dst_dirfd, dst_name, r);
		if (rc != 0) {
			if (rc < 0)
				errf(err, errlen, "cannot place '%s' from the download cache: %s", dst_name,
				     strerror(-rc));
			return rc < 0 ? rc : 0;
		}
	}
	struct xfer x = {.fd = -1, .hooks = o->hooks, .reserve = o->reserve_bytes};
	x.cap = o->max_bytes ? o->max_bytes : DL_DEFAULT_MAX;
	if (o->size >= 0) {
		x.expect_total = (uint64_t)o->size;
		if ((uint64_t)o->size < x.cap)
			x.cap = (uint64_t)o->size;
	}
	rc = hashq_new(&x.q, 8);
	if (rc < 0) {
		errf(err, errlen, "cannot start hashing: %s", strerror(-rc));
		return rc;
	}
	hashq_begin(x.q, &x.st);
	x.fd = openat(dst_dirfd, part, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (x.fd < 0) {
		rc = -errno;
		errf(err, errlen, "cannot create '%s': %s", part, rc == -ELOOP ? "it is a symlink"
		                                                            : strerror(errno));
		goto out;
	}
	rc = load_part(&x, o);
	if (rc < 0) {
		errf(err, errlen, rc == -ECANCELED ? "cancelled" : "cannot read '%s': %s", part,
		     strerror(-rc));
		goto out;
	}
	r->resumed = x.offset > 0;
	if (lseek(x.fd, (off_t)x.offset, SEEK_SET) < 0) {
		rc = -errno;
		goto out;
	}
	rc = fetch_verified(&x, url, o, want, r, err, errlen);
	if (rc < 0)
		goto out;
	if (fchmod(x.fd, (mode_t)dl_mode(o)) < 0 || fsync(x.fd) < 0) {
		rc = errno == EDQUOT ? -ENOSPC : -errno;
		errf(err, errlen, "cannot write '%s': %s", part, strerror(errno));
		goto out;
	}
	close(x.fd);
	x.fd = -1;
	rc = jv_durable_rename_at(dst_dirfd, part, dst_dirfd, dst_name);
	if (rc < 0) {
		errf(err, errlen, "cannot move the download into place as '%s': %s", dst_name,
		     strerror(-rc));
		goto out;
	}
	if (want[0] && o->cache_fd >= 0)
		place(dst_dirfd, dst_name, o->cache_fd, want, -1); /* best effort: a cache miss later is fine */
out:
	if (x.fd >= 0) {
		struct stat st;
		bool empty = fstat(x.fd, &st) == 0 && st.st_size == 0;
		close(x.fd);
		/* Disk full: give the space back now (the game server next to us must
		 * be able to save); the retry downloads from the start. */
		if (!o->resume || empty || rc == -EBADMSG || rc == -ENOSPC)
			unlinkat(dst_dirfd, part, 0);
	}
	hashq_free(x.q);
	hashq_discard(NULL, &x.st);
	return rc;
}

int dl_get(const char *url, const struct dl_opts *o, size_t max, struct jv_buf *out, char *err,
           size_t errlen)
{
	jv_buf_init(out, max);
	err[0] = '\0';
	int rc = dl_check_url(url, err, errlen);
	if (rc < 0)
		return rc;
	struct xfer x = {.fd = -1, .mem = out, .hooks = o->hooks, .cap = max};
	int attempts = 0;
	return transfer(&x, url, o, true, &attempts, err, errlen);
}
