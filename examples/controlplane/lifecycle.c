/* lifecycle.c — job and run state changes: create, enqueue, cancel, retry, finish.
 *
 * Each state change is one SQLite transaction; after it commits, the new state
 * of the job is published to WebSocket clients and the owning agent's long
 * polls are woken. Assignment (QUEUED -> RUNNING) and lost runs live in
 * dispatch.c, event storage in events.c. All functions run with cp->mu held.
 *
 * Job states: CREATED -> QUEUED -> RUNNING -> COMPLETED | FAILED | CANCELLED,
 * and RETRIED while a new run (attempt + 1) waits to be assigned. Run states:
 * QUEUED -> RUNNING -> COMPLETED | FAILED | CANCELLED. */
#include "cp.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define RETRY_BACKOFF_CAP_S 300

static const char *const standard_types[] = {
	"INSTALL_SERVER",   "UPDATE_SERVER",   "START_INSTANCE", "STOP_INSTANCE",
	"RESTART_INSTANCE", "BACKUP_INSTANCE", "VERIFY_BACKUP",  "RESTORE_BACKUP",
	"PRUNE_BACKUPS",    "SYNC_MODS",       "ACTIVATE_BUILD",
};

void cp_err_set(struct cp_err *e, int status, const char *fmt, ...)
{
	if (!e)
		return;
	e->status = status;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
}

bool lc_job_type_allowed(const struct cp *cp, const char *type)
{
	for (size_t i = 0; i < JV_ARRAY_LEN(standard_types); i++)
		if (strcmp(standard_types[i], type) == 0)
			return true;
	for (size_t i = 0; i < cp->cfg.njob_types; i++)
		if (strcmp(cp->cfg.job_types[i], type) == 0)
			return true;
	return false;
}

bool lc_status_valid(const char *s)
{
	static const char *const all[] = {"CREATED", "QUEUED", "RUNNING", "COMPLETED",
	                                  "FAILED", "CANCELLED", "RETRIED"};
	for (size_t i = 0; i < JV_ARRAY_LEN(all); i++)
		if (strcmp(all[i], s) == 0)
			return true;
	return false;
}

bool lc_status_terminal(const char *s)
{
	return strcmp(s, "COMPLETED") == 0 || strcmp(s, "FAILED") == 0 || strcmp(s, "CANCELLED") == 0;
}

void lc_wake_agent(struct cp *cp, const char *agent_id)
{
	struct cp_agent *a = tokens_agent_find(cp, agent_id);
	if (a) {
		a->gen++;
		pthread_cond_broadcast(&a->cond);
	}
}

void lc_publish_job(struct cp *cp, const char *job_id)
{
	cJSON *job = store_job_json(cp, job_id);
	cJSON *msg = cJSON_CreateObject();
	if (!job || !msg) {
		cJSON_Delete(job);
		cJSON_Delete(msg);
		return;
	}
	cJSON_AddStringToObject(msg, "type", "job");
	cJSON_AddItemToObject(msg, "job", job);
	ws_publish(cp, msg);
}

static int exec_bound(struct cp *cp, const char *sql, const char *fmt, ...)
{
	/* fmt: one letter per parameter: s = const char *, i = int64_t, n = NULL. */
	sqlite3_stmt *st = db_prepare(cp->db, sql);
	if (!st)
		return -EIO;
	va_list ap;
	va_start(ap, fmt);
	for (int k = 1; fmt[k - 1]; k++) {
		switch (fmt[k - 1]) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (s)
				sqlite3_bind_text(st, k, s, -1, SQLITE_TRANSIENT);
			else
				sqlite3_bind_null(st, k);
			break;
		}
		case 'i':
			sqlite3_bind_int64(st, k, va_arg(ap, int64_t));
			break;
		default:
			sqlite3_bind_null(st, k);
		}
	}
	va_end(ap);
	int rc = db_step_done(cp->db, st);
	sqlite3_finalize(st);
	return rc;
}

static int set_job_status(struct cp *cp, const char *job_id, const char *status, int64_t now)
{
	return exec_bound(cp, "UPDATE jobs SET status = ?, updated_at = ? WHERE job_id = ?", "sis",
	                  status, now, job_id);
}

static int insert_run(struct cp *cp, const char *job_id, const char *agent_id, int attempt,
                      int64_t not_before, int64_t now)
{
	char run_id[JV_UUID_LEN];
	int rc = jv_uuid4(run_id);
	if (rc < 0)
		return rc;
	return exec_bound(cp,
	                  "INSERT INTO job_runs (run_id, job_id, attempt, agent_id, status, not_before, created_at)"
	                  " VALUES (?, ?, ?, ?, 'QUEUED', ?, ?)",
	                  "ssisii", run_id, job_id, (int64_t)attempt, agent_id, not_before, now);
}

/* Job row basics. Returns 0, -ENOENT, -EIO. */
struct job_row {
	char status[16];
	char agent_id[JV_IDENT_MAX + 1];
	char type[72];
	char instance_id[JV_IDENT_MAX + 1];
	int max_attempts;
	bool cancel_requested;
	int last_attempt;
};

static int job_row(struct cp *cp, const char *job_id, struct job_row *out)
{
	sqlite3_stmt *st = db_prepare(cp->db,
	                              "SELECT status, agent_id, type, instance_id, max_attempts, cancel_requested,"
	                              " (SELECT coalesce(max(attempt), 0) FROM job_runs r WHERE r.job_id = jobs.job_id)"
	                              " FROM jobs WHERE job_id = ?");
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		snprintf(out->status, sizeof(out->status), "%s", (const char *)sqlite3_column_text(st, 0));
		snprintf(out->agent_id, sizeof(out->agent_id), "%s", (const char *)sqlite3_column_text(st, 1));
		snprintf(out->type, sizeof(out->type), "%s", (const char *)sqlite3_column_text(st, 2));
		snprintf(out->instance_id, sizeof(out->instance_id), "%s", (const char *)sqlite3_column_text(st, 3));
		out->max_attempts = sqlite3_column_int(st, 4);
		out->cancel_requested = sqlite3_column_int(st, 5) != 0;
		out->last_attempt = sqlite3_column_int(st, 6);
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : -EIO;
}

int lc_job_enqueue(struct cp *cp, const char *job_id)
{
	struct job_row jr;
	int rc = job_row(cp, job_id, &jr);
	if (rc < 0)
		return rc;
	if (strcmp(jr.status, "CREATED") != 0)
		return 0;
	int64_t now = jv_now_real_ms();
	if (db_begin(cp->db) < 0)
		return -EIO;
	if (insert_run(cp, job_id, jr.agent_id, 1, 0, now) < 0 || set_job_status(cp, job_id, "QUEUED", now) < 0 ||
	    db_commit(cp->db) < 0) {
		db_rollback(cp->db);
		return -EIO;
	}
	jv_info(job_id, NULL, "job queued for agent '%s' instance '%s'", jr.agent_id, jr.instance_id);
	lc_publish_job(cp, job_id);
	lc_wake_agent(cp, jr.agent_id);
	return 0;
}

int lc_job_create(struct cp *cp, const struct lc_new_job *nj, cJSON **job, bool *created, struct cp_err *err)
{
	char gen_id[JV_UUID_LEN];
	const char *job_id = nj->job_id;
	*created = false;
	if (job_id) {
		struct job_row jr;
		int rc = job_row(cp, job_id, &jr);
		if (rc == 0) {
			/* A repeated create (a panel retrying after a lost answer) returns the job. */
			if (strcmp(jr.type, nj->type) || strcmp(jr.agent_id, nj->agent_id) ||
			    strcmp(jr.instance_id, nj->instance_id)) {
				cp_err_set(err, 409, "job '%s' already exists with another type, agent or instance", job_id);
				return -EEXIST;
			}
			*job = store_job_json(cp, job_id);
			return *job ? 0 : -EIO;
		}
		if (rc != -ENOENT) {
			cp_err_set(err, 500, "database error");
			return rc;
		}
	} else {
		if (jv_uuid4(gen_id) < 0) {
			cp_err_set(err, 500, "cannot generate a job id");
			return -EIO;
		}
		job_id = gen_id;
	}
	char *params = nj->params ? jv_json_print(nj->params) : NULL;
	if (nj->params && !params) {
		cp_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	int64_t now = jv_now_real_ms();
	int rc = -EIO;
	if (db_begin(cp->db) == 0) {
		rc = nj->claim ? nj->claim(cp, nj->claim_ud) : 0;
		if (rc == 0)
			rc = exec_bound(cp,
			                "INSERT INTO jobs (job_id, type, agent_id, instance_id, params, status, max_attempts,"
			                " timeout_s, cancel_grace_s, created_at, updated_at, schedule_id)"
			                " VALUES (?, ?, ?, ?, ?, 'CREATED', ?, ?, ?, ?, ?, ?)",
			                "sssssiiiiis", job_id, nj->type, nj->agent_id, nj->instance_id,
			                params ? params : "{}", (int64_t)nj->max_attempts, (int64_t)nj->timeout_s,
			                (int64_t)nj->cancel_grace_s, now, now, nj->schedule_id);
		if (rc == 0)
			rc = db_commit(cp->db);
		if (rc != 0)
			db_rollback(cp->db);
	}
	free(params);
	if (rc > 0) {
		cp_err_set(err, 409, "not claimed");
		return rc;
	}
	if (rc < 0) {
		cp_err_set(err, 500, "cannot store the job");
		return rc;
	}
	jv_info(job_id, NULL, "job created: type %s agent '%s' instance '%s'", nj->type, nj->agent_id,
	        nj->instance_id);
	lc_publish_job(cp, job_id);
	if (lc_job_enqueue(cp, job_id) < 0)
		jv_error(job_id, NULL, "cannot queue the job; it stays CREATED and is queued at the next start");
	*job = store_job_json(cp, job_id);
	*created = true;
	if (!*job) {
		cp_err_set(err, 500, "cannot read the job back");
		return -EIO;
	}
	return 0;
}

/* The newest run of a job: id and status. Returns 0, -ENOENT (no run yet), -EIO. */
static int current_run(struct cp *cp, const char *job_id, char run_id[CP_ID_MAX], char status[16])
{
	sqlite3_stmt *st = db_prepare(cp->db, "SELECT run_id, status FROM job_runs WHERE job_id = ?"
	                                      " ORDER BY attempt DESC LIMIT 1");
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		snprintf(run_id, CP_ID_MAX, "%s", (const char *)sqlite3_column_text(st, 0));
		snprintf(status, 16, "%s", (const char *)sqlite3_column_text(st, 1));
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : -EIO;
}

int lc_job_cancel(struct cp *cp, const char *job_id, struct cp_err *err)
{
	struct job_row jr;
	int rc = job_row(cp, job_id, &jr);
	if (rc == -ENOENT) {
		cp_err_set(err, 404, "no job '%s'", job_id);
		return rc;
	}
	if (rc < 0)
		goto db_fail;
	if (lc_status_terminal(jr.status)) {
		cp_err_set(err, 409, "job '%s' is already %s", job_id, jr.status);
		return -EALREADY;
	}
	char run_id[CP_ID_MAX] = "", run_status[16] = "";
	rc = current_run(cp, job_id, run_id, run_status);
	if (rc < 0 && rc != -ENOENT)
		goto db_fail;
	int64_t now = jv_now_real_ms();
	bool running = rc == 0 && strcmp(run_status, "RUNNING") == 0;
	if (running && jr.cancel_requested)
		return 0; /* already asked; the agent will report */
	if (db_begin(cp->db) < 0)
		goto db_fail;
	if (running) {
		/* Desired state: the agent learns it from its next poll or events answer. */
		rc = exec_bound(cp, "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE job_id = ?", "is",
		                now, job_id);
		if (rc == 0)
			rc = exec_bound(cp, "UPDATE job_runs SET cancel_requested = 1 WHERE run_id = ?", "s", run_id);
	} else {
		/* Not on an agent yet: cancelled at once. */
		rc = exec_bound(cp,
		                "UPDATE jobs SET status = 'CANCELLED', cancel_requested = 1, updated_at = ?"
		                " WHERE job_id = ?",
		                "is", now, job_id);
		if (rc == 0 && run_id[0])
			rc = exec_bound(cp,
			                "UPDATE job_runs SET status = 'CANCELLED', cancel_requested = 1,"
			                " finished_by = 'server', finished_at = ? WHERE run_id = ?",
			                "is", now, run_id);
	}
	if (rc < 0 || db_commit(cp->db) < 0) {
		db_rollback(cp->db);
		goto db_fail;
	}
	jv_info(job_id, run_id[0] ? run_id : NULL, running ? "cancel requested" : "job cancelled before it ran");
	lc_publish_job(cp, job_id);
	lc_wake_agent(cp, jr.agent_id);
	return 0;
db_fail:
	cp_err_set(err, 500, "database error");
	return -EIO;
}

int lc_job_retry(struct cp *cp, const char *job_id, struct cp_err *err)
{
	struct job_row jr;
	int rc = job_row(cp, job_id, &jr);
	if (rc == -ENOENT) {
		cp_err_set(err, 404, "no job '%s'", job_id);
		return rc;
	}
	if (rc < 0)
		goto db_fail;
	if (strcmp(jr.status, "FAILED") != 0 && strcmp(jr.status, "CANCELLED") != 0) {
		cp_err_set(err, 409, "job '%s' is %s; only FAILED or CANCELLED jobs can be retried", job_id, jr.status);
		return -EBUSY;
	}
	int64_t now = jv_now_real_ms();
	if (db_begin(cp->db) < 0)
		goto db_fail;
	/* A manual retry is the operator's decision: maxAttempts does not limit it. */
	rc = insert_run(cp, job_id, jr.agent_id, jr.last_attempt + 1, 0, now);
	if (rc == 0)
		rc = exec_bound(cp,
		                "UPDATE jobs SET status = 'RETRIED', cancel_requested = 0, updated_at = ? WHERE job_id = ?",
		                "is", now, job_id);
	if (rc < 0 || db_commit(cp->db) < 0) {
		db_rollback(cp->db);
		goto db_fail;
	}
	jv_info(job_id, NULL, "manual retry: attempt %d queued", jr.last_attempt + 1);
	lc_publish_job(cp, job_id);
	lc_wake_agent(cp, jr.agent_id);
	return 0;
db_fail:
	cp_err_set(err, 500, "database error");
	return -EIO;
}

static int64_t backoff_ms(const struct cp *cp, int attempt)
{
	int64_t s = cp->cfg.retry_backoff_s;
	for (int i = 1; i < attempt && s < RETRY_BACKOFF_CAP_S; i++)
		s *= 2;
	if (s > RETRY_BACKOFF_CAP_S)
		s = RETRY_BACKOFF_CAP_S;
	return s * 1000;
}

int lc_run_finish(struct cp *cp, const char *run_id, const char *status, const cJSON *output,
                  const cJSON *error, const char *finished_by)
{
	struct store_run_state rs;
	int rc = store_run_state(cp, run_id, &rs);
	if (rc < 0)
		return rc;
	struct job_row jr;
	rc = job_row(cp, rs.job_id, &jr);
	if (rc < 0)
		return rc;
	char *out_text = output && !cJSON_IsNull(output) ? jv_json_print(output) : NULL;
	char *err_text = error && !cJSON_IsNull(error) ? jv_json_print(error) : NULL;
	bool lost = strcmp(finished_by, "server") == 0;
	bool retryable = lost || jv_json_bool(error, "retryable", false);
	bool retry = strcmp(status, "FAILED") == 0 && retryable && !rs.cancel_requested &&
	             !jr.cancel_requested && rs.attempt < jr.max_attempts;
	int64_t now = jv_now_real_ms();
	int64_t not_before = retry ? now + backoff_ms(cp, rs.attempt) : 0;

	rc = db_begin(cp->db);
	if (rc == 0)
		rc = exec_bound(cp,
		                "UPDATE job_runs SET status = ?, output = ?, error = ?, finished_by = ?,"
		                " finished_at = ?, lease_until = 0, ack_deadline = 0 WHERE run_id = ?",
		                "ssssis", status, out_text, err_text, finished_by, now, run_id);
	if (rc == 0 && retry)
		rc = insert_run(cp, rs.job_id, rs.agent_id, rs.attempt + 1, not_before, now);
	if (rc == 0)
		rc = set_job_status(cp, rs.job_id, retry ? "RETRIED" : status, now);
	if (rc == 0)
		rc = db_commit(cp->db);
	if (rc < 0)
		db_rollback(cp->db);
	free(out_text);
	free(err_text);
	if (rc < 0)
		return rc;
	if (retry)
		jv_info(rs.job_id, run_id, "run %s (attempt %d of %d), automatic retry in %lld ms", status,
		        rs.attempt, jr.max_attempts, (long long)(not_before - now));
	else
		jv_info(rs.job_id, run_id, "run %s%s", status, lost ? " (lost)" : "");
	lc_publish_job(cp, rs.job_id);
	/* The instance is free again: the next job for it may be assigned. */
	lc_wake_agent(cp, rs.agent_id);
	return 0;
}
