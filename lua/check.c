/* check.c — `jobvisor check SCRIPT.lua`: compile in the sandbox, validate the
 * returned table, print what was found or a file:line error. Nothing runs but
 * the chunk's top level, with no instance, no event pipe and no data dir. */
#include <stdio.h>
#include <string.h>

#include "jobvisor/jobchild.h"
#include "sandbox.h"
#include "scriptdef.h"

int jv_check_script(const char *path)
{
	static volatile sig_atomic_t never;
	struct jv_run_ctx ctx = {
		.job_id = "check", .run_id = "check", .instance_id = "", .type = "", .attempt = 1,
		.data_dir = "", .instance_dir = "", .data_fd = -1, .instance_fd = -1, .event_fd = -1,
		.cancel_flag = &never,
	};
	struct jv_sandbox_opts so = {.ctx = &ctx};
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
