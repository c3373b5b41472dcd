/* store_pg_prep.c — prepared statements of a pooled connection, for pg_pipeline.
 *
 * Every statement sent through pg_pipeline on a pool connection is prepared
 * on that connection the first time it is sent (a Parse message in the same
 * pipeline, right before its first execution) and executed by name after:
 * the server parses and analyses it once per connection instead of once per
 * call, and, after its fifth execution, may keep a generic plan instead of
 * planning it again (docs/scaling.md, "Prepared statements").
 *
 * The name is "jv_" and a 64-bit FNV-1a hash of the SQL text, the same for a
 * statement on every connection and replica. What a connection has prepared
 * lives in libpq instance data of the connection (an event procedure): a
 * PQreset (after an outage, a server restart, a pipeline out of step) starts
 * a new server session without the statements, and the PGEVT_CONNRESET
 * event empties the list, so they are prepared again on first use. As a last
 * guard, a statement the server says does not exist (SQLSTATE 26000) empties
 * the list too, and one it says already exists (42P05) counts as prepared:
 * such a pipeline fails once and the next one recovers.
 *
 * Statements must be fixed texts (every caller of pg_pipeline uses
 * constants); a connection prepares at most PREP_MAX of them and sends any
 * further one unprepared. */
#include "store_pg_conn.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-events.h>

#include "jobvisor/log.h"

#define PREP_MAX 64
#define PREP_NAME_LEN 24

struct prep_entry {
	uint64_t hash;
	char *sql;
	bool ready; /* the server answered its Parse; false: sent in the pipeline being read */
};

/* The statements prepared on one connection (its libpq instance data). */
struct prep_list {
	struct prep_entry e[PREP_MAX];
	int n;
};

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
	return h;
}

static void prep_name(char out[PREP_NAME_LEN], uint64_t hash)
{
	snprintf(out, PREP_NAME_LEN, "jv_%016" PRIx64, hash);
}

static void list_clear(struct prep_list *l)
{
	for (int i = 0; l && i < l->n; i++)
		free(l->e[i].sql);
	if (l)
		l->n = 0;
}

static void list_drop(struct prep_list *l, int i)
{
	free(l->e[i].sql);
	l->e[i] = l->e[--l->n];
}

static int prep_event(PGEventId id, void *info, void *pass)
{
	(void)pass;
	if (id == PGEVT_REGISTER) {
		PGEventRegister *e = info;
		struct prep_list *l = calloc(1, sizeof(*l));
		return l && PQsetInstanceData(e->conn, prep_event, l) ? 1 : (free(l), 0);
	}
	if (id == PGEVT_CONNRESET) {
		/* A new server session: none of the statements exists there. */
		list_clear(PQinstanceData(((PGEventConnReset *)info)->conn, prep_event));
	} else if (id == PGEVT_CONNDESTROY) {
		struct prep_list *l = PQinstanceData(((PGEventConnDestroy *)info)->conn, prep_event);
		list_clear(l);
		free(l);
	}
	return 1;
}

int pg_prep_attach(PGconn *c)
{
	return PQregisterEventProc(c, prep_event, "jobvisor prepared statements", NULL) ? 0 : -ENOMEM;
}

static int list_find(const struct prep_list *l, uint64_t hash, const char *sql)
{
	for (int i = 0; i < l->n; i++)
		if (l->e[i].hash == hash && strcmp(l->e[i].sql, sql) == 0)
			return i;
	return -1;
}

int pg_prep_send(PGconn *c, const char *sql, const struct pg_params *p, bool may_parse)
{
	int n = p ? p->n : 0;
	const char *const *v = p ? p->v : NULL;
	struct prep_list *l = PQinstanceData(c, prep_event);
	uint64_t hash = fnv1a(sql);
	int i = l ? list_find(l, hash, sql) : -1;
	char name[PREP_NAME_LEN];
	prep_name(name, hash);
	if (i >= 0) /* prepared, or its Parse is earlier in this pipeline */
		return PQsendQueryPrepared(c, name, n, v, NULL, NULL, 0) == 1 ? 0 : -EIO;
	char *copy = l && may_parse && l->n < PREP_MAX ? strdup(sql) : NULL;
	if (!copy) /* no list (not a pool connection), full, no room to read a Parse, out of memory */
		return PQsendQueryParams(c, sql, n, NULL, v, NULL, NULL, 0) == 1 ? 0 : -EIO;
	l->e[l->n++] = (struct prep_entry){.hash = hash, .sql = copy, .ready = false};
	if (PQsendPrepare(c, name, sql, 0, NULL) != 1 || PQsendQueryPrepared(c, name, n, v, NULL, NULL, 0) != 1)
		return -EIO; /* the caller resets the connection, which empties the list */
	return 1;
}

int pg_prep_result(PGconn *c, const char *sql)
{
	PGresult *res = PQgetResult(c), *extra;
	while (res && (extra = PQgetResult(c)) != NULL)
		PQclear(extra);
	struct prep_list *l = PQinstanceData(c, prep_event);
	int i = l ? list_find(l, fnv1a(sql), sql) : -1;
	ExecStatusType st = PQresultStatus(res);
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	bool ok = res && (st == PGRES_COMMAND_OK || (state && strcmp(state, "42P05") == 0));
	if (i >= 0 && ok)
		l->e[i].ready = true;
	else if (i >= 0 && !l->e[i].ready)
		list_drop(l, i); /* not prepared (an earlier statement failed): next time */
	if (!ok && st != PGRES_PIPELINE_ABORTED) {
		const char *msg = res ? PQresultErrorMessage(res) : "";
		jv_error(NULL, NULL, "postgresql: cannot prepare a statement: %s", *msg ? msg : PQerrorMessage(c));
	}
	PQclear(res);
	return ok ? 0 : -EIO;
}

void pg_prep_check(PGconn *c, const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (state && strcmp(state, "26000") == 0) {
		jv_warn(NULL, NULL, "postgresql: the connection lost its prepared statements; preparing them again");
		list_clear(PQinstanceData(c, prep_event));
	}
}
