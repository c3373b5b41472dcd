/* jsonutil.c — typed getters and bounded parse/print over cJSON. */
#include "jobvisor/jsonutil.h"

#include <math.h>
#include <stdio.h>
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

/* "at line L, column C (byte B)" of the byte at pos, with what stands there. */
static void describe_at(const char *data, size_t len, size_t pos, const char *what, char *err,
                        size_t errlen)
{
	size_t line = 1, col = 1;
	for (size_t i = 0; i < pos && i < len; i++) {
		if (data[i] == '\n') {
			line++;
			col = 1;
		} else {
			col++;
		}
	}
	size_t rest = pos;
	while (rest < len && (data[rest] == ' ' || data[rest] == '\n' || data[rest] == '\r' ||
	                      data[rest] == '\t'))
		rest++;
	if (rest >= len)
		snprintf(err, errlen, "%s at line %zu, column %zu (byte %zu): unexpected end of input", what,
		         line, col, pos + 1);
	else
		snprintf(err, errlen, "%s at line %zu, column %zu (byte %zu), near '%.12s'", what, line, col,
		         pos + 1, data + pos);
	/* keep the quoted excerpt on one line */
	for (char *p = err; *p; p++)
		if (*p == '\n' || *p == '\r' || *p == '\t')
			*p = ' ';
}

cJSON *jv_json_parse_err(const char *data, size_t len, char *err, size_t errlen)
{
	if (errlen)
		err[0] = '\0';
	/* cJSON recurses once per level up to 1000 deep: refuse deep text first so
	 * hostile input cannot exhaust a small (thread or sanitizer) stack. */
	if (!jv_json_depth_ok(data, len, JV_JSON_MAX_DEPTH)) {
		snprintf(err, errlen, "nested deeper than %d levels", JV_JSON_MAX_DEPTH);
		return NULL;
	}
	const char *end = NULL;
	cJSON *v = cJSON_ParseWithLengthOpts(data, len, &end, false);
	if (!v) {
		const char *at = cJSON_GetErrorPtr();
		size_t pos = at && at >= data && at <= data + len ? (size_t)(at - data) : len;
		describe_at(data, len, pos, "invalid JSON", err, errlen);
		return NULL;
	}
	/* Only trailing whitespace may follow the value. */
	for (const char *p = end; p && p < data + len; p++) {
		if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != '\0') {
			cJSON_Delete(v);
			describe_at(data, len, (size_t)(p - data), "text after the JSON value", err, errlen);
			return NULL;
		}
	}
	return v;
}

cJSON *jv_json_parse(const char *data, size_t len)
{
	char err[8];
	return jv_json_parse_err(data, len, err, sizeof(err));
}

char *jv_json_print(const cJSON *obj)
{
	return cJSON_PrintUnformatted(obj);
}
