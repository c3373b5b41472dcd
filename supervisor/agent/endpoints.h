/* endpoints.h — which control-plane replica the agent talks to.
 *
 * The `url` setting may list several replicas (config_parse_urls). Every
 * request kind (polls, events and results, instance and job-type reports,
 * console output) goes to one shared "current" URL. A request that gets no
 * answer (connection refused or reset, timeout) or a 5xx moves the agent to
 * the next URL in the list, in order, wrapping around; 4xx answers do not (a
 * 400 or 401 is not a replica problem). The agent stays on a URL that answers:
 * it never moves back by itself, so two healthy replicas never flap. Only a
 * failure of the URL currently in use counts: answers to requests started on
 * a URL the agent already left change nothing, so the many requests that fail
 * together when a replica dies move the agent once. Retrying is the callers'
 * business (backoff.h); endpoints_report() tells them when a failure moved the
 * agent to a URL not yet tried since the last answer, which is worth trying at
 * once. */
#ifndef JOBVISOR_ENDPOINTS_H
#define JOBVISOR_ENDPOINTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jobvisor/config.h"

struct endpoints {
	char *urls[CONFIG_URLS_MAX]; /* owned, no trailing slash */
	size_t n;
	size_t cur;          /* index of the URL in use */
	uint64_t gen;        /* bumped at every move */
	unsigned moves;      /* moves since the last request that got an answer */
};

/* Take a copy of urls[0..n) (n >= 1). On a reload the agent keeps the URL it
 * is on when the new list still holds it, else starts at the new first one.
 * Returns 0 or -ENOMEM/-EINVAL (ep unchanged). */
int endpoints_set(struct endpoints *ep, char *const *urls, size_t n);
void endpoints_clear(struct endpoints *ep);
const char *endpoints_current(const struct endpoints *ep);

/* Does this outcome (HTTP status, 0 = no answer; too_large: the answer was
 * dropped for its size) count against the replica? */
bool endpoints_is_replica_failure(long status, bool too_large);

/* The outcome of a request started at generation gen (ep->gen when it was
 * sent); why describes a failure for the log. Returns true when the request
 * failed on a URL the agent has left (now or before) for one that has not
 * failed since the last answer: worth retrying at once rather than backing off. */
bool endpoints_report(struct endpoints *ep, uint64_t gen, long status, bool too_large,
                      const char *why);

/* A comparable form of a URL already checked by transport_check_url: scheme
 * and host in lower case, the default port made explicit, trailing slashes
 * of the path dropped. Returns 0 or -ENAMETOOLONG. */
int endpoints_url_key(const char *url, char *key, size_t keylen);

#endif
