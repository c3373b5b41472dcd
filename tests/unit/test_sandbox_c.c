/* Unit tests of lua/ internals: sanitizing, JSON conversion, script tables. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sandbox.h"
#include "scriptdef.h"

Test(sanitize, removes_credentials_and_secret_query_values)
{
	char out[512];
	jv_sanitize(out, sizeof(out), "get https://bob:pw@h.example/x?a=1&token=s3cr3t&b=2 failed",
	            "/var/lib/jobvisor");
	cr_assert_str_eq(out, "get https://***@h.example/x?a=1&token=***&b=2 failed");
}

Test(sanitize, keeps_paths_inside_the_data_dir_only)
{
	char out[512];
	jv_sanitize(out, sizeof(out), "cannot open '/srv/jv/instances/a/x' or '/home/admin/jobs/x.lua'",
	            "/srv/jv");
	cr_assert_str_eq(out, "cannot open '/srv/jv/instances/a/x' or '.../x.lua'");
	jv_sanitize(out, sizeof(out), "/srv/jvother/secret", "/srv/jv");
	cr_assert_str_eq(out, ".../secret");
}

Test(sanitize, truncates_to_the_buffer)
{
	char out[8];
	jv_sanitize(out, sizeof(out), "0123456789", NULL);
	cr_assert_str_eq(out, "0123456");
}

static lua_State *new_state(struct jv_run_ctx *ctx)
{
	static volatile sig_atomic_t flag;
	memset(ctx, 0, sizeof(*ctx));
	ctx->job_id = ctx->run_id = ctx->type = "t";
	ctx->instance_id = "i";
	ctx->data_fd = ctx->instance_fd = ctx->event_fd = -1;
	ctx->cancel_flag = &flag;
	struct jv_sandbox_opts so = {.ctx = ctx, .mem_limit = 8 << 20};
	lua_State *L = jv_sandbox_new(&so);
	cr_assert_not_null(L);
	return L;
}

Test(json, round_trips_arrays_objects_and_empty_arrays)
{
	struct jv_run_ctx ctx;
	lua_State *L = new_state(&ctx);
	const char *text = "{\"a\":[1,2.5,\"x\",true,null],\"e\":[],\"o\":{}}";
	cJSON *in = cJSON_Parse(text);
	jv_json_to_lua(L, in);
	char err[128];
	cJSON *out = jv_lua_to_json(L, -1, err, sizeof(err));
	cr_assert_not_null(out, "%s", err);
	cr_assert(cJSON_Compare(in, out, true));
	cr_assert(cJSON_IsArray(cJSON_GetObjectItem(out, "e")));
	cr_assert(cJSON_IsObject(cJSON_GetObjectItem(out, "o")));
	cJSON_Delete(in);
	cJSON_Delete(out);
	jv_sandbox_close(L);
}

Test(json, refuses_sparse_arrays_mixed_keys_and_nan)
{
	struct jv_run_ctx ctx;
	lua_State *L = new_state(&ctx);
	const char *cases[][2] = {
		{"return {1, nil, 3}", "sparse array"},
		{"return {1, x = 2}", "mixed or non-string keys"},
		{"return {v = 0/0}", "NaN"},
		{"return {f = function() end}", "cannot encode function at value.f"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert_eq(luaL_dostring(L, cases[i][0]), 0);
		char err[128];
		cJSON *j = jv_lua_to_json(L, -1, err, sizeof(err));
		cr_assert_null(j, "case %zu encoded", i);
		cr_assert(strstr(err, cases[i][1]), "case %zu: %s", i, err);
		lua_pop(L, 1);
	}
	jv_sandbox_close(L);
}

Test(sandbox, allocator_cap_turns_bombs_into_errors)
{
	struct jv_run_ctx ctx;
	lua_State *L = new_state(&ctx);
	int rc = luaL_dostring(L, "local t = {} for i = 1, 1e9 do t[i] = i end");
	cr_assert_neq(rc, LUA_OK);
	cr_assert(strstr(lua_tostring(L, -1), "not enough memory"), "%s", lua_tostring(L, -1));
	cr_assert_leq(jv_sandbox_mem_used(L), (size_t)8 << 20);
	jv_sandbox_close(L);
}

Test(scriptdef, validates_the_returned_table)
{
	struct jv_run_ctx ctx;
	lua_State *L = new_state(&ctx);
	char path[] = "/tmp/jv-def-XXXXXX";
	int fd = mkstemp(path);
	const char *src = "return { type = 'X', params = { a = 'string', b = 'integer?' }, run = function() end }";
	cr_assert_eq(write(fd, src, strlen(src)), (ssize_t)strlen(src));
	close(fd);
	struct jv_scriptdef def;
	char err[256];
	cr_assert_eq(jv_scriptdef_load(L, path, "x.lua", &def, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(def.type, "X");
	cr_assert_eq(def.nparams, 2);
	const char *good = "{\"a\":\"s\",\"b\":3}", *bad = "{\"a\":1}", *extra = "{\"a\":\"s\",\"c\":1}";
	cJSON *p = cJSON_Parse(good);
	cr_assert_eq(jv_scriptdef_check_params(L, &def, p, err, sizeof(err)), 0);
	cJSON_Delete(p);
	p = cJSON_Parse(bad);
	cr_assert_eq(jv_scriptdef_check_params(L, &def, p, err, sizeof(err)), -1);
	cr_assert_str_eq(err, "params of X: parameter 'a' must be string, got number");
	cJSON_Delete(p);
	p = cJSON_Parse(extra);
	cr_assert_eq(jv_scriptdef_check_params(L, &def, p, err, sizeof(err)), -1);
	cr_assert(strstr(err, "unknown parameter 'c'"));
	cJSON_Delete(p);
	unlink(path);
	jv_sandbox_close(L);
}
