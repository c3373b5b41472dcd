/* store_pg_poll.c — the two hot calls as one pipeline each: an agent's poll
 * (store_poll) and a job's creation (store_job_submit).
 *
 * Both send every statement of their transaction(s) at once in libpq
 * pipeline mode and read the answers after (pg_pipeline): one round trip to
 * the server however many statements. The control plane calls them without
 * its mutex, from many threads and replicas at once; correctness rests on
 * the database alone:
 *   - a poll takes the agent's transaction-scoped advisory lock first, so
 *     concurrent polls of one agent (threads, replicas) count its RUNNING
 *     runs, pick and claim one at a time; the claim is a conditional UPDATE
 *     (status = 'QUEUED'), so a concurrent cancel that won the row wins;
 *   - rows of several runs are locked in run_id order (the lease renewal
 *     here, an events group), so two transactions never wait in a circle;
 *   - a job insert takes its (agent, instance) advisory lock before the seq
 *     is drawn, so an instance's seq order is commit order and a poll never
 *     sees job N+1 without job N (per-instance order);
 *   - a schedule firing locks the schedule row first (the lock order of
 *     store_pg_jobs.c: schedule, then instance), and the job is inserted
 *     only while the firing is still unclaimed.
 * The reads that build the answer run after the writes inside the same
 * transaction, so they see exactly what it changed. */
#include "store_pg_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

/* ---- shared: job JSON from a job row and a result of run rows ---- */

/* The job of row `row` of jr with its runs from rr (RUN_COLUMNS rows, by
 * attempt; rows of other jobs skipped). */
static cJSON *job_from_rows(const PGresult *jr, int row, const PGresult *rr)
{
	struct store_job_row j;
	pgs_job_row(jr, row, &j);
	cJSON *runs = cJSON_CreateArray();
	for (int i = 0; runs && rr && i < PQntuples(rr); i++) {
		if (strcmp(pg_str(rr, i, 1), j.job_id) != 0)
			continue;
		cJSON *o = pgs_run_json_row(rr, i);
		if (o)
			cJSON_AddItemToArray(runs, o);
	}
	return store_job_row_json(&j, runs);
}

static void clear_all(PGresult **res, size_t n)
{
	for (size_t i = 0; i < n; i++)
		PQclear(res[i]);
}

/* The n statements but the skipped ones as one pipeline; res[i] is statement
 * i's result, NULL for a skipped one (res has n slots). */
static int pipeline_some(PGconn *c, const char *const *sql, const struct pg_params *const *par, const bool *skip,
                         size_t n, PGresult **res)
{
	struct pg_stmt st[32];
	PGresult *got[32] = {0};
	size_t k = 0;
	if (n > 32)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!skip[i])
			st[k++] = (struct pg_stmt){sql[i], par[i]};
	int rc = pg_pipeline(c, st, k, got);
	for (size_t i = 0, j = 0; i < n; i++)
		res[i] = skip[i] ? NULL : got[j++];
	return rc;
}

/* ---- the poll ---- */

enum {
	P_BEGIN,
	P_LOCK,
	P_TOUCH,
	P_RENEW,
	P_OWN,
	P_CLAIM,
	P_ASSIGN,
	P_RUNS,
	P_CANCEL,
	P_RUNNING,
	P_COMMIT,
	P_N
};

static const char *const POLL_SQL[P_N] = {
	[P_BEGIN] = "BEGIN",
	[P_LOCK] = PGS_SQL_LOCK,
	[P_TOUCH] = "UPDATE agents SET last_seen = greatest(last_seen, $1::bigint), capacity = $2::int"
	            " WHERE agent_id = $3",
	[P_RENEW] = PGS_SQL_RENEW,
	/* Listed, not held, but finished by this agent itself: not to be cancelled. */
	[P_OWN] = "SELECT run_id FROM job_runs WHERE run_id = ANY($1::text[]) AND agent_id = $2"
	          " AND status <> 'RUNNING' AND finished_by = 'agent'",
	[P_CLAIM] = PGS_SQL_CLAIM,
	/* Unacknowledged runs (the ones just claimed among them), with their jobs. */
	[P_ASSIGN] = "SELECT j.seq, j.job_id, j.type, j.agent_id, j.instance_id, j.params, j.status,"
	             " j.max_attempts, j.timeout_s, j.cancel_grace_s, j.cancel_requested, j.created_at,"
	             " j.updated_at, j.schedule_id, r.run_id, r.attempt"
	             " FROM job_runs r JOIN jobs j ON j.job_id = r.job_id"
	             " WHERE r.agent_id = $1 AND r.status = 'RUNNING' AND r.acked = 0"
	             " ORDER BY r.started_at, r.run_id LIMIT $2::int",
	/* The runs of the jobs claimed now (started at or after now), for their job JSON. */
	[P_RUNS] = "SELECT " RUN_COLUMNS " FROM job_runs WHERE job_id IN (SELECT job_id FROM job_runs"
	           " WHERE agent_id = $1 AND status = 'RUNNING' AND acked = 0 AND started_at >= $2::bigint)"
	           " ORDER BY job_id, attempt",
	[P_CANCEL] = "SELECT run_id FROM job_runs WHERE agent_id = $1 AND status = 'RUNNING' AND cancel_requested = 1"
	             " ORDER BY started_at, run_id LIMIT $2::int",
	[P_RUNNING] = "SELECT count(*) FROM job_runs WHERE agent_id = $1 AND status = 'RUNNING'",
	[P_COMMIT] = "COMMIT",
};

struct poll_params {
	struct pg_params lock, touch, renew, own, claim, assign, runs, agent_max, agent;
};

static void poll_params(const struct store_poll *q, const char *listed, struct poll_params *pp)
{
	*pp = (struct poll_params){0};
	pg_p_str(&pp->lock, "agent");
	pg_p_str(&pp->lock, q->agent_id);
	pg_p_str(&pp->lock, "");
	pg_p_i64(&pp->touch, q->now);
	pg_p_i64(&pp->touch, q->capacity);
	pg_p_str(&pp->touch, q->agent_id);
	pg_p_i64(&pp->renew, q->lease_until);
	pg_p_str(&pp->renew, q->agent_id);
	pg_p_str(&pp->renew, listed);
	pg_p_str(&pp->own, listed);
	pg_p_str(&pp->own, q->agent_id);
	pg_p_str(&pp->claim, q->agent_id);
	pg_p_i64(&pp->claim, q->now);
	pg_p_i64(&pp->claim, q->ack_deadline);
	pg_p_i64(&pp->claim, q->lease_until);
	pg_p_i64(&pp->claim, q->capacity);
	pg_p_i64(&pp->claim, q->max);
	pg_p_str(&pp->assign, q->agent_id);
	pg_p_i64(&pp->assign, 2 * (int64_t)q->max);
	pg_p_str(&pp->runs, q->agent_id);
	pg_p_i64(&pp->runs, q->now);
	pg_p_str(&pp->agent_max, q->agent_id);
	pg_p_i64(&pp->agent_max, q->max);
	pg_p_str(&pp->agent, q->agent_id);
}

static bool in_result(const PGresult *r, int col, const char *v)
{
	for (int i = 0; r && i < PQntuples(r); i++)
		if (strcmp(pg_str(r, i, col), v) == 0)
			return true;
	return false;
}

static bool in_list(const struct store_poll *q, const char *run_id)
{
	for (size_t i = 0; i < q->nlisted; i++)
		if (strcmp(q->listed[i], run_id) == 0)
			return true;
	return false;
}

/* The answer from the pipeline's results. */
static int poll_answer(const struct store_poll *q, PGresult **res, struct store_poll_result *out)
{
	for (size_t i = 0; i < q->nlisted; i++)
		if (!in_result(res[P_RENEW], 0, q->listed[i]) && !in_result(res[P_OWN], 0, q->listed[i]))
			cJSON_AddItemToArray(out->cancel, cJSON_CreateString(q->listed[i]));
	const PGresult *as = res[P_ASSIGN], *cl = res[P_CLAIM];
	/* Sent again: unacknowledged, not listed, not claimed now; in started order. */
	for (int i = 0; i < PQntuples(as); i++) {
		const char *run_id = pg_str(as, i, 14);
		if (in_list(q, run_id) || in_result(cl, 0, run_id))
			continue;
		struct store_job_row j;
		pgs_job_row(as, i, &j);
		cJSON *o = store_assignment_row_json(&j, run_id, (int)pg_i64(as, i, 15));
		if (o)
			cJSON_AddItemToArray(out->jobs, o);
	}
	/* Claimed now: in job seq order, each with its job for WebSocket clients. */
	char(*ids)[CP_ID_MAX] = calloc((size_t)(PQntuples(cl) ? PQntuples(cl) : 1), CP_ID_MAX);
	if (!ids)
		return -ENOMEM;
	int n = pgs_claimed_ids(cl, ids, PQntuples(cl));
	for (int k = 0; k < n; k++)
		for (int i = 0; i < PQntuples(as); i++) {
			if (strcmp(pg_str(as, i, 14), ids[k]) != 0)
				continue;
			struct store_job_row j;
			pgs_job_row(as, i, &j);
			cJSON *o = store_assignment_row_json(&j, ids[k], (int)pg_i64(as, i, 15));
			cJSON *job = job_from_rows(as, i, res[P_RUNS]);
			if (o)
				cJSON_AddItemToArray(out->jobs, o);
			if (job)
				cJSON_AddItemToArray(out->claimed, job);
		}
	free(ids);
	for (int i = 0; i < PQntuples(res[P_CANCEL]); i++)
		cJSON_AddItemToArray(out->cancel, cJSON_CreateString(pg_str(res[P_CANCEL], i, 0)));
	out->running = (int)pg_i64(res[P_RUNNING], 0, 0);
	return 0;
}

int pgs_poll(struct store *s, const struct store_poll *q, struct store_poll_result *out)
{
	*out = (struct store_poll_result){
		.jobs = cJSON_CreateArray(), .cancel = cJSON_CreateArray(), .claimed = cJSON_CreateArray()};
	struct jv_buf listed;
	jv_buf_init(&listed, 64u * 1024 * 1024);
	int rc = pgs_text_array(&listed, q->listed, q->nlisted);
	rc = rc == 0 && out->jobs && out->cancel && out->claimed ? 0 : -ENOMEM;
	PGconn *c = rc == 0 ? pgs_conn(s) : NULL;
	if (rc == 0 && !c)
		rc = -EIO;
	PGresult *res[P_N] = {0};
	if (rc == 0) {
		struct poll_params pp;
		poll_params(q, listed.data, &pp);
		const struct pg_params *par[P_N] = {
			[P_LOCK] = &pp.lock,     [P_TOUCH] = &pp.touch,       [P_RENEW] = &pp.renew,
			[P_OWN] = &pp.own,       [P_CLAIM] = &pp.claim,       [P_ASSIGN] = &pp.assign,
			[P_RUNS] = &pp.runs,     [P_CANCEL] = &pp.agent_max,  [P_RUNNING] = &pp.agent,
		};
		/* Nothing listed: no leases to renew; lastSeen only when due. */
		bool skip[P_N] = {[P_TOUCH] = !q->touch, [P_RENEW] = q->nlisted == 0, [P_OWN] = q->nlisted == 0};
		rc = pipeline_some(c, POLL_SQL, par, skip, P_N, res);
	}
	if (rc == 0)
		rc = poll_answer(q, res, out);
	clear_all(res, P_N);
	jv_buf_free(&listed);
	pgs_fail(s, c, rc);
	if (rc < 0) {
		cJSON_Delete(out->jobs);
		cJSON_Delete(out->cancel);
		cJSON_Delete(out->claimed);
		*out = (struct store_poll_result){0};
	}
	return rc;
}

/* ---- job creation ---- */

enum {
	S_BEGIN,
	S_SCHED,
	S_LOCK,
	S_INSERT,
	S_JOB1,
	S_RUNS1,
	S_COMMIT1,
	S_BEGIN2,
	S_QUEUE,
	S_JOB2,
	S_RUNS2,
	S_COMMIT2,
	S_N
};

static const char *const SUBMIT_SQL[S_N] = {
	[S_BEGIN] = "BEGIN",
	/* A firing: its schedule row locked first, so a second replica firing it waits, then finds it moved on. */
	[S_SCHED] = "SELECT 1 FROM schedules WHERE schedule_id = $1 AND next_fire = $2::bigint AND enabled = 1"
	            " FOR UPDATE",
	[S_LOCK] = PGS_SQL_LOCK,
	/* The job (CREATED) when the firing is still unclaimed (or there is none),
	 * and the claim only when the job is new: a repeated create changes nothing. */
	[S_INSERT] =
		"WITH ok AS (SELECT $11::text IS NULL OR EXISTS (SELECT 1 FROM schedules WHERE schedule_id = $11"
		"   AND next_fire = $12::bigint AND enabled = 1) AS v),"
		" ins AS (INSERT INTO jobs (job_id, type, agent_id, instance_id, params, status, max_attempts,"
		"   timeout_s, cancel_grace_s, created_at, updated_at, schedule_id)"
		"   SELECT $1::text, $2::text, $3::text, $4::text, $5::text, 'CREATED', $6::int, $7::int, $8::int,"
		"   $9::bigint, $9::bigint, $10::text FROM ok WHERE ok.v ON CONFLICT (job_id) DO NOTHING RETURNING job_id),"
		" cl AS (UPDATE schedules SET next_fire = $13::bigint, last_fire = $14::bigint, last_job_id = $15::text,"
		"   last_outcome = $16::text WHERE schedule_id = $11 AND next_fire = $12::bigint AND enabled = 1"
		"   AND EXISTS (SELECT 1 FROM ins) RETURNING 1)"
		" SELECT (SELECT v FROM ok), (SELECT count(*) FROM ins), (SELECT count(*) FROM cl)",
	[S_JOB1] = "SELECT " JOB_COLUMNS " FROM jobs WHERE job_id = $1",
	[S_RUNS1] = "SELECT " RUN_COLUMNS " FROM job_runs WHERE job_id = $1 ORDER BY attempt",
	[S_COMMIT1] = "COMMIT",
	[S_BEGIN2] = "BEGIN",
	/* CREATED -> QUEUED with run attempt 1: only the job asked for, and only once
	 * (the UPDATE's row lock and status check order racing replicas). */
	[S_QUEUE] = "WITH q AS (UPDATE jobs SET status = 'QUEUED', updated_at = $5::bigint WHERE job_id = $1"
	            "   AND status = 'CREATED' AND type = $2 AND agent_id = $3 AND instance_id = $4"
	            "   RETURNING job_id, agent_id)"
	            " INSERT INTO job_runs (run_id, job_id, attempt, agent_id, status, not_before, created_at)"
	            " SELECT $6::text, job_id, 1, agent_id, 'QUEUED', 0, $5::bigint FROM q RETURNING run_id",
	[S_JOB2] = "SELECT " JOB_COLUMNS " FROM jobs WHERE job_id = $1",
	[S_RUNS2] = "SELECT " RUN_COLUMNS " FROM job_runs WHERE job_id = $1 ORDER BY attempt",
	[S_COMMIT2] = "COMMIT",
};

struct submit_params {
	struct pg_params sched, lock, insert, id, queue;
	char run_id[JV_UUID_LEN];
};

static int submit_params(const struct store_new_job *nj, const struct store_sched_claim *cl, int64_t now,
                         struct submit_params *sp)
{
	*sp = (struct submit_params){0};
	if (jv_uuid4(sp->run_id) < 0)
		return -EIO;
	pg_p_str(&sp->sched, cl ? cl->schedule_id : "");
	pg_p_i64(&sp->sched, cl ? cl->old_next : 0);
	pg_p_str(&sp->lock, "instance");
	pg_p_str(&sp->lock, nj->agent_id);
	pg_p_str(&sp->lock, nj->instance_id);
	struct pg_params *p = &sp->insert;
	pg_p_str(p, nj->job_id);
	pg_p_str(p, nj->type);
	pg_p_str(p, nj->agent_id);
	pg_p_str(p, nj->instance_id);
	pg_p_str(p, nj->params ? nj->params : "{}");
	pg_p_i64(p, nj->max_attempts);
	pg_p_i64(p, nj->timeout_s);
	pg_p_i64(p, nj->cancel_grace_s);
	pg_p_i64(p, now);
	pg_p_str(p, nj->schedule_id);
	pg_p_str(p, cl ? cl->schedule_id : NULL);
	pg_p_i64(p, cl ? cl->old_next : 0);
	pg_p_i64(p, cl ? cl->new_next : 0);
	pg_p_i64(p, cl ? cl->fire_at : 0);
	pg_p_str(p, cl ? cl->job_id : NULL);
	pg_p_str(p, cl ? cl->outcome : NULL);
	pg_p_str(&sp->id, nj->job_id);
	pg_p_str(&sp->queue, nj->job_id);
	pg_p_str(&sp->queue, nj->type);
	pg_p_str(&sp->queue, nj->agent_id);
	pg_p_str(&sp->queue, nj->instance_id);
	pg_p_i64(&sp->queue, now);
	pg_p_str(&sp->queue, sp->run_id);
	return 0;
}

/* The result code and the JSON from the pipeline's results. */
static int submit_answer(const struct store_new_job *nj, PGresult **res, struct store_submitted *out)
{
	const PGresult *ins = res[S_INSERT];
	if (strcmp(pg_str(ins, 0, 0), "t") != 0)
		return -EAGAIN; /* another replica fired it first: nothing inserted */
	bool inserted = pg_i64(ins, 0, 1) == 1;
	const PGresult *j1 = res[S_JOB1], *j2 = res[S_JOB2];
	if (PQntuples(j1) != 1 || PQntuples(j2) != 1)
		return -EIO; /* not inserted, yet not there: deleted meanwhile */
	struct store_job_row j;
	pgs_job_row(j1, 0, &j);
	if (!inserted && (strcmp(j.type, nj->type) || strcmp(j.agent_id, nj->agent_id) ||
	                  strcmp(j.instance_id, nj->instance_id)))
		return -EEXIST;
	if (inserted && !(out->created = job_from_rows(j1, 0, res[S_RUNS1])))
		return -ENOMEM;
	if (PQntuples(res[S_QUEUE]) == 1 && !(out->queued = job_from_rows(j2, 0, res[S_RUNS2])))
		return -ENOMEM;
	if (!(out->job = job_from_rows(j2, 0, res[S_RUNS2])))
		return -ENOMEM;
	return inserted ? 0 : 1;
}

int pgs_job_submit(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                   int64_t now, struct store_submitted *out)
{
	*out = (struct store_submitted){0};
	struct submit_params sp;
	if (submit_params(nj, claim, now, &sp) < 0)
		return -EIO;
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	const struct pg_params *par[S_N] = {
		[S_SCHED] = &sp.sched, [S_LOCK] = &sp.lock, [S_INSERT] = &sp.insert, [S_JOB1] = &sp.id,
		[S_RUNS1] = &sp.id,    [S_QUEUE] = &sp.queue, [S_JOB2] = &sp.id,    [S_RUNS2] = &sp.id,
	};
	bool skip[S_N] = {[S_SCHED] = !claim};
	PGresult *res[S_N] = {0};
	int rc = pipeline_some(c, SUBMIT_SQL, par, skip, S_N, res);
	if (rc == 0)
		rc = submit_answer(nj, res, out);
	clear_all(res, S_N);
	pgs_fail(s, c, rc);
	if (rc < 0) {
		cJSON_Delete(out->created);
		cJSON_Delete(out->queued);
		cJSON_Delete(out->job);
		*out = (struct store_submitted){0};
	}
	return rc;
}
