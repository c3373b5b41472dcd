/* box.c — to-be-closed userdata owning one C resource (see box.h). */
#include "box.h"

#include <lauxlib.h>
#include <cjson/cJSON.h>

#include "jobvisor/instance_client.h"

#define BOX_MT "jobvisor.box"

struct jv_box {
	void *p;
	jv_box_release_fn release;
};

void jv_box_release(struct jv_box *b)
{
	void *p = b->p;
	jv_box_release_fn release = b->release;
	b->p = NULL;
	b->release = NULL;
	if (p && release)
		release(p);
}

/* __close and __gc: the same release, safe to run twice. */
static int box_gc(lua_State *L)
{
	jv_box_release(luaL_checkudata(L, 1, BOX_MT));
	return 0;
}

struct jv_box *jv_box_push(lua_State *L)
{
	struct jv_box *b = lua_newuserdatauv(L, sizeof(*b), 0);
	b->p = NULL;
	b->release = NULL;
	if (luaL_newmetatable(L, BOX_MT)) {
		lua_pushcfunction(L, box_gc);
		lua_setfield(L, -2, "__gc");
		lua_pushcfunction(L, box_gc);
		lua_setfield(L, -2, "__close");
		lua_pushliteral(L, "jobvisor internal");
		lua_setfield(L, -2, "__metatable");
	}
	lua_setmetatable(L, -2);
	lua_toclose(L, -1);
	return b;
}

void jv_box_set(struct jv_box *b, void *p, jv_box_release_fn release)
{
	jv_box_release(b);
	b->p = p;
	b->release = release;
}

void *jv_box_get(const struct jv_box *b)
{
	return b->p;
}

void jv_box_release_json(void *p)
{
	cJSON_Delete(p);
}

void jv_box_release_monconn(void *p)
{
	jv_monconn_close(p);
}
