/* endpoints.c — the current control-plane URL and when to move to the next.
 *
 * No timers and no health probes: the requests the agent makes anyway are
 * the probes. A move is logged once, with the reason and the URL moved to. */
#include "endpoints.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "jobvisor/log.h"

void endpoints_clear(struct endpoints *ep)
{
	for (size_t i = 0; i < ep->n; i++)
		free(ep->urls[i]);
	memset(ep, 0, sizeof(*ep));
}

int endpoints_set(struct endpoints *ep, char *const *urls, size_t n)
{
	if (n == 0 || n > CONFIG_URLS_MAX)
		return -EINVAL;
	struct endpoints ne = {.n = n, .gen = ep->gen + 1};
	for (size_t i = 0; i < n; i++) {
		ne.urls[i] = strdup(urls[i]);
		if (!ne.urls[i]) {
			endpoints_clear(&ne);
			return -ENOMEM;
		}
		size_t l = strlen(ne.urls[i]);
		while (l > 0 && ne.urls[i][l - 1] == '/')
			ne.urls[i][--l] = '\0';
		if (ep->n && strcmp(ne.urls[i], ep->urls[ep->cur]) == 0)
			ne.cur = i; /* a reload keeps the replica in use */
	}
	endpoints_clear(ep);
	*ep = ne;
	return 0;
}

const char *endpoints_current(const struct endpoints *ep)
{
	return ep->n ? ep->urls[ep->cur] : "";
}

bool endpoints_is_replica_failure(long status, bool too_large)
{
	if (too_large)
		return false; /* the answer came, it was only too big for us */
	return status == 0 || (status >= 500 && status <= 599);
}

bool endpoints_report(struct endpoints *ep, uint64_t gen, long status, bool too_large,
                      const char *why)
{
	if (ep->n == 0)
		return false;
	bool failure = endpoints_is_replica_failure(status, too_large);
	if (gen != ep->gen) /* started on a URL the agent has left already */
		return failure && ep->moves < ep->n;
	if (!failure) {
		if (!too_large)
			ep->moves = 0; /* this replica answers */
		return false;
	}
	if (ep->n == 1)
		return false;
	const char *from = ep->urls[ep->cur];
	ep->cur = (ep->cur + 1) % ep->n;
	ep->gen++;
	ep->moves++;
	bool fresh = ep->moves < ep->n;
	char reason[200];
	if (status)
		snprintf(reason, sizeof(reason), "HTTP %ld", status);
	else
		snprintf(reason, sizeof(reason), "%s", why && *why ? why : "no answer");
	if (fresh)
		jv_warn(NULL, NULL, "control plane %s failed (%s); switching to %s (%zu of %zu)", from,
		        reason, ep->urls[ep->cur], ep->cur + 1, ep->n);
	else
		jv_debug(NULL, NULL, "control plane %s failed (%s); every URL failed since the last "
		         "answer; trying %s (%zu of %zu) after the backoff",
		         from, reason, ep->urls[ep->cur], ep->cur + 1, ep->n);
	return fresh;
}

int endpoints_url_key(const char *url, char *key, size_t keylen)
{
	const char *sep = strstr(url, "://");
	if (!sep)
		return -EINVAL;
	size_t slen = (size_t)(sep - url);
	const char *auth = sep + 3;
	size_t alen = strcspn(auth, "/");
	const char *path = auth + alen;
	size_t plen = strlen(path);
	while (plen > 0 && path[plen - 1] == '/')
		plen--;
	/* A port follows the last ':' unless that ':' is inside an IPv6 [...]. */
	const char *colon = memrchr(auth, ':', alen);
	const char *bracket = memrchr(auth, ']', alen);
	bool has_port = colon && (!bracket || colon > bracket);
	bool https = slen == 5 && strncasecmp(url, "https", 5) == 0;
	int w = snprintf(key, keylen, "%.*s://%.*s%s%.*s", (int)slen, url, (int)alen, auth,
	                 has_port ? "" : (https ? ":443" : ":80"), (int)plen, path);
	if (w < 0 || (size_t)w >= keylen)
		return -ENAMETOOLONG;
	for (size_t i = 0; i < slen + 3 + alen; i++)
		key[i] = (char)tolower((unsigned char)key[i]);
	return 0;
}
