/* api_instance_stop.c — instance.stop([{timeoutSeconds=, force=}]): ask the
 * monitor to stop the server and follow its stop ladder to a final state,
 * with progress and cancellation (see api_instance.c for the module). */
#include "api_instance.h"
#include "box.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/instance_client.h"
#include "jobvisor/instance_spec.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"

/* ---- stop ------------------------------------------------------------------ */

static void push_stop_result(lua_State *L, const cJSON *st, bool already)
{
	lua_newtable(L);
	lua_pushstring(L, jv_json_str(st, "state", "STOPPED"));
	lua_setfield(L, -2, "state");
	const cJSON *le = cJSON_GetObjectItemCaseSensitive(st, "lastExit");
	if (cJSON_IsObject(le)) {
		if (jv_json_has_num(le, "code")) {
			lua_pushinteger(L, jv_json_int(le, "code", 0));
			lua_setfield(L, -2, "exitCode");
		}
		const char *sig = jv_json_str(le, "signal", NULL);
		if (sig) {
			lua_pushstring(L, sig);
			lua_setfield(L, -2, "signal");
		}
		jv_json_to_lua(L, le);
		lua_setfield(L, -2, "lastExit");
	}
	lua_pushboolean(L, already);
	lua_setfield(L, -2, "already");
}

/* instance.stop's answer from the status once the monitor is gone (state.json
 * has the last word). With check_final, a state that is not final means the
 * monitor died mid-stop. */
static int stopped_from_state(lua_State *L, struct jv_run_ctx *ctx, bool already, bool check_final)
{
	char msg[600];
	struct jv_box *box = jv_box_push(L);
	cJSON *st = instance_fetch_status(ctx, box, msg, sizeof(msg));
	if (!st)
		return jv_push_fail(L, "%s", msg);
	if (check_final && !instance_state_final(st) && !jv_json_bool(st, "stale", false))
		return jv_push_fail(L, "the monitor went away while stopping (state %s)",
		                    jv_json_str(st, "state", "?"));
	push_stop_result(L, st, already);
	return 1;
}

/* The longest instance.stop waits for a monitor that stopped answering: the
 * monitor bounds every step itself. */
static double stop_bound(struct jv_run_ctx *ctx, double timeout)
{
	const cJSON *allowed = cJSON_GetObjectItemCaseSensitive(ctx->settings, "allowed_executables");
	struct jv_instance_spec *s = NULL;
	char msg[600];
	double bound = 120;
	if (jv_instance_spec_load(ctx->instance_dir, allowed, &s, msg, sizeof(msg)) == 0)
		bound = (timeout > 0 ? timeout : s->stop_timeout_s) + s->stop_signal_timeout_s + 30;
	jv_instance_spec_free(s);
	return bound;
}

/* Report a new step of the stop ladder once. */
static void stop_phase_progress(struct jv_run_ctx *ctx, const cJSON *st, char *phase, size_t len)
{
	static const char *const what[][2] = {{"console", "sent the stop command"},
	                                      {"signal", "sent the stop signal"},
	                                      {"kill", "sent SIGKILL"},
	                                      {"sweep", "cleaning up leftover processes"}};
	const char *ph = jv_json_str(st, "phase", NULL);
	if (!ph || strcmp(ph, phase) == 0)
		return;
	snprintf(phase, len, "%s", ph);
	for (size_t i = 0; i < JV_ARRAY_LEN(what); i++)
		if (strcmp(ph, what[i][0]) == 0)
			jv_emit_progress(ctx, -1, what[i][1]);
}

/* Follow the monitor's state updates on the connection (owned by conn_box)
 * until it answers the stop or goes away. */
static int follow_stop(lua_State *L, struct jv_run_ctx *ctx, struct jv_box *conn_box,
                       struct jv_progress *p, double bound)
{
	struct jv_monconn *c = jv_box_get(conn_box);
	struct jv_box *msg_box = jv_box_push(L);
	int64_t start = jv_now_mono_ms(), last = 0;
	char phase[16] = "";
	for (;;) {
		CANCEL_POINT(L, ctx);
		cJSON *m = NULL;
		int rc = jv_monconn_recv(c, SLICE_MS, &m);
		double elapsed = (double)(jv_now_mono_ms() - start) / 1000.0;
		if (rc == -ETIMEDOUT) {
			if (elapsed > bound)
				return jv_push_fail(L, "the monitor did not finish stopping within %.0fs", bound);
			char d[64];
			snprintf(d, sizeof(d), "%s%s%.0fs", phase, phase[0] ? ", " : "", elapsed);
			instance_progress_every_second(ctx, p, &last, elapsed / bound, d);
			continue;
		}
		if (rc < 0)
			break; /* closed: the monitor is gone; state.json has the result */
		jv_box_set(msg_box, m, jv_box_release_json);
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(m, "status");
		if (cJSON_GetObjectItemCaseSensitive(m, "ok")) {
			if (!jv_json_bool(m, "ok", false))
				return jv_push_fail(L, "%s", jv_json_str(m, "error", "stop refused"));
			push_stop_result(L, st, false);
			jv_box_release(conn_box);
			jv_progress_report(ctx, p, 1.0, "stopped");
			return 1;
		}
		stop_phase_progress(ctx, st, phase, sizeof(phase));
		jv_box_release(msg_box);
	}
	jv_box_release(conn_box);
	return stopped_from_state(L, ctx, false, true);
}

int l_instance_stop(lua_State *L)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	static const char *const keys[] = {"timeoutSeconds", "force", "progress", NULL};
	apiutil_opts(L, 1, "instance.stop", keys);
	double timeout = instance_opt_seconds(L, 1, "timeoutSeconds", -1, 86400);
	bool force = apiutil_opt_bool(L, 1, "force", false);
	struct jv_progress p;
	jv_progress_init(L, 1, &p, "stopping");
	char msg[600];
	enum ensure_result res;
	int rc = instance_ensure_monitor(ctx, true, 30, &res, msg, sizeof(msg));
	if (rc == 1)
		return jv_raise_cancel(L);
	if (rc < 0)
		return jv_push_fail(L, "cannot stop instance '%s': %s", ctx->instance_id, msg);
	if (res == ENSURE_NONE)
		return stopped_from_state(L, ctx, true, false);
	double bound = stop_bound(ctx, timeout);
	struct jv_box *conn_box = jv_box_push(L);
	struct jv_monconn *c = NULL;
	rc = jv_monconn_open(ctx->instance_dir, &c);
	if (rc == -ENOENT || rc == -ECONNREFUSED) /* it left between our look and now: it stopped */
		return stopped_from_state(L, ctx, true, false);
	if (rc < 0)
		return jv_push_fail(L, "cannot reach the monitor: %s", strerror(-rc));
	jv_box_set(conn_box, c, jv_box_release_monconn);
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "op", "stop");
	if (timeout > 0)
		cJSON_AddNumberToObject(req, "timeoutSeconds", timeout);
	cJSON_AddBoolToObject(req, "force", force);
	rc = jv_monconn_send(c, req);
	cJSON_Delete(req);
	if (rc < 0)
		return jv_push_fail(L, "cannot reach the monitor: %s", strerror(-rc));
	return follow_stop(L, ctx, conn_box, &p, bound);
}
