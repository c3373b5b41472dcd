/* check.c — `jobvisor check SCRIPT.lua`: compile in the sandbox, validate the
 * returned table, print what was found or a file:line error. Nothing runs but
 * the chunk's top level, with no instance, no event pipe and no data dir.
 *
 * It also reads the source for proc.run calls whose program is a literal
 * (`proc.run({"/path", ...})`) and reports each one the agent's
 * job_executables (or steamcmd) setting would refuse at run time. A program
 * computed at run time cannot be known here and is left to proc.run. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/durable.h"
#include "jobvisor/jobchild.h"
#include "jvlua.h"
#include "sandbox.h"
#include "scriptdef.h"

/* Report literal argv[1] of proc.run calls that settings do not allow.
 * Returns how many were reported. A `--` comment before the call on its line
 * hides it. */
static int check_programs(const char *path, const cJSON *settings)
{
	char *src = NULL;
	size_t len = 0;
	if (jv_read_file_at(AT_FDCWD, path, 4u << 20, &src, &len) < 0)
		return 0;
	int bad = 0;
	for (const char *p = src; (p = strstr(p, "proc.run")) != NULL; p += 8) {
		const char *bol = p;
		while (bol > src && bol[-1] != '\n')
			bol--;
		bool commented = false;
		for (const char *q = bol; q + 1 < p; q++)
			commented = commented || (q[0] == '-' && q[1] == '-');
		if (commented || (p > src && (p[-1] == '_' || p[-1] == '.' ||
		                              (p[-1] >= 'a' && p[-1] <= 'z'))))
			continue;
		const char *q = p + 8;
		while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
			q++;
		if (*q++ != '(')
			continue;
		while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
			q++;
		if (*q++ != '{')
			continue;
		while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
			q++;
		char quote = *q;
		if (quote != '"' && quote != '\'')
			continue;
		const char *start = ++q;
		while (*q && *q != quote && *q != '\\' && *q != '\n')
			q++;
		if (*q != quote)
			continue; /* escapes: not a plain literal, leave it to run time */
		char prog[4096];
		size_t n = (size_t)(q - start);
		if (n >= sizeof(prog))
			continue;
		memcpy(prog, start, n);
		prog[n] = '\0';
		if (prog[0] == '/' && jv_proc_allowed(settings, prog))
			continue;
		int line = 1;
		for (const char *c = src; c < p; c++)
			line += *c == '\n';
		fprintf(stderr, "%s:%d: proc.run of '%s' would be refused: %s\n", path, line, prog,
		        prog[0] != '/' ? "the program must be an absolute path"
		                       : "it is not in the agent setting job_executables");
		bad++;
	}
	free(src);
	return bad;
}

int jv_check_script(const char *path, const char *builtin_jobs_dir, const cJSON *settings)
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
	if (check_programs(path, settings) > 0) {
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
