/* events.c — the child's side of the event pipe and the per-run context.
 *
 * Events are JSON lines written (blocking) to ctx->event_fd: progress, log,
 * meta and the final result. Progress is coalesced here (at most one line per
 * COALESCE_MS, the newest kept) so a script calling job.progress() in a tight
 * loop costs a few syscalls, not one per call; the parent applies the real
 * throttle and numbering. A dead parent (EPIPE) is ignored: the child is
 * killed by its parent-death signal anyway. */
#include "jvlua.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/durable.h"
#include "jobvisor/util.h"

#define COALESCE_MS 20
#define PROGRESS_REPORT_MS 250

static const char ctx_key = 'c';

void jv_ctx_install(lua_State *L, struct jv_run_ctx *ctx)
{
	lua_pushlightuserdata(L, ctx);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &ctx_key);
}

struct jv_run_ctx *jv_ctx(lua_State *L)
{
	lua_rawgetp(L, LUA_REGISTRYINDEX, &ctx_key);
	struct jv_run_ctx *ctx = lua_touserdata(L, -1);
	lua_pop(L, 1);
	if (!ctx)
		luaL_error(L, "no job run context");
	return ctx;
}

cJSON *jv_ctx_ident_json(const struct jv_run_ctx *ctx, const char *stamp)
{
	char ts[JV_ISO8601_LEN];
	jv_iso8601(jv_now_real_ms(), ts);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "jobId", ctx->job_id);
	cJSON_AddStringToObject(o, "runId", ctx->run_id);
	cJSON_AddNumberToObject(o, "attempt", ctx->attempt);
	cJSON_AddStringToObject(o, "type", ctx->type);
	cJSON_AddStringToObject(o, stamp, ts);
	return o;
}

bool jv_cancelled(const struct jv_run_ctx *ctx)
{
	return ctx && ctx->cancel_flag && *ctx->cancel_flag;
}

static void write_line(struct jv_run_ctx *ctx, cJSON *ev)
{
	if (ctx->event_fd < 0)
		return;
	if (!cJSON_GetObjectItemCaseSensitive(ev, "ts"))
		cJSON_AddNumberToObject(ev, "ts", (double)jv_now_real_ms());
	char *s = cJSON_PrintUnformatted(ev);
	if (!s)
		return;
	size_t n = strlen(s);
	s[n] = '\n'; /* replace the NUL: written with an explicit length */
	jv_write_all(ctx->event_fd, s, n + 1);
	free(s);
}

static void flush_progress(struct jv_run_ctx *ctx)
{
	if (!ctx->progress_out.pending)
		return;
	ctx->progress_out.pending = false;
	ctx->progress_out.last_ms = jv_now_mono_ms();
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "k", "progress");
	if (ctx->progress_out.percent >= 0)
		cJSON_AddNumberToObject(ev, "percent", ctx->progress_out.percent);
	else
		cJSON_AddNullToObject(ev, "percent");
	if (ctx->progress_out.message[0])
		cJSON_AddStringToObject(ev, "message", ctx->progress_out.message);
	write_line(ctx, ev);
	cJSON_Delete(ev);
}

void jv_emit_flush(struct jv_run_ctx *ctx)
{
	flush_progress(ctx);
}

void jv_emit_progress(struct jv_run_ctx *ctx, double percent, const char *message)
{
	if (isnan(percent))
		percent = -1;
	if (percent > 100)
		percent = 100;
	/* A step message without percent must not be lost behind a later percent
	 * of the same coalescing window: flush the pending one first. */
	if (ctx->progress_out.pending && ctx->progress_out.message[0] && message && strcmp(ctx->progress_out.message, message) != 0 &&
	    percent < 0)
		flush_progress(ctx);
	if (ctx->on_progress)
		ctx->on_progress(ctx, message, percent);
	ctx->progress_out.pending = true;
	ctx->progress_out.percent = percent;
	snprintf(ctx->progress_out.message, sizeof(ctx->progress_out.message), "%s", message ? message : "");
	int64_t now = jv_now_mono_ms();
	if (now - ctx->progress_out.last_ms >= COALESCE_MS || percent >= 100)
		flush_progress(ctx);
}

void jv_emit_event(struct jv_run_ctx *ctx, cJSON *ev)
{
	flush_progress(ctx);
	write_line(ctx, ev);
	cJSON_Delete(ev);
}

void jv_emit_log(struct jv_run_ctx *ctx, const char *level, const char *message)
{
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "k", "log");
	cJSON_AddStringToObject(ev, "level", level);
	cJSON_AddStringToObject(ev, "message", message);
	jv_emit_event(ctx, ev);
}

/* ---- cancellation ---- */

static int cancel_tostring(lua_State *L)
{
	lua_pushliteral(L, "job cancelled");
	return 1;
}

static void push_cancel_error(lua_State *L)
{
	static const char key = 'x';
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key) == LUA_TTABLE)
		return;
	lua_pop(L, 1);
	lua_newtable(L);
	lua_pushliteral(L, "job cancelled");
	lua_setfield(L, -2, "message");
	lua_newtable(L);
	lua_pushcfunction(L, cancel_tostring);
	lua_setfield(L, -2, "__tostring");
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, -2);
	lua_pushvalue(L, -1);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &key);
}

int jv_raise_cancel(lua_State *L)
{
	/* The cancellation is delivered now: the count hook, armed by the signal
	 * to deliver it in a loop that calls no API, must not deliver it a second
	 * time into the cleanup code of a script that catches it. */
	lua_sethook(L, NULL, 0, 0);
	push_cancel_error(L);
	return lua_error(L);
}

bool jv_is_cancel_error(lua_State *L, int idx)
{
	idx = lua_absindex(L, idx);
	push_cancel_error(L);
	bool eq = lua_rawequal(L, idx, -1);
	lua_pop(L, 1);
	return eq;
}

/* The count hook. It costs nothing until cancel is requested: the child's
 * signal handler arms it (lua_sethook only sets fields of the state and is
 * safe in a handler, as lua.c's SIGINT handler uses it). Once armed it runs
 * every CANCEL_HOOK_COUNT VM instructions, so a loop that calls no API meets
 * the cancellation at a safe point. Any delivery of the cancellation (by the
 * hook, job.checkpoint() or an API call) disarms it, as lua.c's hook disarms
 * itself: a script that catches the error to clean up gets the grace period
 * for it (the next checkpoint or long API call raises the cancellation
 * again); a script that ignores it is SIGKILLed after the grace. */
#define CANCEL_HOOK_COUNT 1000

static void cancel_hook(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	if (jv_cancelled(jv_ctx(L)))
		jv_raise_cancel(L); /* which disarms the hook */
}

void jv_cancel_hook_prepare(lua_State *L)
{
	/* Made now, so the hook raises it without allocating. */
	push_cancel_error(L);
	lua_pop(L, 1);
}

void jv_cancel_hook_arm(lua_State *L)
{
	lua_sethook(L, cancel_hook, LUA_MASKCOUNT, CANCEL_HOOK_COUNT);
}

void jv_checkpoint(lua_State *L)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	if (jv_cancelled(ctx))
		jv_raise_cancel(L);
}

/* ---- progress for long API calls ---- */

#define PROGRESS_FORM "{from, to} or {from = F, to = T} with 0 <= F <= T <= 100"

/* opts.progress: the positional {from, to} or the named {from =, to =} form
 * (the built-in jobs use the named one). Anything else raises: a malformed
 * progress option used to be ignored, which silenced every percent. */
void jv_progress_init(lua_State *L, int opts_idx, struct jv_progress *p, const char *what)
{
	p->from = -1;
	p->to = -1;
	p->last_ms = 0;
	p->what = what;
	if (opts_idx == 0 || lua_isnoneornil(L, opts_idx))
		return;
	luaL_checktype(L, opts_idx, LUA_TTABLE);
	int t = lua_getfield(L, opts_idx, "progress");
	if (t == LUA_TNIL) {
		lua_pop(L, 1);
		return;
	}
	if (t != LUA_TTABLE)
		luaL_error(L, "option 'progress' must be " PROGRESS_FORM ", got %s", luaL_typename(L, -1));
	int tab = lua_gettop(L);
	int npos = 0, nnamed = 0;
	lua_pushnil(L);
	while (lua_next(L, tab)) {
		lua_pop(L, 1);
		if (lua_type(L, -1) == LUA_TNUMBER && lua_isinteger(L, -1) &&
		    (lua_tointeger(L, -1) == 1 || lua_tointeger(L, -1) == 2)) {
			npos++;
		} else if (lua_type(L, -1) == LUA_TSTRING && (strcmp(lua_tostring(L, -1), "from") == 0 ||
		                                               strcmp(lua_tostring(L, -1), "to") == 0)) {
			nnamed++;
		} else {
			const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
			                                               : luaL_typename(L, -1);
			luaL_error(L, "option 'progress' has an unknown key '%s': it must be " PROGRESS_FORM, k);
		}
	}
	if (!((npos == 2 && nnamed == 0) || (nnamed == 2 && npos == 0)))
		luaL_error(L, "option 'progress' must be " PROGRESS_FORM);
	if (npos) {
		lua_rawgeti(L, tab, 1);
		lua_rawgeti(L, tab, 2);
	} else {
		lua_getfield(L, tab, "from");
		lua_getfield(L, tab, "to");
	}
	if (lua_type(L, -2) != LUA_TNUMBER || lua_type(L, -1) != LUA_TNUMBER)
		luaL_error(L, "option 'progress' must be " PROGRESS_FORM " (from and to are numbers)");
	double a = lua_tonumber(L, -2), b = lua_tonumber(L, -1);
	if (!(a >= 0 && b <= 100 && a <= b))
		luaL_error(L, "option 'progress' must be " PROGRESS_FORM ", got from %f, to %f", a, b);
	p->from = a;
	p->to = b;
	lua_pop(L, 3);
}

void jv_progress_report(struct jv_run_ctx *ctx, struct jv_progress *p, double fraction,
                        const char *detail)
{
	int64_t now = jv_now_mono_ms();
	if (fraction < 1.0 && now - p->last_ms < PROGRESS_REPORT_MS)
		return;
	p->last_ms = now;
	if (fraction < 0)
		fraction = 0;
	if (fraction > 1)
		fraction = 1;
	char msg[512];
	if (detail && *detail)
		snprintf(msg, sizeof(msg), "%s: %s", p->what ? p->what : "working", detail);
	else
		snprintf(msg, sizeof(msg), "%s %.0f%%", p->what ? p->what : "working", fraction * 100);
	double pct = p->from >= 0 ? p->from + (p->to - p->from) * fraction : -1;
	jv_emit_progress(ctx, pct, msg);
}

int jv_push_fail(lua_State *L, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	lua_pushnil(L);
	lua_pushstring(L, msg);
	return 2;
}
