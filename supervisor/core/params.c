/* params.c — checking a job's params against its type's declared parameters. */
#include "jobvisor/params.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "jobvisor/util.h"

static const char *const param_types[] = {"string", "number", "integer", "boolean",
                                          "table", "array", "object", "any"};

bool jv_param_type_parse(const char *spec, struct jv_param_decl *d)
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

bool jv_param_type_matches(const cJSON *v, const char *type)
{
	if (strcmp(type, "any") == 0)
		return true;
	if (strcmp(type, "string") == 0)
		return cJSON_IsString(v);
	if (strcmp(type, "number") == 0)
		return cJSON_IsNumber(v);
	if (strcmp(type, "integer") == 0)
		return cJSON_IsNumber(v) && fabs(v->valuedouble) < 9.007199254740992e15 &&
		       jv_whole_in_int64(v->valuedouble);
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

const char *jv_json_type_name(const cJSON *v)
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

size_t jv_edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la > 63 || lb > 63)
		return 99;
	size_t row[64];
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j];
			size_t best = diag + (a[i - 1] != b[j - 1]);
			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

/* Append "; " + message to err (the first without the separator). */
static void add_problem(char *err, size_t errlen, int *n, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void add_problem(char *err, size_t errlen, int *n, const char *fmt, ...)
{
	size_t used = strlen(err);
	if (*n && used + 2 < errlen) {
		memcpy(err + used, "; ", 3);
		used += 2;
	}
	va_list ap;
	va_start(ap, fmt);
	if (used < errlen)
		vsnprintf(err + used, errlen - used, fmt, ap);
	va_end(ap);
	(*n)++;
}

int jv_params_check(const struct jv_param_decl *decls, size_t nd, const cJSON *params, char *err,
                    size_t errlen)
{
	if (errlen)
		err[0] = '\0';
	if (params && !cJSON_IsObject(params) && !cJSON_IsNull(params)) {
		snprintf(err, errlen, "params must be a JSON object, got %s", jv_json_type_name(params));
		return -1;
	}
	int n = 0;
	for (const cJSON *c = params ? params->child : NULL; c; c = c->next) {
		bool known = false;
		const char *hint = NULL;
		size_t best = 3;
		for (size_t i = 0; i < nd && !known; i++) {
			known = c->string && strcmp(c->string, decls[i].name) == 0;
			size_t d = c->string ? jv_edit_distance(c->string, decls[i].name) : 99;
			if (d < best) {
				best = d;
				hint = decls[i].name;
			}
		}
		if (known)
			continue;
		if (hint)
			add_problem(err, errlen, &n, "unknown parameter '%s' (did you mean '%s'?)",
			            c->string ? c->string : "?", hint);
		else
			add_problem(err, errlen, &n, "unknown parameter '%s'", c->string ? c->string : "?");
	}
	for (size_t i = 0; i < nd; i++) {
		const struct jv_param_decl *d = &decls[i];
		const cJSON *v = params ? cJSON_GetObjectItemCaseSensitive(params, d->name) : NULL;
		if (!v || cJSON_IsNull(v)) {
			if (!d->optional)
				add_problem(err, errlen, &n, "missing required parameter '%s' (%s)", d->name, d->type);
			continue;
		}
		if (!jv_param_type_matches(v, d->type))
			add_problem(err, errlen, &n, "parameter '%s' must be %s, got %s", d->name, d->type,
			            jv_json_type_name(v));
	}
	return n ? -1 : 0;
}
