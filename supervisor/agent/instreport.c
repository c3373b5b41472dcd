/* instreport.c — an instance's state changes as the control plane hears
 * them: state events built from monitor statuses, appended durably to the
 * instance's stream (spool.c) with last.json beside it, delivered in order one
 * request at a time, and the snapshot of every instance.
 *
 * A state event is made durable (append + fdatasync) before it is sent; one
 * request per instance is in flight, so events arrive in seq order, and the
 * control plane keeps each (agent, instance, seq) once. instwatch.c finds the
 * instances and their monitors and calls in here. */
#include "instwatch_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "spool.h"
#include "transport.h"

#define BATCH_EVENTS 100
#define BATCH_BYTES (256 * 1024)

/* ---- events ---------------------------------------------------------------*/

static void add_str_or_null(cJSON *o, const char *key, const char *v)
{
	if (v)
		cJSON_AddStringToObject(o, key, v);
	else
		cJSON_AddNullToObject(o, key);
}

static void build_id(const struct inst *in, char *out, size_t len)
{
	char path[PATH_MAX + 16], target[PATH_MAX];
	out[0] = '\0';
	snprintf(path, sizeof(path), "%s/current", in->dir);
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	if (n <= 0)
		return;
	target[n] = '\0';
	const char *slash = strrchr(target, '/');
	snprintf(out, len, "%s", slash ? slash + 1 : target);
}

/* A state event from a monitor status object (borrowed). */
static cJSON *state_event(const struct inst *in, const char *state, const cJSON *st, const char *message)
{
	cJSON *e = cJSON_CreateObject();
	if (!e)
		return NULL;
	char ts[JV_ISO8601_LEN], build[80];
	jv_iso8601(jv_now_real_ms(), ts);
	build_id(in, build, sizeof(build));
	cJSON_AddStringToObject(e, "kind", "state");
	cJSON_AddStringToObject(e, "instanceId", in->id);
	cJSON_AddStringToObject(e, "state", state);
	cJSON_AddStringToObject(e, "timestamp", ts);
	int64_t pid = jv_json_int(st, "pid", 0);
	if (pid > 0 && jv_json_bool(st, "alive", true))
		cJSON_AddNumberToObject(e, "pid", (double)pid);
	else
		cJSON_AddNullToObject(e, "pid");
	cJSON_AddNumberToObject(e, "restarts", (double)jv_json_int(st, "restarts", 0));
	add_str_or_null(e, "buildId", build[0] ? build : NULL);
	add_str_or_null(e, "startedAt", jv_json_str(st, "startedAt", NULL));
	add_str_or_null(e, "message", message ? message : jv_json_str(st, "message", NULL));
	const cJSON *le = cJSON_GetObjectItemCaseSensitive(st, "lastExit");
	if (cJSON_IsObject(le)) {
		cJSON *x = cJSON_AddObjectToObject(e, "lastExit");
		if (jv_json_has_num(le, "code"))
			cJSON_AddNumberToObject(x, "code", (double)jv_json_int(le, "code", 0));
		else
			cJSON_AddNullToObject(x, "code");
		add_str_or_null(x, "signal", jv_json_str(le, "signal", NULL));
		cJSON_AddBoolToObject(x, "oom", jv_json_bool(le, "oom", false));
		cJSON_AddBoolToObject(x, "requested", jv_json_bool(le, "requested", false));
		add_str_or_null(x, "reason", jv_json_str(le, "reason", NULL));
		add_str_or_null(x, "at", jv_json_str(le, "at", NULL));
	} else {
		cJSON_AddNullToObject(e, "lastExit");
	}
	/* BACKOFF (and the CRASHED said just before it) carry the restart delay. */
	const char *next = jv_json_str(st, "nextRestartAt", NULL);
	if (next && (strcmp(state, "BACKOFF") == 0 || strcmp(state, "CRASHED") == 0))
		cJSON_AddStringToObject(e, "nextRestartAt", next);
	const cJSON *delay = cJSON_GetObjectItemCaseSensitive(st, "restartDelaySeconds");
	if (cJSON_IsNumber(delay) && (strcmp(state, "BACKOFF") == 0 || strcmp(state, "CRASHED") == 0))
		cJSON_AddNumberToObject(e, "restartInSeconds", delay->valuedouble);
	/* The breaker's flag from the monitor; older monitors only say it in words. */
	const char *msg = jv_json_str(e, "message", "");
	const cJSON *loop = cJSON_GetObjectItemCaseSensitive(st, "crashLoop");
	bool crash_loop = cJSON_IsBool(loop) ? cJSON_IsTrue(loop) : strstr(msg, "crash loop") != NULL;
	cJSON_AddBoolToObject(e, "crashLoop", strcmp(state, "CRASHED") == 0 && crash_loop);
	return e;
}

static void kick_delivery(struct inst *in)
{
	in->retry_at_ms = 0;
}

/* Append ev (consumed) to the instance's stream with the next seq. */
static void emit(struct inst *in, cJSON *ev, bool remember)
{
	struct instwatch *iw = in->iw;
	if (!ev)
		return;
	if (!in->stream || !iw->reporting) {
		if (remember) {
			cJSON_Delete(in->last);
			in->last = ev;
		} else {
			cJSON_Delete(ev);
		}
		return;
	}
	uint64_t seq = spool_run_last_seq(in->stream) + 1;
	cJSON_AddNumberToObject(ev, "seq", (double)seq);
	int rc = spool_run_append(in->stream, ev);
	if (rc == 0)
		rc = spool_run_sync(in->stream);
	if (rc)
		jv_warn(NULL, NULL, "instance %s: cannot write its event to the spool: %s", in->id,
		        strerror(-rc));
	if (remember) {
		int prc = spool_run_put(in->stream, "last.json", ev);
		if (prc)
			jv_warn(NULL, NULL, "instance %s: cannot record its last state: %s", in->id,
			        strerror(-prc));
		cJSON_Delete(in->last);
		in->last = ev;
	} else {
		cJSON_Delete(ev);
	}
	kick_delivery(in);
}

const char *instreport_last_state(const struct inst *in)
{
	return jv_json_str(in->last, "state", NULL);
}

/* A status (borrowed) from the monitor or state.json: report what changed. */
void instreport_status(struct inst *in, const cJSON *st, const char *override_state, const char *message)
{
	const char *state = override_state ? override_state : jv_json_str(st, "state", NULL);
	if (!state)
		return;
	bool live = jv_json_bool(st, "alive", false) && jv_json_int(st, "pid", 0) > 0 &&
	            (strcmp(state, "STARTING") == 0 || strcmp(state, "RUNNING") == 0 ||
	             strcmp(state, "STOPPING") == 0);
	in->live_pid = live ? jv_json_int(st, "pid", 0) : 0;
	in->live_start_time = live ? (uint64_t)jv_json_int(st, "startTime", 0) : 0;
	in->live_started_ms = live ? jv_json_int(st, "startedAtMs", 0) : 0;
	snprintf(in->cgroup, sizeof(in->cgroup), "%s", live ? jv_json_str(st, "cgroup", "") : "");
	char prev[16] = ""; /* copied: emit() replaces in->last */
	if (instreport_last_state(in))
		snprintf(prev, sizeof(prev), "%s", instreport_last_state(in));
	int64_t pid = jv_json_bool(st, "alive", true) ? jv_json_int(st, "pid", 0) : 0;
	int64_t restarts = jv_json_int(st, "restarts", 0);
	if (strcmp(prev, state) == 0 && jv_json_int(in->last, "pid", 0) == pid &&
	    jv_json_int(in->last, "restarts", 0) == restarts)
		return;
	/* An exit the monitor will restart is a crash all the same: say so first. */
	if (strcmp(state, "BACKOFF") == 0 && strcmp(prev, "BACKOFF") != 0 && strcmp(prev, "CRASHED") != 0) {
		cJSON *c = state_event(in, "CRASHED", st, NULL);
		if (c) {
			cJSON_ReplaceItemInObjectCaseSensitive(c, "pid", cJSON_CreateNull());
			cJSON_AddBoolToObject(c, "restarting", true);
		}
		char why[256];
		snprintf(why, sizeof(why), "%s", jv_json_str(c, "message", ""));
		emit(in, c, true); /* logged after: a logged state is in the stream */
		jv_info(NULL, NULL, "instance %s: CRASHED (was %s): %s", in->id, prev[0] ? prev : "unknown",
		        why);
		snprintf(prev, sizeof(prev), "CRASHED");
	}
	cJSON *ev = state_event(in, state, st, message);
	if (ev && pid <= 0)
		cJSON_ReplaceItemInObjectCaseSensitive(ev, "pid", cJSON_CreateNull());
	emit(in, ev, true);
	if (prev[0])
		jv_info(NULL, NULL, "instance %s: %s (was %s)", in->id, state, prev);
	else
		jv_info(NULL, NULL, "instance %s: %s", in->id, state);
}

void instreport_note(struct inst *in, const char *what, const char *message)
{
	cJSON *e = cJSON_CreateObject();
	if (!e)
		return;
	char ts[JV_ISO8601_LEN];
	jv_iso8601(jv_now_real_ms(), ts);
	cJSON_AddStringToObject(e, "kind", what);
	cJSON_AddStringToObject(e, "instanceId", in->id);
	cJSON_AddStringToObject(e, "timestamp", ts);
	cJSON_AddStringToObject(e, "message", message);
	emit(in, e, false);
}

/* What the instance last reported, returned-owned: last.json, unless the
 * stream holds a newer state event. emit() makes an event durable before it
 * rewrites last.json, so an agent killed between the two leaves last.json one
 * state behind with that event still pending (never sent: delivery starts
 * after emit returns). Trusting last.json then would report the state twice. */
cJSON *instreport_load_last(struct inst *in)
{
	cJSON *last = spool_run_get(in->stream, "last.json");
	for (size_t i = spool_run_pending(in->stream); i-- > 0;) {
		cJSON *e = spool_run_pending_event(in->stream, i);
		if (!e || strcmp(jv_json_str(e, "kind", ""), "state") != 0) {
			cJSON_Delete(e);
			continue;
		}
		if (jv_json_int(e, "seq", 0) <= jv_json_int(last, "seq", 0)) {
			cJSON_Delete(e);
			break;
		}
		jv_info(NULL, NULL, "instance %s: its last state is %s (seq %lld) from the event stream; "
		        "last.json was behind", in->id, jv_json_str(e, "state", "?"),
		        (long long)jv_json_int(e, "seq", 0));
		int rc = spool_run_put(in->stream, "last.json", e);
		if (rc)
			jv_warn(NULL, NULL, "instance %s: cannot record its last state: %s", in->id,
			        strerror(-rc));
		cJSON_Delete(last);
		return e;
	}
	return last;
}

/* ---- removal ------------------------------------------------------------*/

void instreport_removed(struct inst *in)
{
	const char *prev = instreport_last_state(in);
	if (prev && strcmp(prev, "REMOVED") == 0)
		return;
	jv_info(NULL, NULL, "instance %s: removed", in->id);
	cJSON *s = cJSON_CreateObject();
	cJSON_AddStringToObject(s, "state", "REMOVED");
	cJSON *ev = state_event(in, "REMOVED", s, "the instance directory is gone");
	cJSON_Delete(s);
	emit(in, ev, true);
}

/* ---- delivery -------------------------------------------------------------*/

static void reporting_off(struct instwatch *iw, long status)
{
	if (!iw->reporting)
		return;
	iw->reporting = false;
	jv_warn(NULL, NULL, "the control plane does not know instance reports (HTTP %ld); instance "
	        "state is not reported until the agent restarts", status);
}

/* The control plane answered after an outage: every report waiting out its
 * backoff (up to backoff_max, a minute by default) because nothing answered
 * goes now, so delivery resumes within one answer of its return rather than
 * one backoff. A report the control plane itself refused keeps its backoff. */
void instreport_wake(struct instwatch *iw)
{
	for (struct inst *in = iw->list; in; in = in->next)
		if (in->failing && in->unanswered && !in->req)
			in->retry_at_ms = 0;
	if (iw->snap_wanted && iw->snap_unanswered && !iw->snap_req)
		iw->snap_at_ms = 0;
}

static void on_events_answer(void *ud, const struct transport_response *resp)
{
	struct inst *in = ud;
	struct instwatch *iw = in->iw;
	uint64_t sent = in->req_last;
	in->req = NULL;
	if (resp->status == 404) {
		reporting_off(iw, resp->status);
		return;
	}
	enum transport_class c = transport_classify(resp);
	cJSON *o = c == TRANSPORT_OK ? jv_json_parse(resp->body, resp->len) : NULL;
	int64_t ack = cJSON_IsObject(o) ? jv_json_int(o, "ackSeq", -1) : -1;
	cJSON_Delete(o);
	if (ack < 0) {
		int64_t delay = backoff_next(&in->bo, resp->retry_after_ms, jv_random_u64());
		in->retry_at_ms = jv_now_mono_ms() + delay;
		if (!in->failing) {
			if (c == TRANSPORT_OK || c == TRANSPORT_RETRY)
				jv_warn(NULL, NULL, "instance %s: cannot deliver state events: %s; kept in the "
				        "spool, retrying in %.1fs", in->id,
				        resp->status ? (c == TRANSPORT_OK ? "no valid ackSeq" : "HTTP error")
				                     : (resp->error ? resp->error : "no answer"),
				        (double)delay / 1000.0);
			else
				jv_error(NULL, NULL, "instance %s: the control plane refused state events: HTTP "
				         "%ld; retrying in %.1fs", in->id, resp->status, (double)delay / 1000.0);
		}
		in->failing = true;
		in->unanswered = resp->status == 0;
		return;
	}
	if ((uint64_t)ack > sent)
		ack = (int64_t)sent;
	int rc = spool_run_ack(in->stream, (uint64_t)ack);
	if (rc)
		jv_warn(NULL, NULL, "instance %s: cannot record the acknowledgement: %s", in->id,
		        strerror(-rc));
	backoff_reset(&in->bo);
	in->retry_at_ms = 0;
	in->unanswered = false;
	if (in->failing) {
		jv_info(NULL, NULL, "instance %s: delivering state events again", in->id);
		in->failing = false;
		instreport_wake(iw);
	}
}

void instreport_deliver(struct instwatch *iw, struct inst *in, int64_t now)
{
	struct agent *ag = iw->ag;
	if (!iw->reporting || in->req || !in->stream || spool_run_pending(in->stream) == 0 ||
	    in->retry_at_ms > now || ag->hard_stop)
		return;
	uint64_t last = 0;
	char *body = spool_run_batch(in->stream, BATCH_EVENTS, BATCH_BYTES, &last);
	if (!body)
		return;
	char path[256];
	snprintf(path, sizeof(path), "/v1/agents/%s/instances/%s/events", ag->cfg.agent_id, in->id);
	int rc = transport_post(ag->tp, path, body, (long)ag->cfg.request_timeout_s * 1000,
	                        on_events_answer, in, &in->req);
	if (rc) {
		in->req = NULL;
		in->unanswered = false; /* our own failure: no answer will change it */
		in->retry_at_ms = now + backoff_next(&in->bo, -1, jv_random_u64());
		return;
	}
	in->req_last = last;
}

static void on_snapshot_answer(void *ud, const struct transport_response *resp)
{
	struct instwatch *iw = ud;
	iw->snap_req = NULL;
	if (resp->status == 404) {
		reporting_off(iw, resp->status);
		return;
	}
	if (transport_classify(resp) != TRANSPORT_OK) {
		iw->snap_wanted = true;
		iw->snap_unanswered = resp->status == 0;
		iw->snap_at_ms = jv_now_mono_ms() + backoff_next(&iw->snap_bo, resp->retry_after_ms,
		                                                 jv_random_u64());
		jv_debug(NULL, NULL, "instance snapshot not delivered (HTTP %ld); retrying", resp->status);
		return;
	}
	backoff_reset(&iw->snap_bo);
	iw->snap_unanswered = false;
	jv_debug(NULL, NULL, "instance snapshot delivered");
	instreport_wake(iw);
}

void instreport_snapshot(struct instwatch *iw, int64_t now)
{
	struct agent *ag = iw->ag;
	if (!iw->reporting || !iw->snap_wanted || iw->snap_req || now < iw->snap_at_ms || ag->hard_stop)
		return;
	cJSON *body = cJSON_CreateObject();
	cJSON *arr = cJSON_AddArrayToObject(body, "instances");
	if (!arr) {
		cJSON_Delete(body);
		return;
	}
	for (struct inst *in = iw->list; in; in = in->next) {
		const char *st = instreport_last_state(in);
		if (!st || strcmp(st, "REMOVED") == 0 || !in->stream)
			continue;
		cJSON *e = cJSON_Duplicate(in->last, true);
		if (!e)
			continue;
		cJSON_DeleteItemFromObjectCaseSensitive(e, "seq");
		cJSON_AddNumberToObject(e, "seq", (double)spool_run_last_seq(in->stream));
		cJSON_AddItemToArray(arr, e);
	}
	char *text = jv_json_print(body);
	cJSON_Delete(body);
	if (!text)
		return;
	char path[200];
	snprintf(path, sizeof(path), "/v1/agents/%s/instances", ag->cfg.agent_id);
	iw->snap_wanted = false;
	if (transport_post(ag->tp, path, text, (long)ag->cfg.request_timeout_s * 1000,
	                   on_snapshot_answer, iw, &iw->snap_req)) {
		iw->snap_req = NULL;
		iw->snap_wanted = true;
		iw->snap_unanswered = false;
		iw->snap_at_ms = now + backoff_next(&iw->snap_bo, -1, jv_random_u64());
	}
}
