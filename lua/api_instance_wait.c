/* api_instance_wait.c — instance.wait_ready and instance.wait_log: follow
 * the monitor's state and console through a subscription, in SLICE_MS slices
 * with progress and cancellation (see api_instance.c for the module). */
#include "api_instance.h"
#include "box.h"

#include <errno.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/instance_client.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"

static void release_regex(void *p)
{
	regfree(p);
	free(p);
}


/* ---- waiting --------------------------------------------------------------- */

/* Connect and subscribe; the first reply's status goes to *first. */
static int subscribe(struct jv_run_ctx *ctx, bool console, long long since, struct jv_monconn **out,
                     cJSON **first)
{
	*out = NULL;
	*first = NULL;
	struct jv_monconn *c;
	int rc = jv_monconn_open(ctx->instance_dir, &c);
	if (rc < 0)
		return rc;
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "op", "subscribe");
	cJSON_AddBoolToObject(req, "console", console);
	if (since >= 0)
		cJSON_AddNumberToObject(req, "since", (double)since);
	rc = jv_monconn_send(c, req);
	cJSON_Delete(req);
	cJSON *m = NULL;
	if (rc == 0)
		rc = jv_monconn_recv(c, 5000, &m);
	if (rc == 0 && !jv_json_bool(m, "ok", false))
		rc = -EPROTO;
	if (rc < 0) {
		cJSON_Delete(m);
		jv_monconn_close(c);
		return rc;
	}
	*first = cJSON_DetachItemFromObjectCaseSensitive(m, "status");
	cJSON_Delete(m);
	*out = c;
	return 0;
}

static int not_running(lua_State *L, struct jv_run_ctx *ctx, const char *waiting_for)
{
	char msg[600];
	cJSON *st = instance_fetch_status(ctx, NULL, msg, sizeof(msg));
	if (!st)
		return jv_push_fail(L, "%s", msg);
	snprintf(msg, sizeof(msg), "instance '%s' is %s%s%s while waiting for %s", ctx->instance_id,
	         jv_json_str(st, "state", "?"), *jv_json_str(st, "message", "") ? ": " : "",
	         jv_json_str(st, "message", ""), waiting_for);
	cJSON_Delete(st);
	return jv_push_fail(L, "%s", msg);
}

/* The connection and the newest status of a subscription, each in a box. */
struct sub {
	struct jv_box *conn, *status;
};

static int subscribe_boxed(lua_State *L, struct jv_run_ctx *ctx, bool console, long long since,
                           struct sub *sb)
{
	sb->conn = jv_box_push(L);
	sb->status = jv_box_push(L);
	struct jv_monconn *c;
	cJSON *st;
	int rc = subscribe(ctx, console, since, &c, &st);
	if (rc < 0)
		return rc;
	jv_box_set(sb->conn, c, jv_box_release_monconn);
	jv_box_set(sb->status, st, jv_box_release_json);
	return 0;
}

/* One slice of waiting: progress once a second, then the next message:
 * 0 with *m, -ETIMEDOUT, or another -errno with the connection closed. */
static int sub_next(struct jv_run_ctx *ctx, struct jv_progress *p, int64_t *last, double frac,
                    const char *detail, struct sub *sb, cJSON **m)
{
	instance_progress_every_second(ctx, p, last, frac, detail);
	*m = NULL;
	int rc = jv_monconn_recv(jv_box_get(sb->conn), SLICE_MS, m);
	if (rc < 0 && rc != -ETIMEDOUT)
		jv_box_release(sb->conn);
	return rc;
}

int l_instance_wait_ready(lua_State *L)
{
	lua_settop(L, 2); /* boxes go above the arguments */
	struct jv_run_ctx *ctx = jv_ctx(L);
	lua_Number timeout = luaL_checknumber(L, 1);
	luaL_argcheck(L, !isnan(timeout) && timeout > 0 && timeout <= 86400, 1,
	              "timeoutSeconds must be within (0, 86400]");
	static const char *const keys[] = {"progress", NULL};
	apiutil_opts(L, 2, "instance.wait_ready", keys);
	struct jv_progress p;
	jv_progress_init(L, 2, &p, "waiting for the server to be ready");
	struct sub sb;
	int rc = subscribe_boxed(L, ctx, false, -1, &sb);
	if (rc == -ENOENT || rc == -ECONNREFUSED)
		return not_running(L, ctx, "it to be ready");
	if (rc < 0)
		return jv_push_fail(L, "cannot reach the monitor: %s", strerror(-rc));
	int64_t start = jv_now_mono_ms(), last = 0;
	for (;;) {
		const cJSON *st = jv_box_get(sb.status);
		if (instance_state_is(st, "RUNNING")) {
			jv_progress_report(ctx, &p, 1.0, "ready");
			jv_json_to_lua(L, st);
			return 1;
		}
		if (instance_state_final(st) || instance_state_is(st, "STOPPING")) {
			jv_box_release(sb.conn);
			return not_running(L, ctx, "it to be ready");
		}
		CANCEL_POINT(L, ctx);
		double elapsed = (double)(jv_now_mono_ms() - start) / 1000.0;
		if (elapsed > timeout)
			return jv_push_fail(L, "not ready within %.0fs (state %s)", timeout,
			                    jv_json_str(st, "state", "?"));
		char d[96];
		snprintf(d, sizeof(d), "%s, %.0fs of %.0fs", jv_json_str(st, "state", "?"), elapsed, timeout);
		cJSON *m;
		rc = sub_next(ctx, &p, &last, elapsed / timeout, d, &sb, &m);
		if (rc == -ETIMEDOUT)
			continue;
		if (rc < 0)
			return not_running(L, ctx, "it to be ready");
		cJSON *ns = cJSON_DetachItemFromObjectCaseSensitive(m, "status");
		cJSON_Delete(m);
		if (cJSON_IsObject(ns))
			jv_box_set(sb.status, ns, jv_box_release_json);
		else
			cJSON_Delete(ns);
	}
}

int l_instance_wait_log(lua_State *L)
{
	lua_settop(L, 3); /* boxes go above the arguments */
	struct jv_run_ctx *ctx = jv_ctx(L);
	const char *pattern = luaL_checkstring(L, 1);
	lua_Number timeout = luaL_checknumber(L, 2);
	luaL_argcheck(L, !isnan(timeout) && timeout > 0 && timeout <= 86400, 2,
	              "timeoutSeconds must be within (0, 86400]");
	static const char *const keys[] = {"since", "progress", NULL};
	apiutil_opts(L, 3, "instance.wait_log", keys);
	long long since = -1;
	lua_getfield(L, LUA_REGISTRYINDEX, LASTSEQ_KEY);
	if (lua_isinteger(L, -1))
		since = (long long)lua_tointeger(L, -1);
	lua_pop(L, 1);
	since = (long long)apiutil_opt_int(L, 3, "since", since, -1, INT64_MAX);
	struct jv_box *re_box = jv_box_push(L);
	regex_t *re = malloc(sizeof(*re));
	if (!re)
		return luaL_error(L, "instance.wait_log: out of memory");
	int r = regcomp(re, pattern, REG_EXTENDED | REG_NOSUB);
	if (r != 0) {
		char why[128];
		regerror(r, re, why, sizeof(why));
		free(re);
		return luaL_argerror(L, 1, lua_pushfstring(L, "not a valid extended regex: %s", why));
	}
	jv_box_set(re_box, re, release_regex);
	struct jv_progress p;
	jv_progress_init(L, 3, &p, "waiting for the console");
	struct sub sb;
	int rc = subscribe_boxed(L, ctx, true, since, &sb);
	if (rc < 0) {
		if (rc == -ENOENT || rc == -ECONNREFUSED)
			return not_running(L, ctx, "a console line");
		return jv_push_fail(L, "cannot reach the monitor: %s", strerror(-rc));
	}
	jv_box_release(sb.status);
	struct jv_box *msg_box = sb.status; /* now holds the message being looked at */
	int64_t start = jv_now_mono_ms(), last = 0;
	for (;;) {
		CANCEL_POINT(L, ctx);
		double elapsed = (double)(jv_now_mono_ms() - start) / 1000.0;
		if (elapsed > timeout)
			return jv_push_fail(L, "no console line matched '%s' within %.0fs", pattern, timeout);
		char d[64];
		snprintf(d, sizeof(d), "%.0fs of %.0fs", elapsed, timeout);
		cJSON *m;
		rc = sub_next(ctx, &p, &last, elapsed / timeout, d, &sb, &m);
		if (rc == -ETIMEDOUT)
			continue;
		if (rc < 0)
			return not_running(L, ctx, "a console line");
		jv_box_set(msg_box, m, jv_box_release_json);
		const char *ev = jv_json_str(m, "event", "");
		const char *line = jv_json_str(m, "line", NULL);
		if (strcmp(ev, "line") == 0 && line && regexec(re, line, 0, NULL, 0) == 0) {
			lua_pushstring(L, line);
			lua_pushinteger(L, (lua_Integer)jv_json_int(m, "seq", 0));
			return 2;
		}
		if (strcmp(ev, "state") == 0 && instance_state_final(cJSON_GetObjectItemCaseSensitive(m, "status"))) {
			jv_box_release(sb.conn);
			return not_running(L, ctx, "a console line");
		}
	}
}
