/* util.c — time stamps, UUIDs, randomness, the capped buffer, signal names, fd helpers. */
#include "jobvisor/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static int64_t clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t jv_now_mono_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

int64_t jv_now_real_ms(void)
{
	return clock_ms(CLOCK_REALTIME);
}

/* UTC by arithmetic (days to civil date, H. Hinnant's algorithm): gmtime_r
 * would read /etc/localtime on its first call in every process, seven system
 * calls a job run paid twice for a timestamp that never depends on it. */
void jv_iso8601(int64_t real_ms, char out[JV_ISO8601_LEN])
{
	int64_t secs = real_ms / 1000;
	int ms = (int)(real_ms % 1000);
	if (ms < 0) {
		ms += 1000;
		secs -= 1;
	}
	int64_t days = secs / 86400, sod = secs % 86400;
	if (sod < 0) {
		sod += 86400;
		days -= 1;
	}
	int64_t z = days + 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	int day = (int)(doy - (153 * mp + 2) / 5 + 1);
	int month = (int)(mp < 10 ? mp + 3 : mp - 9);
	int64_t year = yoe + era * 400 + (month <= 2);
	if (year < 0 || year > 9999)
		year = year < 0 ? 0 : 9999; /* fixed width: clamp what no clock reads */
	snprintf(out, JV_ISO8601_LEN, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", (int)year, month % 13,
	         day % 32, (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60), ms % 1000);
}

int jv_iso8601_parse(const char *s, int64_t *real_ms)
{
	struct tm tm = {0};
	int ms = 0, consumed = 0;
	if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
	                 &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &consumed) != 6)
		return -EINVAL;
	const char *p = s + consumed;
	if (*p == '.') {
		int digits = 0;
		p++;
		while (*p >= '0' && *p <= '9') {
			if (digits < 3) {
				ms = ms * 10 + (*p - '0');
				digits++;
			}
			p++;
		}
		while (digits++ < 3)
			ms *= 10;
	}
	if (strcmp(p, "Z") != 0)
		return -EINVAL;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	time_t t = timegm(&tm);
	if (t == (time_t)-1)
		return -EINVAL;
	*real_ms = (int64_t)t * 1000 + ms;
	return 0;
}

uint64_t jv_random_u64(void)
{
	uint64_t v = 0;
	if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
		v = (uint64_t)jv_now_mono_ms() * 6364136223846793005ULL ^ (uint64_t)getpid();
	return v;
}

int jv_uuid4(char out[JV_UUID_LEN])
{
	unsigned char b[16];
	if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b))
		return errno ? -errno : -EIO;
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
	snprintf(out, JV_UUID_LEN,
	         "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
	         b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
	         b[15]);
	return 0;
}

void jv_buf_init(struct jv_buf *b, size_t limit)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->limit = limit;
}

static int buf_reserve(struct jv_buf *b, size_t extra)
{
	if (b->limit && b->len + extra > b->limit)
		return -EFBIG;
	if (b->len + extra + 1 <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra + 1)
		cap *= 2;
	char *nd = realloc(b->data, cap);
	if (!nd)
		return -ENOMEM;
	b->data = nd;
	b->cap = cap;
	return 0;
}

int jv_buf_append(struct jv_buf *b, const void *data, size_t len)
{
	int rc = buf_reserve(b, len);
	if (rc)
		return rc;
	if (len)
		memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
	return 0;
}

int jv_buf_printf(struct jv_buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	int rc = buf_reserve(b, (size_t)n);
	if (rc)
		return rc;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

void jv_buf_consume(struct jv_buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
	} else {
		memmove(b->data, b->data + n, b->len - n);
		b->len -= n;
	}
	if (b->data)
		b->data[b->len] = '\0';
}

void jv_buf_free(struct jv_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

static const struct {
	const char *name;
	int sig;
} signals[] = {
	{"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
	{"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM}, {"ABRT", SIGABRT},
	{"SEGV", SIGSEGV}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {"BUS", SIGBUS},
	{"FPE", SIGFPE},   {"ILL", SIGILL},   {"XCPU", SIGXCPU}, {"XFSZ", SIGXFSZ},
	{"TRAP", SIGTRAP}, {"SYS", SIGSYS},   {"CONT", SIGCONT}, {"STOP", SIGSTOP},
};

int jv_signal_parse(const char *name)
{
	if (!name)
		return -1;
	if (strncasecmp(name, "SIG", 3) == 0)
		name += 3;
	for (size_t i = 0; i < JV_ARRAY_LEN(signals); i++)
		if (strcasecmp(name, signals[i].name) == 0)
			return signals[i].sig;
	return -1;
}

const char *jv_signal_name(int sig)
{
	static const char *const full[] = {
		[SIGHUP] = "SIGHUP",   [SIGINT] = "SIGINT",   [SIGQUIT] = "SIGQUIT",
		[SIGKILL] = "SIGKILL", [SIGUSR1] = "SIGUSR1", [SIGUSR2] = "SIGUSR2",
		[SIGTERM] = "SIGTERM", [SIGABRT] = "SIGABRT", [SIGSEGV] = "SIGSEGV",
		[SIGPIPE] = "SIGPIPE", [SIGALRM] = "SIGALRM", [SIGBUS] = "SIGBUS",
		[SIGFPE] = "SIGFPE",   [SIGILL] = "SIGILL",   [SIGXCPU] = "SIGXCPU",
		[SIGXFSZ] = "SIGXFSZ", [SIGTRAP] = "SIGTRAP", [SIGSYS] = "SIGSYS",
		[SIGCONT] = "SIGCONT", [SIGSTOP] = "SIGSTOP",
	};
	if (sig > 0 && (size_t)sig < JV_ARRAY_LEN(full) && full[sig])
		return full[sig];
	return "signal";
}

int jv_set_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0)
		return -errno;
	return 0;
}

int jv_set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

int jv_opendir_at(int dirfd, DIR **out)
{
	*out = NULL;
	int dup = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
	if (dup < 0)
		return -errno;
	DIR *d = fdopendir(dup);
	if (!d) {
		int rc = -errno;
		close(dup);
		return rc;
	}
	rewinddir(d);
	*out = d;
	return 0;
}

/* close_range(2) over the gaps between the kept descriptors: one system call
 * per gap, no /proc, no allocation. False where the kernel lacks it. */
static bool close_ranges(int lowfd, const int *keep, size_t nkeep)
{
	unsigned lo = (unsigned)lowfd;
	for (;;) {
		unsigned next = ~0U; /* the lowest kept descriptor >= lo */
		for (size_t i = 0; i < nkeep; i++)
			if (keep[i] >= 0 && (unsigned)keep[i] >= lo && (unsigned)keep[i] < next)
				next = (unsigned)keep[i];
		if (next > lo && close_range(lo, next == ~0U ? ~0U : next - 1, 0) < 0)
			return false;
		if (next == ~0U)
			return true;
		lo = next + 1;
	}
}

void jv_close_fds_from(int lowfd, const int *keep, size_t nkeep)
{
	if (close_ranges(lowfd, keep, nkeep))
		return;
	/* Collect first, close after: closing while iterating /proc/self/fd would
	 * close the directory's own descriptor under readdir. */
	int fds[1024];
	size_t n = 0;
	bool more = true;
	while (more) {
		more = false;
		n = 0;
		DIR *d = opendir("/proc/self/fd");
		if (!d) {
			long max = sysconf(_SC_OPEN_MAX);
			if (max < 0 || max > 65536)
				max = 65536;
			for (int fd = lowfd; fd < max; fd++) {
				bool k = false;
				for (size_t i = 0; i < nkeep; i++)
					k = k || keep[i] == fd;
				if (!k)
					close(fd);
			}
			return;
		}
		int self = dirfd(d);
		struct dirent *e;
		while ((e = readdir(d))) {
			if (e->d_name[0] < '0' || e->d_name[0] > '9')
				continue;
			int fd = atoi(e->d_name);
			if (fd < lowfd || fd == self)
				continue;
			bool k = false;
			for (size_t i = 0; i < nkeep; i++)
				k = k || keep[i] == fd;
			if (k)
				continue;
			if (n == JV_ARRAY_LEN(fds)) {
				more = true;
				break;
			}
			fds[n++] = fd;
		}
		closedir(d);
		for (size_t i = 0; i < n; i++)
			close(fds[i]);
	}
}
