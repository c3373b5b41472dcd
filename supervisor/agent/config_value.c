/* config_value.c — the value parsers every agent setting goes through (sizes,
 * booleans, control characters, trimming, the control-plane URL list) and the error formatter, shared by
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
#include "endpoints.h"
#include "jobvisor/util.h"
#include "transport.h"

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

/* Report a bad URL list item; a one-URL list keeps the plain message. */
static int bad_item(char *err, size_t errlen, size_t count, size_t item, const char *msg)
{
	if (count > 1)
		config_seterr(err, errlen, "URL %zu of the list: %s", item, msg);
	else
		config_seterr(err, errlen, "%s", msg);
	return -EINVAL;
}

static void free_urls(char **urls, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(urls[i]);
		urls[i] = NULL;
	}
}

/* One item of the list (trimmed, non-empty): check it and reject a repeat. */
static int add_url(char *item, char **urls, size_t *n, bool *loopback, size_t count, char *err,
                   size_t errlen)
{
	char msg[300], key[2][600];
	bool lb = false;
	if (transport_check_url(item, &lb, msg, sizeof(msg)))
		return bad_item(err, errlen, count, *n + 1, msg);
	size_t l = strlen(item);
	while (l > 0 && item[l - 1] == '/')
		item[--l] = '\0';
	if (endpoints_url_key(item, key[0], sizeof(key[0])))
		return bad_item(err, errlen, count, *n + 1, "the URL is too long");
	for (size_t i = 0; i < *n; i++) {
		if (endpoints_url_key(urls[i], key[1], sizeof(key[1])) == 0 && strcmp(key[0], key[1]) == 0) {
			config_seterr(err, errlen, "URL %zu of the list ('%.200s') repeats URL %zu", *n + 1,
			              item, i + 1);
			return -EINVAL;
		}
	}
	urls[*n] = strdup(item);
	if (!urls[*n])
		return -ENOMEM;
	(*n)++;
	*loopback = *loopback && lb;
	return 0;
}

int config_parse_urls(const char *v, char **urls, size_t max, size_t *n, bool *all_loopback,
                      char *err, size_t errlen)
{
	*n = 0;
	*all_loopback = true;
	size_t count = 1;
	for (const char *p = v; *p; p++)
		count += *p == ',';
	if (count > max) {
		config_seterr(err, errlen, "%zu URLs listed; at most %zu", count, max);
		return -EINVAL;
	}
	char *copy = strdup(v);
	if (!copy)
		return -ENOMEM;
	int rc = 0;
	char *rest = copy;
	for (size_t i = 0; i < count && rc == 0; i++) {
		char *item = strsep(&rest, ",");
		item = config_trim(item);
		if (!*item)
			rc = count > 1 ? bad_item(err, errlen, count, i + 1, "empty (a stray ',')")
			               : bad_item(err, errlen, count, 1, "no URL given");
		else
			rc = add_url(item, urls, n, all_loopback, count, err, errlen);
	}
	free(copy);
	if (rc) {
		free_urls(urls, *n);
		*n = 0;
	}
	return rc;
}

/* cfg->url becomes the checked list as the agent uses it: "A,B". */
int config_join_urls(struct config *cfg)
{
	struct jv_buf b;
	jv_buf_init(&b, 0);
	for (size_t i = 0; i < cfg->nurls; i++)
		if (jv_buf_printf(&b, "%s%s", i ? "," : "", cfg->urls[i])) {
			jv_buf_free(&b);
			return -ENOMEM;
		}
	free(cfg->url);
	cfg->url = b.data; /* ownership moves out of the buffer */
	return 0;
}
