/* jobtypes.c — `jobvisor __jobtypes [JOBS_DIR]`: the job types this host can
 * run, as JSON on stdout, for the agent to report to its control plane.
 *
 * Every *.lua of JOBS_DIR (the admin's) and then of the built-in jobs
 * directory is loaded in the inspection sandbox (the same as `jobvisor
 * check`: only the top level runs) and its table validated by
 * jv_scriptdef_load. A type found in JOBS_DIR hides the built-in script of
 * the same type, as it does when a job runs (jobrun_resolve_script). A script
 * that does not load, or whose type does not match its file name (the agent
 * would never find it), is listed under "problems" rather than as a type.
 *
 * Output: {"jobTypes": [{type, description, cancellable, why?, source,
 * params: {name: {type, required}}}], "problems": ["file: message"]}. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jobchild.h"
#include "sandbox.h"
#include "scriptdef.h"

#define MAX_FILES 512

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_param(const void *a, const void *b)
{
	return strcmp(((const struct jv_param_decl *)a)->name, ((const struct jv_param_decl *)b)->name);
}

static bool seen_type(const cJSON *types, const char *type)
{
	const cJSON *t;
	cJSON_ArrayForEach(t, types)
	{
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, "type");
		if (cJSON_IsString(v) && strcmp(v->valuestring, type) == 0)
			return true;
	}
	return false;
}

/* The type a file name stands for: backup_instance.lua -> BACKUP_INSTANCE
 * (jobrun_resolve_script lower-cases the type to find the file). */
static bool file_type(const char *name, char *out, size_t len)
{
	size_t n = strlen(name);
	if (n <= 4 || strcmp(name + n - 4, ".lua") != 0 || n - 4 >= len || name[0] == '.')
		return false;
	for (size_t i = 0; i < n - 4; i++)
		out[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 'a' + 'A' : name[i]);
	out[n - 4] = '\0';
	return true;
}

static cJSON *type_json(const struct jv_scriptdef *def, const char *source)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "type", def->type);
	cJSON_AddStringToObject(o, "description", def->description);
	cJSON_AddBoolToObject(o, "cancellable", def->cancellable);
	if (!def->cancellable)
		cJSON_AddStringToObject(o, "why", def->why);
	cJSON_AddStringToObject(o, "source", source);
	struct jv_param_decl sorted[JV_MAX_PARAMS];
	memcpy(sorted, def->params, def->nparams * sizeof(sorted[0]));
	qsort(sorted, def->nparams, sizeof(sorted[0]), cmp_param);
	cJSON *params = cJSON_AddObjectToObject(o, "params");
	for (size_t i = 0; i < def->nparams; i++) {
		cJSON *p = cJSON_AddObjectToObject(params, sorted[i].name);
		cJSON_AddStringToObject(p, "type", sorted[i].type);
		cJSON_AddBoolToObject(p, "required", !sorted[i].optional);
	}
	return o;
}

static void scan_dir(const char *dir, const char *source, const char *builtin, cJSON *types, cJSON *problems)
{
	DIR *d = opendir(dir);
	if (!d) {
		char msg[4200];
		snprintf(msg, sizeof(msg), "%s: cannot read the directory", dir);
		cJSON_AddItemToArray(problems, cJSON_CreateString(msg));
		return;
	}
	char *names[MAX_FILES];
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)) && n < MAX_FILES) {
		char t[80];
		if (file_type(e->d_name, t, sizeof(t)))
			names[n++] = strdup(e->d_name);
	}
	closedir(d);
	qsort(names, n, sizeof(names[0]), cmp_str);
	for (size_t i = 0; i < n; i++) {
		char want[80], path[4200], err[4096];
		file_type(names[i], want, sizeof(want));
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		free(names[i]);
		if (seen_type(types, want))
			continue; /* the admin's script of this type hides the built-in one */
		struct jv_inspect in;
		lua_State *L = jv_inspect_sandbox(path, builtin, &in);
		if (!L)
			continue;
		struct jv_scriptdef def;
		if (jv_scriptdef_load(L, path, path, &def, err, sizeof(err)) != 0) {
			char *tb = strstr(err, "\nstack traceback:");
			if (tb)
				*tb = '\0';
			cJSON_AddItemToArray(problems, cJSON_CreateString(err));
		} else if (strcmp(def.type, want) != 0) {
			snprintf(err, sizeof(err), "%s: declares type '%s' but a job of that type looks for '%s'",
			         path, def.type, "its lower-case name + .lua");
			cJSON_AddItemToArray(problems, cJSON_CreateString(err));
		} else {
			cJSON_AddItemToArray(types, type_json(&def, source));
		}
		jv_sandbox_close(L);
	}
}

int jv_job_types_main(int argc, char **argv, const char *builtin_jobs_dir)
{
	if (argc > 2) {
		fprintf(stderr, "usage: jobvisor __jobtypes [JOBS_DIR]\n");
		return JV_EXIT_USAGE;
	}
	cJSON *root = cJSON_CreateObject();
	cJSON *types = cJSON_AddArrayToObject(root, "jobTypes");
	cJSON *problems = cJSON_AddArrayToObject(root, "problems");
	if (argc == 2 && argv[1][0])
		scan_dir(argv[1], "jobs_dir", builtin_jobs_dir, types, problems);
	scan_dir(builtin_jobs_dir, "builtin", builtin_jobs_dir, types, problems);
	char *text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!text)
		return 1;
	fputs(text, stdout);
	fputc('\n', stdout);
	free(text);
	return fflush(stdout) == 0 ? 0 : 1;
}
