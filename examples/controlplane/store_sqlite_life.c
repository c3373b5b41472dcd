/* store_sqlite_life.c — SQLite backend: job and run state changes.
 *
 * Each call is one BEGIN IMMEDIATE transaction: the state it decides on is
 * read inside it, after the write lock is taken, so another process on the
 * same file cannot change it in between. */
#include "store_sqlite_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "jobvisor/util.h"

/* Job basics inside the current transaction. */
static int info_locked(struct sq *q, const char *job_id, struct store_job_info *out)
{
	return sq_job_info(&q->base, job_id, out); /* the mutex is recursive */
}

static int insert_run(struct sq *q, const char *job_id, const char *agent_id, int attempt, int64_t not_before,
                      int64_t now)
{
	char run_id[JV_UUID_LEN];
	int rc = jv_uuid4(run_id);
	if (rc < 0)
		return rc;
	rc = sq_exec(q,
	             "INSERT INTO job_runs (run_id, job_id, attempt, agent_id, status, not_before, created_at)"
	             " VALUES (?, ?, ?, ?, 'QUEUED', ?, ?)",
	             "ssisii", run_id, job_id, (int64_t)attempt, agent_id, not_before, now);
	return rc < 0 ? rc : 0;
}

static int set_job_status(struct sq *q, const char *job_id, const char *status, int64_t now)
{
	int rc = sq_exec(q, "UPDATE jobs SET status = ?, updated_at = ? WHERE job_id = ?", "sis", status, now, job_id);
	return rc < 0 ? rc : 0;
}

int sq_sched_claim_locked(struct sq *q, const struct store_sched_claim *c)
{
	int n = sq_exec(q,
	                "UPDATE schedules SET next_fire = ?, last_fire = ?, last_job_id = ?, last_outcome = ?"
	                " WHERE schedule_id = ? AND next_fire = ? AND enabled = 1",
	                "iisssi", c->new_next, c->fire_at, c->job_id, c->outcome, c->schedule_id, c->old_next);
	return n < 0 ? n : n == 1 ? 0 : 1;
}

static int create_locked(struct sq *q, const struct store_new_job *nj, const struct store_sched_claim *claim,
                         int64_t now)
{
	struct store_job_info jr;
	int rc = info_locked(q, nj->job_id, &jr);
	if (rc == 0) {
		/* A repeated create (a panel retrying after a lost answer) changes nothing. */
		if (strcmp(jr.type, nj->type) || strcmp(jr.agent_id, nj->agent_id) || strcmp(jr.instance_id, nj->instance_id))
			return -EEXIST;
		return 1;
	}
	if (rc != -ENOENT)
		return rc;
	if (claim && (rc = sq_sched_claim_locked(q, claim)) != 0)
		return rc > 0 ? -EAGAIN : rc;
	rc = sq_exec(q,
	             "INSERT INTO jobs (job_id, type, agent_id, instance_id, params, status, max_attempts,"
	             " timeout_s, cancel_grace_s, created_at, updated_at, schedule_id)"
	             " VALUES (?, ?, ?, ?, ?, 'CREATED', ?, ?, ?, ?, ?, ?)",
	             "sssssiiiiis", nj->job_id, nj->type, nj->agent_id, nj->instance_id, nj->params ? nj->params : "{}",
	             (int64_t)nj->max_attempts, (int64_t)nj->timeout_s, (int64_t)nj->cancel_grace_s, now, now,
	             nj->schedule_id);
	return rc < 0 ? rc : 0;
}

int sq_job_create(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                  int64_t now)
{
	struct sq *q = sq_of(s);
	int rc = sq_tx_begin(q);
	return rc < 0 ? rc : sq_tx_end(q, create_locked(q, nj, claim, now)); /* 1: nothing written */
}

int sq_job_enqueue(struct store *s, const char *job_id, int64_t now, struct store_job_info *info)
{
	struct sq *q = sq_of(s);
	struct store_job_info jr;
	int rc = sq_tx_begin(q);
	if (rc < 0)
		return rc;
	rc = info_locked(q, job_id, &jr);
	if (rc == 0 && strcmp(jr.status, "CREATED") != 0)
		rc = 1;
	if (rc == 0)
		rc = insert_run(q, job_id, jr.agent_id, 1, 0, now);
	if (rc == 0)
		rc = set_job_status(q, job_id, "QUEUED", now);
	rc = sq_tx_end(q, rc);
	if (rc == 0 && info)
		*info = jr;
	return rc;
}

int sq_jobs_created(struct store *s, int64_t before, char (*ids)[CP_ID_MAX], int max)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	sqlite3_stmt *st = sq_query(q,
	                            "SELECT job_id FROM jobs WHERE status = 'CREATED' AND (?1 = 0 OR updated_at < ?1)"
	                            " ORDER BY seq LIMIT ?2",
	                            "ii", before, (int64_t)max);
	int n = 0, rc = st ? 1 : -EIO;
	while (st && n < max && (rc = sq_step(q, st)) == 1)
		sq_col(st, 0, ids[n++], CP_ID_MAX);
	sqlite3_finalize(st);
	sq_unlock(q);
	return rc < 0 ? rc : n;
}

/* The newest run of a job: id and status; -ENOENT (no run yet). */
static int current_run(struct sq *q, const char *job_id, char run_id[CP_ID_MAX], char status[16])
{
	sqlite3_stmt *st = sq_query(q, "SELECT run_id, status FROM job_runs WHERE job_id = ? ORDER BY attempt DESC LIMIT 1",
	                            "s", job_id);
	int rc = st ? sq_step(q, st) : -EIO;
	if (rc == 1) {
		sq_col(st, 0, run_id, CP_ID_MAX);
		sq_col(st, 1, status, 16);
	}
	sqlite3_finalize(st);
	return rc == 1 ? 0 : rc == 0 ? -ENOENT : rc;
}

static int cancel_locked(struct sq *q, const char *job_id, int64_t now, struct store_job_info *jr,
                         char run_id[CP_ID_MAX])
{
	int rc = info_locked(q, job_id, jr);
	if (rc < 0)
		return rc;
	if (!strcmp(jr->status, "COMPLETED") || !strcmp(jr->status, "FAILED") || !strcmp(jr->status, "CANCELLED"))
		return -EALREADY;
	char run_status[16] = "";
	rc = current_run(q, job_id, run_id, run_status);
	if (rc < 0 && rc != -ENOENT)
		return rc;
	bool running = rc == 0 && strcmp(run_status, "RUNNING") == 0;
	if (running && jr->cancel_requested)
		return STORE_CANCEL_ALREADY;
	if (running) {
		/* Desired state: the agent learns it from its next poll or events answer. */
		rc = sq_exec(q, "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE job_id = ?", "is", now, job_id);
		if (rc >= 0)
			rc = sq_exec(q, "UPDATE job_runs SET cancel_requested = 1 WHERE run_id = ?", "s", run_id);
		return rc < 0 ? rc : STORE_CANCEL_REQUESTED;
	}
	/* Not on an agent yet: cancelled at once. */
	rc = sq_exec(q, "UPDATE jobs SET status = 'CANCELLED', cancel_requested = 1, updated_at = ? WHERE job_id = ?",
	             "is", now, job_id);
	if (rc >= 0 && run_id[0])
		rc = sq_exec(q,
		             "UPDATE job_runs SET status = 'CANCELLED', cancel_requested = 1, finished_by = 'server',"
		             " finished_at = ? WHERE run_id = ?",
		             "is", now, run_id);
	return rc < 0 ? rc : STORE_CANCELLED;
}

int sq_job_cancel(struct store *s, const char *job_id, int64_t now, struct store_job_info *info,
                  char run_id[CP_ID_MAX])
{
	struct sq *q = sq_of(s);
	run_id[0] = '\0';
	int rc = sq_tx_begin(q);
	if (rc < 0)
		return rc;
	int kind = cancel_locked(q, job_id, sq_tx_time(q, now), info, run_id);
	rc = sq_tx_end(q, kind == STORE_CANCEL_ALREADY ? 1 : kind < 0 ? kind : 0);
	return rc < 0 ? rc : kind;
}

int sq_job_retry(struct store *s, const char *job_id, int64_t now, struct store_job_info *info)
{
	struct sq *q = sq_of(s);
	int rc = sq_tx_begin(q);
	if (rc < 0)
		return rc;
	rc = info_locked(q, job_id, info);
	if (rc == 0 && strcmp(info->status, "FAILED") != 0 && strcmp(info->status, "CANCELLED") != 0)
		rc = -EBUSY;
	/* A manual retry is the operator's decision: maxAttempts does not limit it. */
	if (rc == 0)
		rc = insert_run(q, job_id, info->agent_id, info->last_attempt + 1, 0, now);
	if (rc == 0) {
		rc = sq_exec(q, "UPDATE jobs SET status = 'RETRIED', cancel_requested = 0, updated_at = ? WHERE job_id = ?",
		             "is", now, job_id);
		rc = rc < 0 ? rc : 0;
	}
	return sq_tx_end(q, rc);
}

static void fill_result(struct store_finish_result *res, const struct store_run_state *rs,
                        const struct store_job_info *jr)
{
	memset(res, 0, sizeof(*res));
	snprintf(res->job_id, sizeof(res->job_id), "%s", rs->job_id);
	snprintf(res->agent_id, sizeof(res->agent_id), "%s", rs->agent_id);
	res->attempt = rs->attempt;
	res->max_attempts = jr->max_attempts;
}

/* The agent gave back a RUNNING, unacknowledged run unstarted: QUEUED again
 * (same attempt), or CANCELLED when a cancel was requested (store.h). */
static int release_locked(struct sq *q, const struct store_finish *f, const struct store_run_state *rs,
                          const struct store_job_info *jr, struct store_finish_result *res)
{
	int64_t now = sq_tx_time(q, f->now);
	bool cancel = rs->cancel_requested || jr->cancel_requested;
	int64_t not_before = cancel ? 0 : now + store_backoff_ms(f->backoff_base_ms, f->backoff_cap_ms, 1);
	int rc = cancel ? sq_exec(q,
	                          "UPDATE job_runs SET status = 'CANCELLED', finished_by = 'server', finished_at = ?,"
	                          " lease_until = 0, ack_deadline = 0 WHERE run_id = ? AND status = 'RUNNING' AND acked = 0",
	                          "is", now, f->run_id)
	                : sq_exec(q,
	                          "UPDATE job_runs SET status = 'QUEUED', started_at = 0, lease_until = 0, ack_deadline = 0,"
	                          " not_before = ?, message = ? WHERE run_id = ? AND status = 'RUNNING' AND acked = 0",
	                          "iss", not_before, f->note, f->run_id);
	if (rc <= 0)
		return rc < 0 ? rc : -EIO; /* the state was read under this lock: cannot happen */
	rc = set_job_status(q, rs->job_id, cancel ? "CANCELLED" : rs->attempt > 1 ? "RETRIED" : "QUEUED", now);
	if (rc == 0 && res) {
		fill_result(res, rs, jr);
		res->released = !cancel;
		res->cancelled = cancel;
		res->not_before = not_before;
	}
	return rc;
}

static int finish_locked(struct sq *q, const struct store_finish *f, struct store_finish_result *res)
{
	struct store_run_state rs;
	struct store_job_info jr;
	int rc = sq_run_state(&q->base, f->run_id, &rs);
	if (rc == 0)
		rc = info_locked(q, rs.job_id, &jr);
	if (rc < 0)
		return rc;
	if (strcmp(rs.status, "QUEUED") != 0 && strcmp(rs.status, "RUNNING") != 0)
		return 1; /* finished before: by the agent, a cancel, or another replica's sweep */
	if (f->lost_before > 0) {
		int64_t still = 0;
		rc = sq_int64(q, &still,
		              "SELECT count(*) FROM job_runs WHERE run_id = ?1 AND status = 'RUNNING'"
		              " AND ((acked = 0 AND ack_deadline < ?2) OR lease_until < ?2)",
		              "si", f->run_id, f->lost_before);
		if (rc < 0)
			return rc;
		if (still == 0)
			return 1;
	}
	if (f->not_started && strcmp(rs.status, "RUNNING") == 0 && !rs.acked)
		return release_locked(q, f, &rs, &jr, res);
	int64_t now = sq_tx_time(q, f->now);
	bool retry = strcmp(f->status, "FAILED") == 0 && f->retryable && !rs.cancel_requested && !jr.cancel_requested &&
	             rs.attempt < jr.max_attempts;
	int64_t not_before = retry ? now + store_backoff_ms(f->backoff_base_ms, f->backoff_cap_ms, rs.attempt) : 0;
	rc = sq_exec(q,
	             "UPDATE job_runs SET status = ?, output = ?, error = ?, finished_by = ?, finished_at = ?,"
	             " lease_until = 0, ack_deadline = 0 WHERE run_id = ? AND status IN ('QUEUED', 'RUNNING')",
	             "ssssis", f->status, f->output, f->error, f->finished_by, now, f->run_id);
	if (rc == 0)
		return 1;
	rc = rc < 0 ? rc : 0;
	if (rc == 0 && retry)
		rc = insert_run(q, rs.job_id, rs.agent_id, rs.attempt + 1, not_before, now);
	if (rc == 0)
		rc = set_job_status(q, rs.job_id, retry ? "RETRIED" : f->status, now);
	if (rc == 0 && res) {
		fill_result(res, &rs, &jr);
		res->retried = retry;
		res->not_before = not_before;
	}
	return rc;
}

int sq_run_finish(struct store *s, const struct store_finish *f, struct store_finish_result *res)
{
	struct sq *q = sq_of(s);
	int rc = sq_tx_begin(q);
	return rc < 0 ? rc : sq_tx_end(q, finish_locked(q, f, res)); /* 1: finished before */
}
