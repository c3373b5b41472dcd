/* lifecycle.c — job and run state changes: create, enqueue, cancel, retry, finish.
 *
 * Each state change is one store call (one transaction, decided inside it,
 * so replicas sharing a database cannot both make it); after it commits, the new state
 * of the job is published to WebSocket clients and the owning agent's long
 * polls are woken. Assignment (QUEUED -> RUNNING) and lost runs live in
 * dispatch.c, event storage in events.c. All functions run with cp->mu held,
 * except lc_job_create and lc_run_finish, which must be called without it
 * (the store is thread-safe; they take it for the wake-up only).
 *
 * Job states: CREATED -> QUEUED -> RUNNING -> COMPLETED | FAILED | CANCELLED,
 * and RETRIED while a new run (attempt + 1) waits to be assigned. Run states:
 * QUEUED -> RUNNING -> COMPLETED | FAILED | CANCELLED. */
#include "cp.h"
#include "replicas.h"
#include "store_pg.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/protocol.h"
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

void lc_wake_parked(struct cp *cp, struct cp_agent *a)
{
	if (cp->front)
		front_wake(cp->front, (size_t)(a - cp->agents), a->gen + a->console_gen);
}

void lc_wake_local(struct cp *cp, const char *agent_id)
{
	struct cp_agent *a = tokens_agent_find(cp, agent_id);
	if (a) {
		a->gen++;
		pthread_cond_broadcast(&a->cond);
		lc_wake_parked(cp, a);
	}
}

void lc_wake_agent(struct cp *cp, const char *agent_id)
{
	lc_wake_local(cp, agent_id);
	/* Other replicas (PostgreSQL): their polls of this agent wake too. */
	if (store_pg_wake(cp->store, agent_id) < 0)
		jv_warn(NULL, NULL, "cannot tell other replicas of new work for agent '%s'", agent_id);
}

cJSON *lc_job_msg(cJSON *job)
{
	cJSON *msg = job ? cJSON_CreateObject() : NULL;
	if (!msg) {
		cJSON_Delete(job);
		return NULL;
	}
	cJSON_AddStringToObject(msg, "type", "job");
	cJSON_AddItemToObject(msg, "job", job);
	return msg;
}

void lc_publish_job_wake(struct cp *cp, const char *job_id, const char *agent_id)
{
	cJSON *job = NULL;
	store_job_json(cp->store, job_id, &job);
	cJSON *msg = lc_job_msg(job);
	ws_publish_wake(cp, &msg, msg ? 1 : 0, agent_id);
}

int lc_job_enqueue(struct cp *cp, const char *job_id)
{
	struct store_job_info jr;
	int rc = store_job_enqueue(cp->store, job_id, jv_now_real_ms(), &jr);
	if (rc != 0)
		return rc > 0 ? 0 : rc; /* 1: not CREATED (queued before, or by another replica) */
	jv_info(job_id, NULL, "job queued for agent '%s' instance '%s'", jr.agent_id, jr.instance_id);
	lc_publish_job_wake(cp, job_id, jr.agent_id);
	return 0;
}

int lc_job_create(struct cp *cp, const struct lc_new_job *nj, cJSON **job, bool *created, struct cp_err *err)
{
	char gen_id[JV_UUID_LEN];
	*created = false;
	*job = NULL;
	if (!nj->job_id && jv_uuid4(gen_id) < 0) {
		cp_err_set(err, 500, "cannot generate a job id");
		return -EIO;
	}
	const char *job_id = nj->job_id ? nj->job_id : gen_id;
	char *params = nj->params ? jv_json_print(nj->params) : NULL;
	if (nj->params && !params) {
		cp_err_set(err, 500, "out of memory");
		return -ENOMEM;
	}
	struct store_new_job sj = {
		.job_id = job_id,
		.type = nj->type,
		.agent_id = nj->agent_id,
		.instance_id = nj->instance_id,
		.params = params ? params : "{}",
		.max_attempts = nj->max_attempts,
		.timeout_s = nj->timeout_s,
		.cancel_grace_s = nj->cancel_grace_s,
		.schedule_id = nj->schedule_id,
	};
	/* Stored and queued in one call (PostgreSQL: one round trip) without
	 * cp->mu: the database orders concurrent creates (store.h). */
	struct store_submitted sub;
	int rc = store_job_submit(cp->store, &sj, nj->claim, jv_now_real_ms(), &sub);
	free(params);
	if (rc == -EEXIST)
		cp_err_set(err, 409, "job '%s' already exists with another type, agent or instance", job_id);
	else if (rc == -EAGAIN)
		cp_err_set(err, 409, "not claimed");
	else if (rc < 0)
		cp_err_set(err, 500, "cannot store the job");
	if (rc < 0)
		return rc;
	if (rc == 0)
		jv_info(job_id, NULL, "job created: type %s agent '%s' instance '%s'", nj->type, nj->agent_id,
		        nj->instance_id);
	if (sub.queued)
		jv_info(job_id, NULL, "job queued for agent '%s' instance '%s'", nj->agent_id, nj->instance_id);
	/* WebSocket clients hear CREATED then QUEUED before the agent is woken
	 * (PostgreSQL: with it, in one statement), so none sees RUNNING first. */
	cJSON *msgs[2] = {lc_job_msg(sub.created), lc_job_msg(sub.queued)};
	ws_publish_wake(cp, msgs, 2, sub.queued ? nj->agent_id : NULL);
	*created = rc == 0; /* 1: a repeated create (a panel retrying after a lost answer) returns the job */
	*job = sub.job;
	return 0;
}

int lc_job_cancel(struct cp *cp, const char *job_id, struct cp_err *err)
{
	struct store_job_info jr;
	char run_id[CP_ID_MAX] = "";
	int rc = store_job_cancel(cp->store, job_id, jv_now_real_ms(), &jr, run_id);
	if (rc == -ENOENT) {
		cp_err_set(err, 404, "no job '%s'", job_id);
		return rc;
	}
	if (rc == -EALREADY) {
		cp_err_set(err, 409, "job '%s' is already %s", job_id, jr.status);
		return rc;
	}
	if (rc < 0) {
		cp_err_set(err, 500, "database error");
		return -EIO;
	}
	if (rc == STORE_CANCEL_ALREADY)
		return 0; /* already asked; the agent will report */
	jv_info(job_id, run_id[0] ? run_id : NULL,
	        rc == STORE_CANCEL_REQUESTED ? "cancel requested" : "job cancelled before it ran");
	lc_publish_job_wake(cp, job_id, jr.agent_id);
	return 0;
}

int lc_job_retry(struct cp *cp, const char *job_id, struct cp_err *err)
{
	struct store_job_info jr;
	int rc = store_job_retry(cp->store, job_id, jv_now_real_ms(), &jr);
	if (rc == -ENOENT) {
		cp_err_set(err, 404, "no job '%s'", job_id);
		return rc;
	}
	if (rc == -EBUSY) {
		cp_err_set(err, 409, "job '%s' is %s; only FAILED or CANCELLED jobs can be retried", job_id, jr.status);
		return rc;
	}
	if (rc < 0) {
		cp_err_set(err, 500, "database error");
		return -EIO;
	}
	jv_info(job_id, NULL, "manual retry: attempt %d queued", jr.last_attempt + 1);
	lc_publish_job_wake(cp, job_id, jr.agent_id);
	return 0;
}

int lc_run_finish(struct cp *cp, const char *run_id, const char *status, const cJSON *output,
                  const cJSON *error, const char *finished_by, int64_t lost_before)
{
	char *out_text = output && !cJSON_IsNull(output) ? jv_json_print(output) : NULL;
	char *err_text = error && !cJSON_IsNull(error) ? jv_json_print(error) : NULL;
	bool lost = strcmp(finished_by, "server") == 0;
	/* The agent says it never started the run: no attempt used (store.h). */
	bool not_started = !lost && strcmp(status, "FAILED") == 0 &&
	                   strcmp(jv_json_str(error, "reason", ""), JV_REASON_NOT_STARTED) == 0;
	/* Room for the whole message (cut to CP_MESSAGE_MAX, on a UTF-8 boundary, by the handler). */
	char note[CP_MESSAGE_MAX + 128];
	snprintf(note, sizeof(note), "given back unstarted by its agent (%s); queued again, not counted as an attempt",
	         not_started ? jv_json_str(error, "message", "no reason given") : "");
	struct store_finish f = {
		.run_id = run_id,
		.status = status,
		.output = out_text,
		.error = err_text,
		.finished_by = finished_by,
		.retryable = lost || jv_json_bool(error, "retryable", false),
		.backoff_base_ms = (int64_t)cp->cfg.retry_backoff_s * 1000,
		.backoff_cap_ms = (int64_t)RETRY_BACKOFF_CAP_S * 1000,
		.lost_before = lost_before,
		.not_started = not_started,
		.note = not_started ? note : NULL,
		.now = jv_now_real_ms(),
	};
	struct store_finish_result res;
	int rc = store_run_finish(cp->store, &f, &res);
	free(out_text);
	free(err_text);
	if (rc != 0)
		return rc; /* 1: finished before (or no longer lost): nothing changed */
	if (res.released)
		jv_info(res.job_id, run_id, "run given back unstarted by agent '%s' (%s): queued again in %lld ms, "
		        "attempt %d of %d not counted", res.agent_id, jv_json_str(error, "message", "no reason given"),
		        (long long)(res.not_before - f.now), res.attempt, res.max_attempts);
	else if (res.cancelled)
		jv_info(res.job_id, run_id, "run given back unstarted by agent '%s' with a cancel requested: cancelled",
		        res.agent_id);
	else if (res.retried)
		jv_info(res.job_id, run_id, "run %s (attempt %d of %d), automatic retry in %lld ms", status,
		        res.attempt, res.max_attempts, (long long)(res.not_before - f.now));
	else
		jv_info(res.job_id, run_id, "run %s%s", status, lost ? " (lost)" : "");
	/* The instance is free again: the next job for it may be assigned. */
	lc_publish_job_wake(cp, res.job_id, res.agent_id);
	return 0;
}
