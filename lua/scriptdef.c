/* scriptdef.c — load a job script and validate its returned table and params. */
#include "scriptdef.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/durable.h"
#include "jobvisor/params.h"
#include "sandbox.h"
#include "scriptlex.h"

static int chunk_traceback(lua_State *L)
{
	jv_sandbox_mem_grace(L);
	luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
	return 1;
}

/* Problems of the script table, each on its own line as "chunk:LINE: message"
 * (the line where the field is written; the chunk's last `return` otherwise). */
struct problems {
	const char *path, *cn;
	char *err;
	size_t errlen, used;
	int n;
	bool lexed;
	char *src;
	struct jv_lex lx;
};

static int field_line(struct problems *pr, const char *field)
{
	if (!pr->lexed) {
		pr->lexed = true;
		size_t len = 0;
		if (jv_read_file_at(AT_FDCWD, pr->path, 4u << 20, &pr->src, &len) == 0 &&
		    jv_lex(pr->src, len, &pr->lx) < 0)
			jv_lex_free(&pr->lx);
	}
	int line = field ? jv_lex_field_line(&pr->lx, field) : 0;
	for (size_t i = pr->lx.n; line == 0 && i-- > 0;)
		if (jv_tok_is(&pr->lx.v[i], JV_TOK_NAME, "return"))
			line = pr->lx.v[i].line;
	return line;
}

static void problem(struct problems *pr, const char *field, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void problem(struct problems *pr, const char *field, const char *fmt, ...)
{
	if (pr->used + 2 >= pr->errlen)
		return;
	int line = field_line(pr, field);
	char *o = pr->err + pr->used;
	size_t room = pr->errlen - pr->used;
	int k = line > 0 ? snprintf(o, room, "%s%s:%d: ", pr->n ? "\n" : "", pr->cn, line)
	                 : snprintf(o, room, "%s%s: ", pr->n ? "\n" : "", pr->cn);
	if (k > 0 && (size_t)k < room) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(o + k, room - (size_t)k, fmt, ap);
		va_end(ap);
	}
	pr->used += strlen(o);
	pr->n++;
}

static const char *const table_keys[] = {"type", "cancellable", "why", "params", "run",
                                         "description", NULL};

int jv_scriptdef_load(lua_State *L, const char *path, const char *chunkname,
                      struct jv_scriptdef *def, char *err, size_t errlen)
{
	memset(def, 0, sizeof(*def));
	def->run_ref = LUA_NOREF;
	def->cancellable = true;
	if (!chunkname) {
		const char *slash = strrchr(path, '/');
		chunkname = slash ? slash + 1 : path;
	}
	snprintf(def->chunkname, sizeof(def->chunkname), "%s", chunkname);
	const char *cn = def->chunkname;
	if (errlen)
		err[0] = '\0';

	lua_pushcfunction(L, chunk_traceback);
	int handler = lua_gettop(L);
	if (jv_sandbox_loadfile(L, path, cn) != LUA_OK) {
		snprintf(err, errlen, "%s", lua_tostring(L, -1));
		lua_settop(L, handler - 1);
		return -1;
	}
	if (lua_pcall(L, 0, 1, handler) != LUA_OK) {
		snprintf(err, errlen, "%s: error while loading the script: %s", cn,
		         lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
		lua_settop(L, handler - 1);
		return -1;
	}
	lua_remove(L, handler);
	int t = lua_gettop(L);
	struct problems pr = {.path = path, .cn = cn, .err = err, .errlen = errlen};
	if (!lua_istable(L, t)) {
		problem(&pr, NULL, "the script must return a table, got %s", luaL_typename(L, t));
		goto out;
	}

	/* Every key of the table must mean something: `cancelable = false` must
	 * not be ignored. */
	lua_pushnil(L);
	while (lua_next(L, t)) {
		lua_pop(L, 1);
		bool known = false;
		if (lua_type(L, -1) == LUA_TSTRING)
			for (const char *const *k = table_keys; *k && !known; k++)
				known = strcmp(*k, lua_tostring(L, -1)) == 0;
		if (!known) {
			const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
			problem(&pr, lua_type(L, -1) == LUA_TSTRING ? k : NULL,
			        "unknown field '%s' in the script table (known: type, cancellable, why, "
			        "params, run, description)", lua_type(L, -1) == LUA_TSTRING ? k : luaL_typename(L, -1));
		}
	}

	if (lua_getfield(L, t, "type") != LUA_TSTRING) {
		problem(&pr, "type", "field 'type' must be a string (e.g. \"BACKUP_INSTANCE\")");
	} else {
		size_t tl;
		const char *type = lua_tolstring(L, -1, &tl);
		bool type_ok = tl > 0 && tl <= 64;
		for (size_t i = 0; i < tl; i++)
			type_ok = type_ok && (type[i] == '_' || type[i] == '-' || type[i] == '.' ||
			                      (type[i] >= 'A' && type[i] <= 'Z') ||
			                      (type[i] >= 'a' && type[i] <= 'z') ||
			                      (type[i] >= '0' && type[i] <= '9'));
		if (!type_ok)
			problem(&pr, "type", "field 'type' must be 1-64 letters, digits, '_', '-' or '.'");
		else
			snprintf(def->type, sizeof(def->type), "%s", type);
	}
	lua_pop(L, 1);

	int ct = lua_getfield(L, t, "cancellable");
	if (ct != LUA_TNIL && ct != LUA_TBOOLEAN)
		problem(&pr, "cancellable", "field 'cancellable' must be a boolean");
	def->cancellable = ct != LUA_TBOOLEAN || lua_toboolean(L, -1);
	lua_pop(L, 1);
	int wt = lua_getfield(L, t, "why");
	if (wt == LUA_TSTRING)
		snprintf(def->why, sizeof(def->why), "%s", lua_tostring(L, -1));
	else if (wt != LUA_TNIL)
		problem(&pr, "why", "field 'why' must be a string");
	lua_pop(L, 1);
	if (!def->cancellable && !def->why[0])
		problem(&pr, "cancellable", "a script with cancellable = false must say why (field 'why')");
	int dt = lua_getfield(L, t, "description");
	if (dt == LUA_TSTRING)
		snprintf(def->description, sizeof(def->description), "%s", lua_tostring(L, -1));
	else if (dt != LUA_TNIL)
		problem(&pr, "description", "field 'description' must be a string");
	lua_pop(L, 1);

	int pt = lua_getfield(L, t, "params");
	if (pt == LUA_TTABLE) {
		lua_pushnil(L);
		while (lua_next(L, -2)) {
			if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
				problem(&pr, "params", "'params' must map names to type strings like \"string?\"");
				lua_pop(L, 1);
				continue;
			}
			if (def->nparams == JV_MAX_PARAMS) {
				problem(&pr, "params", "more than %d params declared", JV_MAX_PARAMS);
				lua_pop(L, 2);
				break;
			}
			struct jv_param_decl *d = &def->params[def->nparams];
			const char *name = lua_tostring(L, -2);
			if (strlen(name) == 0 || strlen(name) >= sizeof(d->name)) {
				problem(&pr, "params", "parameter name '%s' is empty or too long", name);
			} else if (!jv_param_type_parse(lua_tostring(L, -1), d)) {
				problem(&pr, name, "parameter '%s' has unknown type '%s' (use string, number, "
				        "integer, boolean, table, array, object or any, with '?' for optional)",
				        name, lua_tostring(L, -1));
			} else {
				snprintf(d->name, sizeof(d->name), "%s", name);
				def->nparams++;
			}
			lua_pop(L, 1);
		}
	} else if (pt != LUA_TNIL) {
		problem(&pr, "params", "field 'params' must be a table");
	}
	lua_pop(L, 1);

	if (lua_getfield(L, t, "run") != LUA_TFUNCTION) {
		problem(&pr, "run", "field 'run' must be a function run(job)");
		lua_pop(L, 1);
	} else {
		def->run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	}
out:
	free(pr.src);
	jv_lex_free(&pr.lx);
	lua_settop(L, t - 1);
	if (pr.n == 0)
		return 0;
	if (def->run_ref != LUA_NOREF) {
		luaL_unref(L, LUA_REGISTRYINDEX, def->run_ref);
		def->run_ref = LUA_NOREF;
	}
	return -1;
}

/* The shared check (supervisor/core/params.c), with the job type in front. */
int jv_scriptdef_check_params(lua_State *L, const struct jv_scriptdef *def, const cJSON *params,
                              char *err, size_t errlen)
{
	(void)L;
	char why[2048];
	if (jv_params_check(def->params, def->nparams, params, why, sizeof(why)) == 0) {
		if (errlen)
			err[0] = '\0';
		return 0;
	}
	snprintf(err, errlen, "params of %s: %s", def->type, why);
	return -1;
}
