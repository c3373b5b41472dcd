/* store_pg_bus.c — signals between replicas over LISTEN/NOTIFY, and the
 * shared WebSocket log (store_pg.h has the contract, docs/scaling.md the
 * design).
 *
 * The listener thread (store_pg_conn.c) calls on_notify for each notification:
 * jv_wake goes straight to sig.wake; jv_ws makes it read ws_log after the
 * last seq it delivered (one query however many notifications piled up: a
 * payload at or below that seq is already delivered) and hand the rows to
 * sig.ws in order. It takes a pooled connection only for that query and
 * holds none while calling back, so a callback may take cp->mu freely. */
#include "store_pg_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define WS_FETCH 500        /* rows per read of ws_log */
#define WS_KEEP 50000       /* messages kept in ws_log for replay */
#define WS_TRIM_MS 10000    /* how often a replica trims it */

int store_pg_ws_head(struct store *s, char epoch[17], uint64_t *head)
{
	if (!store_is_pg(s))
		return 0;
	PGresult *r = pgs_query(s, "SELECT epoch, seq FROM ws_head WHERE id = 1", NULL);
	int rc = r && PQntuples(r) == 1 ? 0 : -EIO;
	if (rc == 0) {
		pgs_copy(epoch, 17, r, 0, 0);
		*head = (uint64_t)pg_i64(r, 0, 1);
	}
	PQclear(r);
	return rc;
}

/* Hand every ws_log row after ws_delivered to sig.ws, in order. */
static void deliver_ws(struct store_pg *sp)
{
	for (;;) {
		struct pg_params p = {0};
		pg_p_i64(&p, (int64_t)sp->ws_delivered);
		pg_p_i64(&p, WS_FETCH);
		PGresult *r = pgs_query(&sp->base, "SELECT seq, body FROM ws_log WHERE seq > $1 ORDER BY seq LIMIT $2", &p);
		if (!r)
			return; /* logged; the next notification or resync tries again */
		int n = PQntuples(r);
		for (int i = 0; i < n; i++) {
			sp->ws_delivered = (uint64_t)pg_i64(r, i, 0);
			sp->sig.ws(sp->sig.ud, sp->ws_delivered, PQgetvalue(r, i, 1));
		}
		PQclear(r);
		if (n < WS_FETCH)
			return;
	}
}

static void on_notify(void *ud, const char *channel, const char *payload)
{
	struct store_pg *sp = ud;
	if (!channel) {
		sp->sig.resync(sp->sig.ud);
		deliver_ws(sp);
	} else if (strcmp(channel, PG_CHANNEL_WAKE) == 0) {
		sp->sig.wake(sp->sig.ud, payload);
	} else if (strcmp(channel, PG_CHANNEL_WS) == 0 && strtoull(payload, NULL, 10) > sp->ws_delivered) {
		deliver_ws(sp);
	}
}

int store_pg_signals_start(struct store *s, const struct store_signals *sig, uint64_t head, char *err,
                           size_t errlen)
{
	if (!store_is_pg(s))
		return 0;
	struct store_pg *sp = pgs(s);
	sp->sig = *sig;
	sp->ws_delivered = head;
	const char *channels[] = {PG_CHANNEL_WAKE, PG_CHANNEL_WS};
	return pg_listen_start(sp->url, channels, 2, on_notify, sp, &sp->listener, err, errlen);
}

void store_pg_signals_stop(struct store *s)
{
	if (store_is_pg(s))
		pgs_bus_stop(pgs(s));
}

void pgs_bus_stop(struct store_pg *sp)
{
	pg_listen_stop(sp->listener);
	sp->listener = NULL;
}

int store_pg_wake(struct store *s, const char *agent_id)
{
	if (!store_is_pg(s))
		return 0;
	struct pg_params p = {0};
	pg_p_str(&p, PG_CHANNEL_WAKE);
	pg_p_str(&p, agent_id);
	PGresult *r = pgs_query_prepared(s, "SELECT pg_notify($1, $2)", &p);
	PQclear(r);
	return r ? 0 : -EIO;
}

int store_pg_ws_append(struct store *s, const char *text, int64_t now)
{
	return store_pg_ws_append_many(s, &text, 1, now);
}

int store_pg_ws_append_many(struct store *s, const char *const *texts, size_t n, int64_t now)
{
	return store_pg_ws_append_wake(s, texts, n, now, NULL);
}

int store_pg_ws_append_wake(struct store *s, const char *const *texts, size_t n, int64_t now, const char *wake)
{
	if (!store_is_pg(s))
		return 0;
	if (n == 0)
		return wake ? store_pg_wake(s, wake) : 0;
	struct jv_buf arr;
	jv_buf_init(&arr, 256u * 1024 * 1024);
	int rc = jv_buf_append(&arr, "{", 1);
	for (size_t i = 0; rc == 0 && i < n; i++) {
		size_t len = strlen(texts[i]);
		rc = len < 2 || texts[i][len - 1] != '}' ? -EINVAL : pgs_array_add(&arr, texts[i], i == 0);
	}
	if (rc == 0)
		rc = jv_buf_append(&arr, "}", 2);
	struct pg_params p = {0};
	pg_p_str(&p, arr.data);
	pg_p_i64(&p, now);
	pg_p_str(&p, PG_CHANNEL_WS);
	pg_p_i64(&p, (int64_t)n);
	if (wake)
		pg_p_str(&p, wake);
	/* One statement, so one transaction: the row lock on ws_head orders the
	 * appends, and the notification goes out when it commits. Each seq goes
	 * into its object as the last member. */
#define WS_APPEND                                                                                          \
	"WITH h AS (UPDATE ws_head SET seq = seq + $4 WHERE id = 1 RETURNING seq - $4 AS base),"                \
	" i AS (INSERT INTO ws_log (seq, body, at)"                                                             \
	"       SELECT h.base + u.ord, left(u.b, -1) || ',\"seq\":' || (h.base + u.ord) || '}', $2"            \
	"       FROM h, unnest($1::text[]) WITH ORDINALITY AS u(b, ord) RETURNING seq)"                         \
	" SELECT pg_notify($3, max(seq)::text)"
	PGresult *r = rc == 0 ? pgs_query_prepared(s,
	                                           wake ? WS_APPEND ", pg_notify('" PG_CHANNEL_WAKE "', $5) FROM i"
	                                                : WS_APPEND " FROM i",
	                                           &p)
	                      : NULL;
#undef WS_APPEND
	jv_buf_free(&arr);
	if (rc < 0)
		return rc;
	rc = r && PQntuples(r) == 1 ? 1 : -EIO;
	PQclear(r);
	return rc;
}

void pgs_bus_maintain(struct store_pg *sp)
{
	int64_t now = jv_now_mono_ms();
	if (now - sp->ws_trimmed_ms < WS_TRIM_MS)
		return;
	sp->ws_trimmed_ms = now;
	struct pg_params p = {0};
	pg_p_i64(&p, WS_KEEP);
	pgs_cmd(&sp->base, "DELETE FROM ws_log WHERE seq <= (SELECT seq FROM ws_head WHERE id = 1) - $1", &p);
}
