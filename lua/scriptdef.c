/* scriptdef.c — load a job script and validate its returned table and params. */
#include "scriptdef.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sandbox.h"

static const char *const param_types[] = {"string", "number", "integer", "boolean",
                                          "table",  "array",  "object",  "any"};

static bool parse_param_type(const char *spec, struct jv_param_decl *d)
{
	size_t n = strlen(spec);
	d->optional = n > 0 && spec[n - 1] == '?';
	if (d->optional)
		n--;
	for (size_t i = 0; i < sizeof(param_types) / sizeof(param_types[0]); i++) {
		if (strlen(param_types[i]) == n && strncmp(spec, param_types[i], n) == 0) {
			snprintf(d->type, sizeof(d->type), "%s", param_types[i]);
			return true;
		}
	}
	return false;
}

static int chunk_traceback(lua_State *L)
{
	jv_sandbox_mem_grace(L);
	luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
	return 1;
}

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
	if (!lua_istable(L, t)) {
		snprintf(err, errlen, "%s: the script must return a table, got %s", cn,
		         luaL_typename(L, t));
		goto fail;
	}

	if (lua_getfield(L, t, "type") != LUA_TSTRING) {
		snprintf(err, errlen, "%s: field 'type' must be a string (e.g. \"BACKUP_INSTANCE\")", cn);
		goto fail;
	}
	size_t tl;
	const char *type = lua_tolstring(L, -1, &tl);
	bool type_ok = tl > 0 && tl <= 64;
	for (size_t i = 0; i < tl; i++)
		type_ok = type_ok && (type[i] == '_' || type[i] == '-' || type[i] == '.' ||
		                      (type[i] >= 'A' && type[i] <= 'Z') ||
		                      (type[i] >= 'a' && type[i] <= 'z') ||
		                      (type[i] >= '0' && type[i] <= '9'));
	if (!type_ok) {
		snprintf(err, errlen, "%s: field 'type' must be 1-64 letters, digits, '_', '-' or '.'", cn);
		goto fail;
	}
	snprintf(def->type, sizeof(def->type), "%s", type);
	lua_pop(L, 1);

	int ct = lua_getfield(L, t, "cancellable");
	if (ct != LUA_TNIL && ct != LUA_TBOOLEAN) {
		snprintf(err, errlen, "%s: field 'cancellable' must be a boolean", cn);
		goto fail;
	}
	def->cancellable = ct == LUA_TNIL || lua_toboolean(L, -1);
	lua_pop(L, 1);
	int wt = lua_getfield(L, t, "why");
	if (wt == LUA_TSTRING)
		snprintf(def->why, sizeof(def->why), "%s", lua_tostring(L, -1));
	else if (wt != LUA_TNIL) {
		snprintf(err, errlen, "%s: field 'why' must be a string", cn);
		goto fail;
	}
	lua_pop(L, 1);
	if (!def->cancellable && !def->why[0]) {
		snprintf(err, errlen, "%s: a script with cancellable = false must say why (field 'why')",
		         cn);
		goto fail;
	}

	int pt = lua_getfield(L, t, "params");
	if (pt == LUA_TTABLE) {
		lua_pushnil(L);
		while (lua_next(L, -2)) {
			if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
				snprintf(err, errlen,
				         "%s: 'params' must map names to type strings like \"string?\"", cn);
				goto fail;
			}
			if (def->nparams == JV_MAX_PARAMS) {
				snprintf(err, errlen, "%s: more than %d params declared", cn, JV_MAX_PARAMS);
				goto fail;
			}
			struct jv_param_decl *d = &def->params[def->nparams];
			const char *name = lua_tostring(L, -2);
			if (strlen(name) == 0 || strlen(name) >= sizeof(d->name)) {
				snprintf(err, errlen, "%s: parameter name '%s' is empty or too long", cn, name);
				goto fail;
			}
			snprintf(d->name, sizeof(d->name), "%s", name);
			if (!parse_param_type(lua_tostring(L, -1), d)) {
				snprintf(err, errlen,
				         "%s: parameter '%s' has unknown type '%s' (use string, number, integer, "
				         "boolean, table, array, object or any, with '?' for optional)",
				         cn, name, lua_tostring(L, -1));
				goto fail;
			}
			def->nparams++;
			lua_pop(L, 1);
		}
	} else if (pt != LUA_TNIL) {
		snprintf(err, errlen, "%s: field 'params' must be a table", cn);
		goto fail;
	}
	lua_pop(L, 1);

	if (lua_getfield(L, t, "run") != LUA_TFUNCTION) {
		snprintf(err, errlen, "%s: field 'run' must be a function run(job)", cn);
		goto fail;
	}
	def->run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	lua_settop(L, t - 1);
	return 0;
fail:
	lua_settop(L, t - 1);
	return -1;
}

static bool json_matches(const cJSON *v, const char *type)
{
	if (strcmp(type, "any") == 0)
		return true;
	if (strcmp(type, "string") == 0)
		return cJSON_IsString(v);
	if (strcmp(type, "number") == 0)
		return cJSON_IsNumber(v);
	if (strcmp(type, "integer") == 0)
		return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) &&
		       fabs(v->valuedouble) < 9.007199254740992e15;
	if (strcmp(type, "boolean") == 0)
		return cJSON_IsBool(v);
	if (strcmp(type, "table") == 0)
		return cJSON_IsObject(v) || cJSON_IsArray(v);
	if (strcmp(type, "array") == 0)
		return cJSON_IsArray(v);
	if (strcmp(type, "object") == 0)
		return cJSON_IsObject(v);
	return false;
}

static const char *json_type_name(const cJSON *v)
{
	if (cJSON_IsString(v))
		return "string";
	if (cJSON_IsNumber(v))
		return "number";
	if (cJSON_IsBool(v))
		return "boolean";
	if (cJSON_IsArray(v))
		return "array";
	if (cJSON_IsObject(v))
		return "object";
	if (cJSON_IsNull(v))
		return "null";
	return "unknown";
}

int jv_scriptdef_check_params(lua_State *L, const struct jv_scriptdef *def, const cJSON *params,
                              char *err, size_t errlen)
{
	(void)L;
	if (params && !cJSON_IsObject(params) && !cJSON_IsNull(params)) {
		snprintf(err, errlen, "params must be a JSON object, got %s", json_type_name(params));
		return -1;
	}
	for (size_t i = 0; i < def->nparams; i++) {
		const struct jv_param_decl *d = &def->params[i];
		const cJSON *v = params ? cJSON_GetObjectItemCaseSensitive(params, d->name) : NULL;
		if (!v || cJSON_IsNull(v)) {
			if (!d->optional) {
				snprintf(err, errlen, "missing required parameter '%s' (%s)", d->name, d->type);
				return -1;
			}
			continue;
		}
		if (!json_matches(v, d->type)) {
			snprintf(err, errlen, "parameter '%s' must be %s, got %s", d->name, d->type,
			         json_type_name(v));
			return -1;
		}
	}
	for (const cJSON *c = params ? params->child : NULL; c; c = c->next) {
		bool known = false;
		for (size_t i = 0; i < def->nparams && !known; i++)
			known = c->string && strcmp(c->string, def->params[i].name) == 0;
		if (!known) {
			snprintf(err, errlen, "unknown parameter '%s' for job type %s", c->string ? c->string : "?",
			         def->type);
			return -1;
		}
	}
	return 0;
}
