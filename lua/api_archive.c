/* api_archive.c — the `archive` module (placeholder until its issue lands: an empty table). */
#include "jvlua.h"

int luaopen_jv_archive(lua_State *L)
{
	lua_newtable(L);
	return 1;
}
