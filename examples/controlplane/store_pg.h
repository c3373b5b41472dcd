/* store_pg.h — what only the PostgreSQL backend does: signals between
 * replicas and the shared WebSocket log (store_pg_bus.c). Every call is a
 * no-op returning 0 on any other backend, so callers need no backend test.
 *
 * Wake-ups: store_pg_wake() sends NOTIFY jv_wake '<agent id>'; every
 * replica's listener thread (its own connection, LISTEN jv_wake, jv_ws)
 * calls sig->wake for it, which wakes the long polls of that agent parked
 * on that replica.
 *
 * WebSocket messages: store_pg_ws_append() appends a message to ws_log under
 * the next seq of ws_head (one statement: dense seqs, committed in seq
 * order) and NOTIFYs jv_ws. Every replica's listener then reads the rows
 * after the last seq it delivered and calls sig->ws for each, in seq order;
 * the WebSocket hub feeds its ring from there, never from the publisher. The
 * epoch is fixed for the life of the database (ws_head.epoch), so a client
 * may reconnect to any replica with ?since=N&epoch=E and be replayed.
 * docs/scaling.md describes the whole design. */
#ifndef JV_CP_STORE_PG_H
#define JV_CP_STORE_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

struct store_signals {
	void (*wake)(void *ud, const char *agent_id);
	/* text: the message with its "seq" member; valid during the call. */
	void (*ws)(void *ud, uint64_t seq, const char *text);
	/* After the listener (re)connected: anything may have been missed. */
	void (*resync)(void *ud);
	void *ud;
};

bool store_is_pg(const struct store *s);
/* The cluster's WebSocket epoch (16 hex chars) and the last seq in ws_log. */
int store_pg_ws_head(struct store *s, char epoch[17], uint64_t *head);
/* Start the listener: deliveries begin after *head of store_pg_ws_head. */
int store_pg_signals_start(struct store *s, const struct store_signals *sig, uint64_t head, char *err,
                           size_t errlen);
/* Stop the listener and join its thread; no callback runs after. */
void store_pg_signals_stop(struct store *s);
int store_pg_wake(struct store *s, const char *agent_id);
/* Append a WebSocket message (a JSON object's text, without "seq"): 1 when
 * appended (it comes back through sig->ws), 0 when not PostgreSQL, <0 error. */
int store_pg_ws_append(struct store *s, const char *text, int64_t now);
/* The same for n messages in one statement (their seqs consecutive). */
int store_pg_ws_append_many(struct store *s, const char *const *texts, size_t n, int64_t now);
/* The same, and in the same statement the wake-up of agent wake's polls on
 * every replica (store_pg_wake) after the messages: NULL = none. */
int store_pg_ws_append_wake(struct store *s, const char *const *texts, size_t n, int64_t now, const char *wake);

#endif
