/* api_agent.c — the agent side of the wire protocol: poll, events, result.
 *
 * Each handler validates the whole body before it changes anything (400 with
 * {error} on the first problem), then checks that the run belongs to the
 * calling agent (403 when it belongs to another) and that the agent still
 * holds it (409 when the run is unknown, was declared lost, or was cancelled
 * before it ran: the agent must stop the child and drop its spool). Events and
 * results are idempotent, so an agent may resend anything whose answer it
 * did not see. */
#include "cp.h"

#include <civetweb.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define RUNNING_MAX 1024
#define CAPACITY_MAX 1024
#define WAIT_MAX 300
#define REASON_MAX 64

static bool is_int_in(const cJSON *v, int64_t lo, int64_t hi)
{
	if (!cJSON_IsNumber(v))
		return false;
	double d = v->valuedouble;
	return d >= (double)lo && d <= (double)hi && d == (double)(int64_t)d;
}

/* The accept front's marker (see CP_FRONT_HEADER): true when this request
 * came through the front of this process, with the most it may still wait. */
static bool front_marked(const struct cp *cp, const struct mg_connection *conn, int64_t *wait_cap_ms)
{
	const char *m = mg_get_header(conn, CP_FRONT_HEADER);
	if (!m || strlen(m) != CP_FRONT_SECRET_LEN + 10 || m[CP_FRONT_SECRET_LEN] != ' ' ||
	    !tokens_equal(m, CP_FRONT_SECRET_LEN, cp->front_secret, CP_FRONT_SECRET_LEN))
		return false;
	char *end = NULL;
	long long v = strtoll(m + CP_FRONT_SECRET_LEN + 1, &end, 10);
	if (*end || v < 0)
		return false;
	*wait_cap_ms = v;
	return true;
}

/* The poll waits in the front, not in this thread: tell it so. */
static void send_park(struct mg_connection *conn, const struct poll_park *park)
{
	mg_printf(conn,
	          CP_PARK_PREFIX "Park\r\nX-JV-Park: %zu %llu %lld\r\nContent-Length: 0\r\n"
	          "Connection: close\r\n\r\n",
	          park->agent_index, (unsigned long long)park->gen, (long long)park->wait_ms);
}

bool api_agent_poll(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id)
{
	cJSON *body = NULL;
	bool answered = true;
	if (http_read_agent_json(conn, agent, agent_id, &body) < 0)
		return true;
	struct poll_req req = {.capacity = 1, .wait_cap_ms = CP_FRONT_WAIT_ANY};
	req.can_park = front_marked(cp, conn, &req.wait_cap_ms);
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "capacity");
	if (v && !is_int_in(v, 0, CAPACITY_MAX)) {
		http_send_error(conn, 400, "'capacity' must be an integer from 0 to %d", CAPACITY_MAX);
		goto out;
	}
	if (v)
		req.capacity = (int)v->valuedouble;
	v = cJSON_GetObjectItemCaseSensitive(body, "waitSeconds");
	if (v && !is_int_in(v, 0, WAIT_MAX)) {
		http_send_error(conn, 400, "'waitSeconds' must be an integer from 0 to %d", WAIT_MAX);
		goto out;
	}
	if (v)
		req.wait_s = (int)v->valuedouble;
	const cJSON *running = cJSON_GetObjectItemCaseSensitive(body, "running");
	if (running && !cJSON_IsArray(running)) {
		http_send_error(conn, 400, "'running' must be an array of {jobRunId, lastSeq}");
		goto out;
	}
	int n = running ? cJSON_GetArraySize(running) : 0;
	if (n > RUNNING_MAX) {
		http_send_error(conn, 400, "'running' lists more than %d runs", RUNNING_MAX);
		goto out;
	}
	req.running = n ? calloc((size_t)n, sizeof(*req.running)) : NULL;
	if (n && !req.running) {
		http_send_error(conn, 500, "out of memory");
		goto out;
	}
	for (int i = 0; i < n; i++) {
		const cJSON *r = cJSON_GetArrayItem(running, i);
		const char *id = jv_json_str(r, "jobRunId", NULL);
		const cJSON *ls = cJSON_GetObjectItemCaseSensitive(r, "lastSeq");
		if (!cJSON_IsObject(r) || !id || !jv_run_id_valid(id)) {
			http_send_error(conn, 400, "running[%d].jobRunId must be a run id", i);
			goto out;
		}
		if (ls && !is_int_in(ls, 0, (int64_t)1 << 53)) {
			http_send_error(conn, 400, "running[%d].lastSeq must be an integer >= 0", i);
			goto out;
		}
		req.running[req.nrunning].run_id = id;
		req.running[req.nrunning].last_seq = ls ? (int64_t)ls->valuedouble : 0;
		req.nrunning++;
	}
	cJSON *answer = NULL;
	struct poll_park park;
	int rc = dispatch_poll(cp, agent, &req, &answer, &park);
	if (rc < 0) {
		http_send_error(conn, 500, "database error");
		goto out;
	}
	if (rc == 1) {
		send_park(conn, &park);
		answered = false;
		goto out;
	}
	http_send_json(conn, 200, answer);
	cJSON_Delete(answer);
out:
	free(req.running);
	cJSON_Delete(body);
	return answered;
}

/* Load the run's state: 0 when the agent may report on the run;
 * otherwise the answer is set. */
static int load_owned_run(struct cp *cp, struct http_answer *a, const struct cp_agent *agent,
                          const char *run_id, struct store_run_state *rs)
{
	int lookup_rc = store_run_state(cp->store, run_id, rs);
	if (lookup_rc == -ENOENT) {
		http_answer_error(a, 409, "run '%s' is not known here; drop it", run_id);
		return -1;
	}
	if (lookup_rc < 0) {
		http_answer_error(a, 500, "database error");
		return -1;
	}
	if (strcmp(rs->agent_id, agent->id) != 0) {
		http_answer_error(a, 403, "run '%s' belongs to another agent", run_id);
		return -1;
	}
	return 0;
}

void api_agent_events(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *run_id)
{
	cJSON *body = NULL;
	if (http_read_body(conn, &body) < 0)
		return;
	const cJSON *events = cJSON_GetObjectItemCaseSensitive(body, "events");
	if (!cJSON_IsArray(events)) {
		http_send_error(conn, 400, "'events' must be an array");
		cJSON_Delete(body);
		return;
	}
	int n = cJSON_GetArraySize(events);
	if (n > CP_EVENTS_PER_POST) {
		http_send_error(conn, 400, "more than %d events in one request", CP_EVENTS_PER_POST);
		cJSON_Delete(body);
		return;
	}
	/* No cp->mu: the run's state and its events are store calls (thread-safe);
	 * events_store takes the lock for what it publishes in memory. */
	struct http_answer ans = {0};
	struct store_run_state rs;
	if (load_owned_run(cp, &ans, agent, run_id, &rs) < 0)
		goto out;
	for (int i = 0; i < n; i++) {
		const char *why = events_validate(cJSON_GetArrayItem(events, i), run_id, &rs);
		if (why) {
			http_answer_error(&ans, 400, "events[%d]: %s", i, why);
			goto out;
		}
	}
	/* Late events of a run the agent itself finished are still kept (the log
	 * completes); a run the server took away answers 409. */
	bool held = strcmp(rs.status, "RUNNING") == 0 ||
	            (lc_status_terminal(rs.status) && strcmp(rs.finished_by, "agent") == 0);
	if (!held) {
		http_answer_error(&ans, 409, "run '%s' is no longer held by this agent (%s%s)", run_id, rs.status,
		                strcmp(rs.finished_by, "server") == 0 ? " by the control plane" : "");
		goto out;
	}
	int64_t ack = 0;
	if (events_store(cp, run_id, &rs, events, &ack) < 0) {
		http_answer_error(&ans, 500, "database error");
		goto out;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "ackSeq", (double)ack);
	cJSON_AddBoolToObject(o, "cancelRequested", rs.cancel_requested && strcmp(rs.status, "RUNNING") == 0);
	http_answer_json(&ans, 200, o);
out:
	http_send_answer(conn, &ans);
	cJSON_Delete(body);
}

/* Cut s to at most max bytes without splitting a UTF-8 sequence. */
static void utf8_cut(char *s, size_t max)
{
	size_t n = strlen(s);
	if (n <= max)
		return;
	while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80)
		max--;
	s[max] = '\0';
}

/* The stored error: {message, stack?, retryable, reason?}; NULL + msg on a type error. */
static cJSON *clean_error(const cJSON *e, const char *status, const char **why)
{
	*why = NULL;
	if (e && !cJSON_IsNull(e) && !cJSON_IsObject(e)) {
		*why = "'error' must be an object {message, stack, retryable}";
		return NULL;
	}
	const cJSON *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
	const cJSON *stack = cJSON_GetObjectItemCaseSensitive(e, "stack");
	const cJSON *retry = cJSON_GetObjectItemCaseSensitive(e, "retryable");
	const cJSON *reason = cJSON_GetObjectItemCaseSensitive(e, "reason");
	if ((msg && !cJSON_IsNull(msg) && !cJSON_IsString(msg)) || (stack && !cJSON_IsNull(stack) && !cJSON_IsString(stack))) {
		*why = "'error.message' and 'error.stack' must be strings";
		return NULL;
	}
	if (retry && !cJSON_IsNull(retry) && !cJSON_IsBool(retry)) {
		*why = "'error.retryable' must be a boolean";
		return NULL;
	}
	if (reason && !cJSON_IsNull(reason) &&
	    (!cJSON_IsString(reason) || !reason->valuestring[0] || strlen(reason->valuestring) > REASON_MAX)) {
		*why = "'error.reason' must be a short string";
		return NULL;
	}
	if ((!e || cJSON_IsNull(e)) && strcmp(status, "FAILED") != 0)
		return NULL;
	cJSON *out = cJSON_CreateObject();
	if (!out)
		return NULL;
	if (cJSON_IsString(msg)) {
		cJSON *m = cJSON_AddStringToObject(out, "message", msg->valuestring);
		if (m)
			utf8_cut(m->valuestring, CP_MESSAGE_MAX);
	} else {
		cJSON_AddStringToObject(out, "message", strcmp(status, "FAILED") == 0 ? "failed without an error message" : "");
	}
	if (cJSON_IsString(stack)) {
		cJSON *s = cJSON_AddStringToObject(out, "stack", stack->valuestring);
		if (s)
			utf8_cut(s->valuestring, CP_STACK_MAX);
	}
	cJSON_AddBoolToObject(out, "retryable", cJSON_IsTrue(retry));
	if (cJSON_IsString(reason))
		cJSON_AddStringToObject(out, "reason", reason->valuestring);
	return out;
}

void api_agent_result(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *run_id)
{
	cJSON *body = NULL, *error = NULL;
	if (http_read_body(conn, &body) < 0)
		return;
	const char *status = jv_json_str(body, "status", "");
	if (strcmp(status, "COMPLETED") != 0 && strcmp(status, "FAILED") != 0 && strcmp(status, "CANCELLED") != 0) {
		http_send_error(conn, 400, "'status' must be COMPLETED, FAILED or CANCELLED");
		cJSON_Delete(body);
		return;
	}
	const char *why = NULL;
	error = clean_error(cJSON_GetObjectItemCaseSensitive(body, "error"), status, &why);
	const cJSON *fin = cJSON_GetObjectItemCaseSensitive(body, "finishedAt");
	const cJSON *last = cJSON_GetObjectItemCaseSensitive(body, "lastSeq");
	int64_t ms;
	if (!why && fin && !cJSON_IsNull(fin) && (!cJSON_IsString(fin) || jv_iso8601_parse(fin->valuestring, &ms) < 0))
		why = "'finishedAt' must be ISO-8601 UTC like 2026-01-02T03:04:05.678Z";
	if (!why && last && !is_int_in(last, 0, (int64_t)1 << 53))
		why = "'lastSeq' must be an integer >= 0";
	if (why) {
		http_send_error(conn, 400, "%s", why);
		goto done;
	}
	const cJSON *output = cJSON_GetObjectItemCaseSensitive(body, "output");
	cJSON *note = NULL;
	char *out_text = output ? cJSON_PrintUnformatted(output) : NULL;
	size_t out_len = out_text ? strlen(out_text) : 0;
	free(out_text);
	if (out_len > CP_OUTPUT_MAX) {
		/* Keep the result (refusing it would strand the run) but not a huge output. */
		note = cJSON_CreateObject();
		cJSON_AddBoolToObject(note, "outputTooLarge", true);
		cJSON_AddNumberToObject(note, "bytes", (double)out_len);
		output = note;
	}

	/* No cp->mu: store calls (the database decides races, store.h) and
	 * lc_run_finish, which takes it for its wake-up only. */
	struct http_answer ans = {0};
	struct store_run_state rs;
	if (load_owned_run(cp, &ans, agent, run_id, &rs) < 0)
		goto out;
	/* 1: another replica finished it meanwhile (a resend there): judge again. */
	int fr = strcmp(rs.status, "RUNNING") == 0 ? lc_run_finish(cp, run_id, status, output, error, "agent", 0) : 1;
	if (fr > 0 && load_owned_run(cp, &ans, agent, run_id, &rs) < 0)
		goto out;
	if (fr < 0) {
		http_answer_error(&ans, 500, "database error");
		goto out;
	} else if (fr == 0 || (strcmp(rs.finished_by, "agent") == 0 && strcmp(rs.status, status) == 0)) {
		/* Finished now, or the same result again (its answer was lost): accepted. */
	} else if (strcmp(rs.finished_by, "agent") == 0) {
		http_answer_error(&ans, 409, "run '%s' already finished as %s", run_id, rs.status);
		goto out;
	} else {
		http_answer_error(&ans, 409, "run '%s' is no longer held by this agent (%s%s)", run_id, rs.status,
		                strcmp(rs.finished_by, "server") == 0 ? " by the control plane" : "");
		goto out;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "jobRunId", run_id);
	cJSON_AddStringToObject(o, "status", status);
	http_answer_json(&ans, 200, o);
out:
	http_send_answer(conn, &ans);
	cJSON_Delete(note);
done:
	cJSON_Delete(error);
	cJSON_Delete(body);
}
