/* store_sqlite_inst.c — SQLite backend: game-server instances as agents
 * report them (rows and their event history), and agents' job types. */
#include "store_sqlite_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct inst_row {
	bool exists;
	int64_t last_seq, state_seq;
};

static int read_row(struct sq *q, const char *agent_id, const char *instance_id, struct inst_row *r)
{
	memset(r, 0, sizeof(*r));
	sqlite3_stmt *st = sq_query(q, "SELECT last_seq, state_seq FROM instances WHERE agent_id = ? AND instance_id = ?",
	                            "ss", agent_id, instance_id);
	int rc = st ? sq_step(q, st) : -EIO;
	if (rc == 1) {
		r->exists = true;
		r->last_seq = sqlite3_column_int64(st, 0);
		r->state_seq = sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	return rc < 0 ? rc : 0;
}

/* Insert or update the row; state/body NULL keeps them (new rows always get a state). */
static int write_row(struct sq *q, const char *agent_id, const char *instance_id, const struct inst_row *r,
                     const char *state, const char *body, bool removed, int64_t now)
{
	int rc = sq_exec(q,
	                 "INSERT INTO instances (agent_id, instance_id, state, state_seq, last_seq, body, removed,"
	                 " updated_at) VALUES (?1, ?2, coalesce(?3, 'STOPPED'), ?4, ?5, coalesce(?6, '{}'), ?7, ?8)"
	                 " ON CONFLICT (agent_id, instance_id) DO UPDATE SET"
	                 " state = coalesce(?3, state), state_seq = ?4, last_seq = ?5, body = coalesce(?6, body),"
	                 " removed = CASE WHEN ?3 IS NULL THEN removed ELSE ?7 END, updated_at = ?8",
	                 "sssiisii", agent_id, instance_id, state, r->state_seq, r->last_seq, body, (int64_t)removed, now);
	return rc < 0 ? rc : 0;
}

/* Keep the newest keep events of an instance. */
static int prune_history(struct sq *q, const char *agent_id, const char *instance_id, int keep)
{
	int rc = sq_exec(q,
	                 "DELETE FROM instance_events WHERE agent_id = ?1 AND instance_id = ?2"
	                 " AND seq <= (SELECT seq FROM instance_events WHERE agent_id = ?1"
	                 " AND instance_id = ?2 ORDER BY seq DESC LIMIT 1 OFFSET ?3)",
	                 "ssi", agent_id, instance_id, (int64_t)keep);
	return rc < 0 ? rc : 0;
}

static int inst_append_locked(struct sq *q, const char *agent_id, const char *instance_id,
                              struct store_inst_event *ev, size_t n, int64_t now, int keep, int64_t *last_seq,
                              bool *known)
{
	struct inst_row row;
	int rc = read_row(q, agent_id, instance_id, &row);
	sqlite3_stmt *ins = rc == 0 ? sq_prep(q, "INSERT OR IGNORE INTO instance_events"
	                                         " (agent_id, instance_id, seq, body, received_at) VALUES (?, ?, ?, ?, ?)")
	                            : NULL;
	if (rc == 0 && !ins)
		rc = -EIO;
	const struct store_inst_event *state = NULL;
	size_t inserted = 0;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		ev[i].inserted = false;
		if (ev[i].seq <= row.last_seq)
			continue; /* stored before: the agent did not see our answer */
		sqlite3_reset(ins);
		sq_bind(ins, "ssisi", agent_id, instance_id, ev[i].seq, ev[i].body, now);
		if (sq_step(q, ins) < 0)
			rc = -EIO;
		ev[i].inserted = rc == 0;
		inserted += rc == 0;
		row.last_seq = ev[i].seq;
		if (rc == 0 && ev[i].state && ev[i].seq > row.state_seq) {
			row.state_seq = ev[i].seq;
			state = &ev[i];
		}
	}
	sqlite3_finalize(ins);
	if (rc == 0 && (row.exists || state))
		rc = write_row(q, agent_id, instance_id, &row, state ? state->state : NULL, state ? state->body : NULL,
		               state && strcmp(state->state, "REMOVED") == 0, now);
	if (rc == 0 && inserted > 0)
		rc = prune_history(q, agent_id, instance_id, keep);
	*known = row.exists || state;
	*last_seq = row.last_seq;
	return rc;
}

int sq_instance_events_append(struct store *s, const char *agent_id, const char *instance_id,
                              struct store_inst_event *ev, size_t n, int64_t now, int keep, int64_t *last_seq,
                              bool *known)
{
	struct sq *q = sq_of(s);
	int rc = sq_tx_begin(q);
	return rc < 0 ? rc : sq_tx_end(q, inst_append_locked(q, agent_id, instance_id, ev, n, now, keep, last_seq, known));
}

static bool listed(const struct store_inst_snap *items, size_t n, const char *iid)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(items[i].instance_id, iid) == 0)
			return true;
	return false;
}

/* Mark removed the agent's instances the snapshot does not list. */
static int remove_unlisted(struct sq *q, const char *agent_id, const struct store_inst_snap *items, size_t n,
                           int64_t now, char (**removed)[JV_IDENT_MAX + 1], size_t *nremoved)
{
	sqlite3_stmt *gone = sq_query(q, "SELECT instance_id FROM instances WHERE agent_id = ? AND removed = 0", "s",
	                              agent_id);
	size_t cap = 0;
	int rc = gone ? 1 : -EIO;
	while (gone && (rc = sq_step(q, gone)) == 1) {
		const char *iid = sq_text(gone, 0);
		if (listed(items, n, iid))
			continue;
		if (*nremoved == cap) {
			cap = cap ? cap * 2 : 16;
			void *p = realloc(*removed, cap * sizeof(**removed));
			if (!p) {
				rc = -ENOMEM;
				break;
			}
			*removed = p;
		}
		snprintf((*removed)[(*nremoved)++], JV_IDENT_MAX + 1, "%s", iid);
	}
	sqlite3_finalize(gone);
	for (size_t i = 0; rc == 0 && i < *nremoved; i++) {
		int c = sq_exec(q, "UPDATE instances SET removed = 1, updated_at = ?"
		                   " WHERE agent_id = ? AND instance_id = ? AND removed = 0",
		                "iss", now, agent_id, (*removed)[i]);
		rc = c < 0 ? c : 0;
	}
	return rc;
}

static int snapshot_locked(struct sq *q, const char *agent_id, struct store_inst_snap *items, size_t n,
                           int64_t now, char (**removed)[JV_IDENT_MAX + 1], size_t *nremoved)
{
	int rc = 0;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		struct inst_row row;
		items[i].changed = false;
		rc = read_row(q, agent_id, items[i].instance_id, &row);
		if (rc < 0 || (row.exists && items[i].seq < row.state_seq))
			continue;
		row.state_seq = items[i].seq;
		rc = write_row(q, agent_id, items[i].instance_id, &row, items[i].state, items[i].body, false, now);
		items[i].changed = rc == 0;
	}
	return rc == 0 ? remove_unlisted(q, agent_id, items, n, now, removed, nremoved) : rc;
}

int sq_instances_snapshot(struct store *s, const char *agent_id, struct store_inst_snap *items, size_t n,
                          int64_t now, char (**removed_ids)[JV_IDENT_MAX + 1], size_t *nremoved)
{
	struct sq *q = sq_of(s);
	*removed_ids = NULL;
	*nremoved = 0;
	int rc = sq_tx_begin(q);
	if (rc == 0)
		rc = sq_tx_end(q, snapshot_locked(q, agent_id, items, n, now, removed_ids, nremoved));
	if (rc < 0) {
		free(*removed_ids);
		*removed_ids = NULL;
		*nremoved = 0;
	}
	return rc;
}

#define INST_COLUMNS "agent_id, instance_id, state, last_seq, body, updated_at, state_seq, removed"

static int each_instance(struct sq *q, sqlite3_stmt *st, store_instance_fn fn, void *ud, int *rows)
{
	int rc = st ? 1 : -EIO;
	*rows = 0;
	while (st && (rc = sq_step(q, st)) == 1) {
		struct store_instance_row r = {
			.agent_id = sq_text(st, 0),
			.instance_id = sq_text(st, 1),
			.state = sq_text(st, 2),
			.last_seq = sqlite3_column_int64(st, 3),
			.body = sq_text(st, 4),
			.updated_at = sqlite3_column_int64(st, 5),
			.state_seq = sqlite3_column_int64(st, 6),
			.removed = sqlite3_column_int(st, 7) != 0,
		};
		(*rows)++;
		if (fn(ud, &r) != 0) {
			rc = 0;
			break;
		}
	}
	sqlite3_finalize(st);
	return rc < 0 ? rc : 0;
}

int sq_instances_list(struct store *s, const char *agent_id, const char *state, store_instance_fn fn, void *ud)
{
	struct sq *q = sq_of(s);
	int rows;
	sq_lock(q);
	int rc = each_instance(q,
	                       sq_query(q,
	                                "SELECT " INST_COLUMNS " FROM instances WHERE removed = 0"
	                                " AND (?1 IS NULL OR agent_id = ?1) AND (?2 IS NULL OR state = ?2)"
	                                " ORDER BY agent_id, instance_id LIMIT 10000",
	                                "ss", agent_id, state),
	                       fn, ud, &rows);
	sq_unlock(q);
	return rc;
}

int sq_instance_get(struct store *s, const char *agent_id, const char *instance_id, store_instance_fn fn,
                    void *ud)
{
	struct sq *q = sq_of(s);
	int rows;
	sq_lock(q);
	int rc = each_instance(q,
	                       sq_query(q, "SELECT " INST_COLUMNS " FROM instances WHERE agent_id = ? AND instance_id = ?",
	                                "ss", agent_id, instance_id),
	                       fn, ud, &rows);
	sq_unlock(q);
	return rc < 0 ? rc : rows == 0 ? -ENOENT : 0;
}

static cJSON *event_conv(sqlite3_stmt *st, void *ud)
{
	(void)ud;
	return cJSON_Parse(sq_text(st, 0) ? sq_text(st, 0) : "");
}

int sq_instance_history(struct store *s, const char *agent_id, const char *instance_id, int limit,
                        cJSON **events)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_rows(q,
	                 sq_query(q,
	                          "SELECT body FROM (SELECT seq, body FROM instance_events"
	                          " WHERE agent_id = ? AND instance_id = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
	                          "ssi", agent_id, instance_id, (int64_t)limit),
	                 event_conv, NULL, events);
	sq_unlock(q);
	return rc;
}

int sq_jobtypes_put(struct store *s, const char *agent_id, const char *body, int64_t now)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_exec(q,
	                 "INSERT INTO agent_job_types (agent_id, body, reported_at) VALUES (?, ?, ?)"
	                 " ON CONFLICT (agent_id) DO UPDATE SET body = excluded.body, reported_at = excluded.reported_at",
	                 "ssi", agent_id, body, now);
	sq_unlock(q);
	return rc < 0 ? rc : 0;
}

int sq_jobtypes_get(struct store *s, const char *agent_id, cJSON **report, int64_t *at)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q, "SELECT body, reported_at FROM agent_job_types WHERE agent_id = ?", "s", agent_id);
	int rc = st ? sq_step(q, st) : -EIO;
	*report = NULL;
	if (rc == 1) {
		*report = cJSON_Parse(sq_text(st, 0) ? sq_text(st, 0) : "");
		if (at)
			*at = sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	sq_unlock(q);
	if (rc == 1 && !*report)
		return -EIO;
	return rc == 1 ? 0 : rc == 0 ? -ENOENT : rc;
}
