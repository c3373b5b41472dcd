/* params.h — a job type's declared parameters and the check of a job's params
 * against them. One implementation for the job-run child (lua/scriptdef.c:
 * the script's `params` table) and the control plane (the schemas agents
 * report), so both refuse the same params with the same words. */
#ifndef JOBVISOR_PARAMS_H
#define JOBVISOR_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

#define JV_MAX_PARAMS 64

struct jv_param_decl {
	char name[65];
	char type[16]; /* string, number, integer, boolean, table, array, object, any */
	bool optional;
};

/* "string", "integer?", ... into d->type and d->optional; false when unknown. */
bool jv_param_type_parse(const char *spec, struct jv_param_decl *d);
/* Does v have the declared type? */
bool jv_param_type_matches(const cJSON *v, const char *type);
/* "string", "number", "boolean", "array", "object", "null". */
const char *jv_json_type_name(const cJSON *v);
/* Levenshtein distance; 99 for names longer than 63 bytes. */
size_t jv_edit_distance(const char *a, const char *b);
/* Check params (a JSON object or NULL/null) against n declarations: nothing
 * undeclared (with the closest declared name, "unknown parameter 'bakupId'
 * (did you mean 'backupId'?)"), required present, types right. Every problem
 * at once, joined by "; ", unknown names first. 0, or -1 with err set. */
int jv_params_check(const struct jv_param_decl *decls, size_t n, const cJSON *params, char *err,
                    size_t errlen);

#endif
