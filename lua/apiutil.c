/* apiutil.c — argument and option checking, the progress/cancel hook and
 * error mapping shared by api_fs.c, api_archive.c and api_http.c. */
#include "apiutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void apiutil_fsx(lua_State *L, struct fsx *fx)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	if (ctx->instance_fd < 0)
		luaL_error(L, "no instance directory for this run");
	fsx_init(fx, ctx->instance_fd);
}

const char *apiutil_path(lua_State *L, int idx, char *out, bool write)
{
	size_t len;
	const char *p = luaL_checklstring(L, idx, &len);
	int rc = fsx_norm(p, len, out);
	if (rc < 0)
		luaL_error(L, "bad path '%s': %s", p, fsx_strerror(rc));
	if (write && fsx_reserved(out))
		luaL_error(L, "bad path '%s': %s", p, fsx_strerror(FSX_ERESERVED));
	return out;
}

/* The one strict reader of option tables for every module (fs, archive, http,
 * instance, job, json): unknown names and malformed values raise, naming the
 * call and the options it knows, instead of being ignored. */
void apiutil_opts(lua_State *L, int idx, const char *fn, const char *const *keys)
{
	if (lua_isnoneornil(L, idx))
		return;
	luaL_checktype(L, idx, LUA_TTABLE);
	idx = lua_absindex(L, idx);
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		bool ok = false;
		if (lua_type(L, -1) != LUA_TSTRING)
			luaL_error(L, "%s: option names must be strings, got %s", fn, luaL_typename(L, -1));
		const char *k = lua_tostring(L, -1);
		for (const char *const *p = keys; *p && !ok; p++)
			ok = strcmp(*p, k) == 0;
		if (!ok) {
			luaL_Buffer b;
			luaL_buffinit(L, &b);
			for (const char *const *p = keys; *p; p++) {
				if (p != keys)
					luaL_addstring(&b, ", ");
				luaL_addstring(&b, *p);
			}
			luaL_pushresult(&b);
			luaL_error(L, "%s: unknown option '%s' (known: %s)", fn, k,
			           keys[0] ? lua_tostring(L, -1) : "none");
		}
	}
}

/* Push opts[key] of the table at idx (nil when there is no table) and return its type. */
int apiutil_opt_get(lua_State *L, int idx, const char *key)
{
	if (!lua_isnoneornil(L, idx))
		return lua_getfield(L, idx, key);
	lua_pushnil(L);
	return LUA_TNIL;
}

bool apiutil_opt_bool(lua_State *L, int idx, const char *key, bool def)
{
	int t = apiutil_opt_get(L, idx, key);
	if (t != LUA_TNIL && t != LUA_TBOOLEAN)
		luaL_error(L, "option '%s' must be a boolean, got %s", key, luaL_typename(L, -1));
	bool v = t == LUA_TNIL ? def : lua_toboolean(L, -1);
	lua_pop(L, 1);
	return v;
}

int64_t apiutil_opt_int(lua_State *L, int idx, const char *key, int64_t def, int64_t min,
                        int64_t max)
{
	int t = apiutil_opt_get(L, idx, key);
	int isnum = 0;
	lua_Integer i = lua_tointegerx(L, -1, &isnum);
	if (t != LUA_TNIL && (t != LUA_TNUMBER || !isnum || i < min || i > max))
		luaL_error(L, "option '%s' must be an integer from %I to %I", key, (lua_Integer)min,
		           (lua_Integer)max);
	lua_pop(L, 1);
	return t == LUA_TNIL ? def : i;
}

double apiutil_opt_num(lua_State *L, int idx, const char *key, double def, double min,
                       double max)
{
	int t = apiutil_opt_get(L, idx, key);
	double v = lua_tonumber(L, -1);
	if (t != LUA_TNIL && (t != LUA_TNUMBER || !(v >= min && v <= max)))
		luaL_error(L, "option '%s' must be a number from %f to %f", key, min, max);
	lua_pop(L, 1);
	return t == LUA_TNIL ? def : v;
}

/* The string stays valid while the options table is on the stack (it holds it). */
const char *apiutil_opt_str(lua_State *L, int idx, const char *key, const char *def)
{
	int t = apiutil_opt_get(L, idx, key);
	if (t != LUA_TNIL && t != LUA_TSTRING)
		luaL_error(L, "option '%s' must be a string, got %s", key, luaL_typename(L, -1));
	const char *v = t == LUA_TNIL ? def : lua_tostring(L, -1);
	lua_pop(L, 1);
	return v;
}

static bool tick(void *arg, uint64_t done, uint64_t total)
{
	struct apiutil_tick *t = arg;
	if (t->cancellable && jv_cancelled(t->ctx))
		return true;
	if (t->p.from >= 0 && total > 0)
		jv_progress_report(t->ctx, &t->p, (double)done / (double)total, NULL);
	return false;
}

void apiutil_call_init(lua_State *L, int opts_idx, struct apiutil_call *c, const char *what)
{
	apiutil_fsx(L, &c->fx);
	apiutil_tick_init(L, opts_idx, &c->t, what);
}

void apiutil_tick_init(lua_State *L, int opts_idx, struct apiutil_tick *t, const char *what)
{
	t->ctx = jv_ctx(L);
	jv_progress_init(L, opts_idx, &t->p, what);
	t->hooks.tick = tick;
	t->hooks.arg = t;
	t->cancellable = true;
}

void apiutil_tick_done(struct apiutil_tick *t)
{
	if (t->p.from >= 0)
		jv_progress_report(t->ctx, &t->p, 1.0, NULL);
}

/* The third result of an expected failure: the errno name ("ENOSPC", "EIO",
 * ...), so a script can tell a full disk from a bad input without parsing the
 * message. A full disk is always "ENOSPC" (a quota too). */
static int push_code(lua_State *L, int rc)
{
	const char *name = NULL;
	if (rc == -EDQUOT)
		rc = -ENOSPC;
	if (rc < 0 && rc > -4096)
		name = strerrorname_np(-rc);
	lua_pushstring(L, name ? name : "EIO");
	return 3;
}

int apiutil_true_or_fail(lua_State *L, int rc, const char *verb, const char *path)
{
	if (rc < 0)
		return apiutil_fail(L, rc, verb, path);
	lua_pushboolean(L, 1);
	return 1;
}

int apiutil_fail(lua_State *L, int rc, const char *verb, const char *path)
{
	if (rc == -ECANCELED)
		return jv_raise_cancel(L);
	if (fsx_is_policy_error(rc))
		return luaL_error(L, "cannot %s '%s': %s", verb, path, fsx_strerror(rc));
	jv_push_fail(L, "cannot %s '%s': %s", verb, path, fsx_strerror(rc));
	return push_code(L, rc);
}

int apiutil_fail_msg(lua_State *L, int rc, const char *prefix, const char *err)
{
	if (rc == -ECANCELED)
		return jv_raise_cancel(L);
	jv_push_fail(L, "%s: %s", prefix, err);
	return push_code(L, rc);
}

int apiutil_parent(const struct fsx *fx, const char *norm, int *dirfd, const char **last)
{
	int rc = fsx_parent(fx, norm, 0, dirfd, last);
	const char *slash = strrchr(norm, '/');
	if (rc == -ENOENT && slash) {
		char dir[FSX_PATH_MAX];
		memcpy(dir, norm, (size_t)(slash - norm));
		dir[slash - norm] = '\0';
		rc = fsx_mkdir(fx, dir, 0755, true);
		if (rc == 0)
			rc = fsx_parent(fx, norm, 0, dirfd, last);
	}
	return rc;
}

int apiutil_mode(lua_State *L, int idx, const char *what)
{
	lua_Integer m = -1;
	if (lua_type(L, idx) == LUA_TSTRING) {
		const char *str = lua_tostring(L, idx);
		char *end;
		long v = strtol(str, &end, 8);
		if (*str >= '0' && *str <= '7' && *end == '\0' && v <= 07777)
			m = v;
		else
			luaL_error(L, "%s must be an integer or an octal string such as \"755\", got '%s'",
			           what, str);
	} else if (lua_type(L, idx) == LUA_TNUMBER && lua_isinteger(L, idx)) {
		m = lua_tointeger(L, idx);
	} else {
		luaL_error(L, "%s must be an integer or an octal string such as \"755\", got %s", what,
		           luaL_typename(L, idx));
	}
	if (m < 0 || m > 07777)
		luaL_error(L, "%s must be from 0 to 0777 (0 to 4095 with the special bits)", what);
	return (int)m;
}

int apiutil_opt_mode(lua_State *L, int idx, const char *key)
{
	if (lua_isnoneornil(L, idx))
		return -1;
	int m = -1;
	if (lua_getfield(L, idx, key) != LUA_TNIL) {
		char what[64];
		snprintf(what, sizeof(what), "option '%s'", key);
		m = apiutil_mode(L, -1, what);
	}
	lua_pop(L, 1);
	return m;
}

/* A module function called with more arguments than it takes: an options
 * table passed to a call that has none (fs.remove(p, {recursive = true}))
 * would otherwise be ignored. Upvalues: the C function, its name, max. The
 * function runs in this same frame (a direct C call, not lua_call), so its
 * errors keep the caller's line and the "bad argument #1 to 'remove'" name;
 * the module functions use no upvalues of their own. */
static int checked_call(lua_State *L)
{
	lua_Integer max = lua_tointeger(L, lua_upvalueindex(3));
	int n = lua_gettop(L);
	if (n > max)
		return luaL_error(L, "%s takes %s%d argument%s, got %d (it has no options)",
		                  lua_tostring(L, lua_upvalueindex(2)), max ? "at most " : "", (int)max,
		                  max == 1 ? "" : "s", n);
	lua_CFunction f = lua_tocfunction(L, lua_upvalueindex(1));
	return f(L);
}

void apiutil_limit_args(lua_State *L, int t, const char *module, const struct apiutil_arity *a)
{
	t = lua_absindex(L, t);
	for (; a->name; a++) {
		if (lua_getfield(L, t, a->name) != LUA_TFUNCTION || !lua_iscfunction(L, -1)) {
			lua_pop(L, 1);
			continue;
		}
		lua_pushfstring(L, "%s.%s", module, a->name);
		lua_pushinteger(L, a->max_args);
		lua_pushcclosure(L, checked_call, 3);
		lua_setfield(L, t, a->name);
	}
}
