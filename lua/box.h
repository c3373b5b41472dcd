/* box.h — a C resource owned by a Lua value, so a Lua error never leaks it.
 *
 * Any push can raise (the memory cap turns an allocation failure into a Lua
 * error), so a socket, a cJSON tree or a spec held by a C function across
 * pushes is owned by a box: a to-be-closed userdata whose one release
 * function serves both __close and __gc and is safe to run twice, as Lua's
 * own liolib.c does for files. The box is released when the C function
 * that pushed it returns or raises (lua_toclose), or earlier by hand. */
#ifndef JOBVISOR_BOX_H
#define JOBVISOR_BOX_H

#include <lua.h>

struct jv_box;
typedef void (*jv_box_release_fn)(void *p);

/* Push an empty to-be-closed box. May raise (memory): call it before
 * acquiring what it will own. */
struct jv_box *jv_box_push(lua_State *L);
/* Own p (release(p) frees it; p NULL is fine); what the box owned before is released first. */
void jv_box_set(struct jv_box *b, void *p, jv_box_release_fn release);
/* What the box owns (borrowed), or NULL. */
void *jv_box_get(const struct jv_box *b);
/* Release what the box owns now; it is empty afterwards. */
void jv_box_release(struct jv_box *b);

/* Release functions for what boxes usually hold. */
void jv_box_release_json(void *p);    /* cJSON_Delete */
void jv_box_release_monconn(void *p); /* jv_monconn_close */

#endif
