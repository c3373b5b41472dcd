/* transport_conn.c — connections kept alive between requests (transport.c).
 *
 * An answer that arrived whole and that the server lets live leaves its
 * connection in a small pool, per key (scheme, host and port, and the proxy it
 * goes through), for the next request: a long poll and the events each keep
 * theirs, so TLS handshakes (and CONNECT tunnels) are rare. */
#include "transport_internal.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POOL_MAX 4              /* idle connections kept */
#define IDLE_MAX_MS (60 * 1000) /* an idle connection older than this is closed */

void tp_conn_close(struct tp_conn *c)
{
	if (!c)
		return;
	tp_tls_free(c->tls);
	if (c->fd >= 0)
		close(c->fd);
	free(c);
}

void tp_pool_clear(struct tp_conn **pool)
{
	while (*pool) {
		struct tp_conn *c = *pool;
		*pool = c->next;
		tp_conn_close(c);
	}
}

/* Is a pooled connection still usable? Idle, nothing may be readable on it:
 * data or an end of stream means the server closed or broke it. */
static bool conn_alive(const struct tp_conn *c)
{
	struct pollfd p = {.fd = c->fd, .events = POLLIN};
	return poll(&p, 1, 0) == 0;
}

struct tp_conn *tp_pool_take(struct tp_conn **pool, const char *key, const struct tp_tls_conf *tls)
{
	int64_t now = jv_now_mono_ms();
	for (struct tp_conn **pp = pool; *pp;) {
		struct tp_conn *c = *pp;
		bool match = strcmp(c->key, key) == 0 && (!c->tls || c->tls_conf == tls);
		if (now - c->idle_since > IDLE_MAX_MS || (match && !conn_alive(c))) {
			*pp = c->next;
			tp_conn_close(c);
			continue;
		}
		if (match) {
			*pp = c->next;
			c->next = NULL;
			return c;
		}
		pp = &c->next;
	}
	return NULL;
}

void tp_pool_put(struct tp_conn **pool, struct tp_conn *c, const struct tp_tls_conf *tls)
{
	if (c->tls && c->tls_conf != tls) { /* made with settings replaced since */
		tp_conn_close(c);
		return;
	}
	c->idle_since = jv_now_mono_ms();
	c->next = *pool;
	*pool = c;
	size_t n = 0;
	for (struct tp_conn **pp = pool; *pp; n++) {
		if (n < POOL_MAX) {
			pp = &(*pp)->next;
			continue;
		}
		struct tp_conn *old = *pp;
		*pp = old->next;
		tp_conn_close(old);
	}
}
