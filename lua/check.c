/* check.c — `jobvisor check SCRIPT.lua`: compile in the sandbox, validate the
 * returned table, print what was found or a file:line error. Nothing runs but
 * the chunk's top level, with no instance, no event pipe and no data dir. */
#include <stdio.h>
#include <string.h>

#include "jobvisor/jobchild.h"
#include "sandbox.h"
#include "scriptdef.h"

int jv_check_script(const char *path, const char *builtin_jobs_dir)
{
	static volatile sig_atomic_t never;
	struct jv_run_ctx ctx = {
		.job_id = "check", .run_id = "check", .instance_id = "", .type = "", .attempt = 1,
		.data_dir = "", .instance_dir = "", .data_fd = -1, .instance_fd = -1, .event_fd = -1,
		.cancel_flag = &never,
	};
	/* require() sees the script's own lib/ first, then the built-in one. */
	char own_lib[4096], builtin_lib[4096];
	const char *slash = strrchr(path, '/');
	if (slash)
		snprintf(own_lib, sizeof(own_lib), "%.*s/lib", (int)(slash - path), path);
	else
		snprintf(own_lib, sizeof(own_lib), "lib");
	snprintf(builtin_lib, sizeof(builtin_lib), "%s/lib", builtin_jobs_dir ? builtin_jobs_dir : ".");
	struct jv_sandbox_opts so = {.ctx = &ctx, .lib_dirs = {own_lib, builtin_lib, NULL}};
	lua_State *L = jv_sandbox_new(&so);
	if (!L) {
		fprintf(stderr, "jobvisor check: out of memory\n");
		return 1;
	}
	struct jv_scriptdef def;
	char err[2048];
	if (jv_scriptdef_load(L, path, path, &def, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		jv_sandbox_close(L);
		return 1;
	}
	printf("ok: %s: type %s, %s", path, def.type, def.cancellable ? "cancellable" : "not cancellable");
	if (!def.cancellable)
		printf(" (%s)", def.why);
	printf(", params:");
	if (def.nparams == 0)
		printf(" none");
	for (size_t i = 0; i < def.nparams; i++)
		printf(" %s:%s%s", def.params[i].name, def.params[i].type, def.params[i].optional ? "?" : "");
	printf("\n");
	jv_sandbox_close(L);
	return 0;
}
