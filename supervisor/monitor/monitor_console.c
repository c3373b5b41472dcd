/* monitor_console.c — the server's console: FIFOs, log capture, tail, lines.
 *
 * The console is two FIFOs in .jobvisor/: console.in (the server's stdin) and
 * console.out (its stdout and stderr). The server opens both read-write, so
 * it always holds a reader and a writer itself: it never gets EOF on stdin
 * or EPIPE/SIGPIPE on stdout when no monitor is attached. That is what lets
 * a monitor killed with SIGKILL be replaced: the next monitor opens the same
 * FIFOs and finds the output the server wrote meanwhile (up to the pipe size,
 * raised to 1 MiB; beyond that the server blocks on write until a monitor
 * drains it).
 *
 * Output goes to logs/console.log (rotated by size into console.log.1..N),
 * into a fixed 32 KiB ring of recent complete lines for tail/status, and line
 * by line to m->hooks->console_line (monitor.c: readiness matching, then the
 * console subscribers); this file names neither. Lines longer than
 * 4 KiB are split. Monitor notes ("[jobvisor] ...") go to the log and the ring
 * but are never matched against the ready pattern. */
#include "monitor_console.h"
#include "jobvisor/durable.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_LOG_MAX (10LL * 1024 * 1024)
#define DEFAULT_LOG_KEEP 5

static int open_fifo(struct monitor *m, const char *name, bool fresh)
{
	struct stat st;
	bool ok = !fresh && fstatat(m->jv_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	          S_ISFIFO(st.st_mode);
	if (!ok) {
		if (unlinkat(m->jv_fd, name, 0) < 0 && errno != ENOENT)
			return -errno;
		if (mkfifoat(m->jv_fd, name, 0600) < 0)
			return -errno;
	}
	int fd = openat(m->jv_fd, name, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
	return fd < 0 ? -errno : fd;
}

static int open_log(struct monitor *m)
{
	m->con.log_fd = openat(m->logs_fd, "console.log",
	                       O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
	if (m->con.log_fd < 0)
		return -errno;
	struct stat st;
	m->con.log_size = fstat(m->con.log_fd, &st) == 0 ? st.st_size : 0;
	return 0;
}

int con_open(struct monitor *m, bool fresh)
{
	struct mon_console *c = &m->con;
	c->max_bytes = jv_json_int(m->settings, "console_log_max_bytes", DEFAULT_LOG_MAX);
	if (c->max_bytes < 4096)
		c->max_bytes = 4096;
	c->keep = (int)jv_json_int(m->settings, "console_log_keep", DEFAULT_LOG_KEEP);
	if (c->keep < 1)
		c->keep = 1;
	if (c->keep > 100)
		c->keep = 100;
	int fd = open_fifo(m, "console.in", fresh);
	if (fd < 0)
		return fd;
	c->in_fd = fd;
	if ((fd = open_fifo(m, "console.out", fresh)) < 0)
		return fd;
	c->out_fd = fd;
	fcntl(c->out_fd, F_SETPIPE_SZ, 1 << 20); /* may fail above pipe-max-size: keep the default */
	return open_log(m);
}

void con_close(struct monitor *m)
{
	struct mon_console *c = &m->con;
	if (c->in_fd >= 0)
		close(c->in_fd);
	if (c->out_fd >= 0)
		close(c->out_fd);
	if (c->log_fd >= 0)
		close(c->log_fd);
	c->in_fd = c->out_fd = c->log_fd = -1;
}

static void rotate(struct monitor *m)
{
	struct mon_console *c = &m->con;
	char from[32], to[32];
	for (int i = c->keep - 1; i >= 1; i--) {
		snprintf(from, sizeof(from), "console.log.%d", i);
		snprintf(to, sizeof(to), "console.log.%d", i + 1);
		renameat(m->logs_fd, from, m->logs_fd, to);
	}
	renameat(m->logs_fd, "console.log", m->logs_fd, "console.log.1");
	close(c->log_fd);
	c->log_fd = -1;
	c->log_size = 0;
	if (open_log(m) < 0)
		jv_error(NULL, NULL, "instance %s: cannot reopen console.log: %s", m->instance_id,
		         strerror(errno));
}

/* Write to console.log, rotating so each file stays within max_bytes: cut at
 * the last newline that fits (a single line longer than the limit gets a
 * file of its own). */
static void log_write(struct monitor *m, const char *buf, size_t len)
{
	struct mon_console *c = &m->con;
	while (len > 0 && c->log_fd >= 0) {
		size_t room = c->log_size < c->max_bytes ? (size_t)(c->max_bytes - c->log_size) : 0;
		size_t n = len;
		if (len > room) {
			n = 0;
			for (size_t i = room; i > 0; i--)
				if (buf[i - 1] == '\n') {
					n = i;
					break;
				}
			if (n == 0 && c->log_size > 0) {
				rotate(m);
				continue;
			}
			if (n == 0)
				n = room > 0 ? room : len;
		}
		if (jv_write_all(c->log_fd, buf, n) < 0) {
			jv_error(NULL, NULL, "instance %s: cannot write console.log: %s", m->instance_id,
			         strerror(errno));
			return;
		}
		c->log_size += (off_t)n;
		buf += n;
		len -= n;
		if (len > 0 || c->log_size >= c->max_bytes)
			rotate(m);
	}
}

/* Append one line (without its newline) to the ring, dropping the oldest
 * lines to make room. */
static void ring_push(struct mon_console *c, const char *s, size_t n)
{
	size_t need = n + 1;
	if (need > CONSOLE_RING)
		return;
	while (c->ring_len + need > CONSOLE_RING) {
		size_t i = 0;
		while (i < c->ring_len && c->ring[(c->ring_start + i) % CONSOLE_RING] != '\n')
			i++;
		i = i < c->ring_len ? i + 1 : c->ring_len;
		c->ring_start = (c->ring_start + i) % CONSOLE_RING;
		c->ring_len -= i;
		if (c->ring_lines)
			c->ring_lines--;
	}
	size_t end = (c->ring_start + c->ring_len) % CONSOLE_RING;
	size_t first = n < CONSOLE_RING - end ? n : CONSOLE_RING - end;
	memcpy(c->ring + end, s, first);
	memcpy(c->ring, s + first, n - first);
	c->ring[(end + n) % CONSOLE_RING] = '\n';
	c->ring_len += need;
	c->ring_lines++;
}

/* Replace bytes that are not valid UTF-8 with '?', so every line can travel
 * as a JSON string. */
static void utf8_clean(char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		size_t len = u[i] < 0x80 ? 1 : (u[i] >> 5) == 6 ? 2 : (u[i] >> 4) == 14 ? 3
		             : (u[i] >> 3) == 30 ? 4 : 0;
		bool ok = len > 0 && i + len <= n;
		for (size_t k = 1; ok && k < len; k++)
			ok = (u[i + k] & 0xC0) == 0x80;
		if (!ok) {
			s[i++] = '?';
			continue;
		}
		i += len;
	}
}

static void emit_line(struct monitor *m, const char *s, size_t n, bool from_server)
{
	struct mon_console *c = &m->con;
	char line[CONSOLE_LINE_MAX + 1];
	memcpy(line, s, n);
	if (n > 0 && line[n - 1] == '\r')
		n--;
	line[n] = '\0';
	utf8_clean(line, n);
	ring_push(c, line, n);
	c->lines++;
	m->hooks->console_line(m, line, n, c->lines, from_server);
}

static void read_output(struct monitor *m, int rounds)
{
	struct mon_console *c = &m->con;
	char buf[16384];
	for (int round = 0; round < rounds && c->out_fd >= 0; round++) {
		ssize_t n = read(c->out_fd, buf, sizeof(buf));
		if (n <= 0)
			return;
		log_write(m, buf, (size_t)n);
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] == '\n') {
				emit_line(m, c->line, c->line_len, true);
				c->line_len = 0;
				continue;
			}
			if (buf[i] == '\0')
				continue;
			c->line[c->line_len++] = buf[i];
			if (c->line_len == CONSOLE_LINE_MAX) {
				emit_line(m, c->line, c->line_len, true);
				c->line_len = 0;
			}
		}
	}
}

void con_on_readable(struct monitor *m)
{
	/* Bounded per wakeup so a chatty server cannot starve the socket. */
	read_output(m, 16);
}

void con_drain_output(struct monitor *m)
{
	/* Everything still in the FIFO (at most its 1 MiB), so the last words of
	 * an exiting server are logged before its exit is. */
	read_output(m, 80);
}

void con_log_note(struct monitor *m, const char *fmt, ...)
{
	char msg[CONSOLE_LINE_MAX - 64], line[CONSOLE_LINE_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	char ts[JV_ISO8601_LEN];
	jv_iso8601(jv_now_real_ms(), ts);
	int n = snprintf(line, sizeof(line), "[jobvisor %s] %s", ts, msg);
	if (n < 0)
		return;
	size_t len = (size_t)n < sizeof(line) - 1 ? (size_t)n : sizeof(line) - 2;
	/* A partial server line stays pending; the note goes in whole. */
	char out[CONSOLE_LINE_MAX + 1];
	memcpy(out, line, len);
	out[len] = '\n';
	log_write(m, out, len + 1);
	emit_line(m, line, len, false);
}

void con_drain_input(struct monitor *m)
{
	char buf[4096];
	if (m->con.in_fd < 0)
		return;
	while (read(m->con.in_fd, buf, sizeof(buf)) > 0) {
	}
}

int con_send(struct monitor *m, const char *line)
{
	size_t n = strlen(line);
	if (m->con.in_fd < 0)
		return -EPIPE;
	if (n + 1 > CONSOLE_LINE_MAX)
		return -E2BIG;
	char buf[CONSOLE_LINE_MAX + 1];
	memcpy(buf, line, n);
	buf[n] = '\n';
	/* Pipe writes up to PIPE_BUF are atomic: all of the line or EAGAIN. */
	ssize_t w = write(m->con.in_fd, buf, n + 1);
	if (w < 0)
		return -errno;
	if ((size_t)w != n + 1)
		return -EAGAIN;
	return 0;
}

/* ---- readiness already logged ---------------------------------------------
 * A monitor tells its subscribers RUNNING before state.json says so (see
 * mon_set_state), and it consumes the ready line from the FIFO before either.
 * A monitor killed in between leaves state.json at STARTING for a server that
 * is ready; its successor would wait for a ready line that is gone and, at the
 * ready timeout, kill a healthy server. Everything a monitor reads from the
 * FIFO is in console.log first, after its "server started: pid N" note, so the
 * successor looks there. */

#define READY_SCAN_MAX (1 << 20) /* per file, like the FIFO: startup output fits */

struct ready_scan {
	struct monitor *m;
	char start_note[64]; /* "] server started: pid N" for the adopted pid */
	bool any_start;      /* saw a start note at all */
	bool armed;          /* after the adopted server's start note */
	bool found;
};

static void scan_line(struct ready_scan *s, char *line, size_t n)
{
	if (n > 0 && line[n - 1] == '\r')
		n--;
	line[n] = '\0';
	if (strncmp(line, "[jobvisor ", 10) == 0) {
		/* Monitor notes are never matched; each start note opens a new run. */
		const char *p = strstr(line, "] server started: pid ");
		if (p) {
			s->any_start = true;
			s->armed = strcmp(p, s->start_note) == 0;
			s->found = false;
		}
		return;
	}
	utf8_clean(line, n);
	if (s->armed && regexec(&s->m->spec->ready_re, line, 0, NULL, 0) == 0)
		s->found = true;
}

/* Feed the last READY_SCAN_MAX bytes of logs/NAME to the scan, line by line as
 * read_output() splits them (NULs dropped, long lines cut). Sets *whole when
 * the file was read from its start. */
static void scan_file(struct ready_scan *s, const char *name, bool *whole)
{
	*whole = false;
	int fd = openat(s->m->logs_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return;
	struct stat st;
	char *buf = NULL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		goto out;
	off_t from = st.st_size > READY_SCAN_MAX ? st.st_size - READY_SCAN_MAX : 0;
	size_t len = (size_t)(st.st_size - from);
	if (!(buf = malloc(len ? len : 1)))
		goto out;
	size_t got = 0;
	while (got < len) {
		ssize_t r = pread(fd, buf + got, len - got, from + (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	*whole = from == 0;
	char line[CONSOLE_LINE_MAX + 1];
	size_t ll = 0;
	bool skip = from > 0; /* the first line read is a cut one */
	for (size_t i = 0; i < got; i++) {
		if (buf[i] == '\n') {
			if (!skip)
				scan_line(s, line, ll);
			skip = false;
			ll = 0;
		} else if (buf[i] != '\0') {
			line[ll++] = buf[i];
			if (ll == CONSOLE_LINE_MAX) {
				if (!skip)
					scan_line(s, line, ll);
				ll = 0;
			}
		}
	}
	/* A last line without its newline is left alone: the rest of it may
	 * still be in the FIFO. */
out:
	free(buf);
	close(fd);
}

bool con_ready_in_log(struct monitor *m)
{
	if (!m->spec || !m->spec->ready_pattern || m->pid <= 0 || m->logs_fd < 0)
		return false;
	struct ready_scan s = {.m = m};
	snprintf(s.start_note, sizeof(s.start_note), "] server started: pid %ld", (long)m->pid);
	bool whole = false;
	scan_file(&s, "console.log", &whole);
	if (!s.any_start && whole) {
		/* No start note in console.log: it may have rotated since the start. */
		struct ready_scan prev = s;
		scan_file(&prev, "console.log.1", &whole);
		if (prev.armed) {
			s = prev;
			scan_file(&s, "console.log", &whole);
		}
	}
	return s.armed && s.found;
}

cJSON *con_tail(struct monitor *m, int n, uint64_t since, uint64_t *first_seq)
{
	struct mon_console *c = &m->con;
	cJSON *arr = cJSON_CreateArray();
	if (!arr)
		return NULL;
	size_t want = n < 0 ? 0 : (size_t)n;
	if (want > c->ring_lines)
		want = c->ring_lines;
	if (since < c->lines && c->lines - since < want)
		want = (size_t)(c->lines - since);
	if (since >= c->lines)
		want = 0;
	*first_seq = c->lines - want + 1;
	/* Walk back from the end over `want` newlines to the first wanted line. */
	size_t pos = c->ring_len; /* offset from ring_start, exclusive end */
	size_t seen = 0;
	while (pos > 0 && seen <= want) {
		if (c->ring[(c->ring_start + pos - 1) % CONSOLE_RING] == '\n') {
			if (seen == want)
				break;
			seen++;
		}
		pos--;
	}
	char line[CONSOLE_LINE_MAX + 1];
	size_t len = 0;
	for (size_t i = pos; i < c->ring_len; i++) {
		char ch = c->ring[(c->ring_start + i) % CONSOLE_RING];
		if (ch == '\n') {
			line[len] = '\0';
			cJSON_AddItemToArray(arr, cJSON_CreateString(line));
			len = 0;
		} else if (len < CONSOLE_LINE_MAX) {
			line[len++] = ch;
		}
	}
	return arr;
}
