/* jsonutil.h — small helpers over cJSON, so cJSON use reads the same everywhere.
 *
 * Getters borrow from the object; they return the fallback when the member is
 * missing or has another type. */
#ifndef JOBVISOR_JSONUTIL_H
#define JOBVISOR_JSONUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

const char *jv_json_str(const cJSON *obj, const char *key, const char *fallback);
double jv_json_num(const cJSON *obj, const char *key, double fallback);
bool jv_json_has_num(const cJSON *obj, const char *key);
int64_t jv_json_int(const cJSON *obj, const char *key, int64_t fallback);
bool jv_json_bool(const cJSON *obj, const char *key, bool fallback);

#define JV_JSON_MAX_DEPTH 128

/* Whether the JSON text nests at most max levels (brackets inside strings do
 * not count). cJSON recurses once per level, so deep hostile input must be
 * refused before it is parsed on a small (thread or sanitizer) stack. */
bool jv_json_depth_ok(const char *s, size_t len, int max);

/* Parse with a length (no NUL needed); NULL on error or nesting deeper than
 * JV_JSON_MAX_DEPTH. A "\u0000" escape in a string is stored as the bytes
 * C0 80 (never valid UTF-8), so no string is cut short; raw bytes are kept as
 * they are. Returned-owned: cJSON_Delete. */
cJSON *jv_json_parse(const char *data, size_t len);
/* The same, with why it failed and where in err: "invalid JSON at line 1,
 * column 12 (byte 12), near '}'". */
cJSON *jv_json_parse_err(const char *data, size_t len, char *err, size_t errlen);

/* Whether every string and member name in v is valid UTF-8 without NUL. On
 * false, where (optional, wlen bytes) names the first bad one ("params.id",
 * "events[2].message", "" for v itself) and *what says why, e.g. "contains a
 * NUL character (\u0000)" (static text). */
bool jv_json_text_ok(const cJSON *v, char *where, size_t wlen, const char **what);

/* Serialize unformatted, always valid UTF-8: invalid bytes in strings (and a
 * NUL read by jv_json_parse) are written as U+FFFD. Returned-owned: free().
 * NULL on ENOMEM. */
char *jv_json_print(const cJSON *obj);

#endif
