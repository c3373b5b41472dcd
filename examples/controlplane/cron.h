/* cron.h — standard 5-field cron expressions evaluated in an IANA time zone.
 *
 * Fields: minute (0-59) hour (0-23) day-of-month (1-31) month (1-12 or
 * jan-dec) day-of-week (0-7 or sun-sat, 0 and 7 = Sunday); each a `*`, a
 * value, a range a-b, a list a,b,c, any of them with a step /n. When both
 * day-of-month and day-of-week are restricted, a day matches either (as in
 * Vixie cron and POSIX). Macros: @hourly @daily @midnight @weekly @monthly
 * @yearly @annually.
 *
 * Time zones come from the C library and the system's TZ database (Debian
 * tzdata): names such as Europe/Berlin or UTC. Daylight saving time:
 *  - a wall time skipped by a spring-forward transition fires once, at the
 *    transition (02:30 on the day clocks go 02:00 -> 03:00 fires at 03:00);
 *  - a wall time that happens twice at a fall-back transition fires once, at
 *    its first occurrence — except that an expression whose hour field is `*`
 *    (every hour) also fires in the repeated hour, so "every 15 minutes"
 *    keeps its pace in real time. */
#ifndef JV_CP_CRON_H
#define JV_CP_CRON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cron {
	uint64_t minutes; /* bit m */
	uint32_t hours;   /* bit h */
	uint32_t dom;     /* bit d, 1..31 */
	uint16_t months;  /* bit m, 1..12 */
	uint8_t dow;      /* bit d, 0..6 (Sunday = 0) */
	bool dom_star, dow_star, hour_star;
};

/* Parse expr; 0, or -1 with a message naming the field in err. */
int cron_parse(const char *expr, struct cron *c, char *err, size_t errlen);
/* Is name a time zone of the system's TZ database? -1 with a message if not. */
int cron_zone_check(const char *name, char *err, size_t errlen);
/* The first firing strictly after after_ms (UTC milliseconds) in zone tz, in
 * whole minutes; 0 when there is none within 8 years (e.g. "0 0 30 2 *"). */
int64_t cron_next(const struct cron *c, const char *tz, int64_t after_ms);

#endif
