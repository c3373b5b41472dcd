/* api_fs.c — the `fs` module (placeholder until its issue lands: an empty table). */
#include "jvlua.h"

int luaopen_jv_fs(lua_State *L)
{
	lua_newtable(L);
	return 1;
}
