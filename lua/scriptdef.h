/* scriptdef.h — loading a job script and validating the table it returns
 * (DESIGN.md section 6), shared by the job-run child and `jobvisor check`. */
#ifndef JOBVISOR_SCRIPTDEF_H
#define JOBVISOR_SCRIPTDEF_H

#include <stdbool.h>
#include <stddef.h>

#include "jobvisor/params.h"
#include "jvlua.h"


struct jv_scriptdef {
	char chunkname[256];
	char type[65];
	bool cancellable;
	char why[512];
	char description[1024];
	int run_ref; /* registry reference to run(job) */
	size_t nparams;
	struct jv_param_decl params[JV_MAX_PARAMS];
};

/* Load path as text in the sandbox state L, run the chunk, validate the table.
 * chunkname: shown in errors and tracebacks (NULL = the file's base name).
 * Returns 0, or -1 with a file:line message in err. */
int jv_scriptdef_load(lua_State *L, const char *path, const char *chunkname,
                      struct jv_scriptdef *def, char *err, size_t errlen);

/* Check params (a JSON object or NULL) against the declaration: required
 * present, types right, nothing undeclared. Returns 0 or -1 with err naming
 * the parameter. */
int jv_scriptdef_check_params(lua_State *L, const struct jv_scriptdef *def, const cJSON *params,
                              char *err, size_t errlen);

/* A sandbox for inspecting a script (its top level runs; no instance, no
 * event pipe, no data dir): `jobvisor check` and the job-type report. */
struct jv_inspect {
	struct jv_run_ctx ctx;
	char own_lib[4096], builtin_lib[4096];
};
lua_State *jv_inspect_sandbox(const char *path, const char *builtin_jobs_dir, struct jv_inspect *in);

/* Copy in to out, removing secrets (URL credentials, token=... query values)
 * and absolute paths outside data_dir (kept as ".../basename"). */
void jv_sanitize(char *out, size_t outlen, const char *in, const char *data_dir);

/* Move this run's staging directory .jobvisor/staging/<runId> to
 * .jobvisor/trash/<runId> (one rename; deleted in place if that fails). Best
 * effort. */
void jv_staging_cleanup(struct jv_run_ctx *ctx);
/* Empty .jobvisor/trash on a detached background thread when it holds
 * anything (with the instance lock held). Best effort. */
void jv_trash_sweep_start(struct jv_run_ctx *ctx);

#endif
