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
#include "api_instance.h"
#include "box.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "jobvisor/instance_client.h"
#include "jobvisor/instance_spec.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"

#define DEFAULT_START_TIMEOUT_S 60

bool instance_state_is(const cJSON *st, const char *name)
{
	return strcmp(jv_json_str(st, "state", ""), name) == 0;
}

bool instance_state_final(const cJSON *st)
{
	return instance_state_is(st, "STOPPED") || instance_state_is(st, "CRASHED");
}

double instance_opt_seconds(lua_State *L, int idx, const char *key, double def, int max)
{
	int t = apiutil_opt_get(L, idx, key);
	double v = lua_tonumber(L, -1);
	if (t != LUA_TNIL && (t != LUA_TNUMBER || isnan(v) || v <= 0 || v > max))
		luaL_error(L, "option '%s' must be a number of seconds in (0, %d], got %s", key, max,
		           luaL_tolstring(L, -1, NULL));
	lua_pop(L, 1);
	return t == LUA_TNIL ? def : v;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}


static void release_spec(void *p)
{
	jv_instance_spec_free(p);
}

void instance_progress_every_second(struct jv_run_ctx *ctx, struct jv_progress *p, int64_t *last,
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
	struct jv_box *box = jv_box_push(L);
	if (jv_instance_spec_load(ctx->instance_dir, allowed, &s, err, sizeof(err)) < 0)
		return jv_push_fail(L, "%s", err);
	jv_box_set(box, s, release_spec);
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
	return 1;
}

/* ---- getting a monitor ---------------------------------------------------- */

/* Make sure a monitor runs (adopt_only: only for an orphaned server). Waits
 * out a monitor that is finishing, and a concurrent launcher that won the
 * lock. Returns 0 with *res, 1 when cancelled, or -errno with msg. */
int instance_ensure_monitor(struct jv_run_ctx *ctx, bool adopt_only, double timeout_s,
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
		bool finishing = monitor && (instance_state_final(st) || (!adopt_only && instance_state_is(st, "STOPPING")));
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

cJSON *instance_fetch_status(struct jv_run_ctx *ctx, struct jv_box *box, char *msg, size_t len)
{
	cJSON *st = NULL;
	int rc = jv_instance_status(ctx->instance_dir, &st);
	if (rc < 0)
		snprintf(msg, len, "cannot read the instance status: %s", strerror(-rc));
	else if (box)
		jv_box_set(box, st, jv_box_release_json);
	return st;
}

/* ---- start / status ------------------------------------------------------ */

static int l_instance_start(lua_State *L)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	static const char *const keys[] = {"timeoutSeconds", NULL};
	apiutil_opts(L, 1, "instance.start", keys);
	double timeout = instance_opt_seconds(L, 1, "timeoutSeconds", DEFAULT_START_TIMEOUT_S, 86400);
	/* Refuse a bad spec here, with its message, before any process exists. */
	const cJSON *allowed = cJSON_GetObjectItemCaseSensitive(ctx->settings, "allowed_executables");
	struct jv_instance_spec *s = NULL;
	char msg[600];
	if (jv_instance_spec_load(ctx->instance_dir, allowed, &s, msg, sizeof(msg)) < 0)
		return jv_push_fail(L, "%s", msg);
	jv_instance_spec_free(s);
	enum ensure_result res;
	int rc = instance_ensure_monitor(ctx, false, timeout, &res, msg, sizeof(msg));
	if (rc == 1)
		return jv_raise_cancel(L);
	if (rc < 0)
		return jv_push_fail(L, "cannot start instance '%s': %s", ctx->instance_id, msg);
	struct jv_box *box = jv_box_push(L);
	cJSON *st = instance_fetch_status(ctx, box, msg, sizeof(msg));
	if (!st)
		return jv_push_fail(L, "%s", msg);
	if (!jv_json_bool(st, "monitor", false) && instance_state_final(st)) {
		/* It started and already ended (e.g. a crash loop at once). */
		return jv_push_fail(L, "instance '%s' is %s: %s", ctx->instance_id,
		                    jv_json_str(st, "state", "?"), jv_json_str(st, "message", ""));
	}
	jv_json_to_lua(L, st);
	lua_pushboolean(L, res == ENSURE_ALREADY);
	lua_setfield(L, -2, "already");
	lua_pushboolean(L, res == ENSURE_ADOPTED || jv_json_bool(st, "adopted", false));
	lua_setfield(L, -2, "adopted");
	return 1;
}

static int l_instance_status(lua_State *L)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	char msg[600];
	struct jv_box *box = jv_box_push(L);
	cJSON *st = instance_fetch_status(ctx, box, msg, sizeof(msg));
	if (!st)
		return jv_push_fail(L, "%s", msg);
	if (jv_json_bool(st, "orphan", false)) {
		/* Its monitor died: put a new one in charge before answering. */
		jv_box_release(box);
		enum ensure_result res;
		int rc = instance_ensure_monitor(ctx, true, 30, &res, msg, sizeof(msg));
		if (rc == 1)
			return jv_raise_cancel(L);
		if (rc < 0)
			return jv_push_fail(L, "cannot adopt the orphaned server: %s", msg);
		if (!(st = instance_fetch_status(ctx, box, msg, sizeof(msg))))
			return jv_push_fail(L, "%s", msg);
	}
	jv_json_to_lua(L, st);
	return 1;
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
