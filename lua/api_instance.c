/* api_instance.c — the `instance` module: the job's handle on its game server.
 *
 *   instance.spec()                         -> table | nil, msg
 *   instance.check_spec(spec [, build])     -> true | nil, msg (nothing written)
 *   instance.start([{timeoutSeconds=}])     -> {pid, state, already, adopted} | nil, msg
 *   instance.stop([{timeoutSeconds=, force=}]) -> {state, exitCode, signal, already, lastExit} | nil, msg
 *   instance.status()                       -> status table (adopts an orphaned server)
 *   instance.send(line)                     -> seq | nil, msg
 *   instance.wait_ready(timeoutSeconds [, {progress={from,to}}]) -> status | nil, msg
 *   instance.wait_log(pattern, timeoutSeconds [, {since=, progress=}]) -> line, seq | nil, msg
 *
 * All talking goes through supervisor/core/instance_client.c; the monitor does the
 * supervising. Waits run in 100 ms slices: between slices the binding checks
 * for cancellation (and raises the cancellation error after releasing what
 * it holds) and reports progress at most once a second. Misuse (bad
 * arguments, a bad regex) raises; expected failures return nil, message.
 *
 * Two START jobs racing on one instance cannot start two servers: the
 * monitor's lock admits one, the other launcher is told "busy" and attaches
 * to the winner. */
#include "apiutil.h"
#include "box.h"

#include <errno.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "jobvisor/instance_client.h"
#include "jobvisor/instance_spec.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"

#define SLICE_MS 100
#define LASTSEQ_KEY "jv.instance.lastseq"
#define DEFAULT_START_TIMEOUT_S 60

static bool state_is(const cJSON *st, const char *name)
{
	return strcmp(jv_json_str(st, "state", ""), name) == 0;
}

static bool state_final(const cJSON *st)
{
	return state_is(st, "STOPPED") || state_is(st, "CRASHED");
}

static double opt_seconds(lua_State *L, int idx, const char *key, double def, int max)
{
	if (lua_isnoneornil(L, idx))
		return def;
	int t = lua_getfield(L, idx, key);
	double v = def;
	if (t != LUA_TNIL) {
		v = lua_tonumber(L, -1);
		if (t != LUA_TNUMBER || isnan(v) || v <= 0 || v > max)
			luaL_error(L, "option '%s' must be a number of seconds in (0, %d], got %s", key, max,
			           luaL_tolstring(L, -1, NULL));
	}
	lua_pop(L, 1);
	return v;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Raise the cancellation error after freeing what the caller holds. */
#define CANCEL_POINT(L, ctx, cleanup)          \
	do {                                       \
		if (jv_cancelled(ctx)) {               \
			cleanup;                           \
			return jv_raise_cancel(L);         \
		}                                      \
	} while (0)

static void progress_every_second(struct jv_run_ctx *ctx, struct jv_progress *p, int64_t *last,
                                  double fraction, const char *detail)
{
	int64_t now = jv_now_mono_ms();
	if (now - *last < 1000)
		return;
	*last = now;
	jv_progress_report(ctx, p, fraction, detail);
}

/* ---- check_spec() -------------------------------------------------------- */

static bool within(const char *path, const char *dir)
{
	size_t n = strlen(dir);
	return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* instance.check_spec(spec [, build]) -> true | nil, message
 * spec: a table as instance.json would hold it. build: an instance-relative
 * directory holding the build the spec is meant to run (a staged one, say).
 * Without build: shape, types, ranges, the ready regex and the placeholders;
 * with build also the cwd and the executable, resolved as the monitor will
 * once that build is `current` (inside the build or allowed_executables).
 * Writes nothing: INSTALL_SERVER asks before it downloads, and again before
 * it publishes anything. */
static int l_instance_check_spec(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	char rel[4096];
	const char *build = lua_isnoneornil(L, 2) ? NULL : apiutil_path(L, 2, rel, false);
	struct jv_run_ctx *ctx = jv_ctx(L);
	char err[600];
	cJSON *j = jv_lua_to_json(L, 1, err, sizeof(err));
	if (!j)
		return luaL_error(L, "instance.check_spec: %s", err);
	char *text = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (!text)
		return luaL_error(L, "instance.check_spec: out of memory");
	char data[4200], bdir[8400], inst_real[4096], build_real[4096];
	snprintf(data, sizeof(data), "%s/data", ctx->instance_dir);
	if (build)
		snprintf(bdir, sizeof(bdir), "%s/%s", ctx->instance_dir, build);
	else
		snprintf(bdir, sizeof(bdir), "%s/current", ctx->instance_dir);
	struct jv_spec_paths paths = {.instance_dir = ctx->instance_dir, .build_dir = bdir,
	                              .data_dir = data};
	if (build) {
		if (!realpath(ctx->instance_dir, inst_real) || !realpath(bdir, build_real) ||
		    !within(build_real, inst_real)) {
			free(text);
			return jv_push_fail(L, "instance spec: build directory '%s' cannot be used", build);
		}
		paths.build_dir = build_real;
	}
	struct jv_instance_spec *sp = NULL;
	int rc = jv_instance_spec_parse(text, strlen(text), &paths, &sp, err, sizeof(err));
	free(text);
	if (rc == 0 && build) {
		const cJSON *allowed = cJSON_GetObjectItemCaseSensitive(ctx->settings, "allowed_executables");
		rc = jv_instance_spec_resolve(sp, &paths, allowed, err, sizeof(err));
	}
	jv_instance_spec_free(sp);
	if (rc)
		return jv_push_fail(L, "instance spec: %s", err);
	lua_pushboolean(L, 1);
	return 1;
}

/* ---- spec() ------------------------------------------------------------ */

static void push_strings(lua_State *L, char *const *v, size_t n)
{
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		lua_pushstring(L, v[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
}

static void set_num_if(lua_State *L, const char *key, double v)
{
	if (v >= 0) {
		lua_pushnumber(L, v);
		lua_setfield(L, -2, key);
	}
}

static int l_instance_spec(lua_State *L)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	const cJSON *allowed = cJSON_GetObjectItemCaseSensitive(ctx->settings, "allowed_executables");
	struct jv_instance_spec *s = NULL;
	char err[600];
	if (jv_instance_spec_load(ctx->instance_dir, allowed, &s, err, sizeof(err)) < 0)
		return jv_push_fail(L, "%s", err);
	lua_newtable(L);
	push_strings(L, s->argv, s->argc);
	lua_setfield(L, -2, "command");
	lua_pushstring(L, s->exe);
	lua_setfield(L, -2, "executable");
	lua_pushstring(L, s->cwd);
	lua_setfield(L, -2, "cwd");
	if (s->build_dir) {
		const char *slash = strrchr(s->build_dir, '/');
		lua_pushstring(L, slash ? slash + 1 : s->build_dir);
		lua_setfield(L, -2, "build");
	}
	lua_newtable(L);
	for (size_t i = 0; i < s->nenv; i++) {
		const char *eq = strchr(s->env[i], '=');
		lua_pushlstring(L, s->env[i], (size_t)(eq - s->env[i]));
		lua_pushstring(L, eq + 1);
		lua_settable(L, -3);
	}
	lua_setfield(L, -2, "env");
	lua_newtable(L);
	if (s->stop_command) {
		lua_pushstring(L, s->stop_command);
		lua_setfield(L, -2, "command");
	}
	lua_pushstring(L, jv_signal_name(s->stop_signal));
	lua_setfield(L, -2, "signal");
	set_num_if(L, "timeoutSeconds", s->stop_timeout_s);
	set_num_if(L, "signalTimeoutSeconds", s->stop_signal_timeout_s);
	lua_setfield(L, -2, "stop");
	lua_newtable(L);
	if (s->ready_pattern) {
		lua_pushstring(L, s->ready_pattern);
		lua_setfield(L, -2, "logPattern");
	}
	set_num_if(L, "timeoutSeconds", s->ready_timeout_s);
	lua_setfield(L, -2, "ready");
	lua_newtable(L);
	lua_pushstring(L, jv_restart_policy_name(s->policy));
	lua_setfield(L, -2, "policy");
	set_num_if(L, "maxRestarts", s->max_restarts);
	set_num_if(L, "windowSeconds", s->window_s);
	set_num_if(L, "backoffSeconds", s->backoff_s);
	set_num_if(L, "backoffMaxSeconds", s->backoff_max_s);
	set_num_if(L, "stableSeconds", s->stable_s);
	lua_setfield(L, -2, "restart");
	lua_newtable(L);
	set_num_if(L, "nofile", (double)s->nofile);
	set_num_if(L, "nproc", (double)s->nproc);
	set_num_if(L, "core", (double)s->core);
	set_num_if(L, "memoryMB", (double)s->memory_mb);
	set_num_if(L, "pids", (double)s->pids);
	set_num_if(L, "cpus", s->cpus);
	lua_setfield(L, -2, "limits");
	jv_instance_spec_free(s);
	return 1;
}

/* ---- getting a monitor ---------------------------------------------------- */

enum ensure_result { ENSURE_ALREADY, ENSURE_STARTED, ENSURE_ADOPTED, ENSURE_NONE };

/* Make sure a monitor runs (adopt_only: only for an orphaned server). Waits
 * out a monitor that is finishing, and a concurrent launcher that won the
 * lock. Returns 0 with *res, 1 when cancelled, or -errno with msg. */
static int ensure_monitor(struct jv_run_ctx *ctx, bool adopt_only, double timeout_s,
                          enum ensure_result *res, char *msg, size_t len)
{
	int64_t end = jv_now_mono_ms() + (int64_t)(timeout_s * 1000);
	int64_t busy_until = 0;
	for (;;) {
		if (jv_cancelled(ctx))
			return 1;
		if (jv_now_mono_ms() > end) {
			snprintf(msg, len, "no monitor came up within %.0fs", timeout_s);
			return -ETIMEDOUT;
		}
		cJSON *st = NULL;
		int rc = jv_instance_status(ctx->instance_dir, &st);
		if (rc < 0) {
			snprintf(msg, len, "cannot read the instance status: %s", strerror(-rc));
			return rc;
		}
		bool monitor = jv_json_bool(st, "monitor", false);
		bool orphan = jv_json_bool(st, "orphan", false);
		bool finishing = monitor && (state_final(st) || (!adopt_only && state_is(st, "STOPPING")));
		cJSON_Delete(st);
		if (monitor && !finishing) {
			*res = ENSURE_ALREADY;
			return 0;
		}
		if (finishing || jv_now_mono_ms() < busy_until) {
			/* A monitor on its way out, or the winner of a race not yet listening. */
			sleep_ms(50);
			continue;
		}
		if (adopt_only && !orphan) {
			*res = ENSURE_NONE;
			return 0;
		}
		struct jv_monitor_launch l = {.instance_dir = ctx->instance_dir,
		                              .instance_id = ctx->instance_id,
		                              .settings = ctx->settings,
		                              .adopt_only = adopt_only};
		int fd = -1;
		rc = jv_monitor_launch(&l, &fd);
		if (rc < 0) {
			snprintf(msg, len, "cannot launch the monitor: %s", strerror(-rc));
			return rc;
		}
		do {
			rc = jv_monitor_launch_wait(fd, SLICE_MS, msg, len);
			if (rc == -ETIMEDOUT && jv_cancelled(ctx)) {
				close(fd);
				return 1; /* the monitor carries on; a later job attaches to it */
			}
			if (rc == -ETIMEDOUT && jv_now_mono_ms() > end) {
				close(fd);
				snprintf(msg, len, "the monitor did not report within %.0fs", timeout_s);
				return -ETIMEDOUT;
			}
		} while (rc == -ETIMEDOUT);
		close(fd);
		if (rc == -EBUSY) {
			busy_until = jv_now_mono_ms() + 10000;
			continue;
		}
		if (rc < 0)
			return rc;
		if (strncmp(msg, "none", 4) == 0)
			*res = ENSURE_NONE;
		else
			*res = strncmp(msg, "adopted", 7) == 0 ? ENSURE_ADOPTED : ENSURE_STARTED;
		return 0;
	}
}

static cJSON *fetch_status(lua_State *L, struct jv_run_ctx *ctx, char *msg, size_t len)
{
	cJSON *st = NULL;
	int rc = jv_instance_status(ctx->instance_dir, &st);
	if (rc < 0)
		snprintf(msg, len, "cannot read the instance status: %s", strerror(-rc));
	return st;
}

/* ---- start / status ------------------------------------------------------ */

static int l_instance_start(lua_State *L)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	static const char *const keys[] = {"timeoutSeconds", NULL};
	apiutil_opts(L, 1, "instance.start", keys);
	double timeout = opt_seconds(L, 1, "timeoutSeconds", DEFAULT_START_TIMEOUT_S, 86400);
	/* Refuse a bad spec here, with its message, before any process exists. */
	const cJSON *allowed = cJSON_GetObjectItemCaseSensitive(ctx->settings, "allowed_executables");
	struct jv_instance_spec *s = NULL;
	char msg[600];
	if (jv_instance_spec_load(ctx->instance_dir, allowed, &s, msg, sizeof(msg)) < 0)
		return jv_push_fail(L, "%s", msg);
	jv_instance_spec_free(s);
	enum ensure_result res;
	int rc = ensure_monitor(ctx, false, timeout, &res, msg, sizeof(msg));
	if (rc == 1)
		return jv_raise_cancel(L);
	if (rc < 0)
		return jv_push_fail(L, "cannot start instance '%s': %s", ctx->instance_id, msg);
	cJSON *st = fetch_status(L, ctx, msg, sizeof(msg));
	if (!st)
		return jv_push_fail(L, "%s", msg);
	if (!jv_json_bool(st, "monitor", false) && state_final(st)) {
		/* It started and already ended (e.g. a crash loop at once). */
		char text[700];
		snprintf(text, sizeof(text), "instance '%s' is %s: %s", ctx->instance_id,
		         jv_json_str(st, "state", "?"), jv_json_str(st, "message", ""));
		cJSON_Delete(st);
		return jv_push_fail(L, "%s", text);
	}
	jv_json_to_lua(L, st);
	lua_pushboolean(L, res == ENSURE_ALREADY);
	lua_setfield(L, -2, "already");
	lua_pushboolean(L, res == ENSURE_ADOPTED || jv_json_bool(st, "adopted", false));
	lua_setfield(L, -2, "adopted");
	cJSON_Delete(st);
	return 1;
}

static int l_instance_status(lua_State *L)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	char msg[600];
	cJSON *st = fetch_status(L, ctx, msg, sizeof(msg));
	if (!st)
		return jv_push_fail(L, "%s", msg);
	if (jv_json_bool(st, "orphan", false)) {
		/* Its monitor died: put a new one in charge before answering. */
		cJSON_Delete(st);
		enum ensure_result res;
		int rc = ensure_monitor(ctx, true, 30, &res, msg, sizeof(msg));
		if (rc == 1)
			return jv_raise_cancel(L);
		if (rc < 0)
			return jv_push_fail(L, "cannot adopt the orphaned server: %s", msg);
		if (!(st = fetch_status(L, ctx, msg, sizeof(msg))))
			return jv_push_fail(L, "%s", msg);
	}
	jv_json_to_lua(L, st);
	cJSON_Delete(st);
	return 1;
}

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
	cJSON *st = fetch_status(L, ctx, msg, sizeof(msg));
	if (!st)
		return jv_push_fail(L, "%s", msg);
	jv_box_set(box, st, jv_box_release_json);
	if (check_final && !state_final(st) && !jv_json_bool(st, "stale", false))
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
		CANCEL_POINT(L, ctx, (void)0);
		cJSON *m = NULL;
		int rc = jv_monconn_recv(c, SLICE_MS, &m);
		double elapsed = (double)(jv_now_mono_ms() - start) / 1000.0;
		if (rc == -ETIMEDOUT) {
			if (elapsed > bound)
				return jv_push_fail(L, "the monitor did not finish stopping within %.0fs", bound);
			char d[64];
			snprintf(d, sizeof(d), "%s%s%.0fs", phase, phase[0] ? ", " : "", elapsed);
			progress_every_second(ctx, p, &last, elapsed / bound, d);
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

static int l_instance_stop(lua_State *L)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	static const char *const keys[] = {"timeoutSeconds", "force", "progress", NULL};
	apiutil_opts(L, 1, "instance.stop", keys);
	double timeout = opt_seconds(L, 1, "timeoutSeconds", -1, 86400);
	bool force = apiutil_opt_bool(L, 1, "force", false);
	struct jv_progress p;
	jv_progress_init(L, 1, &p, "stopping");
	char msg[600];
	enum ensure_result res;
	int rc = ensure_monitor(ctx, true, 30, &res, msg, sizeof(msg));
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

/* ---- send ------------------------------------------------------------------ */

static int l_instance_send(lua_State *L)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	size_t len;
	const char *line = luaL_checklstring(L, 1, &len);
	luaL_argcheck(L, len < 4096 && strlen(line) == len && !strpbrk(line, "\r\n"), 1,
	              "must be one line shorter than 4096 bytes");
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "op", "send");
	cJSON_AddStringToObject(req, "line", line);
	cJSON *reply = NULL;
	int rc = jv_monitor_call(ctx->instance_dir, req, 5000, &reply);
	cJSON_Delete(req);
	if (rc == -ENOENT || rc == -ECONNREFUSED)
		return jv_push_fail(L, "instance '%s' is not running", ctx->instance_id);
	if (rc < 0)
		return jv_push_fail(L, "cannot reach the monitor: %s", strerror(-rc));
	if (!jv_json_bool(reply, "ok", false)) {
		char msg[300];
		snprintf(msg, sizeof(msg), "%s", jv_json_str(reply, "error", "send refused"));
		cJSON_Delete(reply);
		return jv_push_fail(L, "%s", msg);
	}
	lua_Integer seq = (lua_Integer)jv_json_int(reply, "seq", 0);
	cJSON_Delete(reply);
	lua_pushinteger(L, seq);
	lua_setfield(L, LUA_REGISTRYINDEX, LASTSEQ_KEY);
	lua_pushinteger(L, seq);
	return 1;
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
	cJSON *st = fetch_status(L, ctx, msg, sizeof(msg));
	if (!st)
		return jv_push_fail(L, "%s", msg);
	snprintf(msg, sizeof(msg), "instance '%s' is %s%s%s while waiting for %s", ctx->instance_id,
	         jv_json_str(st, "state", "?"), *jv_json_str(st, "message", "") ? ": " : "",
	         jv_json_str(st, "message", ""), waiting_for);
	cJSON_Delete(st);
	return jv_push_fail(L, "%s", msg);
}

static int l_instance_wait_ready(lua_State *L)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	lua_Number timeout = luaL_checknumber(L, 1);
	luaL_argcheck(L, !isnan(timeout) && timeout > 0 && timeout <= 86400, 1,
	              "timeoutSeconds must be within (0, 86400]");
	static const char *const keys[] = {"progress", NULL};
	apiutil_opts(L, 2, "instance.wait_ready", keys);
	struct jv_progress p;
	jv_progress_init(L, 2, &p, "waiting for the server to be ready");
	struct jv_monconn *c;
	cJSON *st;
	int rc = subscribe(ctx, false, -1, &c, &st);
	if (rc == -ENOENT || rc == -ECONNREFUSED)
		return not_running(L, ctx, "it to be ready");
	if (rc < 0)
		return jv_push_fail(L, "cannot reach the monitor: %s", strerror(-rc));
	int64_t start = jv_now_mono_ms(), last = 0;
	for (;;) {
		if (state_is(st, "RUNNING")) {
			jv_progress_report(ctx, &p, 1.0, "ready");
			jv_json_to_lua(L, st);
			cJSON_Delete(st);
			jv_monconn_close(c);
			return 1;
		}
		if (state_final(st) || state_is(st, "STOPPING")) {
			cJSON_Delete(st);
			jv_monconn_close(c);
			return not_running(L, ctx, "it to be ready");
		}
		CANCEL_POINT(L, ctx, (cJSON_Delete(st), jv_monconn_close(c)));
		double elapsed = (double)(jv_now_mono_ms() - start) / 1000.0;
		if (elapsed > timeout) {
			char msg[300];
			snprintf(msg, sizeof(msg), "not ready within %.0fs (state %s)", timeout,
			         jv_json_str(st, "state", "?"));
			cJSON_Delete(st);
			jv_monconn_close(c);
			return jv_push_fail(L, "%s", msg);
		}
		char d[96];
		snprintf(d, sizeof(d), "%s, %.0fs of %.0fs", jv_json_str(st, "state", "?"), elapsed, timeout);
		progress_every_second(ctx, &p, &last, elapsed / timeout, d);
		cJSON *m = NULL;
		rc = jv_monconn_recv(c, SLICE_MS, &m);
		if (rc == -ETIMEDOUT)
			continue;
		if (rc < 0) {
			cJSON_Delete(st);
			jv_monconn_close(c);
			return not_running(L, ctx, "it to be ready");
		}
		cJSON *ns = cJSON_DetachItemFromObjectCaseSensitive(m, "status");
		cJSON_Delete(m);
		if (cJSON_IsObject(ns)) {
			cJSON_Delete(st);
			st = ns;
		} else {
			cJSON_Delete(ns);
		}
	}
}

static int l_instance_wait_log(lua_State *L)
{
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
	regex_t re;
	int r = regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB);
	if (r != 0) {
		char why[128];
		regerror(r, &re, why, sizeof(why));
		return luaL_argerror(L, 1, lua_pushfstring(L, "not a valid extended regex: %s", why));
	}
	struct jv_progress p;
	jv_progress_init(L, 3, &p, "waiting for the console");
	struct jv_monconn *c;
	cJSON *st;
	int rc = subscribe(ctx, true, since, &c, &st);
	if (rc < 0) {
		regfree(&re);
		if (rc == -ENOENT || rc == -ECONNREFUSED)
			return not_running(L, ctx, "a console line");
		return jv_push_fail(L, "cannot reach the monitor: %s", strerror(-rc));
	}
	cJSON_Delete(st);
	int64_t start = jv_now_mono_ms(), last = 0;
	for (;;) {
		CANCEL_POINT(L, ctx, (regfree(&re), jv_monconn_close(c)));
		double elapsed = (double)(jv_now_mono_ms() - start) / 1000.0;
		if (elapsed > timeout) {
			regfree(&re);
			jv_monconn_close(c);
			return jv_push_fail(L, "no console line matched '%s' within %.0fs", pattern, timeout);
		}
		char d[64];
		snprintf(d, sizeof(d), "%.0fs of %.0fs", elapsed, timeout);
		progress_every_second(ctx, &p, &last, elapsed / timeout, d);
		cJSON *m = NULL;
		rc = jv_monconn_recv(c, SLICE_MS, &m);
		if (rc == -ETIMEDOUT)
			continue;
		if (rc < 0) {
			regfree(&re);
			jv_monconn_close(c);
			return not_running(L, ctx, "a console line");
		}
		const char *ev = jv_json_str(m, "event", "");
		const char *line = jv_json_str(m, "line", NULL);
		if (strcmp(ev, "line") == 0 && line && regexec(&re, line, 0, NULL, 0) == 0) {
			lua_pushstring(L, line);
			lua_pushinteger(L, (lua_Integer)jv_json_int(m, "seq", 0));
			cJSON_Delete(m);
			regfree(&re);
			jv_monconn_close(c);
			return 2;
		}
		bool ended = strcmp(ev, "state") == 0 &&
		             state_final(cJSON_GetObjectItemCaseSensitive(m, "status"));
		cJSON_Delete(m);
		if (ended) {
			regfree(&re);
			jv_monconn_close(c);
			return not_running(L, ctx, "a console line");
		}
	}
}

static const luaL_Reg instance_funcs[] = {
	{"spec", l_instance_spec},
	{"check_spec", l_instance_check_spec},
	{"start", l_instance_start},
	{"stop", l_instance_stop},
	{"status", l_instance_status},
	{"send", l_instance_send},
	{"wait_ready", l_instance_wait_ready},
	{"wait_log", l_instance_wait_log},
	{NULL, NULL},
};

int luaopen_jv_instance(lua_State *L)
{
	luaL_newlib(L, instance_funcs);
	static const struct apiutil_arity arity[] = {
		{"spec", 0},
		{"start", 1},
		{"stop", 1},
		{"status", 0},
		{"send", 1},
		{"wait_ready", 2},
		{"wait_log", 3},
		{NULL, 0},
	};
	apiutil_limit_args(L, -1, "instance", arity);
	return 1;
}
