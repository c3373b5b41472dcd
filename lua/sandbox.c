/* sandbox.c — the Lua state a job script runs in: an allow-list, not a deny-list.
 *
 * Only base (minus dofile/loadfile/collectgarbage/warn; load forced to text),
 * string (minus dump; its metatable hidden), table, math, utf8, coroutine and
 * os.clock/time/date are opened, plus the jobvisor modules (proc starts only
 * programs the agent's job_executables setting lists). require() loads
 * pure-Lua helpers from jobs/lib only, as text, in the same sandbox. A capped
 * allocator turns memory bombs into ordinary Lua errors. Runaway CPU is the
 * parent's business (wall-clock timeout, then SIGKILL). */
#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lualib.h>

#include "jobvisor/durable.h"
#include "jobvisor/params.h"
#include "jobvisor/util.h"

#define MAX_SCRIPT_BYTES (4u << 20)
#define MEM_GRACE ((size_t)4 << 20)

struct alloc_state {
	size_t used;
	size_t limit;
	struct jv_sandbox_opts opts;
};

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct alloc_state *st = ud;
	if (nsize == 0) {
		if (ptr)
			st->used -= osize;
		free(ptr);
		return NULL;
	}
	size_t old = ptr ? osize : 0;
	if (nsize > old && st->used - old + nsize > st->limit)
		return NULL;
	void *np = realloc(ptr, nsize);
	if (!np)
		return NULL;
	st->used = st->used - old + nsize;
	return np;
}

static struct alloc_state *alloc_of(lua_State *L)
{
	void *ud = NULL;
	lua_getallocf(L, &ud);
	return ud;
}

size_t jv_sandbox_mem_used(lua_State *L)
{
	return alloc_of(L)->used;
}

size_t jv_sandbox_mem_limit(lua_State *L)
{
	return alloc_of(L)->opts.mem_limit;
}

void jv_sandbox_mem_grace(lua_State *L)
{
	struct alloc_state *st = alloc_of(L);
	st->limit = st->opts.mem_limit + MEM_GRACE;
}

/* load(chunk [, chunkname [, mode [, env]]]): always text mode. */
static int l_load(lua_State *L)
{
	int n = lua_gettop(L);
	lua_pushvalue(L, lua_upvalueindex(1)); /* the real load */
	lua_pushvalue(L, 1);
	if (n >= 2)
		lua_pushvalue(L, 2);
	else
		lua_pushnil(L);
	lua_pushliteral(L, "t");
	int nargs = 3;
	if (n >= 4) {
		lua_pushvalue(L, 4);
		nargs = 4;
	}
	lua_call(L, nargs, LUA_MULTRET);
	return lua_gettop(L) - n;
}

static int l_collectgarbage(lua_State *L)
{
	const char *opt = luaL_optstring(L, 1, "collect");
	if (strcmp(opt, "count") != 0)
		return luaL_error(L, "collectgarbage('%s') is not allowed in job scripts", opt);
	int kb = lua_gc(L, LUA_GCCOUNT, 0), b = lua_gc(L, LUA_GCCOUNTB, 0);
	lua_pushnumber(L, (lua_Number)kb + ((lua_Number)b / 1024));
	return 1;
}

static bool valid_module_name(const char *s)
{
	if (!*s || *s == '.')
		return false;
	for (const char *p = s; *p; p++) {
		bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		          *p == '_' || (*p == '.' && p[1] && p[1] != '.');
		if (!ok)
			return false;
	}
	return true;
}

static const char loaded_key = 'l';

/* require("lib.name") or require("name"): jobs/lib/name.lua, text only. */
static int l_require(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	if (!valid_module_name(name))
		return luaL_error(L, "require: invalid module name '%s'", name);
	const char *rel = strncmp(name, "lib.", 4) == 0 ? name + 4 : name;
	lua_rawgetp(L, LUA_REGISTRYINDEX, &loaded_key);
	int loaded = lua_gettop(L);
	if (lua_getfield(L, loaded, rel) != LUA_TNIL)
		return 1;
	lua_pop(L, 1);

	char relpath[256];
	snprintf(relpath, sizeof(relpath), "%s", rel);
	for (char *p = relpath; *p; p++)
		if (*p == '.')
			*p = '/';
	struct alloc_state *st = alloc_of(L);
	for (int i = 0; st->opts.lib_dirs[i]; i++) {
		char path[4096], chunk[300];
		snprintf(path, sizeof(path), "%s/%s.lua", st->opts.lib_dirs[i], relpath);
		if (access(path, R_OK) != 0)
			continue;
		snprintf(chunk, sizeof(chunk), "lib/%s.lua", relpath);
		if (jv_sandbox_loadfile(L, path, chunk) != LUA_OK)
			return lua_error(L);
		lua_pushstring(L, name);
		lua_call(L, 1, 1);
		if (lua_isnil(L, -1)) {
			lua_pop(L, 1);
			lua_pushboolean(L, 1);
		}
		lua_pushvalue(L, -1);
		lua_setfield(L, loaded, rel);
		return 1;
	}
	return luaL_error(L, "module '%s' not found (only helpers in jobs/lib/ can be required)",
	                  name);
}

int jv_sandbox_loadfile(lua_State *L, const char *path, const char *chunkname)
{
	char *src = NULL;
	size_t len = 0;
	int rc = jv_read_file_at(AT_FDCWD, path, MAX_SCRIPT_BYTES, &src, &len);
	if (rc < 0) {
		lua_pushfstring(L, "cannot read '%s': %s", chunkname,
		                rc == -EFBIG ? "script larger than 4 MiB" : jv_read_strerror(rc));
		return LUA_ERRFILE;
	}
	char name[320];
	snprintf(name, sizeof(name), "@%s", chunkname);
	/* Skip a #! line like lua.c does, keeping line numbers. */
	const char *body = src;
	if (len > 0 && src[0] == '#') {
		size_t i = 0;
		while (i < len && src[i] != '\n')
			i++;
		body = src + i;
		len -= i;
	}
	int status = luaL_loadbufferx(L, body, len, name, "t");
	free(src);
	return status;
}

const char *jv_sandbox_suggest(lua_State *L, int t, const char *key, char *out, size_t outlen)
{
	t = lua_absindex(L, t);
	size_t best = 3;
	out[0] = '\0';
	lua_pushnil(L);
	while (lua_next(L, t)) {
		lua_pop(L, 1);
		if (lua_type(L, -1) != LUA_TSTRING)
			continue;
		size_t d = jv_edit_distance(key, lua_tostring(L, -1));
		if (d < best) {
			best = d;
			snprintf(out, outlen, "%s", lua_tostring(L, -1));
		}
	}
	return out[0] ? out : NULL;
}

/* The error for the name at 2 that module table 1 lacks. Raised by the
 * metamethod the script's index called, so the message names the script's line. */
static int strict_miss(lua_State *L, const char *mod)
{
	if (lua_type(L, 2) == LUA_TSTRING) {
		char hint[80];
		const char *k = lua_tostring(L, 2);
		if (jv_sandbox_suggest(L, 1, k, hint, sizeof(hint)))
			return luaL_error(L, "%s.%s: no such field in module '%s' (did you mean %s.%s?)", mod,
			                  k, mod, mod, hint);
		return luaL_error(L, "%s.%s: no such field in module '%s'", mod, k, mod);
	}
	return luaL_error(L, "module '%s' has no field of type %s", mod, luaL_typename(L, 2));
}

/* __index of a strict module table: upvalue 1 = module name, 2 = a set of
 * names that may be nil (job.previous). */
static int strict_index(lua_State *L)
{
	if (lua_type(L, 2) == LUA_TSTRING) {
		lua_pushvalue(L, 2);
		if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL)
			return 0; /* nil: a known field that is not set */
		lua_pop(L, 1);
	}
	return strict_miss(L, lua_tostring(L, lua_upvalueindex(1)));
}

void jv_sandbox_strict(lua_State *L, int t, const char *name, const char *const *optional)
{
	t = lua_absindex(L, t);
	lua_createtable(L, 0, 2);
	lua_pushstring(L, name);
	lua_newtable(L);
	for (const char *const *o = optional; o && *o; o++) {
		lua_pushboolean(L, 1);
		lua_setfield(L, -2, *o);
	}
	lua_pushcclosure(L, strict_index, 2);
	lua_setfield(L, -2, "__index");
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, t);
}

/* The jobvisor modules are globals from the start, but a module's functions
 * are built on its first use: a run that never touches http or archive does
 * not pay for them (most runs use two or three modules). Until then the global
 * is an empty table whose shared metatable fills it on any index, assignment
 * or pairs(), then gives it its strict metatable: what a script sees through
 * indexing, assignment, pairs, and the sandbox's rawget and next (which build
 * a module first) is what an eagerly built module shows. C code that reads a
 * module raw fills it first (jv_sandbox_module_fill; check.c does).
 * proc is built eagerly: it captures string.match before the script runs. */
struct lazy_module {
	const char *name;
	lua_CFunction open;
};

static const struct lazy_module lazy_modules[] = {
	{"log", luaopen_jv_log},           {"json", luaopen_jv_json},
	{"fs", luaopen_jv_fs},             {"archive", luaopen_jv_archive},
	{"http", luaopen_jv_http},         {"instance", luaopen_jv_instance},
	{"remote", luaopen_jv_remote},
};

static const char lazy_key = 'z'; /* registry: {[module table] = lightuserdata lazy_module} */

/* A jobvisor module as a strict global: reading an unknown name (fs.raed)
 * raises instead of yielding nil. */
static void set_global_module(lua_State *L, const char *name, lua_CFunction open)
{
	lua_pushcfunction(L, open);
	lua_call(L, 0, 1);
	jv_sandbox_strict(L, -1, name, NULL);
	lua_setglobal(L, name);
}

static const struct lazy_module *module_fill(lua_State *L, int t)
{
	t = lua_absindex(L, t);
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &lazy_key) != LUA_TTABLE) {
		lua_pop(L, 1);
		return NULL;
	}
	int map = lua_gettop(L);
	lua_pushvalue(L, t);
	const struct lazy_module *m = lua_rawget(L, map) == LUA_TLIGHTUSERDATA ? lua_touserdata(L, -1) : NULL;
	lua_pop(L, 1);
	if (!m) {
		lua_pop(L, 1);
		return NULL; /* not a module, or filled already */
	}
	lua_pushcfunction(L, m->open);
	lua_call(L, 0, 1);
	int mod = lua_gettop(L);
	/* What the script assigned before the first read wins, as it would have
	 * overwritten the eagerly built field. */
	lua_pushnil(L);
	while (lua_next(L, mod)) {
		lua_pushvalue(L, -2);
		if (lua_rawget(L, t) == LUA_TNIL) {
			lua_pushvalue(L, -3);
			lua_pushvalue(L, -3);
			lua_rawset(L, t);
		}
		lua_pop(L, 2);
	}
	lua_pop(L, 1);
	jv_sandbox_strict(L, t, m->name, NULL);
	lua_pushvalue(L, t);
	lua_pushnil(L);
	lua_rawset(L, map);
	lua_pop(L, 1);
	return m;
}

void jv_sandbox_module_fill(lua_State *L, int t)
{
	module_fill(L, t);
}

static int lazy_index(lua_State *L)
{
	lua_settop(L, 2);
	const struct lazy_module *m = module_fill(L, 1);
	lua_pushvalue(L, 2);
	if (lua_rawget(L, 1) != LUA_TNIL || !m)
		return 1;
	return strict_miss(L, m->name);
}

static int lazy_newindex(lua_State *L)
{
	module_fill(L, 1);
	lua_settop(L, 3);
	lua_rawset(L, 1);
	return 0;
}

/* rawget and next as the base library has them, except that a module not
 * built yet is built first: rawget(fs, "name"), the documented test for an
 * optional function, and next(fs) see every function from the start. */
static int sb_rawget(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	luaL_checkany(L, 2);
	module_fill(L, 1);
	lua_settop(L, 2);
	lua_rawget(L, 1);
	return 1;
}

static int sb_next(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	module_fill(L, 1);
	lua_settop(L, 2);
	if (lua_next(L, 1))
		return 2;
	lua_pushnil(L);
	return 1;
}

static int lazy_pairs(lua_State *L)
{
	module_fill(L, 1);
	lua_pushcfunction(L, sb_next);
	lua_pushvalue(L, 1);
	lua_pushnil(L);
	return 3;
}

static void set_lazy_modules(lua_State *L)
{
	lua_createtable(L, 0, (int)JV_ARRAY_LEN(lazy_modules));
	int map = lua_gettop(L);
	lua_createtable(L, 0, 4);
	int mt = lua_gettop(L);
	lua_pushcfunction(L, lazy_index);
	lua_setfield(L, mt, "__index");
	lua_pushcfunction(L, lazy_newindex);
	lua_setfield(L, mt, "__newindex");
	lua_pushcfunction(L, lazy_pairs);
	lua_setfield(L, mt, "__pairs");
	lua_pushboolean(L, 0);
	lua_setfield(L, mt, "__metatable");
	for (size_t i = 0; i < JV_ARRAY_LEN(lazy_modules); i++) {
		lua_newtable(L);
		lua_pushvalue(L, mt);
		lua_setmetatable(L, -2);
		lua_pushvalue(L, -1);
		lua_pushlightuserdata(L, (void *)&lazy_modules[i]);
		lua_rawset(L, map);
		lua_setglobal(L, lazy_modules[i].name);
	}
	lua_pop(L, 1);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &lazy_key);
	lua_pushcfunction(L, sb_rawget);
	lua_setglobal(L, "rawget");
	lua_pushcfunction(L, sb_next);
	lua_setglobal(L, "next");
}

static void remove_field(lua_State *L, int t, const char *name)
{
	lua_pushnil(L);
	lua_setfield(L, t, name);
}

lua_State *jv_sandbox_new(const struct jv_sandbox_opts *opts)
{
	struct alloc_state *st = calloc(1, sizeof(*st));
	if (!st)
		return NULL;
	st->opts = *opts;
	if (!st->opts.mem_limit)
		st->opts.mem_limit = JV_DEFAULT_MEM_LIMIT;
	st->limit = st->opts.mem_limit;
	lua_State *L = lua_newstate(capped_alloc, st);
	if (!L) {
		free(st);
		return NULL;
	}
	/* Everything built below stays reachable: no collector steps while
	 * building it (restarting also clears the debt it ran up). */
	lua_gc(L, LUA_GCSTOP);
	static const luaL_Reg libs[] = {
		{LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string},
		{LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
		{LUA_UTF8LIBNAME, luaopen_utf8}, {LUA_COLIBNAME, luaopen_coroutine},
		{NULL, NULL},
	};
	for (const luaL_Reg *lib = libs; lib->func; lib++) {
		luaL_requiref(L, lib->name, lib->func, 1);
		lua_pop(L, 1);
	}
	/* Drop the package.loaded table luaL_requiref filled: require is ours. */
	lua_pushnil(L);
	lua_setfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);

	lua_pushglobaltable(L);
	int g = lua_gettop(L);
	remove_field(L, g, "dofile");
	remove_field(L, g, "loadfile");
	remove_field(L, g, "warn");
	lua_getfield(L, g, "load");
	lua_pushcclosure(L, l_load, 1);
	lua_setfield(L, g, "load");
	lua_pushcfunction(L, l_collectgarbage);
	lua_setfield(L, g, "collectgarbage");
	lua_pushcfunction(L, jv_lua_print);
	lua_setfield(L, g, "print");
	lua_pushcfunction(L, l_require);
	lua_setfield(L, g, "require");

	/* string.dump gone; the shared string metatable hidden from getmetatable. */
	lua_getfield(L, g, "string");
	remove_field(L, lua_gettop(L), "dump");
	lua_pop(L, 1);
	lua_pushliteral(L, "");
	lua_getmetatable(L, -1);
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 2);

	/* os: clock, time, date only (from a private copy of the real library). */
	luaL_requiref(L, "os_full", luaopen_os, 0);
	lua_newtable(L);
	const char *keep[] = {"clock", "time", "date"};
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
		lua_getfield(L, -2, keep[i]);
		lua_setfield(L, -2, keep[i]);
	}
	lua_setfield(L, g, "os");
	lua_pop(L, 1);

	lua_newtable(L);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &loaded_key);

	jv_ctx_install(L, opts->ctx);
	set_lazy_modules(L);
	set_global_module(L, "proc", luaopen_jv_proc);
	lua_pop(L, 1); /* globals */
	lua_gc(L, LUA_GCRESTART);
	return L;
}

void jv_sandbox_close(lua_State *L)
{
	if (!L)
		return;
	struct alloc_state *st = alloc_of(L);
	lua_close(L);
	free(st);
}
