/* apiutil.h — what the fs, archive and http bindings share: checking script
 * paths and option tables, the progress/cancel hook handed to the C cores,
 * and turning core error codes into Lua errors or `nil, message`.
 *
 * Conventions (docs/lua-api.md): misuse raises (a wrong argument type, an
 * unknown option, a path that is absolute, has '..', leads outside the
 * instance through a symlink or writes into .jobvisor/); an expected failure
 * (missing file, full disk, a bad archive, an HTTP error) returns nil and a
 * message; a cancel request raises the cancellation error after the core has
 * removed its partial output. */
#ifndef JOBVISOR_APIUTIL_H
#define JOBVISOR_APIUTIL_H

#include <stdbool.h>
#include <stdint.h>

#include "fsx.h"
#include "jvlua.h"

/* A confined view of the instance directory for this run. */
void apiutil_fsx(lua_State *L, struct fsx *fx);

/* Check argument idx as a script path into out (FSX_PATH_MAX bytes); raises on
 * misuse. write = the call creates, changes or removes something there. */
const char *apiutil_path(lua_State *L, int idx, char *out, bool write);

/* The shared strict option reader. Raise "<fn>: unknown option 'x' (known: ...)" for keys of the table at idx outside keys
 * (NULL-terminated); nil/none is fine; anything but a table raises. The
 * getters raise on a value of the wrong type or range (a numeric string is not
 * a number here). opts.progress is read by jv_progress_init (lua/events.c). */
void apiutil_opts(lua_State *L, int idx, const char *fn, const char *const *keys);
/* Push opts[key] of the table at idx (nil when there is none); its type. */
int apiutil_opt_get(lua_State *L, int idx, const char *key);
bool apiutil_opt_bool(lua_State *L, int idx, const char *key, bool def);
int64_t apiutil_opt_int(lua_State *L, int idx, const char *key, int64_t def, int64_t min,
                        int64_t max);
double apiutil_opt_num(lua_State *L, int idx, const char *key, double def, double min,
                       double max);
const char *apiutil_opt_str(lua_State *L, int idx, const char *key, const char *def);

/* A file mode: an integer (493) or an octal string ("755", "0755"); raises
 * otherwise or beyond 07777 (callers decide what to do with the special
 * bits). apiutil_opt_mode reads opts[key]; -1 when absent. */
int apiutil_mode(lua_State *L, int idx, const char *what);
int apiutil_opt_mode(lua_State *L, int idx, const char *key);

/* Progress + cancel hook for a core call; opts.progress = {from, to} or
 * {from =, to =}; malformed raises. */
struct apiutil_tick {
	struct jv_run_ctx *ctx;
	struct jv_progress p;
	struct jv_io_hooks hooks;
	bool cancellable; /* false: report progress only (cleanup calls such as remove_tree) */
};
void apiutil_tick_init(lua_State *L, int opts_idx, struct apiutil_tick *t, const char *what);

/* How a long file or archive call begins: the instance's fsx (raises
 * without an instance directory) and the progress/cancel hook from
 * opts_idx (0: none). */
struct apiutil_call {
	struct fsx fx;
	struct apiutil_tick t;
};
void apiutil_call_init(lua_State *L, int opts_idx, struct apiutil_call *c, const char *what);

/* Report 100% at the end of a call that was given opts.progress. */
void apiutil_tick_done(struct apiutil_tick *t);


/* After an fsx call failed with rc: raises for -ECANCELED (cancellation
 * error) and policy refusals; otherwise pushes nil, "cannot <verb> '<path>':
 * <reason>" and returns 2. */
int apiutil_fail(lua_State *L, int rc, const char *verb, const char *path);
/* The end of a call that returns true on success: apiutil_fail for rc < 0. */
int apiutil_true_or_fail(lua_State *L, int rc, const char *verb, const char *path);

/* After an archive/download core failed with rc and message err: raises for
 * -ECANCELED, else pushes nil, "<prefix>: <err>" and returns 2. */
int apiutil_fail_msg(lua_State *L, int rc, const char *prefix, const char *err);

/* Open the directory that will hold norm (creating missing parents) and point
 * *last at the final component. Returns 0 or an fsx code. */
int apiutil_parent(const struct fsx *fx, const char *norm, int *dirfd, const char **last);

/* Make the functions of the module table at t named in a (ending with a NULL
 * name) raise when called with more than max_args arguments. */
struct apiutil_arity {
	const char *name;
	int max_args;
};
void apiutil_limit_args(lua_State *L, int t, const char *module, const struct apiutil_arity *a);

/* The manifest at idx (as archive.create returns it) into *m (free it with
 * arch_manifest_free); pushes nothing; 0 or -EINVAL with err (api_archive.c). */
struct arch_manifest;
int archive_manifest_arg(lua_State *L, int idx, struct arch_manifest *m, char *err, size_t errlen);
/* An empty manifest on the heap owned by a new box (box.h) pushed on the
 * stack: released when the calling C function returns or raises. */
struct arch_manifest *archive_manifest_push(lua_State *L);
/* The manifest at idx for a call that only reads it: a handle from
 * archive.manifest (borrowed, nothing pushed) or a table (converted into a
 * new box pushed on the stack). NULL with *rc and err when it is not one
 * (api_archive_mf.c). */
const struct arch_manifest *archive_manifest_use(lua_State *L, int idx, char *err, size_t errlen,
                                                 int *rc);
/* The manifest file at path (beneath fx) into *m, entry by entry
 * (arch_mfread.c); 0 or -errno with err (naming the file). */
struct fsx;
int archive_manifest_read(const struct fsx *fx, const char *path, struct arch_manifest *m,
                          char *err, size_t errlen);
/* archive.manifest(path) */
int archive_l_manifest(lua_State *L);

#endif
