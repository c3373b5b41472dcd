/* store_sqlite_dispatch.c — SQLite backend: agents, leases, claiming runs
 * for an agent, the sweep's queries, and run events.
 *
 * Claiming is one BEGIN IMMEDIATE transaction: the write lock is taken
 * before the assignable runs are read, and each is moved with a conditional
 * UPDATE (status = 'QUEUED'), so two processes polling on one file never
 * hand out a run twice, and the per-instance rule (an instance's jobs one at
 * a time, in creation order) is read and applied under the same lock. */
#include "store_sqlite_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int sq_agents_register(struct store *s, const char *const *agent_ids, size_t n)
{
	struct sq *q = sq_of(s);
	int rc = sq_tx_begin(q);
	if (rc < 0)
		return rc;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		rc = sq_exec(q, "INSERT OR IGNORE INTO agents (agent_id) VALUES (?)", "s", agent_ids[i]);
		rc = rc < 0 ? rc : 0;
	}
	return sq_tx_end(q, rc);
}

int sq_agent_touch(struct store *s, const char *agent_id, int64_t last_seen, int capacity)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_exec(q, "UPDATE agents SET last_seen = ?, capacity = ? WHERE agent_id = ?", "iis", last_seen,
	                 (int64_t)capacity, agent_id);
	sq_unlock(q);
	return rc < 0 ? rc : 0;
}

int sq_agents_each(struct store *s, void (*fn)(void *ud, const char *agent_id, int64_t last_seen, int capacity),
                   void *ud)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q, "SELECT agent_id, last_seen, capacity FROM agents", NULL);
	int rc = st ? 1 : -EIO;
	while (st && (rc = sq_step(q, st)) == 1)
		fn(ud, sq_text(st, 0), sqlite3_column_int64(st, 1), sqlite3_column_int(st, 2));
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc;
}

static int running_count(struct sq *q, const char *agent_id)
{
	int64_t n = 0;
	int rc = sq_int64(q, &n, "SELECT count(*) FROM job_runs WHERE agent_id = ? AND status = 'RUNNING'", "s",
	                  agent_id);
	return rc < 0 ? rc : (int)n;
}

int sq_agent_running(struct store *s, const char *agent_id)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int n = running_count(q, agent_id);
	sq_unlock(q);
	return n;
}

int sq_agents_running(struct store *s, void (*fn)(void *ud, const char *agent_id, int n), void *ud)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st =
	    sq_query(q, "SELECT agent_id, count(*) FROM job_runs WHERE status = 'RUNNING' GROUP BY agent_id", NULL);
	int rc = st ? 1 : -EIO;
	while (st && (rc = sq_step(q, st)) == 1)
		fn(ud, sq_text(st, 0), sqlite3_column_int(st, 1));
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc;
}

int sq_runs_renew(struct store *s, const char *agent_id, const char *const *run_ids, size_t n, int64_t lease_until,
                  bool *renewed)
{
	struct sq *q = sq_of(s);
	if (n == 0)
		return 0;
	int rc = sq_tx_begin(q);
	if (rc < 0)
		return rc;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		int c = sq_exec(q, "UPDATE job_runs SET lease_until = ? WHERE run_id = ? AND agent_id = ? AND status = 'RUNNING'",
		                "iss", lease_until, run_ids[i], agent_id);
		rc = c < 0 ? c : 0;
		renewed[i] = c == 1;
	}
	return sq_tx_end(q, rc);
}

/* Ids from a query into ids (at most max): the count, or -EIO. */
static int collect_ids(struct sq *q, sqlite3_stmt *st, char (*ids)[CP_ID_MAX], int max)
{
	int n = 0, rc = st ? 1 : -EIO;
	while (st && n < max && (rc = sq_step(q, st)) == 1)
		sq_col(st, 0, ids[n++], CP_ID_MAX);
	sqlite3_finalize(st);
	return rc < 0 ? rc : n;
}

int sq_agent_runs(struct store *s, const char *agent_id, bool unacked_only, bool cancel_only,
                  char (*ids)[CP_ID_MAX], int max)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q,
	                            "SELECT run_id FROM job_runs WHERE agent_id = ? AND status = 'RUNNING'"
	                            " AND (? = 0 OR acked = 0) AND (? = 0 OR cancel_requested = 1) LIMIT ?",
	                            "siii", agent_id, (int64_t)unacked_only, (int64_t)cancel_only, (int64_t)max);
	int n = collect_ids(q, st, ids, max);
	sq_unlock(q);
	return n;
}

/* The assignable QUEUED runs of an agent: the run of the head of its
 * instance (its lowest active seq: a QUEUED run's job is active), due, no
 * run of the instance RUNNING; by job seq. As on PostgreSQL
 * (store_pg_dispatch.c, PGS_SQL_CLAIM), the cost does not grow with the
 * agent's queue: SQL_WALK looks at the agent's first W active jobs in seq
 * order (index jobs_active_by_seq, schema version 7) and stops at the k-th
 * assignable one; only when it found fewer and the agent has W active jobs
 * or more does SQL_HEADS look at the head of each instance (one probe each
 * in jobs_active). The join orders are fixed (CROSS JOIN, INDEXED BY): with
 * the statistics of a few agents and instances, SQLite's planner would scan
 * the jobs once per candidate otherwise. ?1 agent, ?2 now, ?3 k, ?4 W. */
#define SQ_ACTIVE(t) t ".status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')"
#define SQ_DUE                                                                                        \
	" r.agent_id = ?1 AND r.status = 'QUEUED' AND r.not_before <= ?2"                                   \
	" AND NOT EXISTS (SELECT 1 FROM job_runs x INDEXED BY runs_by_agent CROSS JOIN jobs xj WHERE x.agent_id = ?1" \
	"   AND x.status = 'RUNNING' AND xj.job_id = x.job_id AND xj.instance_id = j.instance_id)"
static const char SQL_WALK[] =
	"SELECT r.run_id FROM (SELECT j.seq, j.job_id, j.instance_id FROM jobs j INDEXED BY jobs_active_by_seq"
	"   WHERE j.agent_id = ?1 AND " SQ_ACTIVE("j") " ORDER BY j.seq LIMIT ?4) j"
	" JOIN job_runs r ON r.job_id = j.job_id WHERE" SQ_DUE
	"   AND NOT EXISTS (SELECT 1 FROM jobs e INDEXED BY jobs_active WHERE e.agent_id = ?1"
	"                   AND e.instance_id = j.instance_id AND e.seq < j.seq AND " SQ_ACTIVE("e") ")"
	" ORDER BY j.seq LIMIT ?3";
static const char SQL_ACTIVE_AT_LEAST[] =
	"SELECT count(*) FROM (SELECT 1 FROM jobs j INDEXED BY jobs_active_by_seq WHERE j.agent_id = ?1"
	"   AND " SQ_ACTIVE("j") " LIMIT ?2)";
#define SQ_ACTIVE_OF(col) " FROM jobs j INDEXED BY jobs_active WHERE j.agent_id = ?1 AND " SQ_ACTIVE("j") col
static const char SQL_HEADS[] =
	"WITH RECURSIVE inst (id) AS ("
	"   SELECT (SELECT j.instance_id" SQ_ACTIVE_OF("") " ORDER BY j.instance_id LIMIT 1)"
	"   UNION ALL SELECT (SELECT j.instance_id" SQ_ACTIVE_OF(" AND j.instance_id > inst.id")
	"     ORDER BY j.instance_id LIMIT 1) FROM inst WHERE inst.id IS NOT NULL),"
	" head (seq) AS (SELECT (SELECT j.seq" SQ_ACTIVE_OF(" AND j.instance_id = inst.id") " ORDER BY j.seq LIMIT 1)"
	"   FROM inst WHERE inst.id IS NOT NULL)"
	" SELECT run_id FROM (SELECT h.seq, (SELECT r.run_id FROM jobs j JOIN job_runs r ON r.job_id = j.job_id"
	"   WHERE j.seq = h.seq AND" SQ_DUE ") AS run_id FROM head h)"
	" WHERE run_id IS NOT NULL ORDER BY seq LIMIT ?3";

/* Up to k assignable run ids of the agent into ids: the count, or <0. */
static int assignable(struct sq *q, const char *agent_id, int64_t now, int k, char (*ids)[CP_ID_MAX])
{
	int64_t w = 4 * (int64_t)k + 32, active = 0;
	int n = collect_ids(q, sq_query(q, SQL_WALK, "siii", agent_id, now, (int64_t)k, w), ids, k);
	if (n < 0 || n == k)
		return n;
	int rc = sq_int64(q, &active, SQL_ACTIVE_AT_LEAST, "si", agent_id, w);
	if (rc < 0)
		return rc;
	if (active < w)
		return n; /* the walk saw every active job */
	return collect_ids(q, sq_query(q, SQL_HEADS, "sii", agent_id, now, (int64_t)k), ids, k);
}

static int claim_locked(struct sq *q, const char *agent_id, int capacity, int64_t now, int64_t ack_deadline,
                        int64_t lease_until, char (*ids)[CP_ID_MAX], int max)
{
	int running = running_count(q, agent_id);
	if (running < 0)
		return running;
	int64_t late = sq_tx_time(q, now) - now; /* waited for the lock: start the windows from the claim */
	now += late;
	ack_deadline += late;
	lease_until += late;
	int free_slots = capacity - running < max ? capacity - running : max;
	if (free_slots <= 0)
		return 0;
	int n = assignable(q, agent_id, now, free_slots, ids);
	int claimed = 0;
	for (int i = 0; n > 0 && i < n; i++) {
		int c = sq_exec(q,
		                "UPDATE job_runs SET status = 'RUNNING', started_at = ?, ack_deadline = ?, lease_until = ?"
		                " WHERE run_id = ? AND status = 'QUEUED'",
		                "iiis", now, ack_deadline, lease_until, ids[i]);
		if (c < 0)
			return c;
		if (c == 0)
			continue; /* cannot happen under the write lock; never hand it out */
		c = sq_exec(q, "UPDATE jobs SET status = 'RUNNING', updated_at = ?"
		               " WHERE job_id = (SELECT job_id FROM job_runs WHERE run_id = ?)",
		            "is", now, ids[i]);
		if (c < 0)
			return c;
		if (claimed != i)
			memcpy(ids[claimed], ids[i], CP_ID_MAX);
		claimed++;
	}
	return n < 0 ? n : claimed;
}

int sq_runs_claim(struct store *s, const char *agent_id, int capacity, int64_t now, int64_t ack_deadline,
                  int64_t lease_until, char (*ids)[CP_ID_MAX], int max)
{
	struct sq *q = sq_of(s);
	/* Most polls find nothing to claim: find that out without the write lock. */
	char one[1][CP_ID_MAX];
	sq_lock(q);
	int rc = running_count(q, agent_id);
	rc = rc < 0 ? rc : rc >= capacity ? 0 : assignable(q, agent_id, now, 1, one);
	sq_unlock(q);
	if (rc <= 0) /* 1: a candidate run exists */
		return rc;
	rc = sq_tx_begin(q);
	if (rc < 0)
		return rc;
	int n = claim_locked(q, agent_id, capacity, now, ack_deadline, lease_until, ids, max);
	rc = sq_tx_end(q, n < 0 ? n : 0);
	return rc < 0 ? rc : n;
}

int sq_runs_lost(struct store *s, int64_t now, struct store_lost_run *out, int max)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q,
	                            "SELECT run_id, agent_id, acked, ack_deadline FROM job_runs WHERE status = 'RUNNING'"
	                            " AND ((acked = 0 AND ack_deadline < ?1) OR lease_until < ?1) LIMIT ?2",
	                            "ii", now, (int64_t)max);
	int n = 0, rc = st ? 1 : -EIO;
	while (st && n < max && (rc = sq_step(q, st)) == 1) {
		sq_col(st, 0, out[n].run_id, sizeof(out[n].run_id));
		sq_col(st, 1, out[n].agent_id, sizeof(out[n].agent_id));
		out[n].unacked = sqlite3_column_int(st, 2) == 0 && sqlite3_column_int64(st, 3) < now;
		n++;
	}
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc < 0 ? rc : n;
}

int sq_retry_agents(struct store *s, int64_t after, int64_t until, void (*fn)(void *ud, const char *agent_id),
                    void *ud)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q,
	                            "SELECT DISTINCT agent_id FROM job_runs WHERE status = 'QUEUED'"
	                            " AND not_before > ? AND not_before <= ?",
	                            "ii", after, until);
	int rc = st ? 1 : -EIO;
	while (st && (rc = sq_step(q, st)) == 1)
		fn(ud, sq_text(st, 0));
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc;
}

int sq_runs_refresh(struct store *s, int64_t lease_until, int64_t ack_deadline)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int rc = sq_exec(q,
	                 "UPDATE job_runs SET lease_until = ?,"
	                 " ack_deadline = CASE acked WHEN 0 THEN ? ELSE ack_deadline END WHERE status = 'RUNNING'",
	                 "ii", lease_until, ack_deadline);
	sq_unlock(q);
	return rc < 0 ? rc : 0;
}

/* Highest contiguous seq, walking up from the stored one. */
static int contiguous_seq(struct sq *q, const char *run_id, int64_t from, int64_t *out)
{
	sqlite3_stmt *st = sq_query(q, "SELECT seq FROM events WHERE run_id = ? AND seq > ? ORDER BY seq", "si", run_id,
	                            from);
	int64_t top = from;
	int rc = st ? 1 : -EIO;
	while (st && (rc = sq_step(q, st)) == 1) {
		int64_t v = sqlite3_column_int64(st, 0);
		if (v != top + 1) {
			rc = 0;
			break;
		}
		top = v;
	}
	sqlite3_finalize(st);
	*out = top;
	return rc < 0 ? rc : 0;
}

/* The newest inserted progress event, or NULL. */
static const struct store_event *newest_progress(const struct store_event *ev, size_t n)
{
	const struct store_event *best = NULL;
	for (size_t i = 0; i < n; i++)
		if (ev[i].inserted && ev[i].progress && (ev[i].has_percent || ev[i].message) &&
		    (!best || ev[i].seq > best->seq))
			best = &ev[i];
	return best;
}

static int append_locked(struct sq *q, const char *run_id, struct store_event *ev, size_t n, int64_t now,
                         int64_t *ack_seq, bool *was_acked)
{
	int64_t last = 0, acked = 0;
	int rc = sq_int64(q, &last, "SELECT last_seq FROM job_runs WHERE run_id = ?", "s", run_id);
	if (rc == 1)
		rc = sq_int64(q, &acked, "SELECT acked FROM job_runs WHERE run_id = ?", "s", run_id);
	if (rc <= 0)
		return rc == 0 ? -ENOENT : rc;
	*was_acked = acked != 0;
	sqlite3_stmt *ins = sq_prep(q, "INSERT OR IGNORE INTO events (run_id, seq, body, received_at) VALUES (?, ?, ?, ?)");
	rc = ins ? 0 : -EIO;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		sqlite3_reset(ins);
		sq_bind(ins, "sisi", run_id, ev[i].seq, ev[i].body, now);
		rc = sq_step(q, ins) < 0 ? -EIO : 0;
		ev[i].inserted = rc == 0 && sqlite3_changes(q->db) == 1;
	}
	sqlite3_finalize(ins);
	if (rc == 0)
		rc = contiguous_seq(q, run_id, last, ack_seq);
	if (rc == 0)
		rc = sq_exec(q, "UPDATE job_runs SET last_seq = ?, acked = 1 WHERE run_id = ?", "is", *ack_seq, run_id);
	const struct store_event *p = rc >= 0 ? newest_progress(ev, n) : NULL;
	if (p && p->has_percent)
		rc = sq_exec(q,
		             "UPDATE job_runs SET percent = ?, message = coalesce(?, message), progress_seq = ?"
		             " WHERE run_id = ? AND progress_seq < ?",
		             "dsisi", p->percent, p->message, p->seq, run_id, p->seq);
	else if (p)
		rc = sq_exec(q, "UPDATE job_runs SET message = ?, progress_seq = ? WHERE run_id = ? AND progress_seq < ?",
		             "sisi", p->message, p->seq, run_id, p->seq);
	return rc < 0 ? rc : 0;
}

int sq_events_append(struct store *s, const char *run_id, struct store_event *ev, size_t n, int64_t now,
                     int64_t *ack_seq, bool *was_acked)
{
	struct sq *q = sq_of(s);
	int rc = sq_tx_begin(q);
	return rc < 0 ? rc : sq_tx_end(q, append_locked(q, run_id, ev, n, now, ack_seq, was_acked));
}
