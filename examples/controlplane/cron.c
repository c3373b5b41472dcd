/* cron.c — cron expressions and their firing times in a time zone.
 *
 * The C library has one time zone per process (TZ + tzset). Every use here
 * holds tz_mu and sets TZ first; nothing else in jobvisor-cp uses local time
 * (all stored and shown times are UTC), so other threads are unaffected.
 *
 * Firing times are found on the wall clock: each day whose date matches, then
 * each matching hour:minute, each converted to the UTC instants where the
 * zone shows that wall time (none in a spring-forward gap, two in a
 * fall-back overlap; see cron.h for which of them fire). Near a transition
 * the instants are not in wall order, so the search keeps the earliest one
 * after `after` among the walls close to the first found. */
#include "cron.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define ZONEINFO "/usr/share/zoneinfo"
#define SEARCH_DAYS (8 * 366 + 2)

static pthread_mutex_t tz_mu = PTHREAD_MUTEX_INITIALIZER;

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                          "jul", "aug", "sep", "oct", "nov", "dec"};
static const char *const dow_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

struct field {
	const char *name;
	int lo, hi;
	const char *const *names; /* value lo + i, or NULL */
	int nnames;
};

static const struct field fields[5] = {
	{"minute", 0, 59, NULL, 0},
	{"hour", 0, 23, NULL, 0},
	{"day of month", 1, 31, NULL, 0},
	{"month", 1, 12, month_names, 12},
	{"day of week", 0, 7, dow_names, 7},
};

/* A number or a name of f at *p; advances. -1 when neither. */
static int value(const struct field *f, const char **p)
{
	const char *s = *p;
	if (isdigit((unsigned char)*s)) {
		long v = 0;
		while (isdigit((unsigned char)*s) && v < 1000)
			v = v * 10 + (*s++ - '0');
		*p = s;
		return (int)v;
	}
	for (int i = 0; i < f->nnames; i++) {
		if (strncasecmp(s, f->names[i], 3) == 0 && !isalpha((unsigned char)s[3])) {
			*p = s + 3;
			return f->lo + i;
		}
	}
	return -1;
}

/* One field's text (no spaces) into a bit mask. */
static int parse_field(const struct field *f, const char *text, uint64_t *mask, bool *star, char *err,
                       size_t errlen)
{
	*mask = 0;
	*star = strcmp(text, "*") == 0 || strcmp(text, "?") == 0;
	const char *p = text;
	for (;;) {
		int a, b, step = 1;
		bool all = false;
		if (*p == '*' || *p == '?') {
			a = f->lo;
			b = f->hi == 7 ? 6 : f->hi;
			all = true;
			p++;
		} else {
			a = value(f, &p);
			if (a < 0)
				goto bad;
			b = a;
			if (*p == '-') {
				p++;
				b = value(f, &p);
				if (b < 0)
					goto bad;
			}
		}
		if (*p == '/') {
			p++;
			if (!isdigit((unsigned char)*p))
				goto bad;
			step = 0;
			while (isdigit((unsigned char)*p) && step < 1000)
				step = step * 10 + (*p++ - '0');
			if (step < 1)
				goto bad;
			if (!all && b == a)
				b = f->hi == 7 ? 6 : f->hi; /* "5/15" = from 5 to the end */
		}
		if (a < f->lo || a > f->hi || b < f->lo || b > f->hi) {
			snprintf(err, errlen, "%s: %d is out of range %d-%d in '%s'", f->name, a < f->lo || a > f->hi ? a : b,
			         f->lo, f->hi, text);
			return -1;
		}
		if (b < a) {
			snprintf(err, errlen, "%s: range %d-%d goes backwards in '%s'", f->name, a, b, text);
			return -1;
		}
		for (int v = a; v <= b; v += step)
			*mask |= (uint64_t)1 << (f->hi == 7 && v == 7 ? 0 : v);
		if (*p == '\0')
			return 0;
		if (*p != ',')
			goto bad;
		p++;
	}
bad:
	snprintf(err, errlen, "%s: cannot read '%s' (use *, N, A-B, lists A,B and steps /N%s)", f->name, text,
	         f->names ? f->nnames == 12 ? "; names jan-dec" : "; names sun-sat" : "");
	return -1;
}

int cron_parse(const char *expr, struct cron *c, char *err, size_t errlen)
{
	static const struct {
		const char *name, *expr;
	} macros[] = {{"@yearly", "0 0 1 1 *"},  {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
	              {"@weekly", "0 0 * * 0"},  {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
	              {"@hourly", "0 * * * *"}};
	memset(c, 0, sizeof(*c));
	if (!expr || strlen(expr) > 200) {
		snprintf(err, errlen, "a cron expression is 5 fields, at most 200 characters");
		return -1;
	}
	for (size_t i = 0; i < sizeof(macros) / sizeof(macros[0]); i++)
		if (strcmp(expr, macros[i].name) == 0)
			expr = macros[i].expr;
	if (expr[0] == '@') {
		snprintf(err, errlen, "unknown macro '%s' (known: @yearly @annually @monthly @weekly @daily "
		         "@midnight @hourly)", expr);
		return -1;
	}
	char buf[201];
	snprintf(buf, sizeof(buf), "%s", expr);
	char *tok[6];
	int n = 0;
	char *save = NULL;
	for (char *t = strtok_r(buf, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
		if (n == 6)
			break;
		tok[n++] = t;
	}
	if (n != 5) {
		snprintf(err, errlen, "expected 5 fields (minute hour day-of-month month day-of-week), got %d%s", n,
		         n == 6 ? " or more (seconds and years are not supported)" : "");
		return -1;
	}
	uint64_t m[5];
	bool star[5];
	for (int i = 0; i < 5; i++)
		if (parse_field(&fields[i], tok[i], &m[i], &star[i], err, errlen) < 0)
			return -1;
	c->minutes = m[0];
	c->hours = (uint32_t)m[1];
	c->dom = (uint32_t)m[2];
	c->months = (uint16_t)m[3];
	c->dow = (uint8_t)m[4];
	c->hour_star = star[1];
	c->dom_star = star[2];
	c->dow_star = star[4];
	return 0;
}

int cron_zone_check(const char *name, char *err, size_t errlen)
{
	bool ok = name && name[0] && name[0] != '/' && strlen(name) < 128 && !strstr(name, "..");
	for (const char *p = name; ok && *p; p++)
		ok = isalnum((unsigned char)*p) || strchr("/_+-", *p);
	if (ok) {
		char path[256];
		struct stat st;
		snprintf(path, sizeof(path), "%s/%s", ZONEINFO, name);
		ok = stat(path, &st) == 0 && S_ISREG(st.st_mode);
	}
	if (!ok) {
		snprintf(err, errlen, "unknown time zone '%.64s' (an IANA name from the TZ database such as "
		         "Europe/Berlin or UTC)", name ? name : "");
		return -1;
	}
	return 0;
}

/* ---- under tz_mu, with TZ set ---- */

static long offset_at(time_t t)
{
	struct tm tm;
	localtime_r(&t, &tm);
	return tm.tm_gmtoff;
}

/* Seconds of a wall clock time as if it were UTC. */
static time_t wall_secs(int y, int mon, int d, int h, int mi)
{
	struct tm tm = {.tm_year = y - 1900, .tm_mon = mon - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi};
	return timegm(&tm);
}

/* The instants showing wall time w (seconds as if UTC): n = 0 (in a gap:
 * *gap = the transition), 1, or 2 (ascending). */
static int instants(time_t w, time_t out[2], time_t *gap)
{
	long o1 = offset_at(w - 86400 - 50400), o2 = offset_at(w + 86400 + 50400);
	long offs[2] = {o1, o2};
	int n = 0;
	for (int i = 0; i < (o1 == o2 ? 1 : 2); i++) {
		time_t t = w - offs[i];
		if (offset_at(t) == offs[i])
			out[n++] = t;
	}
	if (n == 2 && out[0] > out[1]) {
		time_t x = out[0];
		out[0] = out[1];
		out[1] = x;
	}
	if (n == 2 && out[0] == out[1])
		n = 1;
	if (n == 0) {
		/* Before the transition the old offset holds: find the first second of the new one. */
		time_t lo = w - (o1 > o2 ? o1 : o2), hi = w - (o1 < o2 ? o1 : o2);
		long before = offset_at(lo);
		while (hi - lo > 1) {
			time_t mid = lo + (hi - lo) / 2;
			if (offset_at(mid) == before)
				lo = mid;
			else
				hi = mid;
		}
		*gap = hi;
	}
	return n;
}

static bool day_matches(const struct cron *c, int mon, int mday, int wday)
{
	if (!(c->months & (1u << mon)))
		return false;
	bool dom = (c->dom >> mday) & 1, dow = (c->dow >> wday) & 1;
	if (c->dom_star || c->dow_star)
		return dom && dow;
	return dom || dow;
}

int64_t cron_next(const struct cron *c, const char *tz, int64_t after_ms)
{
	time_t after = (time_t)(after_ms / 1000);
	pthread_mutex_lock(&tz_mu);
	/* The environment changes only when the zone does (getenv elsewhere races with setenv). */
	static char current[160];
	if (strcmp(current, tz) != 0) {
		char env[170];
		snprintf(env, sizeof(env), ":%s", tz);
		setenv("TZ", env, 1);
		tzset();
		snprintf(current, sizeof(current), "%s", tz);
	}
	/* Start a day early: near a transition an earlier wall can be a later instant. */
	time_t start_wall = after + offset_at(after) - 86400;
	struct tm d0;
	gmtime_r(&start_wall, &d0);
	time_t best = 0;
	time_t best_wall = 0;
	for (int day = 0; day < SEARCH_DAYS; day++) {
		struct tm d = {.tm_year = d0.tm_year, .tm_mon = d0.tm_mon, .tm_mday = d0.tm_mday + day, .tm_hour = 12};
		time_t noon = timegm(&d); /* normalises the date */
		gmtime_r(&noon, &d);
		if (best && noon - 43200 > best_wall + 3 * 3600)
			break; /* no later wall can be an earlier instant */
		if (!day_matches(c, d.tm_mon + 1, d.tm_mday, d.tm_wday))
			continue;
		for (int h = 0; h < 24; h++) {
			if (!((c->hours >> h) & 1))
				continue;
			for (int mi = 0; mi < 60; mi++) {
				if (!((c->minutes >> mi) & 1))
					continue;
				time_t w = wall_secs(d.tm_year + 1900, d.tm_mon + 1, d.tm_mday, h, mi);
				if (w <= after - 13 * 3600)
					continue; /* offsets are -12 h .. +14 h: its instant is before after */
				if (best && w > best_wall + 3 * 3600)
					break;
				time_t ins[2], gap = 0;
				int n = instants(w, ins, &gap);
				time_t cand[2];
				int nc = 0;
				if (n == 0)
					cand[nc++] = gap;
				else
					cand[nc++] = ins[0];
				if (n == 2 && c->hour_star)
					cand[nc++] = ins[1];
				for (int k = 0; k < nc; k++) {
					if (cand[k] > after && (!best || cand[k] < best)) {
						best = cand[k];
						best_wall = w;
					}
				}
			}
		}
	}
	pthread_mutex_unlock(&tz_mu);
	return best ? (int64_t)best * 1000 : 0;
}
