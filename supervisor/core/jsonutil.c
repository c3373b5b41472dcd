/* jsonutil.c — typed getters and bounded parse/print over cJSON.
 *
 * cJSON's strings are C strings, so a "\u0000" escape would end a string
 * early: an id "a\u0000../x" would read as "a". jv_json_parse therefore
 * stores each \u0000 as the two bytes C0 80 (the "modified UTF-8" NUL, never
 * valid UTF-8): the string keeps its full length, identifier checks fail on
 * it, jv_json_text_ok() names it, and jv_json_print() writes it as U+FFFD.
 * Everything printed is valid UTF-8: invalid bytes become U+FFFD. */
#include "jobvisor/jsonutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/utf8.h"
#include "jobvisor/util.h"

#define NUL_MARK "\xC0\x80"

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
	if (d > 9.0e15 || d < -9.0e15 || !jv_whole_in_int64(d))
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

static bool is_nul_escape(const char *p, size_t left)
{
	return left >= 6 && memcmp(p, "\\u0000", 6) == 0;
}

/* Inside strings: count \u0000 escapes; a raw NUL byte there makes the text
 * invalid (-1, its offset in *raw). Outside strings NUL is left to cJSON (an
 * error, or trailing). */
static long count_nul_escapes(const char *p, size_t len, size_t *raw)
{
	long n = 0;
	bool in_str = false;
	for (size_t i = 0; i < len; i++) {
		char c = p[i];
		if (!in_str) {
			in_str = c == '"';
		} else if (c == '\0') {
			*raw = i;
			return -1;
		} else if (c == '"') {
			in_str = false;
		} else if (c == '\\') {
			n += is_nul_escape(p + i, len - i);
			i++; /* the escaped character ("\\u0000" is not a NUL) */
		}
	}
	return n;
}

/* The text with every \u0000 escape inside a string replaced by C0 80. */
static char *mark_nuls(const char *p, size_t len, size_t *out_len)
{
	char *out = malloc(len + 1);
	if (!out)
		return NULL;
	size_t o = 0;
	bool in_str = false;
	for (size_t i = 0; i < len; i++) {
		char c = p[i];
		if (in_str && c == '\\' && is_nul_escape(p + i, len - i)) {
			memcpy(out + o, NUL_MARK, 2);
			o += 2;
			i += 5;
			continue;
		}
		out[o++] = c;
		if (!in_str) {
			in_str = c == '"';
		} else if (c == '"') {
			in_str = false;
		} else if (c == '\\' && i + 1 < len) {
			out[o++] = p[++i];
		}
	}
	out[o] = '\0';
	*out_len = o;
	return out;
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
	size_t raw = 0;
	long nuls = count_nul_escapes(data, len, &raw);
	if (nuls < 0) {
		describe_at(data, len, raw, "invalid JSON: a raw NUL byte inside a string", err, errlen);
		return NULL;
	}
	/* Positions in messages are then those of the marked copy: off by 4
	 * bytes per \u0000 before them, which only such text has. */
	char *marked = NULL;
	if (nuls > 0) {
		size_t mlen = 0;
		marked = mark_nuls(data, len, &mlen);
		if (!marked) {
			snprintf(err, errlen, "out of memory");
			return NULL;
		}
		data = marked;
		len = mlen;
	}
	const char *end = NULL;
	cJSON *v = cJSON_ParseWithLengthOpts(data, len, &end, false);
	if (!v) {
		const char *at = cJSON_GetErrorPtr();
		size_t pos = at && at >= data && at <= data + len ? (size_t)(at - data) : len;
		describe_at(data, len, pos, "invalid JSON", err, errlen);
		free(marked);
		return NULL;
	}
	/* Only trailing whitespace may follow the value. */
	for (const char *p = end; p && p < data + len; p++) {
		if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != '\0') {
			cJSON_Delete(v);
			describe_at(data, len, (size_t)(p - data), "text after the JSON value", err, errlen);
			free(marked);
			return NULL;
		}
	}
	free(marked);
	return v;
}

cJSON *jv_json_parse(const char *data, size_t len)
{
	char err[8];
	return jv_json_parse_err(data, len, err, sizeof(err));
}

/* First bad string below v; path into where (dotted, with [i] for arrays). */
static bool text_ok(const cJSON *v, char *where, size_t wlen, size_t at, const char **what)
{
	for (const cJSON *c = v ? v->child : NULL; c; c = c->next) {
		int n;
		if (cJSON_IsArray(v)) {
			size_t idx = 0;
			for (const cJSON *d = v->child; d != c; d = d->next)
				idx++;
			n = snprintf(where + at, at < wlen ? wlen - at : 0, "[%zu]", idx);
		} else {
			const char *k = c->string ? c->string : "";
			n = snprintf(where + at, at < wlen ? wlen - at : 0, "%s%s", at ? "." : "", k);
			if (!jv_utf8_valid(k, strlen(k))) {
				*what = strstr(k, NUL_MARK) ? "has a name with a NUL character (\\u0000)"
				                            : "has a name that is not valid UTF-8";
				return false;
			}
		}
		size_t next = at + (n > 0 ? (size_t)n : 0);
		if (next >= wlen)
			next = wlen - 1;
		if (cJSON_IsString(c) && c->valuestring && !jv_utf8_valid(c->valuestring, strlen(c->valuestring))) {
			*what = strstr(c->valuestring, NUL_MARK) ? "contains a NUL character (\\u0000)"
			                                         : "is not valid UTF-8";
			return false;
		}
		if ((cJSON_IsArray(c) || cJSON_IsObject(c)) && !text_ok(c, where, wlen, next, what))
			return false;
		where[at < wlen ? at : wlen - 1] = '\0';
	}
	return true;
}

bool jv_json_text_ok(const cJSON *v, char *where, size_t wlen, const char **what)
{
	char scratch[1];
	if (!where || !wlen) {
		where = scratch;
		wlen = sizeof(scratch);
	}
	where[0] = '\0';
	*what = NULL;
	if (cJSON_IsString(v) && v->valuestring && !jv_utf8_valid(v->valuestring, strlen(v->valuestring))) {
		*what = strstr(v->valuestring, NUL_MARK) ? "contains a NUL character (\\u0000)" : "is not valid UTF-8";
		return false;
	}
	return text_ok(v, where, wlen, 0, what);
}

char *jv_json_print(const cJSON *obj)
{
	char *text = cJSON_PrintUnformatted(obj);
	if (!text)
		return NULL;
	size_t len = strlen(text);
	if (jv_utf8_valid(text, len))
		return text;
	/* Only string contents can be invalid (JSON's own syntax is ASCII). */
	char *clean = jv_utf8_repair(text, len, NULL);
	free(text);
	return clean;
}
