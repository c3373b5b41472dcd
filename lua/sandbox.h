/* sandbox.h — building the sandboxed Lua state a job script runs in. */
#ifndef JOBVISOR_SANDBOX_H
#define JOBVISOR_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>

#include "jvlua.h"

struct jv_sandbox_opts {
	size_t mem_limit;           /* bytes; 0 = JV_DEFAULT_MEM_LIMIT */
	const char *lib_dirs[4];    /* directories searched by require("lib.x"), NULL-terminated */
	struct jv_run_ctx *ctx;     /* borrowed; installed in the registry */
};

#define JV_DEFAULT_MEM_LIMIT ((size_t)256 << 20)

/* A fresh state with only the allow-listed libraries and the jobvisor modules
 * as globals. Returned-owned; never lua_close()d by the child (see child_main.c),
 * but jv_sandbox_close() exists for `check`. NULL on allocation failure. */
lua_State *jv_sandbox_new(const struct jv_sandbox_opts *opts);
void jv_sandbox_close(lua_State *L);

/* Memory accounting of the capped allocator. */
size_t jv_sandbox_mem_used(lua_State *L);
size_t jv_sandbox_mem_limit(lua_State *L);
/* Let the error path allocate a little beyond the cap (to build the result). */
void jv_sandbox_mem_grace(lua_State *L);

/* Load a script file as text (never bytecode) with a short chunk name.
 * Pushes the chunk; returns LUA_OK or an error code with the message pushed. */
int jv_sandbox_loadfile(lua_State *L, const char *path, const char *chunkname);

/* Make the table at t strict: reading a name it does not hold raises
 * "<name>.<key>: no such field in module '<name>' (did you mean ...?)", except
 * for the names in optional (NULL-terminated, may be NULL), which read as nil.
 * The jobvisor modules and the job table are strict. */
void jv_sandbox_strict(lua_State *L, int t, const char *name, const char *const *optional);

/* Build the jobvisor module at t now if its first use has not built it yet
 * (see sandbox.c); anything else at t is left alone. For raw inspection. */
void jv_sandbox_module_fill(lua_State *L, int t);

/* The key of table t closest to key (edit distance <= 2) into out, or NULL. */
const char *jv_sandbox_suggest(lua_State *L, int t, const char *key, char *out, size_t outlen);

#endif
