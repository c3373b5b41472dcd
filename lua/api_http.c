/* api_http.c — the `http` module (placeholder until its issue lands: an empty table). */
#include "jvlua.h"

int luaopen_jv_http(lua_State *L)
{
	lua_newtable(L);
	return 1;
}
