/* api_instance.c — the `instance` module (placeholder until its issue lands: an empty table). */
#include "jvlua.h"

int luaopen_jv_instance(lua_State *L)
{
	lua_newtable(L);
	return 1;
}
