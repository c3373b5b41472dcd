/* store_pg_conn.h — PostgreSQL plumbing for the store's PostgreSQL backend (libpq).
 *
 * store_pg_conn.c: a small pool of connections (reconnecting a broken one on the
 * next acquire, with a clear error when the server stays unreachable), text-
 * parameter execution helpers, and a LISTEN thread on a connection of its
 * own that hands every notification to a callback.
 * store_pg_prep.c: the statements each pool connection has prepared (for
 * pg_pipeline), prepared again after a reset.
 * store_pg_schema.c: the versioned schema, migrated at start under a session
 * advisory lock so that of several replicas starting at once the first
 * migrates and the others wait, then find the schema current.
 *
 * Channels (payloads are short text):
 *   jv_wake  payload = agent id: work or a cancel for that agent appeared;
 *            every replica wakes the long polls of that agent it holds.
 *   jv_ws    payload = the new WebSocket seq: a message was appended to
 *            ws_log; every replica feeds the rows it has not seen to its clients.
 * docs/scaling.md describes the design. */
#ifndef JV_CP_STORE_PG_CONN_H
#define JV_CP_STORE_PG_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#define PG_CHANNEL_WAKE "jv_wake"
#define PG_CHANNEL_WS "jv_ws"
#define PG_SCHEMA_VERSION 3
#define PG_MIGRATION_LOCK 0x6a766370 /* "jvcp": the advisory lock key of migrations */

/* True when --db names a PostgreSQL database rather than a SQLite file. */
bool pg_is_url(const char *db);

struct pg_pool;
/* Connect size connections to url (a libpq URI or key=value string) and
 * migrate the schema. 0, or -errno with err filled. */
int pg_pool_open(const char *url, int size, struct pg_pool **out, char *err, size_t errlen);
void pg_pool_close(struct pg_pool *p);
/* A connection for this thread's exclusive use until pg_release; waits for a
 * free one. A connection found broken is reset first; NULL (logged) when the
 * server cannot be reached. */
PGconn *pg_acquire(struct pg_pool *p);
void pg_release(struct pg_pool *p, PGconn *c);

/* Text parameters for one statement. */
#define PG_PARAMS_MAX 16
struct pg_params {
	const char *v[PG_PARAMS_MAX];
	char num[PG_PARAMS_MAX][24];
	int n;
};
void pg_p_str(struct pg_params *p, const char *s); /* s borrowed; NULL = SQL NULL */
void pg_p_i64(struct pg_params *p, int64_t v);

/* Run sql with p (may be NULL). The result when it succeeded (free with
 * PQclear), NULL otherwise, with the server's message logged. */
PGresult *pg_exec(PGconn *c, const char *sql, const struct pg_params *p);
/* Run a statement whose rows do not matter: rows affected (>= 0) or -EIO. */
int pg_cmd(PGconn *c, const char *sql, const struct pg_params *p);
/* One statement of a pipeline. */
struct pg_stmt {
	const char *sql;
	const struct pg_params *p;
};
/* Send the n statements together in libpq pipeline mode (one round trip to
 * the server) and read their results in order: out[i] is statement i's
 * result (free with PQclear), NULL when it failed or was skipped after an
 * earlier failure. 0 when every statement succeeded, else -EIO (logged). A
 * transaction over several statements is made explicit: BEGIN ... COMMIT
 * among them; after a failure the connection is left in the failed
 * transaction, which pg_release rolls back. A pipeline the server rolled
 * back as a deadlock victim or for a serialization failure (SQLSTATE 40P01,
 * 40001) is sent again, up to 3 times in all, unless a transaction of it
 * had committed before the failure. */
int pg_pipeline(PGconn *c, const struct pg_stmt *st, size_t n, PGresult **out);

/* ---- store_pg_prep.c: prepared statements of a pool connection ----
 * pg_pipeline prepares each statement on a pool connection the first time it
 * sends it there and executes it by name after: its SQL must be a fixed text. */
/* Keep the list of statements c has prepared (emptied by PQreset). 0 or -ENOMEM. */
int pg_prep_attach(PGconn *c);
/* Send sql with p in the pipeline: executed by name when c prepared it, else
 * (may_parse) preceded by its Parse (1: pg_prep_result reads that before the
 * statement's own result) or sent unprepared (on a connection without a list,
 * a full list, !may_parse). 0, 1 or -EIO. */
int pg_prep_send(PGconn *c, const char *sql, const struct pg_params *p, bool may_parse);
/* Read the result of the Parse pg_prep_send sent for sql: 0 or -EIO (logged
 * unless the pipeline was aborted before it). */
int pg_prep_result(PGconn *c, const char *sql);
/* A statement failed with res: when the server lost c's prepared statements
 * (SQLSTATE 26000), prepare them again on next use. */
void pg_prep_check(PGconn *c, const PGresult *res);

int pg_begin(PGconn *c);
int pg_commit(PGconn *c);
void pg_rollback(PGconn *c);
/* Column helpers (row r, column col); NULL columns read as 0 / "". */
int64_t pg_i64(const PGresult *res, int r, int col);
const char *pg_str(const PGresult *res, int r, int col);

/* ---- store_pg_schema.c ---- */
/* Migrate to PG_SCHEMA_VERSION under the migration lock. 0 or -errno with err. */
int pg_migrate(PGconn *c, char *err, size_t errlen);
/* The version recorded in schema_version, -1 on error. */
int pg_schema_version(PGconn *c);

/* ---- LISTEN ---- */
/* channel and payload are valid during the call only. After every
 * (re)connection the callback runs once with channel NULL: notifications may
 * have been missed while disconnected, so the receiver should look again. */
typedef void (*pg_notify_fn)(void *ud, const char *channel, const char *payload);
struct pg_listener;
/* Start the thread; its first connection is made before this returns. */
int pg_listen_start(const char *url, const char *const *channels, size_t nchannels, pg_notify_fn fn, void *ud,
                    struct pg_listener **out, char *err, size_t errlen);
/* Stop and join the thread, close its connection. NULL is a no-op. */
void pg_listen_stop(struct pg_listener *l);

#endif
