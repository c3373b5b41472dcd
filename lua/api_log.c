/* api_log.c — the `log` module and `print`: lines go to the parent as log
 * events, which stamps job_id/run_id, writes them to the agent's log and ships
 * them to the control plane. */
#include "jvlua.h"

#include <string.h>

#define MAX_LOG_MESSAGE 8192

const char *jv_lua_text(lua_State *L, int idx)
{
	size_t len;
	idx = lua_absindex(L, idx);
	const char *s = lua_type(L, idx) == LUA_TSTRING || lua_type(L, idx) == LUA_TNUMBER ? lua_tolstring(L, idx, &len) : NULL;
	if (!s || !memchr(s, '\0', len))
		return s;
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	for (size_t i = 0; i < len; i++) {
		if (s[i])
			luaL_addchar(&b, s[i]);
		else
			luaL_addstring(&b, "\xEF\xBF\xBD");
	}
	luaL_pushresult(&b);
	return lua_tostring(L, -1);
}

static int log_at(lua_State *L, const char *level)
{
	/* log.x takes one message and no options: extra arguments would be lost. */
	if (lua_gettop(L) != 1)
		return luaL_error(L, "log.%s takes exactly one message, got %d arguments (use "
		                     "string.format to build it)", level, lua_gettop(L));
	size_t len;
	const char *msg = luaL_tolstring(L, 1, &len);
	if (len > MAX_LOG_MESSAGE) {
		lua_pushlstring(L, msg, MAX_LOG_MESSAGE);
		lua_pushliteral(L, "...(truncated)");
		lua_concat(L, 2);
	}
	msg = jv_lua_text(L, -1);
	jv_emit_log(jv_ctx(L), level, msg);
	return 0;
}

static int l_log_debug(lua_State *L) { return log_at(L, "debug"); }
static int l_log_info(lua_State *L) { return log_at(L, "info"); }
static int l_log_warn(lua_State *L) { return log_at(L, "warn"); }
static int l_log_error(lua_State *L) { return log_at(L, "error"); }

/* print(...): tostring of each argument, tab-separated, logged at info. */
int jv_lua_print(lua_State *L)
{
	int n = lua_gettop(L);
	if (n == 0) {
		lua_pushliteral(L, "");
		return log_at(L, "info");
	}
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	for (int i = 1; i <= n; i++) {
		size_t len;
		const char *s = luaL_tolstring(L, i, &len);
		if (i > 1)
			luaL_addchar(&b, '\t');
		luaL_addlstring(&b, s, len > MAX_LOG_MESSAGE ? MAX_LOG_MESSAGE : len);
		lua_pop(L, 1);
	}
	luaL_pushresult(&b);
	lua_replace(L, 1);
	lua_settop(L, 1);
	return log_at(L, "info");
}

static const luaL_Reg log_funcs[] = {
	{"debug", l_log_debug},
	{"info", l_log_info},
	{"warn", l_log_warn},
	{"error", l_log_error},
	{NULL, NULL},
};

int luaopen_jv_log(lua_State *L)
{
	luaL_newlib(L, log_funcs);
	return 1;
}
