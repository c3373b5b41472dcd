/* api_json.c — the `json` module and the Lua <-> cJSON conversion every
 * binding uses (params in, outputs and markers out).
 *
 * Arrays: a table whose keys are exactly 1..n encodes as an array; a table
 * carrying json.array's metatable encodes as an array even when empty (decode
 * sets it, so round trips keep []); anything else with string keys is an
 * object; mixed or sparse keys are an error. JSON null decodes to json.null.
 *
 * Strings: cJSON's are C strings, so a NUL in a Lua string travels as the
 * bytes C0 80 (as jsonutil.c reads "\u0000") and comes back to Lua as NUL;
 * json.encode writes it as \u0000. Other bytes pass unchanged (a file name
 * that is not UTF-8 survives a manifest round trip); what leaves the agent is
 * made valid UTF-8 by jv_json_print. */
#include "apiutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"

#define MAX_DEPTH 100

static const char array_mt_key = 'a';
static const char null_key = 'n';

static void push_array_mt(lua_State *L)
{
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &array_mt_key) == LUA_TTABLE)
		return;
	lua_pop(L, 1);
	lua_newtable(L);
	lua_pushliteral(L, "array");
	lua_setfield(L, -2, "__name");
	lua_pushvalue(L, -1);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &array_mt_key);
}

static void push_null(lua_State *L)
{
	lua_pushlightuserdata(L, (void *)&null_key);
}

static bool has_array_mt(lua_State *L, int idx)
{
	if (!lua_getmetatable(L, idx))
		return false;
	push_array_mt(L);
	bool eq = lua_rawequal(L, -1, -2);
	lua_pop(L, 2);
	return eq;
}

struct enc {
	char *err;
	size_t errlen;
};

static cJSON *to_json(lua_State *L, int idx, int depth, struct enc *e, const char *where);

#define NUL_MARK "\xC0\x80"

/* A Lua string as a C string for cJSON: each NUL becomes C0 80. Returned-owned
 * (free) when *copy, else borrowed from Lua. NULL on ENOMEM. */
static const char *c_text(const char *s, size_t len, char **copy)
{
	*copy = NULL;
	if (!memchr(s, '\0', len))
		return s;
	size_t nuls = 0;
	for (size_t i = 0; i < len; i++)
		nuls += s[i] == '\0';
	char *out = malloc(len + nuls + 1);
	if (!out)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '\0') {
			memcpy(out + o, NUL_MARK, 2);
			o += 2;
		} else {
			out[o++] = s[i];
		}
	}
	out[o] = '\0';
	*copy = out;
	return out;
}

/* Push a cJSON string to Lua with C0 80 turned back into NUL. */
static void push_text(lua_State *L, const char *s)
{
	const char *m = strstr(s, NUL_MARK);
	if (!m) {
		lua_pushstring(L, s);
		return;
	}
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	for (; m; s = m + 2, m = strstr(s, NUL_MARK)) {
		luaL_addlstring(&b, s, (size_t)(m - s));
		luaL_addchar(&b, '\0');
	}
	luaL_addstring(&b, s);
	luaL_pushresult(&b);
}

static cJSON *table_to_json(lua_State *L, int idx, int depth, struct enc *e, const char *where)
{
	/* Count keys: all positive integers 1..n -> array. */
	lua_Integer n = 0, max = 0;
	bool only_ints = true, any = false;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		any = true;
		if (lua_type(L, -2) == LUA_TNUMBER && lua_isinteger(L, -2) && lua_tointeger(L, -2) > 0) {
			lua_Integer k = lua_tointeger(L, -2);
			n++;
			if (k > max)
				max = k;
		} else {
			only_ints = false;
		}
		lua_pop(L, 1);
	}
	bool as_array = (any && only_ints) || (!any && has_array_mt(L, idx));
	char sub[256];
	if (as_array) {
		if (max != n) {
			snprintf(e->err, e->errlen, "cannot encode sparse array at %s", where);
			return NULL;
		}
		cJSON *arr = cJSON_CreateArray();
		for (lua_Integer i = 1; i <= n; i++) {
			lua_rawgeti(L, idx, i);
			snprintf(sub, sizeof(sub), "%s[%lld]", where, (long long)i);
			cJSON *v = to_json(L, lua_gettop(L), depth + 1, e, sub);
			lua_pop(L, 1);
			if (!v) {
				cJSON_Delete(arr);
				return NULL;
			}
			cJSON_AddItemToArray(arr, v);
		}
		return arr;
	}
	cJSON *obj = cJSON_CreateObject();
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		if (lua_type(L, -2) != LUA_TSTRING) {
			snprintf(e->err, e->errlen, "cannot encode table with mixed or non-string keys at %s",
			         where);
			lua_pop(L, 2);
			cJSON_Delete(obj);
			return NULL;
		}
		size_t klen;
		const char *kraw = lua_tolstring(L, -2, &klen);
		char *kcopy;
		const char *k = c_text(kraw, klen, &kcopy);
		snprintf(sub, sizeof(sub), "%s.%s", where, kraw);
		cJSON *v = k ? to_json(L, lua_gettop(L), depth + 1, e, sub) : NULL;
		if (!v) {
			if (!k)
				snprintf(e->err, e->errlen, "cannot encode: out of memory");
			free(kcopy);
			lua_pop(L, 2);
			cJSON_Delete(obj);
			return NULL;
		}
		cJSON_AddItemToObject(obj, k, v);
		free(kcopy);
		lua_pop(L, 1);
	}
	return obj;
}

static cJSON *to_json(lua_State *L, int idx, int depth, struct enc *e, const char *where)
{
	if (depth > MAX_DEPTH) {
		snprintf(e->err, e->errlen, "cannot encode: nesting deeper than %d at %s", MAX_DEPTH,
		         where);
		return NULL;
	}
	if (!lua_checkstack(L, 8)) {
		snprintf(e->err, e->errlen, "cannot encode: stack exhausted");
		return NULL;
	}
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		return cJSON_CreateNull();
	case LUA_TBOOLEAN:
		return cJSON_CreateBool(lua_toboolean(L, idx));
	case LUA_TNUMBER: {
		double d = lua_tonumber(L, idx);
		if (!isfinite(d)) {
			snprintf(e->err, e->errlen, "cannot encode %s number at %s",
			         isnan(d) ? "NaN" : "infinite", where);
			return NULL;
		}
		return cJSON_CreateNumber(d);
	}
	case LUA_TSTRING: {
		size_t len;
		const char *raw = lua_tolstring(L, idx, &len);
		char *copy;
		const char *s = c_text(raw, len, &copy);
		cJSON *v = s ? cJSON_CreateString(s) : NULL;
		free(copy);
		if (!v)
			snprintf(e->err, e->errlen, "cannot encode: out of memory");
		return v;
	}
	case LUA_TLIGHTUSERDATA:
		if (lua_touserdata(L, idx) == (void *)&null_key)
			return cJSON_CreateNull();
		break;
	case LUA_TTABLE: {
		/* Detect cycles through depth (a cycle hits MAX_DEPTH). */
		return table_to_json(L, lua_absindex(L, idx), depth, e, where);
	}
	default:
		break;
	}
	snprintf(e->err, e->errlen, "cannot encode %s at %s", luaL_typename(L, idx), where);
	return NULL;
}

cJSON *jv_lua_to_json(lua_State *L, int idx, char *err, size_t errlen)
{
	struct enc e = {err, errlen};
	if (errlen)
		err[0] = '\0';
	return to_json(L, lua_absindex(L, idx), 0, &e, "value");
}

void jv_json_push_array(lua_State *L)
{
	lua_newtable(L);
	push_array_mt(L);
	lua_setmetatable(L, -2);
}

void jv_json_to_lua(lua_State *L, const cJSON *v)
{
	luaL_checkstack(L, 8, "json nesting too deep");
	if (cJSON_IsNull(v) || !v) {
		push_null(L);
	} else if (cJSON_IsBool(v)) {
		lua_pushboolean(L, cJSON_IsTrue(v));
	} else if (cJSON_IsNumber(v)) {
		double d = v->valuedouble;
		if (fabs(d) < 9.007199254740992e15 && jv_whole_in_int64(d))
			lua_pushinteger(L, (lua_Integer)d);
		else
			lua_pushnumber(L, d);
	} else if (cJSON_IsString(v)) {
		push_text(L, v->valuestring);
	} else if (cJSON_IsArray(v)) {
		lua_createtable(L, cJSON_GetArraySize(v), 0);
		lua_Integer i = 1;
		for (const cJSON *c = v->child; c; c = c->next) {
			jv_json_to_lua(L, c);
			lua_rawseti(L, -2, i++);
		}
		push_array_mt(L);
		lua_setmetatable(L, -2);
	} else if (cJSON_IsObject(v)) {
		lua_newtable(L);
		for (const cJSON *c = v->child; c; c = c->next) {
			if (!c->string)
				continue;
			push_text(L, c->string);
			jv_json_to_lua(L, c);
			lua_rawset(L, -3);
		}
	} else {
		push_null(L);
	}
}

static int l_json_encode(lua_State *L)
{
	luaL_checkany(L, 1);
	static const char *const keys[] = {"indent", NULL};
	apiutil_opts(L, 2, "json.encode", keys);
	bool pretty = apiutil_opt_bool(L, 2, "indent", false);
	char err[256];
	cJSON *j = jv_lua_to_json(L, 1, err, sizeof(err));
	if (!j)
		return luaL_error(L, "json.encode: %s", err);
	char *s = pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (!s)
		return luaL_error(L, "json.encode: out of memory");
	/* C0 80 only occurs inside strings (the text around them is ASCII): the NUL it stands for. */
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	const char *p = s;
	for (const char *m = strstr(p, NUL_MARK); m; p = m + 2, m = strstr(p, NUL_MARK)) {
		luaL_addlstring(&b, p, (size_t)(m - p));
		luaL_addstring(&b, "\\u0000");
	}
	luaL_addstring(&b, p);
	free(s);
	luaL_pushresult(&b);
	return 1;
}

static int l_json_decode(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	cJSON *j = jv_json_parse(s, len);
	if (!j) {
		return jv_push_fail(L, "invalid JSON");
	}
	jv_json_to_lua(L, j);
	cJSON_Delete(j);
	return 1;
}

static int l_json_array(lua_State *L)
{
	if (lua_isnoneornil(L, 1))
		lua_newtable(L);
	else
		luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	push_array_mt(L);
	lua_setmetatable(L, 1);
	return 1;
}

static const luaL_Reg json_funcs[] = {
	{"encode", l_json_encode},
	{"decode", l_json_decode},
	{"array", l_json_array},
	{NULL, NULL},
};

int luaopen_jv_json(lua_State *L)
{
	luaL_newlib(L, json_funcs);
	static const struct apiutil_arity arity[] = {
		{"encode", 2},
		{"decode", 1},
		{"array", 1},
		{NULL, 0},
	};
	apiutil_limit_args(L, -1, "json", arity);
	push_null(L);
	lua_setfield(L, -2, "null");
	return 1;
}
