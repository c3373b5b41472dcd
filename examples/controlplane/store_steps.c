/* store_steps.c — store_poll and store_job_submit made of the single store
 * calls, for a backend that serialises its calls on one connection anyway
 * (SQLite). Each step is its own transaction with the guarantees store.h
 * gives it, so the result is as correct as the same calls made by several
 * replicas at once; it saves no round trips (there are none to save). */
#include "store_backend.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static bool listed(const struct store_poll *q, const char *run_id)
{
	for (size_t i = 0; i < q->nlisted; i++)
		if (strcmp(q->listed[i], run_id) == 0)
			return true;
	return false;
}

/* Listed runs not renewed go to cancel, unless the agent finished them itself. */
static int poll_renew(struct store *s, const struct store_poll *q, cJSON *cancel)
{
	if (q->nlisted == 0)
		return 0;
	bool *renewed = calloc(q->nlisted, sizeof(*renewed));
	int rc = renewed ? s->ops->runs_renew(s, q->agent_id, q->listed, q->nlisted, q->lease_until, renewed) : -ENOMEM;
	for (size_t i = 0; rc == 0 && i < q->nlisted; i++) {
		if (renewed[i])
			continue;
		struct store_run_state rs;
		int k = store_run_state(s, q->listed[i], &rs);
		if (k == -EIO) {
			rc = k;
			break;
		}
		bool own_finish = k == 0 && strcmp(rs.agent_id, q->agent_id) == 0 && strcmp(rs.finished_by, "agent") == 0;
		if (!own_finish)
			cJSON_AddItemToArray(cancel, cJSON_CreateString(q->listed[i]));
	}
	free(renewed);
	return rc;
}

/* Unacknowledged unlisted runs again, then claim; the claimed runs' jobs into claimed. */
static int poll_assign(struct store *s, const struct store_poll *q, struct store_poll_result *out,
                       char (*ids)[CP_ID_MAX])
{
	int n = store_agent_runs(s, q->agent_id, true, false, ids, q->max);
	for (int i = 0; i < n; i++) {
		cJSON *as = NULL;
		if (!listed(q, ids[i]) && store_assignment_json(s, ids[i], &as) == 0)
			cJSON_AddItemToArray(out->jobs, as);
	}
	if (n < 0)
		return n;
	n = s->ops->runs_claim(s, q->agent_id, q->capacity, q->now, q->ack_deadline, q->lease_until, ids, q->max);
	for (int i = 0; i < n; i++) {
		cJSON *as = NULL, *job = NULL;
		if (store_assignment_json(s, ids[i], &as) < 0)
			continue;
		cJSON_AddItemToArray(out->jobs, as);
		const cJSON *jid = cJSON_GetObjectItemCaseSensitive(as, "jobId");
		if (cJSON_IsString(jid) && store_job_json(s, jid->valuestring, &job) == 0)
			cJSON_AddItemToArray(out->claimed, job);
	}
	return n < 0 ? n : 0;
}

int store_poll_steps(struct store *s, const struct store_poll *q, struct store_poll_result *out)
{
	*out = (struct store_poll_result){
		.jobs = cJSON_CreateArray(), .cancel = cJSON_CreateArray(), .claimed = cJSON_CreateArray()};
	char(*ids)[CP_ID_MAX] = calloc((size_t)(q->max > 0 ? q->max : 1), CP_ID_MAX);
	int rc = out->jobs && out->cancel && out->claimed && ids ? 0 : -ENOMEM;
	if (rc == 0 && q->touch) /* memory is authoritative: a failed write only waits for the next */
		s->ops->agent_touch(s, q->agent_id, q->now, q->capacity);
	if (rc == 0)
		rc = poll_renew(s, q, out->cancel);
	if (rc == 0)
		rc = poll_assign(s, q, out, ids);
	int n = rc == 0 ? store_agent_runs(s, q->agent_id, false, true, ids, q->max) : 0;
	for (int i = 0; i < n; i++)
		cJSON_AddItemToArray(out->cancel, cJSON_CreateString(ids[i]));
	rc = rc == 0 && n < 0 ? n : rc;
	if (rc == 0 && (out->running = store_agent_running(s, q->agent_id)) < 0)
		rc = out->running;
	free(ids);
	if (rc < 0) {
		cJSON_Delete(out->jobs);
		cJSON_Delete(out->cancel);
		cJSON_Delete(out->claimed);
		*out = (struct store_poll_result){0};
	}
	return rc;
}

int store_job_submit_steps(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                           int64_t now, struct store_submitted *out)
{
	*out = (struct store_submitted){0};
	int rc = store_job_create(s, nj, claim, now);
	struct store_job_info info;
	bool queue = rc == 0;
	if (rc == 1 && store_job_info(s, nj->job_id, &info) == 0)
		queue = strcmp(info.status, "CREATED") == 0;
	if (rc == 0 && store_job_json(s, nj->job_id, &out->created) < 0)
		rc = -EIO;
	int q = queue ? store_job_enqueue(s, nj->job_id, now, NULL) : 1;
	if (q < 0)
		rc = -EIO;
	if (q == 0 && rc >= 0 && store_job_json(s, nj->job_id, &out->queued) < 0)
		rc = -EIO;
	if (rc >= 0 && store_job_json(s, nj->job_id, &out->job) < 0)
		rc = -EIO;
	if (rc < 0) {
		cJSON_Delete(out->created);
		cJSON_Delete(out->queued);
		cJSON_Delete(out->job);
		*out = (struct store_submitted){0};
	}
	return rc;
}
