/* delivery.c — events and results to the control plane, in order, with retries.
 *
 * The spool is the source of truth: a request body is built from the
 * unacknowledged events at send time, after spool_run_sync() has made them
 * durable, so a crash between sending and the answer at worst resends them
 * (the control plane keeps each (jobRunId, seq) once). */
#include "delivery.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "jobvisor/jobrun.h"
#include "spool.h"
#include "transport.h"

#define BASE_DELAY_MS 500

void delivery_init(struct srun *run)
{
	backoff_init(&run->bo, BASE_DELAY_MS, run->ag->cfg.backoff_max_ms);
}

void delivery_abort(struct srun *run)
{
	if (run->req) {
		transport_abort(run->ag->tp, run->req);
		run->req = NULL;
		run->req_kind = DELIVER_NONE;
	}
}

bool delivery_has_work(const struct srun *run)
{
	if (run->dropped || !run->sr)
		return false;
	return spool_run_pending(run->sr) > 0 || (run->finished && spool_run_result(run->sr));
}

/* The "error" text of a 4xx/5xx answer, cut short, for the log. */
static void answer_error(const struct transport_response *resp, char *out, size_t outlen)
{
	cJSON *o = resp->len ? jv_json_parse(resp->body, resp->len) : NULL;
	const char *msg = jv_json_str(o, "error", NULL);
	if (msg)
		snprintf(out, outlen, "%.200s", msg);
	else if (resp->error)
		snprintf(out, outlen, "%.200s", resp->error);
	else
		snprintf(out, outlen, "no error message");
	cJSON_Delete(o);
}

static void retry_later(struct srun *run, const char *what, const char *why, int64_t retry_after_ms)
{
	struct agent *ag = run->ag;
	int64_t delay = backoff_next(&run->bo, retry_after_ms, jv_random_u64());
	run->retry_at_ms = jv_now_mono_ms() + delay;
	if (ag->flushing)
		run->failed_in_shutdown = true;
	if (!run->failing)
		jv_warn(run->job_id, run->run_id,
		        "cannot deliver %s: %s; kept in the spool, retrying in %.1fs", what, why,
		        (double)delay / 1000.0);
	else
		jv_debug(run->job_id, run->run_id, "cannot deliver %s: %s; retrying in %.1fs", what, why,
		         (double)delay / 1000.0);
	run->failing = true;
}

/* The agent moved to a control-plane URL that has not failed yet
 * (endpoints.h): try it at once, even in the last flush. */
static void retry_elsewhere(struct srun *run, const char *what, const char *why)
{
	run->retry_at_ms = 0;
	run->failing = true;
	jv_info(run->job_id, run->run_id, "cannot deliver %s: %s; sending it to %s now", what, why,
	        transport_current_url(run->ag->tp));
}

static void succeeded(struct srun *run)
{
	if (run->failing)
		jv_info(run->job_id, run->run_id, "delivering again after %u failed attempts",
		        run->bo.failures);
	run->failing = false;
	run->rejects = 0;
	backoff_reset(&run->bo);
	run->retry_at_ms = 0;
}

/* The run's owner acts on it after the answer (delivery_take_verdict). */
static void give_verdict(struct srun *run, enum delivery_verdict v, const char *why)
{
	if (run->verdict != DELIVERY_CONTINUE)
		return; /* the first one stands */
	run->verdict = v;
	snprintf(run->verdict_why, sizeof(run->verdict_why), "%s", why);
}

enum delivery_verdict delivery_take_verdict(struct srun *run, bool *cancel, const char **why)
{
	enum delivery_verdict v = run->verdict;
	*cancel = run->cancel_asked;
	*why = run->verdict_why;
	run->verdict = DELIVERY_CONTINUE;
	run->cancel_asked = false;
	return v;
}

/* Shared handling of everything that is not a good 2xx. Returns true when
 * the answer was handled (the caller stops). */
static bool handle_failure(struct srun *run, const char *what, const struct transport_response *resp)
{
	enum transport_class c = transport_classify(resp);
	char why[300];
	switch (c) {
	case TRANSPORT_OK:
		return false;
	case TRANSPORT_RETRY:
		if (resp->status)
			snprintf(why, sizeof(why), "HTTP %ld", resp->status);
		else
			snprintf(why, sizeof(why), "%s", resp->error ? resp->error : "no answer");
		if (resp->failover)
			retry_elsewhere(run, what, why);
		else
			retry_later(run, what, why, resp->retry_after_ms);
		return true;
	case TRANSPORT_GONE:
		give_verdict(run, DELIVERY_DROP,
		             "the control plane answered 409: this agent no longer holds the run");
		return true;
	case TRANSPORT_REJECTED: {
		char msg[220];
		answer_error(resp, msg, sizeof(msg));
		run->rejects++;
		jv_error(run->job_id, run->run_id, "control plane refused %s: HTTP %ld: %s (%u of %d)",
		         what, resp->status, msg, run->rejects, DELIVERY_MAX_REJECTS);
		if (run->rejects >= DELIVERY_MAX_REJECTS) {
			snprintf(why, sizeof(why), "the control plane refused %s %d times (HTTP %ld)", what,
			         DELIVERY_MAX_REJECTS, resp->status);
			give_verdict(run, DELIVERY_REJECT, why);
		} else {
			run->failing = true; /* already logged loudly */
			int64_t delay = backoff_next(&run->bo, resp->retry_after_ms, jv_random_u64());
			run->retry_at_ms = jv_now_mono_ms() + delay;
			if (run->ag->flushing)
				run->failed_in_shutdown = true;
		}
		return true;
	}
	}
	return false;
}

static void on_events_answer(void *ud, const struct transport_response *resp)
{
	struct srun *run = ud;
	uint64_t sent_last = run->req_last;
	run->req = NULL;
	run->req_kind = DELIVER_NONE;
	if (handle_failure(run, "events", resp))
		return;
	cJSON *o = jv_json_parse(resp->body, resp->len);
	int64_t ack = cJSON_IsObject(o) ? jv_json_int(o, "ackSeq", -1) : -1;
	if (ack < 0) {
		cJSON_Delete(o);
		retry_later(run, "events", "the answer has no valid ackSeq", -1);
		return;
	}
	bool cancel = jv_json_bool(o, "cancelRequested", false);
	cJSON_Delete(o);
	uint64_t before = spool_run_acked(run->sr);
	if ((uint64_t)ack > sent_last)
		ack = (int64_t)sent_last; /* it cannot hold what was never sent */
	int rc = spool_run_ack(run->sr, (uint64_t)ack);
	if (rc)
		jv_warn(run->job_id, run->run_id, "cannot record acknowledgement: %s", strerror(-rc));
	if ((uint64_t)ack < sent_last && (uint64_t)ack <= before) {
		char why[96];
		snprintf(why, sizeof(why), "the control plane acknowledged seq %lld of %llu",
		         (long long)ack, (unsigned long long)sent_last);
		retry_later(run, "events", why, -1);
	} else {
		succeeded(run);
	}
	if (cancel)
		run->cancel_asked = true;
}

static void on_result_answer(void *ud, const struct transport_response *resp)
{
	struct srun *run = ud;
	run->req = NULL;
	run->req_kind = DELIVER_NONE;
	if (handle_failure(run, "result", resp))
		return;
	succeeded(run);
	const char *status = jv_json_str(spool_run_result(run->sr), "status", "?");
	jv_info(run->job_id, run->run_id, "result delivered (%s)", status);
	if (strcmp(status, "COMPLETED") == 0) {
		/* The control plane has it: no retry of this job will come. */
		int frc = jobrun_forget_completion(run->ag->cfg.data_dir, run->instance_id, run->job_id);
		if (frc)
			jv_warn(run->job_id, run->run_id, "cannot remove the completion record: %s",
			        strerror(-frc));
	}
	int rc = spool_run_remove(run->sr);
	run->sr = NULL;
	if (rc)
		jv_warn(run->job_id, run->run_id, "cannot remove delivered run record: %s", strerror(-rc));
}

static void start(struct srun *run)
{
	struct agent *ag = run->ag;
	char path[200];
	char *body = NULL;
	transport_cb cb;
	uint64_t last = 0;
	enum delivery_kind kind;
	if (spool_run_pending(run->sr) > 0) {
		int rc = spool_run_sync(run->sr);
		if (rc)
			jv_warn(run->job_id, run->run_id, "cannot sync event spool: %s", strerror(-rc));
		body = spool_run_batch(run->sr, DELIVERY_BATCH_EVENTS, DELIVERY_BATCH_BYTES, &last);
		snprintf(path, sizeof(path), "/v1/runs/%s/events", run->run_id);
		cb = on_events_answer;
		kind = DELIVER_EVENTS;
	} else {
		body = jv_json_print(spool_run_result(run->sr));
		snprintf(path, sizeof(path), "/v1/runs/%s/result", run->run_id);
		cb = on_result_answer;
		kind = DELIVER_RESULT;
	}
	if (!body) {
		run->retry_at_ms = jv_now_mono_ms() + 1000;
		return;
	}
	int rc = transport_post(ag->tp, path, body, (long)ag->cfg.request_timeout_s * 1000, cb, run,
	                        &run->req);
	if (rc) {
		run->req = NULL;
		retry_later(run, kind == DELIVER_EVENTS ? "events" : "result", strerror(-rc), -1);
		return;
	}
	run->req_kind = kind;
	run->req_last = last;
}

void delivery_kick_all(struct agent *ag, int64_t now_ms)
{
	for (struct srun *r = ag->runs; r; r = r->next) {
		if (r->req || !delivery_has_work(r) || r->retry_at_ms > now_ms)
			continue;
		if (ag->flushing && r->failed_in_shutdown)
			continue;
		if (ag->hard_stop)
			continue;
		start(r);
	}
}

int64_t delivery_next_deadline(const struct agent *ag)
{
	int64_t next = INT64_MAX;
	for (const struct srun *r = ag->runs; r; r = r->next) {
		if (r->req || !delivery_has_work(r))
			continue;
		if (ag->flushing && r->failed_in_shutdown)
			continue;
		if (r->retry_at_ms < next)
			next = r->retry_at_ms;
	}
	return next;
}

bool delivery_settled(const struct agent *ag)
{
	for (const struct srun *r = ag->runs; r; r = r->next) {
		if (r->req)
			return false;
		if (delivery_has_work(r) && !r->failed_in_shutdown)
			return false;
	}
	return true;
}
