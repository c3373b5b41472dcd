/* test_box.c — a Lua error raised in the middle of a binding (a bad option
 * after a manifest was parsed, an allocation failure under the memory cap
 * while results are pushed) leaks nothing: what the binding holds is owned
 * by a box (lua/box.c). Under ASan the leak checker runs after every case;
 * the boxes are what make it pass. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "fsapi_util.h"
#include "sandbox.h"

/* Present when built with -fsanitize=address (LeakSanitizer). */
extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

static struct scratch S;
static volatile sig_atomic_t never;

static void setup(void)
{
	scratch_setup(&S);
}

static void teardown(void)
{
	scratch_teardown(&S);
}

TestSuite(box, .init = setup, .fini = teardown, .timeout = 240);

static lua_State *new_state(struct jv_run_ctx *ctx, size_t limit)
{
	memset(ctx, 0, sizeof(*ctx));
	ctx->job_id = ctx->run_id = ctx->type = "t";
	ctx->instance_id = "i";
	ctx->instance_dir = S.root;
	ctx->data_fd = ctx->event_fd = -1;
	ctx->instance_fd = S.root_fd;
	ctx->cancel_flag = &never;
	struct jv_sandbox_opts so = {.ctx = ctx, .mem_limit = limit};
	lua_State *L = jv_sandbox_new(&so);
	cr_assert_not_null(L);
	return L;
}

static void run_ok(lua_State *L, const char *code)
{
	int rc = luaL_dostring(L, code);
	cr_assert_eq(rc, LUA_OK, "%s", rc ? lua_tostring(L, -1) : "");
	lua_settop(L, 0);
}

/* 300 files in src/ and an archive of them, a.tar.zst; M = its manifest. */
static const char *const make_tree =
    "if not fs.exists('src') then\n"
    "  fs.mkdir('src')\n"
    "  for i = 1, 300 do fs.write('src/f' .. i, string.rep('x', i)) end\n"
    "end\n"
    "M = archive.create('src', 'a.tar.zst')\n";

static void assert_no_leak(void)
{
	if (__lsan_do_recoverable_leak_check)
		cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "leaked (see the LeakSanitizer report)");
}

Test(box, bad_option_after_the_manifest_was_parsed_leaks_nothing)
{
	struct jv_run_ctx ctx;
	lua_State *L = new_state(&ctx, 64u << 20);
	run_ok(L, make_tree);
	/* The manifest (300 entries on the C heap) is parsed before the
	 * progress option is read and refused. */
	int rc = luaL_dostring(L, "return archive.verify('a.tar.zst', M, { progress = 'half' })");
	cr_assert_neq(rc, LUA_OK);
	cr_assert(strstr(lua_tostring(L, -1), "progress"), "%s", lua_tostring(L, -1));
	lua_settop(L, 0);
	rc = luaL_dostring(L, "return archive.extract('a.tar.zst', 'out', { manifest = M, progress = 'half' })");
	cr_assert_neq(rc, LUA_OK);
	lua_settop(L, 0);
	jv_sandbox_close(L);
	assert_no_leak();
}

/* Fill the capped state so that only `room` bytes are left, then run code
 * under pcall. Returns 1 when it ran, 0 when it raised "not enough memory". */
static int with_room(lua_State *L, size_t room, const char *code)
{
	int rc = luaL_loadstring(L, code);
	cr_assert_eq(rc, LUA_OK);
	luaL_checkstack(L, 8, NULL);
	lua_gc(L, LUA_GCCOLLECT);
	size_t used = jv_sandbox_mem_used(L), limit = jv_sandbox_mem_limit(L);
	cr_assert_gt(limit, used + room + 4096);
	lua_newuserdatauv(L, limit - used - room - 256, 0); /* ballast, kept on the stack */
	lua_pushvalue(L, -2);
	rc = lua_pcall(L, 0, LUA_MULTRET, 0);
	int ran = rc == LUA_OK;
	if (!ran) {
		const char *msg = lua_tostring(L, -1);
		cr_assert(msg && strstr(msg, "not enough memory"), "%s", msg ? msg : "(not a string)");
	}
	lua_settop(L, 0);
	return ran;
}

Test(box, allocation_failures_in_the_middle_of_archive_calls_leak_nothing)
{
	static const char *const calls[] = {
	    "local l = archive.list('a.tar.zst'); assert(#l == 300)",
	    "local m, r = archive.create('src', 'b.tar.zst', { reuse = M }); assert(#m.files == 300)",
	};
	for (size_t c = 0; c < sizeof(calls) / sizeof(calls[0]); c++) {
		int failed = 0, ran = 0;
		/* From far too little room to enough: every push of the results
		 * in between fails once. */
		for (size_t room = 1024; room <= 512u << 10; room += room / 4) {
			struct jv_run_ctx ctx;
			lua_State *L = new_state(&ctx, 8u << 20);
			run_ok(L, make_tree);
			if (with_room(L, room, calls[c]))
				ran++;
			else
				failed++;
			jv_sandbox_close(L);
		}
		cr_assert_gt(failed, 0, "call %zu never ran out of memory", c);
		cr_assert_gt(ran, 0, "call %zu never had enough memory", c);
		assert_no_leak();
	}
}

/* remote.verify parses the manifest before it reads the progress option;
 * the refusal is raised before any remote is opened, so no store is needed. */
Test(box, remote_verify_bad_option_after_the_manifest_was_parsed_leaks_nothing)
{
	struct jv_run_ctx ctx;
	lua_State *L = new_state(&ctx, 64u << 20);
	run_ok(L, make_tree);
	int rc = luaL_dostring(L, "return remote.verify('nowhere', 'a.tar.zst', M, { progress = 'half' })");
	cr_assert_neq(rc, LUA_OK);
	cr_assert(strstr(lua_tostring(L, -1), "progress"), "%s", lua_tostring(L, -1));
	lua_settop(L, 0);
	jv_sandbox_close(L);
	assert_no_leak();
}
