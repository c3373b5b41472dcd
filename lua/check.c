/* check.c — `jobvisor check SCRIPT.lua...`: compile each script in the
 * sandbox, validate the table it returns, and look through its text for
 * fields of the sandbox modules that do not exist (`fs.raed`, `os.execute`,
 * `job.progres`), which would otherwise fail only when run() reaches them.
 * Every problem is printed as FILE:LINE: message on stderr; nothing runs but
 * the chunk's top level, with no instance, no event pipe and no data dir.
 * Helpers in a lib/ directory are compiled and scanned, not run.
 *
 * It also reports each proc.run call whose program is a literal
 * (`proc.run({"/path", ...})`) that the agent's job_executables (or
 * steamcmd) setting would refuse at run time; a program computed at run
 * time cannot be known here and is left to proc.run. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/durable.h"
#include "jobvisor/jobchild.h"
#include "jvlua.h"
#include "sandbox.h"
#include "scriptdef.h"
#include "scriptlex.h"

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

#define MAX_SCRIPT_BYTES (4u << 20)

static bool tok_in(const struct jv_tok *t, const char *s)
{
	return t->kind == JV_TOK_OP && jv_tok_is(t, JV_TOK_OP, s);
}

static bool is_keyword(const struct jv_tok *t)
{
	static const char *const kw[] = {"and", "break", "do", "else", "elseif", "end", "false", "for",
	                                 "function", "goto", "if", "in", "local", "nil", "not", "or",
	                                 "repeat", "return", "then", "true", "until", "while", NULL};
	if (t->kind != JV_TOK_NAME)
		return false;
	for (const char *const *k = kw; *k; k++)
		if (jv_tok_is(t, JV_TOK_NAME, *k))
			return true;
	return false;
}

static bool plain_name(const struct jv_tok *t)
{
	return t->kind == JV_TOK_NAME && !is_keyword(t);
}

/* Does the '(' at j open a parameter list: `function (`, `function f(`,
 * `function a.b:c(`? (Not a call such as `a.b(`.) */
static bool opens_params(const struct jv_lex *lx, size_t j)
{
	if (j == 0)
		return false;
	size_t k = j - 1;
	if (jv_tok_is(&lx->v[k], JV_TOK_NAME, "function"))
		return true;
	for (;;) {
		if (!plain_name(&lx->v[k]) || k == 0)
			return false;
		if (jv_tok_is(&lx->v[k - 1], JV_TOK_NAME, "function"))
			return true;
		if (k < 2 || !(tok_in(&lx->v[k - 1], ".") || tok_in(&lx->v[k - 1], ":")))
			return false;
		k -= 2;
	}
}

/* Is name declared as a local (`local a, name`, `local function name`), a
 * function parameter or a loop variable anywhere in the file? Then `name.x`
 * may be the script's own table: not checked (no false alarms). job is a
 * parameter by convention and only counts as declared through `local`. */
static bool declared_locally(const struct jv_lex *lx, const char *name, bool params_too)
{
	for (size_t i = 0; i < lx->n; i++) {
		if (!jv_tok_is(&lx->v[i], JV_TOK_NAME, name))
			continue;
		if (i > 1 && jv_tok_is(&lx->v[i - 1], JV_TOK_NAME, "function") &&
		    jv_tok_is(&lx->v[i - 2], JV_TOK_NAME, "local"))
			return true;
		/* Back over "a, b, " to what introduces the list. */
		size_t j = i;
		while (j > 0 && (plain_name(&lx->v[j - 1]) || tok_in(&lx->v[j - 1], ",")))
			j--;
		if (j == 0)
			continue;
		const struct jv_tok *intro = &lx->v[j - 1];
		if (jv_tok_is(intro, JV_TOK_NAME, "local"))
			return true;
		if (params_too && (jv_tok_is(intro, JV_TOK_NAME, "for") ||
		                   (tok_in(intro, "(") && opens_params(lx, j - 1))))
			return true;
	}
	return false;
}

/* `job.name = ...` somewhere in the file: the script adds that field itself. */
static bool assigned_on(const struct jv_lex *lx, const char *mod, const struct jv_tok *field)
{
	for (size_t i = 0; i + 3 < lx->n; i++)
		if (jv_tok_is(&lx->v[i], JV_TOK_NAME, mod) && tok_in(&lx->v[i + 1], ".") &&
		    lx->v[i + 2].len == field->len && memcmp(lx->v[i + 2].s, field->s, field->len) == 0 &&
		    tok_in(&lx->v[i + 3], "="))
			return true;
	return false;
}

/* Report every `module.field` of the file whose module (a table global of the
 * sandbox, or the job table at job_idx) has no such field. Returns the count. */
static int check_fields(lua_State *L, const char *path, const struct jv_lex *lx, int job_idx)
{
	int problems = 0;
	for (size_t i = 0; i + 2 < lx->n; i++) {
		const struct jv_tok *m = &lx->v[i], *dot = &lx->v[i + 1], *f = &lx->v[i + 2];
		if (m->kind != JV_TOK_NAME || !(tok_in(dot, ".") || tok_in(dot, ":")) ||
		    f->kind != JV_TOK_NAME || m->len > 32 || f->len > 64)
			continue;
		if (i > 0 && (tok_in(&lx->v[i - 1], ".") || tok_in(&lx->v[i - 1], ":")))
			continue; /* a.fs.x: not the module */
		char mod[33], key[65];
		memcpy(mod, m->s, m->len);
		mod[m->len] = '\0';
		memcpy(key, f->s, f->len);
		key[f->len] = '\0';
		bool is_job = strcmp(mod, "job") == 0;
		int t;
		if (is_job) {
			lua_pushvalue(L, job_idx);
		} else if (lua_getglobal(L, mod) != LUA_TTABLE) {
			lua_pop(L, 1);
			continue;
		}
		t = lua_gettop(L);
		jv_sandbox_module_fill(L, t);
		lua_pushstring(L, key);
		bool ok = lua_rawget(L, t) != LUA_TNIL; /* raw: the modules raise on unknown names */
		lua_pop(L, 1);
		if (!ok && is_job)
			ok = strcmp(key, "previous") == 0 || assigned_on(lx, mod, f);
		if (!ok && i + 3 < lx->n && tok_in(&lx->v[i + 3], "="))
			ok = true; /* the script assigns it */
		if (!ok && declared_locally(lx, mod, !is_job))
			ok = true;
		if (!ok) {
			char hint[80];
			if (jv_sandbox_suggest(L, t, key, hint, sizeof(hint)))
				fprintf(stderr, "%s:%d: %s.%s: no such field in module '%s' (did you mean %s.%s?)\n",
				        path, f->line, mod, key, mod, mod, hint);
			else
				fprintf(stderr, "%s:%d: %s.%s: no such field in module '%s'%s\n", path, f->line,
				        mod, key, mod,
				        strcmp(mod, "os") == 0 ? " (job scripts have os.clock, os.time and os.date)"
				                               : "");
			problems++;
		}
		lua_pop(L, 1);
	}
	return problems;
}

static bool is_helper(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		return false;
	const char *dir = slash;
	while (dir > path && dir[-1] != '/')
		dir--;
	return slash - dir == 3 && strncmp(dir, "lib", 3) == 0;
}

/* The sandbox a script's top level runs in when it is only inspected: no
 * instance, no event pipe, no data dir; require() sees the script's own lib/
 * first, then the built-in one. in must outlive the state. */
lua_State *jv_inspect_sandbox(const char *path, const char *builtin_jobs_dir, struct jv_inspect *in)
{
	in->ctx = (struct jv_run_ctx){
		.job_id = "check", .run_id = "check", .instance_id = "", .type = "", .attempt = 1,
		.data_dir = "", .instance_dir = "", .data_fd = -1, .instance_fd = -1, .event_fd = -1,
		.cancel_flag = NULL, /* an inspection is never cancelled */
	};
	const char *slash = strrchr(path, '/');
	if (slash)
		snprintf(in->own_lib, sizeof(in->own_lib), "%.*s/lib", (int)(slash - path), path);
	else
		snprintf(in->own_lib, sizeof(in->own_lib), "lib");
	snprintf(in->builtin_lib, sizeof(in->builtin_lib), "%s/lib", builtin_jobs_dir ? builtin_jobs_dir : ".");
	struct jv_sandbox_opts so = {.ctx = &in->ctx, .lib_dirs = {in->own_lib, in->builtin_lib, NULL}};
	return jv_sandbox_new(&so);
}

static int check_one(const char *path, const char *builtin_jobs_dir, const cJSON *settings)
{
	struct jv_inspect in;
	lua_State *L = jv_inspect_sandbox(path, builtin_jobs_dir, &in);
	if (!L) {
		fprintf(stderr, "jobvisor check: out of memory\n");
		return 1;
	}
	int problems = 0;
	struct jv_scriptdef def;
	char err[4096];
	/* A helper in a lib/ directory (require("lib.x")) returns its own table:
	 * compiled and scanned, not validated as a job. */
	bool helper = is_helper(path);
	bool table_ok;
	if (helper) {
		table_ok = jv_sandbox_loadfile(L, path, path) == LUA_OK;
		snprintf(err, sizeof(err), "%s", table_ok ? "" : lua_tostring(L, -1));
		lua_pop(L, 1);
	} else {
		table_ok = jv_scriptdef_load(L, path, path, &def, err, sizeof(err)) == 0;
	}
	if (!table_ok) {
		char *tb = strstr(err, "\nstack traceback:");
		if (tb)
			*tb = '\0'; /* an error of the top level: its line is enough here */
		fprintf(stderr, "%s\n", err);
		problems++;
		for (const char *p = err; (p = strchr(p, '\n')) != NULL; p++)
			problems++;
	}
	/* The text is checked even when the table is not: every problem at once. */
	char *src = NULL;
	size_t len = 0;
	struct jv_lex lx;
	if (jv_read_file_at(AT_FDCWD, path, MAX_SCRIPT_BYTES, &src, &len) == 0 &&
	    jv_lex(src, len, &lx) == 0) {
		lua_pushcfunction(L, luaopen_jv_job);
		lua_call(L, 0, 1);
		lua_newtable(L);
		lua_setfield(L, -2, "params");
		problems += check_fields(L, path, &lx, lua_gettop(L));
		lua_pop(L, 1);
		jv_lex_free(&lx);
	}
	free(src);
	problems += check_programs(path, settings);
	if (problems == 0 && helper) {
		printf("ok: %s: helper module\n", path);
	} else if (problems == 0) {
		printf("ok: %s: type %s, %s", path, def.type,
		       def.cancellable ? "cancellable" : "not cancellable");
		if (!def.cancellable)
			printf(" (%s)", def.why);
		printf(", params:");
		if (def.nparams == 0)
			printf(" none");
		for (size_t i = 0; i < def.nparams; i++)
			printf(" %s:%s%s", def.params[i].name, def.params[i].type,
			       def.params[i].optional ? "?" : "");
		printf("\n");
	}
	jv_sandbox_close(L);
	return problems;
}

int jv_check_scripts(int n, char **paths, const char *builtin_jobs_dir, const cJSON *settings)
{
	int bad = 0, total = 0;
	for (int i = 0; i < n; i++) {
		int p = check_one(paths[i], builtin_jobs_dir, settings);
		total += p;
		bad += p > 0;
	}
	fflush(stdout);
	if (total > 0)
		fprintf(stderr, "jobvisor check: %d problem%s in %d of %d script%s\n", total,
		        total == 1 ? "" : "s", bad, n, n == 1 ? "" : "s");
	return total > 0 ? 1 : 0;
}
