/* store_pg_stub.c — store_pg_open when jobvisor-cp is built without
 * PostgreSQL support (libpq not found by CMake). */
#include "store_backend.h"
#include "store_pg.h"

#include <errno.h>
#include <stdio.h>

int store_pg_open(const char *conninfo, const struct store_options *o, struct store **out, char *err, size_t errlen)
{
	(void)conninfo;
	(void)o;
	(void)out;
	snprintf(err, errlen, "this jobvisor-cp was built without PostgreSQL support (libpq); use a SQLite file path");
	return -ENOTSUP;
}

/* store_pg.h without PostgreSQL: no store is one, every call does nothing. */
bool store_is_pg(const struct store *s)
{
	(void)s;
	return false;
}

int store_pg_ws_head(struct store *s, char epoch[17], uint64_t *head)
{
	(void)s;
	(void)epoch;
	(void)head;
	return 0;
}

int store_pg_signals_start(struct store *s, const struct store_signals *sig, uint64_t head, char *err, size_t errlen)
{
	(void)s;
	(void)sig;
	(void)head;
	(void)err;
	(void)errlen;
	return 0;
}

void store_pg_signals_stop(struct store *s)
{
	(void)s;
}

int store_pg_wake(struct store *s, const char *agent_id)
{
	(void)s;
	(void)agent_id;
	return 0;
}

int store_pg_ws_append(struct store *s, const char *text, int64_t now)
{
	(void)s;
	(void)text;
	(void)now;
	return 0;
}

int store_pg_ws_append_many(struct store *s, const char *const *texts, size_t n, int64_t now)
{
	(void)s;
	(void)texts;
	(void)n;
	(void)now;
	return 0;
}

int store_pg_ws_append_wake(struct store *s, const char *const *texts, size_t n, int64_t now, const char *wake)
{
	(void)wake;
	return store_pg_ws_append_many(s, texts, n, now);
}
