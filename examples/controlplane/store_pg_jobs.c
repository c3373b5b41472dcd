/* store_pg_jobs.c — job and run state changes on PostgreSQL.
 *
 * Replicas race here. The rules that keep them apart (READ COMMITTED):
 *   - State changes are conditional UPDATEs (the old state in the WHERE
 *     clause): the loser of a race waits for the winner's row lock, then
 *     re-reads the row, finds the state moved on and changes nothing.
 *   - Rows are locked in one order everywhere — the run before its job — so
 *     two transactions never wait for each other in a circle.
 *   - A job insert takes a transaction-scoped advisory lock on its (agent,
 *     instance) before the seq is drawn, so within an instance seq order is
 *     commit order: a poll can never see job N+1 without job N.
 *   - The schedule claim is the conditional UPDATE of next_fire in the
 *     transaction that inserts the job. */
#include "store_pg_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

int pgs_insert_run(PGconn *c, const char *job_id, const char *agent_id, int attempt, int64_t not_before,
                   int64_t now)
{
	char run_id[JV_UUID_LEN];
	if (jv_uuid4(run_id) < 0)
		return -EIO;
	struct pg_params p = {0};
	pg_p_str(&p, run_id);
	pg_p_str(&p, job_id);
	pg_p_i64(&p, attempt);
	pg_p_str(&p, agent_id);
	pg_p_i64(&p, not_before);
	pg_p_i64(&p, now);
	return pg_cmd(c,
	              "INSERT INTO job_runs (run_id, job_id, attempt, agent_id, status, not_before, created_at)"
	              " VALUES ($1, $2, $3, $4, 'QUEUED', $5, $6)",
	              &p) == 1
	               ? 0
	               : -EIO;
}

static int set_job_status(PGconn *c, const char *job_id, const char *status, const char *extra, int64_t now)
{
	struct pg_params p = {0};
	pg_p_str(&p, status);
	pg_p_i64(&p, now);
	pg_p_str(&p, job_id);
	char sql[256];
	snprintf(sql, sizeof(sql), "UPDATE jobs SET status = $1, updated_at = $2%s WHERE job_id = $3", extra);
	return pg_cmd(c, sql, &p) == 1 ? 0 : -EIO;
}

/* 1 claimed, 0 lost, -EIO. */
int pgs_sched_claim_c(PGconn *c, const struct store_sched_claim *cl)
{
	struct pg_params p = {0};
	pg_p_str(&p, cl->schedule_id);
	pg_p_i64(&p, cl->old_next);
	pg_p_i64(&p, cl->new_next);
	pg_p_i64(&p, cl->fire_at);
	pg_p_str(&p, cl->job_id);
	pg_p_str(&p, cl->outcome);
	int n = pg_cmd(c,
	               "UPDATE schedules SET next_fire = $3, last_fire = $4, last_job_id = $5, last_outcome = $6"
	               " WHERE schedule_id = $1 AND next_fire = $2 AND enabled = 1",
	               &p);
	return n < 0 ? -EIO : n > 0;
}

/* The job already exists: 1 when it is the same job, -EEXIST otherwise. */
static int existing_job(PGconn *c, const struct store_new_job *nj)
{
	struct store_job_info info;
	int rc = pgs_job_info_c(c, nj->job_id, false, &info);
	if (rc < 0)
		return rc == -ENOENT ? -EIO : rc;
	return strcmp(info.type, nj->type) || strcmp(info.agent_id, nj->agent_id) ||
	               strcmp(info.instance_id, nj->instance_id)
	               ? -EEXIST
	               : 1;
}

int pgs_job_create(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                   int64_t now)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	int rc = pg_begin(c);
	if (rc == 0 && claim) {
		rc = pgs_sched_claim_c(c, claim);
		rc = rc < 0 ? rc : rc == 0 ? -EAGAIN : 0;
	}
	if (rc == 0)
		rc = pgs_lock_key(c, "instance", nj->agent_id, nj->instance_id);
	if (rc == 0) {
		struct pg_params p = {0};
		pg_p_str(&p, nj->job_id);
		pg_p_str(&p, nj->type);
		pg_p_str(&p, nj->agent_id);
		pg_p_str(&p, nj->instance_id);
		pg_p_str(&p, nj->params ? nj->params : "{}");
		pg_p_i64(&p, nj->max_attempts);
		pg_p_i64(&p, nj->timeout_s);
		pg_p_i64(&p, nj->cancel_grace_s);
		pg_p_i64(&p, now);
		pg_p_str(&p, nj->schedule_id);
		int n = pg_cmd(c,
		               "INSERT INTO jobs (job_id, type, agent_id, instance_id, params, status, max_attempts,"
		               " timeout_s, cancel_grace_s, created_at, updated_at, schedule_id)"
		               " VALUES ($1, $2, $3, $4, $5, 'CREATED', $6, $7, $8, $9, $9, $10)"
		               " ON CONFLICT (job_id) DO NOTHING",
		               &p);
		rc = n < 0 ? -EIO : n == 1 ? 0 : existing_job(c, nj);
	}
	if (rc == 0 && pg_commit(c) < 0)
		rc = -EIO;
	return pgs_fail(s, c, rc);
}

int pgs_job_enqueue(struct store *s, const char *job_id, int64_t now, struct store_job_info *info)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	struct store_job_info ji;
	int rc = pg_begin(c);
	if (rc == 0)
		rc = pgs_job_info_c(c, job_id, true, &ji);
	if (rc == 0 && strcmp(ji.status, "CREATED") != 0)
		rc = 1; /* another replica (or an earlier call) queued it */
	if (rc == 0)
		rc = pgs_insert_run(c, job_id, ji.agent_id, 1, 0, now);
	if (rc == 0)
		rc = set_job_status(c, job_id, "QUEUED", "", now);
	if (rc == 0 && (rc = pg_commit(c)) == 0 && info) {
		*info = ji;
		snprintf(info->status, sizeof(info->status), "QUEUED");
		info->last_attempt = 1;
	}
	return pgs_fail(s, c, rc);
}

int pgs_jobs_created(struct store *s, int64_t before, char (*ids)[CP_ID_MAX], int max)
{
	struct pg_params p = {0};
	pg_p_i64(&p, max);
	pg_p_i64(&p, before);
	PGresult *r = pgs_query(s,
	                        "SELECT job_id FROM jobs WHERE status = 'CREATED' AND ($2::bigint = 0 OR updated_at < $2::bigint)"
	                        " ORDER BY seq LIMIT $1",
	                        &p);
	int n = r ? PQntuples(r) : -EIO;
	for (int i = 0; i < n; i++)
		pgs_copy(ids[i], CP_ID_MAX, r, i, 0);
	PQclear(r);
	return n;
}

/* The newest run of a job, locked: 0, -ENOENT (none yet), -EIO. */
static int current_run_locked(PGconn *c, const char *job_id, char run_id[CP_ID_MAX], char status[16])
{
	struct pg_params p = {0};
	pg_p_str(&p, job_id);
	PGresult *r = pg_exec(c,
	                      "SELECT run_id, status FROM job_runs WHERE job_id = $1"
	                      " ORDER BY attempt DESC LIMIT 1 FOR NO KEY UPDATE",
	                      &p);
	if (!r)
		return -EIO;
	int rc = PQntuples(r) == 1 ? 0 : -ENOENT;
	if (rc == 0) {
		pgs_copy(run_id, CP_ID_MAX, r, 0, 0);
		pgs_copy(status, 16, r, 0, 1);
	}
	PQclear(r);
	return rc;
}

static int cancel_rows(PGconn *c, const char *job_id, const char *run_id, bool running, int64_t now)
{
	struct pg_params pj = {0}, pr = {0}, prun = {0};
	pg_p_i64(&pj, now);
	pg_p_str(&pj, job_id);
	pg_p_i64(&pr, now);
	pg_p_str(&pr, run_id);
	pg_p_str(&prun, run_id);
	if (running) /* desired state: the agent learns it from its next poll or events answer */
		return pg_cmd(c, "UPDATE job_runs SET cancel_requested = 1 WHERE run_id = $1", &prun) == 1 &&
		               pg_cmd(c, "UPDATE jobs SET cancel_requested = 1, updated_at = $1 WHERE job_id = $2",
		                      &pj) == 1
		               ? 0
		               : -EIO;
	if (run_id[0] && pg_cmd(c,
	                        "UPDATE job_runs SET status = 'CANCELLED', cancel_requested = 1,"
	                        " finished_by = 'server', finished_at = $1 WHERE run_id = $2",
	                        &pr) != 1)
		return -EIO;
	return pg_cmd(c, "UPDATE jobs SET status = 'CANCELLED', cancel_requested = 1, updated_at = $1 WHERE job_id = $2",
	              &pj) == 1
	               ? 0
	               : -EIO;
}

int pgs_job_cancel(struct store *s, const char *job_id, int64_t now, struct store_job_info *info,
                   char run_id[CP_ID_MAX])
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	char status[16] = "";
	run_id[0] = '\0';
	/* The run first (the lock order), so an assignment in flight either
	 * committed RUNNING before we read it or waits until we are done. */
	int rc = pg_begin(c);
	if (rc == 0) {
		rc = current_run_locked(c, job_id, run_id, status);
		rc = rc == -ENOENT ? 0 : rc;
	}
	if (rc == 0)
		rc = pgs_job_info_c(c, job_id, true, info);
	if (rc == 0 && (!strcmp(info->status, "COMPLETED") || !strcmp(info->status, "FAILED") ||
	                !strcmp(info->status, "CANCELLED")))
		rc = -EALREADY;
	bool running = strcmp(status, "RUNNING") == 0;
	int result = running ? STORE_CANCEL_REQUESTED : STORE_CANCELLED;
	if (rc == 0 && running && info->cancel_requested)
		result = STORE_CANCEL_ALREADY;
	else if (rc == 0)
		rc = cancel_rows(c, job_id, run_id, running, now);
	if (rc == 0)
		rc = pg_commit(c);
	pgs_fail(s, c, rc);
	return rc < 0 ? rc : result;
}

int pgs_job_retry(struct store *s, const char *job_id, int64_t now, struct store_job_info *info)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	int rc = pg_begin(c);
	if (rc == 0)
		rc = pgs_job_info_c(c, job_id, true, info);
	if (rc == 0 && strcmp(info->status, "FAILED") != 0 && strcmp(info->status, "CANCELLED") != 0)
		rc = -EBUSY;
	/* A manual retry is the operator's decision: maxAttempts does not limit it. */
	if (rc == 0)
		rc = pgs_insert_run(c, job_id, info->agent_id, info->last_attempt + 1, 0, now);
	if (rc == 0)
		rc = set_job_status(c, job_id, "RETRIED", ", cancel_requested = 0", now);
	if (rc == 0)
		rc = pg_commit(c);
	return pgs_fail(s, c, rc);
}

/* The run (locked) and its job's limits. */
struct finish_row {
	char status[16];
	bool still_lost;
	struct store_finish_result res;
	bool cancel_requested;
	bool acked;
};

static int finish_read(PGconn *c, const struct store_finish *f, struct finish_row *fr)
{
	struct pg_params p = {0};
	pg_p_str(&p, f->run_id);
	pg_p_i64(&p, f->lost_before);
	PGresult *r = pg_exec(c,
	                      "SELECT r.status, r.job_id, r.agent_id, r.attempt, j.max_attempts,"
	                      " (r.cancel_requested <> 0 OR j.cancel_requested <> 0),"
	                      " (r.status = 'RUNNING' AND ((r.acked = 0 AND r.ack_deadline < $2)"
	                      "                           OR r.lease_until < $2)), r.acked"
	                      " FROM job_runs r JOIN jobs j ON j.job_id = r.job_id"
	                      " WHERE r.run_id = $1 FOR NO KEY UPDATE OF r",
	                      &p);
	if (!r)
		return -EIO;
	int rc = PQntuples(r) == 1 ? 0 : -ENOENT;
	if (rc == 0) {
		memset(fr, 0, sizeof(*fr));
		pgs_copy(fr->status, sizeof(fr->status), r, 0, 0);
		pgs_copy(fr->res.job_id, sizeof(fr->res.job_id), r, 0, 1);
		pgs_copy(fr->res.agent_id, sizeof(fr->res.agent_id), r, 0, 2);
		fr->res.attempt = (int)pg_i64(r, 0, 3);
		fr->res.max_attempts = (int)pg_i64(r, 0, 4);
		fr->cancel_requested = strcmp(pg_str(r, 0, 5), "t") == 0;
		fr->still_lost = strcmp(pg_str(r, 0, 6), "t") == 0;
		fr->acked = pg_i64(r, 0, 7) != 0;
	}
	PQclear(r);
	return rc;
}

static int finish_write(PGconn *c, const struct store_finish *f, struct finish_row *fr)
{
	struct pg_params p = {0};
	pg_p_str(&p, f->status);
	pg_p_str(&p, f->output);
	pg_p_str(&p, f->error);
	pg_p_str(&p, f->finished_by);
	pg_p_i64(&p, f->now);
	pg_p_str(&p, f->run_id);
	if (pg_cmd(c,
	           "UPDATE job_runs SET status = $1, output = $2, error = $3, finished_by = $4,"
	           " finished_at = $5, lease_until = 0, ack_deadline = 0"
	           " WHERE run_id = $6 AND status IN ('QUEUED', 'RUNNING')",
	           &p) != 1)
		return -EIO;
	struct store_finish_result *res = &fr->res;
	res->retried = strcmp(f->status, "FAILED") == 0 && f->retryable && !fr->cancel_requested &&
	               res->attempt < res->max_attempts;
	res->not_before = res->retried ? f->now + store_backoff_ms(f->backoff_base_ms, f->backoff_cap_ms, res->attempt)
	                               : 0;
	if (res->retried &&
	    pgs_insert_run(c, res->job_id, res->agent_id, res->attempt + 1, res->not_before, f->now) < 0)
		return -EIO;
	return set_job_status(c, res->job_id, res->retried ? "RETRIED" : f->status, "", f->now);
}

/* The agent gave back a RUNNING, unacknowledged run unstarted: QUEUED again
 * (same attempt), or CANCELLED when a cancel was requested (store.h). */
static int release_write(PGconn *c, const struct store_finish *f, struct finish_row *fr)
{
	struct store_finish_result *res = &fr->res;
	bool cancel = fr->cancel_requested;
	res->released = !cancel;
	res->cancelled = cancel;
	res->not_before = cancel ? 0 : f->now + store_backoff_ms(f->backoff_base_ms, f->backoff_cap_ms, 1);
	struct pg_params p = {0};
	pg_p_i64(&p, cancel ? f->now : res->not_before);
	pg_p_str(&p, f->run_id);
	if (!cancel)
		pg_p_str(&p, f->note);
	int n = pg_cmd(c,
	               cancel ? "UPDATE job_runs SET status = 'CANCELLED', finished_by = 'server', finished_at = $1,"
	                        " lease_until = 0, ack_deadline = 0 WHERE run_id = $2 AND status = 'RUNNING' AND acked = 0"
	                      : "UPDATE job_runs SET status = 'QUEUED', started_at = 0, lease_until = 0, ack_deadline = 0,"
	                        " not_before = $1, message = $3 WHERE run_id = $2 AND status = 'RUNNING' AND acked = 0",
	               &p);
	if (n != 1)
		return -EIO; /* the row is locked and was read RUNNING, unacknowledged: cannot happen */
	return set_job_status(c, res->job_id, cancel ? "CANCELLED" : res->attempt > 1 ? "RETRIED" : "QUEUED", "", f->now);
}

int pgs_run_finish(struct store *s, const struct store_finish *f, struct store_finish_result *res)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	struct finish_row fr;
	int rc = pg_begin(c);
	if (rc == 0)
		rc = finish_read(c, f, &fr);
	if (rc == 0 && strcmp(fr.status, "QUEUED") != 0 && strcmp(fr.status, "RUNNING") != 0)
		rc = 1; /* finished before: a resent result or another replica's sweep */
	if (rc == 0 && f->lost_before && !fr.still_lost)
		rc = 1; /* renewed or acknowledged since the sweep looked */
	bool release = rc == 0 && f->not_started && strcmp(fr.status, "RUNNING") == 0 && !fr.acked;
	if (rc == 0)
		rc = release ? release_write(c, f, &fr) : finish_write(c, f, &fr);
	if (rc == 0 && (rc = pg_commit(c)) == 0)
		*res = fr.res;
	return pgs_fail(s, c, rc);
}
