/* Unit tests of NUL and UTF-8 handling in the JSON helpers (issue 19, item 6):
 * no string is cut at a \u0000, such strings are named, and everything printed
 * is valid UTF-8. */
#include <criterion/criterion.h>
#include <string.h>

#include "jobvisor/ident.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/utf8.h"

static cJSON *parse(const char *text)
{
	cJSON *j = jv_json_parse(text, strlen(text));
	cr_assert_not_null(j, "cannot parse %s", text);
	return j;
}

Test(utf8, tells_valid_from_invalid_sequences)
{
	cr_assert(jv_utf8_valid("plain", 5));
	const char *mixed = "gr\xC3\xBC\xC3\x9F \xE2\x82\xAC \xF0\x9F\x8E\xAE";
	cr_assert(jv_utf8_valid(mixed, strlen(mixed)));
	cr_assert_not(jv_utf8_valid("world\xFF.dat", 10));
	cr_assert_not(jv_utf8_valid("\xC0\x80", 2), "overlong NUL");
	cr_assert_not(jv_utf8_valid("\xED\xA0\x80", 3), "surrogate");
	cr_assert_not(jv_utf8_valid("\xF4\x90\x80\x80", 4), "above U+10FFFF");
	cr_assert_not(jv_utf8_valid("\xE2\x82", 2), "cut sequence");
	cr_assert_not(jv_utf8_valid("\x80", 1), "lone continuation");
}

Test(utf8, repair_replaces_each_bad_byte_with_u_fffd)
{
	size_t n = 0;
	char *r = jv_utf8_repair("a\xFF" "b\xE2\x82", 5, &n);
	cr_assert_str_eq(r, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD");
	cr_assert_eq(n, strlen(r));
	cr_assert(jv_utf8_valid(r, n));
	free(r);
}

Test(jsonutil, nul_escape_does_not_cut_an_identifier)
{
	cJSON *j = parse("{\"instanceId\":\"victim\\u0000../../etc\",\"jobId\":\"job1\\u0000x\"}");
	const char *inst = jv_json_str(j, "instanceId", NULL);
	cr_assert_gt(strlen(inst), strlen("victim"), "cut at the NUL: '%s'", inst);
	cr_assert_not(jv_ident_valid(inst));
	cr_assert_not(jv_run_id_valid(jv_json_str(j, "jobId", NULL)));
	char where[64];
	const char *what = NULL;
	cr_assert_not(jv_json_text_ok(j, where, sizeof(where), &what));
	cr_assert_str_eq(where, "instanceId");
	cr_assert_str_eq(what, "contains a NUL character (\\u0000)");
	cJSON_Delete(j);
}

Test(jsonutil, text_check_names_the_first_bad_string_by_path)
{
	cJSON *j = parse("{\"params\":{\"ok\":\"x\",\"list\":[\"a\",\"b\\u0000\"]}}");
	char where[64];
	const char *what = NULL;
	cr_assert_not(jv_json_text_ok(j, where, sizeof(where), &what));
	cr_assert_str_eq(where, "params.list[1]");
	cJSON_Delete(j);
	j = parse("{\"events\":[{\"message\":\"world\xFF.dat\"}]}");
	cr_assert_not(jv_json_text_ok(j, where, sizeof(where), &what));
	cr_assert_str_eq(where, "events[0].message");
	cr_assert_str_eq(what, "is not valid UTF-8");
	cJSON_Delete(j);
	j = parse("{\"k\\u0000ey\":1}");
	cr_assert_not(jv_json_text_ok(j, where, sizeof(where), &what));
	cr_assert_str_eq(what, "has a name with a NUL character (\\u0000)");
	cJSON_Delete(j);
	j = parse("{\"a\":\"\\\\u0000 is text\",\"b\":[\"gr\xC3\xBC\xC3\x9F\"]}");
	cr_assert(jv_json_text_ok(j, where, sizeof(where), &what), "an escaped backslash is not a NUL");
	cr_assert_str_eq(jv_json_str(j, "a", ""), "\\u0000 is text");
	cJSON_Delete(j);
}

Test(jsonutil, raw_nul_inside_a_string_is_invalid_json)
{
	cr_assert_null(jv_json_parse("{\"a\":\"x\0y\"}", 11));
}

Test(jsonutil, print_is_always_valid_utf8)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "file", "world\xFF.dat");
	cJSON_AddStringToObject(j, "fine", "gr\xC3\xBC\xC3\x9F");
	char *s = jv_json_print(j);
	cr_assert_str_eq(s, "{\"file\":\"world\xEF\xBF\xBD.dat\",\"fine\":\"gr\xC3\xBC\xC3\x9F\"}");
	free(s);
	cJSON_Delete(j);
	j = parse("{\"m\":\"a\\u0000b\"}");
	s = jv_json_print(j);
	cr_assert_str_eq(s, "{\"m\":\"a\xEF\xBF\xBD" "b\"}", "got %s", s);
	free(s);
	cJSON_Delete(j);
}
