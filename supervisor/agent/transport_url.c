/* transport_url.c — control plane base URLs, split with http_parser's URL parser. */
#include "transport_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "transport.h"

bool tp_host_is_loopback(const char *host)
{
	if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0 ||
	    strcmp(host, "::1") == 0)
		return true;
	struct in_addr a;
	if (inet_pton(AF_INET, host, &a) == 1)
		return (ntohl(a.s_addr) >> 24) == 127;
	return false;
}

static bool field(const char *url, const struct http_parser_url *pu, int f, char *out,
                  size_t outlen)
{
	if (!(pu->field_set & (1u << f))) {
		out[0] = '\0';
		return false;
	}
	size_t n = pu->field_data[f].len;
	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, url + pu->field_data[f].off, n);
	out[n] = '\0';
	return true;
}

static int check_parts(const char *url, const struct http_parser_url *pu, struct tp_url *u,
                       char *err, size_t errlen)
{
	char scheme[16];
	field(url, pu, UF_SCHEMA, scheme, sizeof(scheme));
	if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0) {
		snprintf(err, errlen, "'%.200s' must start with http:// or https://", url);
		return -EINVAL;
	}
	u->https = strcasecmp(scheme, "https") == 0;
	if (pu->field_set & (1u << UF_USERINFO)) {
		/* Never echo the URL here: it holds credentials. */
		snprintf(err, errlen, "the URL must not contain user name or password (use token_file)");
		return -EINVAL;
	}
	if (pu->field_set & ((1u << UF_QUERY) | (1u << UF_FRAGMENT))) {
		snprintf(err, errlen, "'%.200s' must not have a query or fragment", url);
		return -EINVAL;
	}
	if (!field(url, pu, UF_HOST, u->host, sizeof(u->host)) || !u->host[0]) {
		snprintf(err, errlen, "'%.200s' has no host", url);
		return -EINVAL;
	}
	if (pu->field_data[UF_HOST].len >= sizeof(u->host)) {
		snprintf(err, errlen, "'%.200s': the host name is too long", url);
		return -EINVAL;
	}
	return 0;
}

int tp_url_parse(const char *url, struct tp_url *u, char *err, size_t errlen)
{
	memset(u, 0, sizeof(*u));
	struct http_parser_url pu;
	http_parser_url_init(&pu);
	if (http_parser_parse_url(url, strlen(url), 0, &pu) != 0) {
		if (!strstr(url, "://"))
			snprintf(err, errlen, "'%.200s' must start with http:// or https://", url);
		else if (memchr(url, '@', strlen(url)))
			snprintf(err, errlen, "the URL must not contain user name or password (use token_file)");
		else
			snprintf(err, errlen, "'%.200s' is not a URL", url);
		return -EINVAL;
	}
	int rc = check_parts(url, &pu, u, err, errlen);
	if (rc)
		return rc;
	if (pu.field_set & (1u << UF_PORT))
		snprintf(u->port, sizeof(u->port), "%u", pu.port);
	else
		snprintf(u->port, sizeof(u->port), "%s", u->https ? "443" : "80");
	bool v6 = strchr(u->host, ':') != NULL;
	bool explicit_port = pu.field_set & (1u << UF_PORT);
	snprintf(u->authority, sizeof(u->authority), "%s%s%s%s%s", v6 ? "[" : "", u->host,
	         v6 ? "]" : "", explicit_port ? ":" : "", explicit_port ? u->port : "");
	if (field(url, &pu, UF_PATH, u->path, sizeof(u->path)) &&
	    pu.field_data[UF_PATH].len >= sizeof(u->path)) {
		snprintf(err, errlen, "'%.200s': the path is too long", url);
		return -EINVAL;
	}
	size_t l = strlen(u->path);
	while (l > 0 && u->path[l - 1] == '/')
		u->path[--l] = '\0';
	snprintf(u->key, sizeof(u->key), "%s://%s%s%s:%s", u->https ? "https" : "http",
	         v6 ? "[" : "", u->host, v6 ? "]" : "", u->port);
	return 0;
}

int transport_check_url(const char *url, bool *loopback, char *err, size_t errlen)
{
	*loopback = false;
	struct tp_url u;
	int rc = tp_url_parse(url, &u, err, errlen);
	if (rc == 0)
		*loopback = tp_host_is_loopback(u.host);
	return rc;
}
