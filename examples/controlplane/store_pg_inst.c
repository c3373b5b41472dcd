/* store_pg_inst.c — PostgreSQL backend: game-server instances as agents
 * report them (rows and their event history), and agents' job types.
 *
 * An instance's events and its row are written under a transaction-scoped
 * advisory lock on (agent, instance): the row may not exist yet, so a row
 * lock cannot serialise two replicas storing events of one instance. The
 * events of a request go in as one multi-row INSERT. */
#include "store_pg_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/util.h"

struct inst_row {
	bool exists;
	int64_t last_seq, state_seq;
};

static int read_row(PGconn *c, const char *agent_id, const char *instance_id, struct inst_row *row)
{
	struct pg_params p = {0};
	pg_p_str(&p, agent_id);
	pg_p_str(&p, instance_id);
	PGresult *r = pg_exec(c, "SELECT last_seq, state_seq FROM instances WHERE agent_id = $1 AND instance_id = $2", &p);
	if (!r)
		return -EIO;
	memset(row, 0, sizeof(*row));
	if (PQntuples(r) == 1) {
		row->exists = true;
		row->last_seq = pg_i64(r, 0, 0);
		row->state_seq = pg_i64(r, 0, 1);
	}
	PQclear(r);
	return 0;
}

/* Insert or update the row; state/body NULL keeps them (new rows always get a state). */
static int write_row(PGconn *c, const char *agent_id, const char *instance_id, const struct inst_row *row,
                     const char *state, const char *body, bool removed, int64_t now)
{
	struct pg_params p = {0};
	pg_p_str(&p, agent_id);
	pg_p_str(&p, instance_id);
	pg_p_str(&p, state);
	pg_p_i64(&p, row->state_seq);
	pg_p_i64(&p, row->last_seq);
	pg_p_str(&p, body);
	pg_p_i64(&p, removed);
	pg_p_i64(&p, now);
	return pg_cmd(c,
	              "INSERT INTO instances (agent_id, instance_id, state, state_seq, last_seq, body, removed,"
	              " updated_at) VALUES ($1, $2, coalesce($3, 'STOPPED'), $4, $5, coalesce($6, '{}'), $7, $8)"
	              " ON CONFLICT (agent_id, instance_id) DO UPDATE SET"
	              " state = coalesce($3, instances.state), state_seq = $4, last_seq = $5,"
	              " body = coalesce($6, instances.body),"
	              " removed = CASE WHEN $3::text IS NULL THEN instances.removed ELSE $7 END, updated_at = $8",
	              &p) < 0
	               ? -EIO
	               : 0;
}

/* The events newer than last_seq, one INSERT. */
static int insert_events(PGconn *c, const char *agent_id, const char *instance_id, struct store_inst_event *ev,
                         size_t n, int64_t last_seq, int64_t now, size_t *inserted)
{
	struct pgs_batch batch;
	pgs_batch_init(&batch);
	for (size_t i = 0; i < n; i++) {
		ev[i].inserted = ev[i].seq > last_seq; /* else stored before: the agent missed our answer */
		if (ev[i].inserted)
			pgs_batch_add(&batch, ev[i].seq, ev[i].body);
	}
	*inserted = batch.n;
	int rc = pgs_batch_end(&batch);
	if (rc == 0 && *inserted) {
		struct pg_params p = {0};
		pg_p_str(&p, agent_id);
		pg_p_str(&p, instance_id);
		pg_p_i64(&p, now);
		pg_p_str(&p, batch.seqs.data);
		pg_p_str(&p, batch.bodies.data);
		rc = pg_cmd(c,
		            "INSERT INTO instance_events (agent_id, instance_id, seq, body, received_at)"
		            " SELECT $1, $2, u.s, u.b, $3 FROM unnest($4::bigint[], $5::text[]) AS u(s, b)"
		            " ON CONFLICT DO NOTHING",
		            &p) < 0
		             ? -EIO
		             : 0;
	}
	pgs_batch_free(&batch);
	return rc;
}

static int prune_history(PGconn *c, const char *agent_id, const char *instance_id, int keep)
{
	struct pg_params p = {0};
	pg_p_str(&p, agent_id);
	pg_p_str(&p, instance_id);
	pg_p_i64(&p, keep);
	return pg_cmd(c,
	              "DELETE FROM instance_events WHERE agent_id = $1 AND instance_id = $2"
	              " AND seq <= (SELECT seq FROM instance_events WHERE agent_id = $1"
	              " AND instance_id = $2 ORDER BY seq DESC LIMIT 1 OFFSET $3)",
	              &p) < 0
	               ? -EIO
	               : 0;
}

static int inst_append_tx(PGconn *c, const char *agent_id, const char *instance_id, struct store_inst_event *ev,
                          size_t n, int64_t now, int keep, int64_t *last_seq, bool *known)
{
	struct inst_row row;
	size_t inserted = 0;
	int rc = pgs_lock_key(c, "instance-events", agent_id, instance_id);
	if (rc == 0)
		rc = read_row(c, agent_id, instance_id, &row);
	if (rc == 0)
		rc = insert_events(c, agent_id, instance_id, ev, n, row.last_seq, now, &inserted);
	const struct store_inst_event *state = NULL;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		if (!ev[i].inserted)
			continue;
		if (ev[i].seq > row.last_seq)
			row.last_seq = ev[i].seq;
		if (ev[i].state && ev[i].seq > row.state_seq) {
			row.state_seq = ev[i].seq;
			state = &ev[i];
		}
	}
	if (rc == 0 && (row.exists || state))
		rc = write_row(c, agent_id, instance_id, &row, state ? state->state : NULL, state ? state->body : NULL,
		               state && strcmp(state->state, "REMOVED") == 0, now);
	if (rc == 0 && inserted > 0)
		rc = prune_history(c, agent_id, instance_id, keep);
	*known = row.exists || state;
	*last_seq = row.last_seq;
	return rc;
}

int pgs_instance_events_append(struct store *s, const char *agent_id, const char *instance_id,
                               struct store_inst_event *ev, size_t n, int64_t now, int keep, int64_t *last_seq,
                               bool *known)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	int rc = pg_begin(c);
	if (rc == 0)
		rc = inst_append_tx(c, agent_id, instance_id, ev, n, now, keep, last_seq, known);
	if (rc == 0)
		rc = pg_commit(c);
	return pgs_fail(s, c, rc);
}

static bool listed(const struct store_inst_snap *items, size_t n, const char *iid)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(items[i].instance_id, iid) == 0)
			return true;
	return false;
}

/* Mark removed the agent's instances the snapshot does not list. */
static int remove_unlisted(PGconn *c, const char *agent_id, const struct store_inst_snap *items, size_t n,
                           int64_t now, char (**removed)[JV_IDENT_MAX + 1], size_t *nremoved)
{
	struct pg_params p = {0};
	pg_p_str(&p, agent_id);
	PGresult *r = pg_exec(c, "SELECT instance_id FROM instances WHERE agent_id = $1 AND removed = 0", &p);
	if (!r)
		return -EIO;
	int rc = 0, rows = PQntuples(r);
	if (rows > 0 && !(*removed = calloc((size_t)rows, sizeof(**removed))))
		rc = -ENOMEM;
	for (int i = 0; rc == 0 && i < rows; i++)
		if (!listed(items, n, PQgetvalue(r, i, 0)))
			pgs_copy((*removed)[(*nremoved)++], JV_IDENT_MAX + 1, r, i, 0);
	PQclear(r);
	for (size_t i = 0; rc == 0 && i < *nremoved; i++) {
		struct pg_params q = {0};
		pg_p_i64(&q, now);
		pg_p_str(&q, agent_id);
		pg_p_str(&q, (*removed)[i]);
		if (pg_cmd(c, "UPDATE instances SET removed = 1, updated_at = $1"
		              " WHERE agent_id = $2 AND instance_id = $3 AND removed = 0", &q) < 0)
			rc = -EIO;
	}
	return rc;
}

static int snapshot_tx(PGconn *c, const char *agent_id, struct store_inst_snap *items, size_t n, int64_t now,
                       char (**removed)[JV_IDENT_MAX + 1], size_t *nremoved)
{
	int rc = pgs_lock_key(c, "instance-snapshot", agent_id, NULL);
	for (size_t i = 0; rc == 0 && i < n; i++) {
		struct inst_row row;
		items[i].changed = false;
		rc = pgs_lock_key(c, "instance-events", agent_id, items[i].instance_id);
		if (rc == 0)
			rc = read_row(c, agent_id, items[i].instance_id, &row);
		if (rc < 0 || (row.exists && items[i].seq < row.state_seq))
			continue;
		row.state_seq = items[i].seq;
		rc = write_row(c, agent_id, items[i].instance_id, &row, items[i].state, items[i].body, false, now);
		items[i].changed = rc == 0;
	}
	return rc == 0 ? remove_unlisted(c, agent_id, items, n, now, removed, nremoved) : rc;
}

int pgs_instances_snapshot(struct store *s, const char *agent_id, struct store_inst_snap *items, size_t n,
                           int64_t now, char (**removed_ids)[JV_IDENT_MAX + 1], size_t *nremoved)
{
	*removed_ids = NULL;
	*nremoved = 0;
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	int rc = pg_begin(c);
	if (rc == 0)
		rc = snapshot_tx(c, agent_id, items, n, now, removed_ids, nremoved);
	if (rc == 0)
		rc = pg_commit(c);
	if (rc < 0) {
		free(*removed_ids);
		*removed_ids = NULL;
		*nremoved = 0;
	}
	return pgs_fail(s, c, rc);
}

#define INST_COLUMNS "agent_id, instance_id, state, last_seq, body, updated_at, state_seq, removed"

/* fn per row; the number of rows or -EIO. */
static int each_instance(struct store *s, const char *sql, const struct pg_params *p, store_instance_fn fn,
                         void *ud)
{
	PGresult *r = pgs_query(s, sql, p);
	if (!r)
		return -EIO;
	int rows = PQntuples(r);
	for (int i = 0; i < rows; i++) {
		struct store_instance_row row = {
			.agent_id = pg_str(r, i, 0), .instance_id = pg_str(r, i, 1), .state = pg_str(r, i, 2),
			.last_seq = pg_i64(r, i, 3), .body = pg_str(r, i, 4), .updated_at = pg_i64(r, i, 5),
			.state_seq = pg_i64(r, i, 6), .removed = pg_i64(r, i, 7) != 0,
		};
		if (fn(ud, &row) != 0)
			break;
	}
	PQclear(r);
	return rows;
}

int pgs_instances_list(struct store *s, const char *agent_id, const char *state, store_instance_fn fn, void *ud)
{
	struct pg_params p = {0};
	pg_p_str(&p, agent_id);
	pg_p_str(&p, state);
	int rc = each_instance(s,
	                       "SELECT " INST_COLUMNS " FROM instances WHERE removed = 0"
	                       " AND ($1::text IS NULL OR agent_id = $1) AND ($2::text IS NULL OR state = $2)"
	                       " ORDER BY agent_id, instance_id LIMIT 10000",
	                       &p, fn, ud);
	return rc < 0 ? rc : 0;
}

int pgs_instance_get(struct store *s, const char *agent_id, const char *instance_id, store_instance_fn fn,
                     void *ud)
{
	struct pg_params p = {0};
	pg_p_str(&p, agent_id);
	pg_p_str(&p, instance_id);
	int rc = each_instance(s, "SELECT " INST_COLUMNS " FROM instances WHERE agent_id = $1 AND instance_id = $2", &p,
	                       fn, ud);
	return rc < 0 ? rc : rc == 0 ? -ENOENT : 0;
}

int pgs_instance_history(struct store *s, const char *agent_id, const char *instance_id, int limit,
                         cJSON **events)
{
	struct pg_params p = {0};
	pg_p_str(&p, agent_id);
	pg_p_str(&p, instance_id);
	pg_p_i64(&p, limit);
	PGresult *r = pgs_query(s,
	                        "SELECT body FROM (SELECT seq, body FROM instance_events"
	                        " WHERE agent_id = $1 AND instance_id = $2 ORDER BY seq DESC LIMIT $3) t ORDER BY seq",
	                        &p);
	if (!r)
		return -EIO;
	cJSON *arr = cJSON_CreateArray();
	for (int i = 0; arr && i < PQntuples(r); i++) {
		cJSON *ev = cJSON_Parse(PQgetvalue(r, i, 0));
		if (ev)
			cJSON_AddItemToArray(arr, ev);
	}
	PQclear(r);
	if (!arr)
		return -ENOMEM;
	*events = arr;
	return 0;
}

int pgs_jobtypes_put(struct store *s, const char *agent_id, const char *body, int64_t now)
{
	struct pg_params p = {0};
	pg_p_str(&p, agent_id);
	pg_p_str(&p, body);
	pg_p_i64(&p, now);
	return pgs_cmd(s,
	               "INSERT INTO agent_job_types (agent_id, body, reported_at) VALUES ($1, $2, $3)"
	               " ON CONFLICT (agent_id) DO UPDATE SET body = excluded.body, reported_at = excluded.reported_at",
	               &p) < 0 ? -EIO : 0;
}

int pgs_jobtypes_get(struct store *s, const char *agent_id, cJSON **report, int64_t *at)
{
	struct pg_params p = {0};
	pg_p_str(&p, agent_id);
	PGresult *r = pgs_query(s, "SELECT body, reported_at FROM agent_job_types WHERE agent_id = $1", &p);
	if (!r)
		return -EIO;
	int rc = PQntuples(r) == 1 ? 0 : -ENOENT;
	*report = NULL;
	if (rc == 0) {
		*report = cJSON_Parse(PQgetvalue(r, 0, 0));
		if (at)
			*at = pg_i64(r, 0, 1);
		if (!*report)
			rc = -EIO;
	}
	PQclear(r);
	return rc;
}
