/* log.c — leveled log lines on stderr, logfmt or JSON, each with job_id and run_id.
 *
 * One write(2) per line so lines from the agent and its children do not
 * interleave mid-line. No allocation: lines are built in a stack buffer and
 * cut at its size. Safe in a forked single-threaded child. */
#include "jobvisor/log.h"
#include "jobvisor/utf8.h"
#include "jobvisor/util.h"

#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

static bool errno_is_eintr(void) { return errno == EINTR; }

static enum jv_log_format log_format = JV_LOG_LOGFMT;
static enum jv_log_level log_level = JV_LOG_INFO;
static const char *log_component = "jobvisor";

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int jv_log_level_parse(const char *s)
{
	for (size_t i = 0; i < JV_ARRAY_LEN(level_names); i++)
		if (s && strcmp(s, level_names[i]) == 0)
			return (int)i;
	if (s && strcmp(s, "warning") == 0)
		return JV_LOG_WARN;
	return -1;
}

int jv_log_format_parse(const char *s)
{
	if (s && strcmp(s, "logfmt") == 0)
		return JV_LOG_LOGFMT;
	if (s && strcmp(s, "json") == 0)
		return JV_LOG_JSON;
	return -1;
}

const char *jv_log_level_name(enum jv_log_level level)
{
	return (unsigned)level < JV_ARRAY_LEN(level_names) ? level_names[level] : "info";
}

void jv_log_setup(enum jv_log_format format, enum jv_log_level level)
{
	log_format = format;
	log_level = level;
}

void jv_log_set_component(const char *component)
{
	log_component = component ? component : "jobvisor";
}

bool jv_log_enabled(enum jv_log_level level)
{
	return level >= log_level;
}

struct line {
	char buf[4096];
	size_t len;
};

static void put(struct line *l, const char *s, size_t n)
{
	size_t room = sizeof(l->buf) - 1 - l->len; /* keep one byte for '\n' */
	if (n > room)
		n = room;
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static void puts_(struct line *l, const char *s)
{
	put(l, s, strlen(s));
}

/* Bytes >= 0x80 at p: a valid UTF-8 sequence is copied, anything else becomes
 * U+FFFD, so every line is valid UTF-8 (file names need not be). Returns the
 * bytes consumed. */
static size_t put_high(struct line *l, const char *p)
{
	size_t avail = strnlen(p, 4);
	size_t k = jv_utf8_seq(p, avail);
	if (k) {
		put(l, p, k);
		return k;
	}
	put(l, JV_UTF8_REPLACEMENT, 3);
	return 1;
}

/* logfmt value: bare when safe, else quoted with \" \\ \n escapes. */
static void put_logfmt_value(struct line *l, const char *v)
{
	bool bare = *v != '\0';
	for (const char *p = v; *p; p++)
		if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || (unsigned char)*p >= 0x7f)
			bare = false;
	if (bare) {
		puts_(l, v);
		return;
	}
	put(l, "\"", 1);
	for (const char *p = v; *p; p++) {
		if (*p == '"' || *p == '\\') {
			char esc[2] = {'\\', *p};
			put(l, esc, 2);
		} else if (*p == '\n') {
			put(l, "\\n", 2);
		} else if (*p == '\t') {
			put(l, "\\t", 2);
		} else if ((unsigned char)*p < ' ') {
			put(l, "?", 1);
		} else if ((unsigned char)*p >= 0x80) {
			p += put_high(l, p) - 1;
		} else {
			put(l, p, 1);
		}
	}
	put(l, "\"", 1);
}

static void put_json_string(struct line *l, const char *v)
{
	put(l, "\"", 1);
	for (const char *p = v; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '"' || c == '\\') {
			char esc[2] = {'\\', (char)c};
			put(l, esc, 2);
		} else if (c == '\n') {
			put(l, "\\n", 2);
		} else if (c == '\t') {
			put(l, "\\t", 2);
		} else if (c < ' ') {
			char esc[8];
			int n = snprintf(esc, sizeof(esc), "\\u%04x", c);
			put(l, esc, (size_t)n);
		} else if (c >= 0x80) {
			p += put_high(l, p) - 1;
		} else {
			put(l, p, 1);
		}
	}
	put(l, "\"", 1);
}

static void put_field(struct line *l, const char *key, const char *value, bool first)
{
	if (log_format == JV_LOG_JSON) {
		if (!first)
			put(l, ",", 1);
		put_json_string(l, key);
		put(l, ":", 1);
		put_json_string(l, value);
	} else {
		if (!first)
			put(l, " ", 1);
		puts_(l, key);
		put(l, "=", 1);
		put_logfmt_value(l, value);
	}
}

void jv_vlog(enum jv_log_level level, const char *job_id, const char *run_id,
             const char *fmt, va_list ap)
{
	if (!jv_log_enabled(level))
		return;
	char ts[JV_ISO8601_LEN];
	jv_iso8601(jv_now_real_ms(), ts);
	char msg[1800]; /* escaped, still fits the 4 KiB line */
	vsnprintf(msg, sizeof(msg), fmt, ap);

	struct line l = {.len = 0};
	if (log_format == JV_LOG_JSON)
		put(&l, "{", 1);
	put_field(&l, "ts", ts, true);
	put_field(&l, "level", jv_log_level_name(level), false);
	put_field(&l, "component", log_component, false);
	put_field(&l, "job_id", job_id && *job_id ? job_id : "-", false);
	put_field(&l, "run_id", run_id && *run_id ? run_id : "-", false);
	put_field(&l, "msg", msg, false);
	if (log_format == JV_LOG_JSON) {
		if (l.len >= sizeof(l.buf) - 2)
			l.len = sizeof(l.buf) - 3; /* cut: keep the object closed */
		put(&l, "}", 1);
	}
	l.buf[l.len++] = '\n';
	ssize_t w;
	do {
		w = write(STDERR_FILENO, l.buf, l.len);
	} while (w < 0 && errno_is_eintr());
}

void jv_log(enum jv_log_level level, const char *job_id, const char *run_id, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	jv_vlog(level, job_id, run_id, fmt, ap);
	va_end(ap);
}
