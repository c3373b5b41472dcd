/* store_pg_dispatch.c — agents, leases, claiming work, the sweep's queries,
 * and run events, on PostgreSQL.
 *
 * Claims: several replicas may answer polls of one agent at once (an agent
 * failing over, or two polls in flight). The claim runs in one transaction
 * that first takes a transaction-scoped advisory lock on the agent, so the
 * count of its RUNNING runs, the choice of assignable runs (per-instance
 * order) and the QUEUED -> RUNNING moves are seen and made by one replica
 * at a time for that agent; agents do not wait for each other. The moves are
 * still conditional (status = 'QUEUED'), so a cancel that won the run's row
 * lock first wins.
 *
 * Events: a request's batch is one multi-row INSERT (unnest of two arrays,
 * ON CONFLICT DO NOTHING RETURNING seq), then one statement computes the
 * highest contiguous seq and one updates the run: a fixed number of round
 * trips per request, whatever the number of events. */
#include "store_pg_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

int pgs_text_array(struct jv_buf *b, const char *const *ids, size_t n)
{
	int rc = jv_buf_append(b, "{", 1);
	for (size_t i = 0; rc == 0 && i < n; i++)
		rc = pgs_array_add(b, ids[i], i == 0);
	if (rc == 0)
		rc = jv_buf_append(b, "}", 2); /* with the NUL */
	return rc;
}

int pgs_agents_register(struct store *s, const char *const *agent_ids, size_t n)
{
	struct jv_buf b;
	jv_buf_init(&b, 64u * 1024 * 1024);
	if (pgs_text_array(&b, agent_ids, n) < 0) {
		jv_buf_free(&b);
		return -ENOMEM;
	}
	struct pg_params p = {0};
	pg_p_str(&p, b.data);
	int rows = pgs_cmd(s, "INSERT INTO agents (agent_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", &p);
	jv_buf_free(&b);
	return rows < 0 ? -EIO : 0;
}

int pgs_agents_each(struct store *s, void (*fn)(void *ud, const char *agent_id, int64_t last_seen, int capacity),
                    void *ud)
{
	PGresult *r = pgs_query(s, "SELECT agent_id, last_seen, capacity FROM agents ORDER BY agent_id", NULL);
	if (!r)
		return -EIO;
	for (int i = 0; i < PQntuples(r); i++)
		fn(ud, pg_str(r, i, 0), pg_i64(r, i, 1), (int)pg_i64(r, i, 2));
	PQclear(r);
	return 0;
}

/* One number from a query on its own connection; <0 on error. */
static int64_t scalar(struct store *s, const char *sql, const struct pg_params *p)
{
	PGresult *r = pgs_query(s, sql, p);
	int64_t v = r && PQntuples(r) == 1 ? pg_i64(r, 0, 0) : -EIO;
	PQclear(r);
	return v;
}

int pgs_agent_running(struct store *s, const char *agent_id)
{
	struct pg_params p = {0};
	pg_p_str(&p, agent_id);
	return (int)scalar(s, "SELECT count(*) FROM job_runs WHERE agent_id = $1 AND status = 'RUNNING'", &p);
}

int pgs_agents_running(struct store *s, void (*fn)(void *ud, const char *agent_id, int n), void *ud)
{
	PGresult *r = pgs_query(s, "SELECT agent_id, count(*) FROM job_runs WHERE status = 'RUNNING' GROUP BY agent_id",
	                        NULL);
	if (!r)
		return -EIO;
	for (int i = 0; i < PQntuples(r); i++)
		fn(ud, pg_str(r, i, 0), (int)pg_i64(r, i, 1));
	PQclear(r);
	return 0;
}

/* Rows of column 0 into ids; the count or -EIO. */
static int ids_of(struct store *s, const char *sql, const struct pg_params *p, char (*ids)[CP_ID_MAX], int max)
{
	PGresult *r = pgs_query(s, sql, p);
	if (!r)
		return -EIO;
	int n = PQntuples(r) < max ? PQntuples(r) : max;
	for (int i = 0; i < n; i++)
		pgs_copy(ids[i], CP_ID_MAX, r, i, 0);
	PQclear(r);
	return n;
}

int pgs_agent_runs(struct store *s, const char *agent_id, bool unacked_only, bool cancel_only,
                   char (*ids)[CP_ID_MAX], int max)
{
	struct pg_params p = {0};
	pg_p_str(&p, agent_id);
	pg_p_i64(&p, unacked_only);
	pg_p_i64(&p, cancel_only);
	pg_p_i64(&p, max);
	return ids_of(s,
	              "SELECT run_id FROM job_runs WHERE agent_id = $1 AND status = 'RUNNING'"
	              " AND ($2 = 0 OR acked = 0) AND ($3 = 0 OR cancel_requested = 1) ORDER BY started_at, run_id"
	              " LIMIT $4",
	              &p, ids, max);
}

/* Count the agent's RUNNING runs, pick the assignable QUEUED runs (no
 * earlier active job of the instance, no run of the instance RUNNING, at
 * most one per instance, by job seq, up to k = min(capacity - running, max)),
 * and move them and their jobs to RUNNING: one statement.
 *
 * A run is assignable when its job is the head of its instance (its lowest
 * active seq; a QUEUED run's job is active, and a job has one QUEUED run at a
 * time). The pick's cost does not grow with the agent's queue
 * (docs/scaling.md, "Claim cost"):
 *   walk: the agent's first W = 4k + 32 active jobs in seq order (index
 *     jobs_active_by_seq, schema version 2), the assignable ones among them,
 *     stopping at the k-th;
 *   heads: only when the walk found fewer than k and the agent has W or more
 *     active jobs (long queues of a few instances fill the walk), the head of
 *     each instance with an active job, one index probe per instance
 *     (jobs_active; a skip scan), the assignable ones by seq, k of them.
 * Either way the result is the first k assignable runs by job seq: the walk's
 * when it is exact (it saw every active job, or found k in seq order).
 *
 * started_at is never before the finish of the run it follows (the previous
 * attempt, the instance's previous job), nor before the clock read once the
 * statement holds the agent's lock (the server's, clock_timestamp():
 * store.h's "later of now and the clock read once the transaction holds its
 * locks"): the caller read `now` before its claim waited its turn, and a run
 * that finished meanwhile (freeing the capacity this claim uses) was stamped
 * by another request's clock. The moves stay conditional (status =
 * 'QUEUED'), so a cancel that won the row lock wins. */
#define ACTIVE_JOB(t) t ".status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')"
/* The QUEUED, due run r of job j, looked up by job (a nested loop, LIMIT 1
 * keeping the planner from joining every queued run), when no run of the
 * instance is RUNNING. */
#define CLAIM_DUE                                                                                      \
	" CROSS JOIN LATERAL (SELECT r.run_id FROM job_runs r WHERE r.job_id = j.job_id AND r.agent_id = $1" \
	"   AND r.status = 'QUEUED' AND r.not_before <= $2::bigint LIMIT 1) r"                               \
	" WHERE NOT EXISTS (SELECT 1 FROM job_runs x JOIN jobs xj ON xj.job_id = x.job_id"                  \
	"   WHERE x.agent_id = $1 AND x.status = 'RUNNING' AND xj.instance_id = j.instance_id)"
const char PGS_SQL_CLAIM[] =
	"WITH RECURSIVE busy AS (SELECT count(*) AS n FROM job_runs WHERE agent_id = $1 AND status = 'RUNNING'),"
	" want AS (SELECT greatest(0, least($5::bigint - n, $6::bigint)) AS k FROM busy),"
	" walk AS (SELECT r.run_id, j.seq, j.instance_id FROM (SELECT seq, job_id, instance_id FROM jobs j"
	"     WHERE j.agent_id = $1 AND " ACTIVE_JOB("j") " ORDER BY j.seq LIMIT (SELECT 4 * k + 32 FROM want)) j"
	CLAIM_DUE
	"   AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.agent_id = $1 AND e.instance_id = j.instance_id"
	"     AND e.seq < j.seq AND " ACTIVE_JOB("e") ")"
	"   ORDER BY j.seq LIMIT (SELECT k FROM want)),"
	" decide AS (SELECT (SELECT count(*) FROM walk) < k AND (SELECT count(*) FROM (SELECT 1 FROM jobs j"
	"     WHERE j.agent_id = $1 AND " ACTIVE_JOB("j") " LIMIT 4 * k + 32) a) = 4 * k + 32 AS heads FROM want),"
	" inst (instance_id) AS ((SELECT j.instance_id FROM jobs j WHERE j.agent_id = $1 AND " ACTIVE_JOB("j")
	"     AND (SELECT heads FROM decide) ORDER BY j.instance_id LIMIT 1)"
	"   UNION ALL SELECT (SELECT j.instance_id FROM jobs j WHERE j.agent_id = $1 AND " ACTIVE_JOB("j")
	"     AND j.instance_id > i.instance_id ORDER BY j.instance_id LIMIT 1) FROM inst i"
	"   WHERE i.instance_id IS NOT NULL),"
	" heads AS (SELECT r.run_id, j.seq, j.instance_id FROM inst i CROSS JOIN LATERAL (SELECT h.seq, h.job_id,"
	"     h.instance_id FROM jobs h WHERE h.agent_id = $1 AND h.instance_id = i.instance_id AND " ACTIVE_JOB("h")
	"     ORDER BY h.seq LIMIT 1) j" CLAIM_DUE
	"   ORDER BY j.seq LIMIT (SELECT k FROM want)),"
	" pick AS (SELECT * FROM walk WHERE NOT (SELECT heads FROM decide)"
	"   UNION ALL SELECT * FROM heads WHERE (SELECT heads FROM decide)),"
	" r AS (UPDATE job_runs u SET status = 'RUNNING', ack_deadline = $3::bigint, lease_until = $4::bigint,"
	"   started_at = greatest($2::bigint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint,"
	"     (SELECT max(x.finished_at) FROM job_runs x WHERE x.job_id = u.job_id),"
	"     (SELECT max(x.finished_at) FROM job_runs x WHERE x.job_id ="
	"        (SELECT e.job_id FROM jobs e WHERE e.agent_id = $1 AND e.instance_id = p.instance_id"
	"           AND e.seq < p.seq ORDER BY e.seq DESC LIMIT 1)))"
	"   FROM pick p WHERE u.run_id = p.run_id AND u.status = 'QUEUED' RETURNING u.run_id, u.job_id)"
	" UPDATE jobs j SET status = 'RUNNING', updated_at = $2::bigint"
	" WHERE j.job_id = ANY (ARRAY(SELECT job_id FROM r))"
	" RETURNING (SELECT r.run_id FROM r WHERE r.job_id = j.job_id), j.seq";

/* Renew the leases of the listed runs the agent holds, locking them in
 * run_id order: an events group locks its runs in that order too, and rows
 * locked in two orders by two transactions deadlock (seen in
 * test_pg_replicas). */
const char PGS_SQL_RENEW[] =
	"WITH l AS (SELECT run_id FROM job_runs WHERE agent_id = $2 AND status = 'RUNNING'"
	"   AND run_id = ANY($3::text[]) ORDER BY run_id FOR NO KEY UPDATE)"
	" UPDATE job_runs SET lease_until = $1::bigint FROM l"
	" WHERE job_runs.run_id = l.run_id AND job_runs.status = 'RUNNING' RETURNING job_runs.run_id";

/* RETURNING has no order: the claimed run ids by job seq (selection sort, a few rows). */
int pgs_claimed_ids(const PGresult *r, char (*ids)[CP_ID_MAX], int max)
{
	int rows = PQntuples(r), n = 0;
	int64_t last = -1;
	while (n < rows && n < max) {
		int best = -1;
		for (int i = 0; i < rows; i++)
			if (pg_i64(r, i, 1) > last && (best < 0 || pg_i64(r, i, 1) < pg_i64(r, best, 1)))
				best = i;
		if (best < 0)
			break;
		last = pg_i64(r, best, 1);
		pgs_copy(ids[n++], CP_ID_MAX, r, best, 0);
	}
	return n;
}

int pgs_runs_lost(struct store *s, int64_t now, struct store_lost_run *out, int max)
{
	struct pg_params p = {0};
	pg_p_i64(&p, now);
	pg_p_i64(&p, max);
	PGresult *r = pgs_query(s,
	                        "SELECT run_id, agent_id, (acked = 0 AND ack_deadline < $1) FROM job_runs"
	                        " WHERE status = 'RUNNING' AND ((acked = 0 AND ack_deadline < $1) OR lease_until < $1)"
	                        " LIMIT $2",
	                        &p);
	if (!r)
		return -EIO;
	int n = PQntuples(r);
	for (int i = 0; i < n; i++) {
		pgs_copy(out[i].run_id, sizeof(out[i].run_id), r, i, 0);
		pgs_copy(out[i].agent_id, sizeof(out[i].agent_id), r, i, 1);
		out[i].unacked = strcmp(pg_str(r, i, 2), "t") == 0;
	}
	PQclear(r);
	return n;
}

int pgs_retry_agents(struct store *s, int64_t after, int64_t until, void (*fn)(void *ud, const char *agent_id),
                     void *ud)
{
	struct pg_params p = {0};
	pg_p_i64(&p, after);
	pg_p_i64(&p, until);
	PGresult *r = pgs_query(s,
	                        "SELECT DISTINCT agent_id FROM job_runs WHERE status = 'QUEUED'"
	                        " AND not_before > $1 AND not_before <= $2",
	                        &p);
	if (!r)
		return -EIO;
	for (int i = 0; i < PQntuples(r); i++)
		fn(ud, PQgetvalue(r, i, 0));
	PQclear(r);
	return 0;
}

int pgs_runs_refresh(struct store *s, int64_t lease_until, int64_t ack_deadline)
{
	struct pg_params p = {0};
	pg_p_i64(&p, lease_until);
	pg_p_i64(&p, ack_deadline);
	/* Locked in run_id order, as every statement that locks several runs. */
	return pgs_cmd(s,
	               "WITH l AS (SELECT run_id FROM job_runs WHERE status = 'RUNNING' ORDER BY run_id"
	               "   FOR NO KEY UPDATE)"
	               " UPDATE job_runs SET lease_until = $1,"
	               " ack_deadline = CASE acked WHEN 0 THEN $2 ELSE ack_deadline END"
	               " FROM l WHERE job_runs.run_id = l.run_id AND job_runs.status = 'RUNNING'",
	               &p) < 0 ? -EIO : 0;
}
