/* jsonutil.c — typed getters and bounded parse/print over cJSON. */
#include "jobvisor/jsonutil.h"

#include <math.h>
#include <stdlib.h>

const char *jv_json_str(const cJSON *obj, const char *key, const char *fallback)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsString(v) && v->valuestring ? v->valuestring : fallback;
}

double jv_json_num(const cJSON *obj, const char *key, double fallback)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsNumber(v) ? v->valuedouble : fallback;
}

bool jv_json_has_num(const cJSON *obj, const char *key)
{
	return cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(obj, key));
}

int64_t jv_json_int(const cJSON *obj, const char *key, int64_t fallback)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
		return fallback;
	double d = v->valuedouble;
	if (d > 9.0e15 || d < -9.0e15 || d != floor(d))
		return fallback;
	return (int64_t)d;
}

bool jv_json_bool(const cJSON *obj, const char *key, bool fallback)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsBool(v) ? cJSON_IsTrue(v) : fallback;
}

bool jv_json_depth_ok(const char *p, size_t len, int max)
{
	int depth = 0;
	bool in_str = false;
	for (size_t i = 0; i < len; i++) {
		char c = p[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = false;
		} else if (c == '"') {
			in_str = true;
		} else if (c == '[' || c == '{') {
			if (++depth > max)
				return false;
		} else if (c == ']' || c == '}') {
			depth--;
		}
	}
	return true;
}

cJSON *jv_json_parse(const char *data, size_t len)
{
	/* cJSON recurses once per level up to 1000 deep: refuse deep text first so
	 * hostile input cannot exhaust a small (thread or sanitizer) stack. */
	if (!jv_json_depth_ok(data, len, JV_JSON_MAX_DEPTH))
		return NULL;
	const char *end = NULL;
	cJSON *v = cJSON_ParseWithLengthOpts(data, len, &end, false);
	if (!v)
		return NULL;
	/* Only trailing whitespace may follow the value. */
	for (const char *p = end; p && p < data + len; p++) {
		if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != '\0') {
			cJSON_Delete(v);
			return NULL;
		}
	}
	return v;
}

char *jv_json_print(const cJSON *obj)
{
	return cJSON_PrintUnformatted(obj);
}
