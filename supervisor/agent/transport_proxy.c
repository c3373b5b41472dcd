/* transport_proxy.c — which proxy a control plane URL goes through, as curl decides.
 *
 * The proxy comes from the agent's `proxy` setting or, without it, from the
 * environment as libcurl reads it: `http_proxy` (lower case only: HTTP_PROXY
 * can be set by a CGI request's "Proxy:" header, "httpoxy") for http:// URLs,
 * `https_proxy` then `HTTPS_PROXY` for https:// URLs, and `all_proxy` then
 * `ALL_PROXY` for either when its own is not set. `no_proxy` (then
 * `NO_PROXY`, or the `no_proxy` setting) lists hosts reached directly, in
 * curl's syntax: `*` for all; names matching themselves and their subdomains
 * (a leading or trailing dot ignored); IPv4 and IPv6 addresses, with an
 * optional /bits. Beyond curl, an entry may end with :port and then matches
 * that port only (curl matches no host with such an entry).
 *
 * Proxies are http:// ones (a URL without a scheme is one, and without a port
 * uses 1080, as in curl): plain http:// control planes are sent to them in
 * absolute form, https:// ones through a CONNECT tunnel (transport.c). The
 * user and password of the proxy URL become Proxy-Authorization: Basic; they
 * are wiped when freed and never appear in an error text. */
#include "transport_internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mbedtls/base64.h>

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decode src[0..len) into dst (cap bytes with the NUL). */
static int pct_decode(const char *src, size_t len, char *dst, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)src[i];
		if (c == '%') {
			int h = i + 2 < len ? hexval(src[i + 1]) : -1;
			int l = i + 2 < len ? hexval(src[i + 2]) : -1;
			if (h < 0 || l < 0)
				return -EINVAL;
			c = h * 16 + l;
			i += 2;
		}
		if (o + 1 >= cap)
			return -ENAMETOOLONG;
		dst[o++] = (char)c;
	}
	dst[o] = '\0';
	return 0;
}

/* "user:password" (percent-encoded) -> "Basic base64(user:password)". */
static int basic_auth(const char *ui, size_t len, struct tp_proxy *p)
{
	char plain[512];
	int rc = pct_decode(ui, len, plain, sizeof(plain));
	if (rc == 0) {
		size_t n = 0;
		memcpy(p->auth, "Basic ", 6);
		rc = mbedtls_base64_encode((unsigned char *)p->auth + 6, sizeof(p->auth) - 6, &n,
		                           (const unsigned char *)plain, strlen(plain))
		             ? -ENAMETOOLONG
		             : 0;
	}
	explicit_bzero(plain, sizeof(plain));
	if (rc)
		explicit_bzero(p->auth, sizeof(p->auth));
	return rc;
}

/* The port of a proxy URL: 1-65535; none means 1080. */
static int proxy_port(const char *port, size_t plen, struct tp_proxy *p)
{
	if (!port) {
		snprintf(p->port, sizeof(p->port), "1080");
		return 0;
	}
	unsigned long v = 0;
	for (size_t i = 0; i < plen; i++) {
		if (!isdigit((unsigned char)port[i]) || (v = v * 10 + (unsigned long)(port[i] - '0')) > 65535)
			return -EINVAL;
	}
	if (v == 0)
		return -EINVAL;
	snprintf(p->port, sizeof(p->port), "%lu", v);
	return 0;
}

/* host[:port] or [v6][:port]: a proxy URL's authority after any userinfo. */
static int proxy_hostport(const char *a, size_t len, struct tp_proxy *p)
{
	const char *end = a + len, *host = a, *port = NULL;
	size_t hlen = len;
	if (len && a[0] == '[') {
		const char *close = memchr(a, ']', len);
		if (!close)
			return -EINVAL;
		host = a + 1;
		hlen = (size_t)(close - host);
		if (close + 1 < end) {
			if (close[1] != ':')
				return -EINVAL;
			port = close + 2;
		}
	} else {
		const char *colon = memchr(a, ':', len);
		if (colon) {
			hlen = (size_t)(colon - a);
			port = colon + 1;
		}
	}
	if (hlen == 0 || hlen >= sizeof(p->host))
		return -EINVAL;
	memcpy(p->host, host, hlen);
	p->host[hlen] = '\0';
	if (strpbrk(p->host, " \t@%"))
		return -EINVAL;
	return proxy_port(port, port ? (size_t)(end - port) : 0, p);
}

int tp_proxy_parse(const char *url, struct tp_proxy *p, char *err, size_t errlen)
{
	memset(p, 0, sizeof(*p));
	const char *s = url, *sep = strstr(url, "://");
	if (sep) {
		size_t sl = (size_t)(sep - url);
		if (sl != 4 || strncasecmp(url, "http", 4) != 0) {
			snprintf(err, errlen, "proxy scheme '%.*s' is not supported (only http:// proxies)",
			         (int)(sl > 16 ? 16 : sl), url);
			return -EINVAL;
		}
		s = sep + 3;
	}
	size_t alen = strcspn(s, "/?#");
	const char *at = NULL;
	for (size_t i = 0; i < alen; i++)
		if (s[i] == '@')
			at = s + i;
	int rc = 0;
	if (at) {
		rc = basic_auth(s, (size_t)(at - s), p);
		if (rc) {
			/* Never echo the URL: it holds the password. */
			snprintf(err, errlen, "the proxy's user name and password are not valid");
			return -EINVAL;
		}
		alen -= (size_t)(at + 1 - s);
		s = at + 1;
	}
	if (proxy_hostport(s, alen, p)) {
		explicit_bzero(p->auth, sizeof(p->auth));
		if (strchr(url, '@')) /* perhaps a password with an unencoded '/': not echoed */
			snprintf(err, errlen, "the proxy URL is not [http://][user:password@]host[:port] "
			                      "(percent-encode '/', '?', '#' and '@' in the user and password)");
		else
			snprintf(err, errlen, "the proxy '%.*s' is not host[:port]", (int)(alen > 200 ? 200 : alen), s);
		return -EINVAL;
	}
	bool v6 = strchr(p->host, ':') != NULL;
	snprintf(p->authority, sizeof(p->authority), "%s%s%s:%s", v6 ? "[" : "", p->host, v6 ? "]" : "",
	         p->port);
	return 0;
}

/* ---- no_proxy ---- */

/* Is addr (text) inside net/bits? Both of family af. */
static bool cidr_match(int af, const char *addr, const char *net, const char *bits_s)
{
	unsigned char a[16], n[16];
	size_t len = af == AF_INET ? 4 : 16;
	if (inet_pton(af, addr, a) != 1 || inet_pton(af, net, n) != 1)
		return false;
	unsigned long bits = len * 8;
	if (bits_s) {
		char *end;
		bits = strtoul(bits_s, &end, 10);
		if (*end || end == bits_s || bits > len * 8)
			return false;
	}
	size_t whole = bits / 8;
	if (memcmp(a, n, whole) != 0)
		return false;
	unsigned rest = bits % 8;
	if (!rest)
		return true;
	unsigned char mask = (unsigned char)(0xff << (8 - rest));
	return (a[whole] & mask) == (n[whole] & mask);
}

/* Split an entry's ":port" off (not an IPv6 address's colons). */
static const char *entry_port(char *tok)
{
	char *colon = NULL;
	if (tok[0] == '[') {
		char *close = strchr(tok, ']');
		if (!close)
			return NULL;
		memmove(tok, tok + 1, (size_t)(close - tok - 1));
		close[-1] = '\0';
		return close[1] == ':' ? close + 2 : NULL;
	}
	colon = strchr(tok, ':');
	if (!colon || strchr(colon + 1, ':'))
		return NULL; /* none, or a bare IPv6 address */
	*colon = '\0';
	return colon + 1;
}

static bool name_match(const char *host, char *tok)
{
	size_t hl = strlen(host), tl = strlen(tok);
	if (hl && host[hl - 1] == '.')
		hl--;
	if (tl && tok[tl - 1] == '.')
		tl--;
	if (tl && tok[0] == '.') {
		tok++;
		tl--;
	}
	if (tl == 0 || tl > hl)
		return false;
	if (tl == hl)
		return strncasecmp(tok, host, hl) == 0;
	return host[hl - tl - 1] == '.' && strncasecmp(tok, host + hl - tl, tl) == 0;
}

static bool entry_match(const char *host, const char *port, char *tok)
{
	const char *eport = entry_port(tok);
	if (eport && strcmp(eport, port) != 0)
		return false;
	struct in6_addr a6;
	int af = inet_pton(AF_INET6, host, &a6) == 1 ? AF_INET6
	         : inet_pton(AF_INET, host, &a6) == 1 ? AF_INET
	                                              : 0;
	if (!af)
		return name_match(host, tok);
	char *slash = strchr(tok, '/');
	if (slash)
		*slash++ = '\0';
	return cidr_match(af, host, tok, slash);
}

bool tp_no_proxy_match(const char *no_proxy, const char *host, const char *port)
{
	if (!no_proxy || !*no_proxy)
		return false;
	if (strcmp(no_proxy, "*") == 0)
		return true;
	for (const char *p = no_proxy; *p;) {
		p += strspn(p, ", \t");
		size_t n = strcspn(p, ", \t");
		char tok[300];
		if (n > 0 && n < sizeof(tok)) {
			memcpy(tok, p, n);
			tok[n] = '\0';
			if (entry_match(host, port, tok))
				return true;
		}
		p += n;
	}
	return false;
}

/* ---- the settings ---- */

static const char *env_first(const char *const *names, const char **which)
{
	for (; *names; names++) {
		const char *v = getenv(*names);
		if (v && *v) {
			*which = *names;
			return v;
		}
	}
	return NULL;
}

static int load_one(const char *url, const char *from, struct tp_proxy **out, char **err)
{
	*out = NULL;
	if (!url)
		return 0;
	struct tp_proxy *p = malloc(sizeof(*p));
	if (!p)
		return -ENOMEM;
	char e[300];
	if (tp_proxy_parse(url, p, e, sizeof(e)) == 0) {
		*out = p;
		return 0;
	}
	free(p);
	/* The agent keeps running; each request it concerns fails with this. */
	return asprintf(err, "the proxy in %s: %s", from, e) < 0 ? -ENOMEM : 0;
}

int tp_proxies_load(struct tp_proxies *ps, const char *proxy, const char *no_proxy)
{
	memset(ps, 0, sizeof(*ps));
	const char *wh = "the 'proxy' setting", *ws = wh, *wn;
	const char *np = no_proxy ? no_proxy : env_first((const char *const[]){"no_proxy", "NO_PROXY", NULL}, &wn);
	if (np && !(ps->no_proxy = strdup(np)))
		return -ENOMEM;
	if (proxy && strcmp(proxy, "direct") == 0)
		return 0;
	const char *h = proxy, *s = proxy;
	if (!proxy) {
		h = env_first((const char *const[]){"http_proxy", "all_proxy", "ALL_PROXY", NULL}, &wh);
		s = env_first((const char *const[]){"https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", NULL},
		              &ws);
	}
	ps->http_from = wh;
	ps->https_from = ws;
	int rc = load_one(h, wh, &ps->http, &ps->http_err);
	if (rc == 0)
		rc = load_one(s, ws, &ps->https, &ps->https_err);
	if (rc)
		tp_proxies_clear(ps);
	return rc;
}

static void proxy_free(struct tp_proxy *p)
{
	if (p) {
		explicit_bzero(p, sizeof(*p));
		free(p);
	}
}

void tp_proxies_clear(struct tp_proxies *ps)
{
	proxy_free(ps->http);
	proxy_free(ps->https);
	free(ps->no_proxy);
	free(ps->http_err);
	free(ps->https_err);
	memset(ps, 0, sizeof(*ps));
}

const struct tp_proxy *tp_proxy_for(const struct tp_proxies *ps, const struct tp_url *u,
                                    const char **err)
{
	*err = NULL;
	if (tp_no_proxy_match(ps->no_proxy, u->host, u->port))
		return NULL;
	*err = u->https ? ps->https_err : ps->http_err;
	return u->https ? ps->https : ps->http;
}

int tp_route_describe(const struct tp_proxies *ps, const char *url, char *buf, size_t len)
{
	struct tp_url u;
	char err[300];
	snprintf(buf, len, "directly");
	if (tp_url_parse(url, &u, err, sizeof(err)))
		return 0;
	const char *perr;
	const struct tp_proxy *p = tp_proxy_for(ps, &u, &perr);
	if (perr) {
		snprintf(buf, len, "%s", perr);
		return -EINVAL;
	}
	if (!p)
		return 0;
	snprintf(buf, len, "through the proxy %s (%s%s)", p->authority, u.https ? ps->https_from : ps->http_from,
	         u.https ? ", CONNECT" : "");
	return 1;
}

int transport_check_proxy(const char *proxy, char *err, size_t errlen)
{
	if (strcmp(proxy, "direct") == 0)
		return 0;
	struct tp_proxy p;
	int rc = tp_proxy_parse(proxy, &p, err, errlen);
	explicit_bzero(&p, sizeof(p));
	return rc;
}
