/* config_value.c — the value parsers every agent setting goes through (sizes,
 * booleans, control characters, trimming) and the error formatter, shared by
 * config.c (fixed keys) and config_remote.c (the remote.NAME.KEY family), so
 * neither includes the other. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>

#include "config_internal.h"
#include "jobvisor/util.h"

void config_seterr(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || !errlen)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* "4096", "64K", "256M", "1G" (powers of 1024) -> bytes. */
int config_parse_size(const char *v, int64_t *out)
{
	char *end = NULL;
	errno = 0;
	if (!isdigit((unsigned char)*v))
		return -EINVAL;
	unsigned long long n = strtoull(v, &end, 10);
	if (errno)
		return -ERANGE;
	unsigned shift = 0;
	if (*end == 'K' || *end == 'k')
		shift = 10;
	else if (*end == 'M' || *end == 'm')
		shift = 20;
	else if (*end == 'G' || *end == 'g')
		shift = 30;
	else if (*end != '\0')
		return -EINVAL;
	if (shift && (end[1] != '\0' && strcmp(end + 1, "iB") != 0 && strcmp(end + 1, "B") != 0))
		return -EINVAL;
	if (n > (1ULL << 40) >> shift)
		return -ERANGE;
	*out = (int64_t)(n << shift);
	return 0;
}

int config_parse_bool(const char *v, bool *out)
{
	static const char *const yes[] = {"true", "yes", "on", "1"};
	static const char *const no[] = {"false", "no", "off", "0"};
	for (size_t i = 0; i < JV_ARRAY_LEN(yes); i++) {
		if (strcasecmp(v, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(v, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -EINVAL;
}

bool config_has_ctl(const char *v)
{
	for (const unsigned char *p = (const unsigned char *)v; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return true;
	return false;
}

char *config_trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		s[--n] = '\0';
	return s;
}
