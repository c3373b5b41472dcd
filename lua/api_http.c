/* api_http.c — the `http` module: download(url, dst, opts) and get_json(url).
 *
 * A thin binding over lua/dl.c. The destination is an instance path; the
 * shared content cache is <data-dir>/cache (created on first use). A download
 * needs opts.sha256 unless the script sets insecure_no_checksum = true. */
#include "apiutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dl.h"
#include "jobvisor/jsonutil.h"

#define GET_JSON_DEFAULT_MAX (4 << 20)
#define GET_JSON_HARD_MAX (64 << 20)

/* <data-dir>/cache, created if needed; -1 when unusable (downloads still work). */
static int open_cache(struct jv_run_ctx *ctx)
{
	if (ctx->data_fd < 0)
		return -1;
	if (mkdirat(ctx->data_fd, "cache", 0750) < 0 && errno != EEXIST)
		return -1;
	return openat(ctx->data_fd, "cache", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

static void common_opts(lua_State *L, int idx, struct dl_opts *o)
{
	o->max_attempts = (int)apiutil_opt_int(L, idx, "retries", 4, 0, 20) + 1;
	o->connect_timeout_s = (long)apiutil_opt_int(L, idx, "connect_timeout", 15, 1, 600);
	o->low_speed_time_s = (long)apiutil_opt_int(L, idx, "low_speed_time", 30, 1, 3600);
	o->total_timeout_s = (long)apiutil_opt_int(L, idx, "timeout", 0, 0, 7 * 86400);
}

static int l_http_download(lua_State *L)
{
	static const char *const keys[] = {"sha256", "size", "resume", "max_bytes", "reserve_bytes",
	                                   "insecure_no_checksum", "retries", "connect_timeout",
	                                   "low_speed_time", "timeout", "progress", "mode", NULL};
	const char *url = luaL_checkstring(L, 1);
	char dst[FSX_PATH_MAX];
	apiutil_path(L, 2, dst, true);
	luaL_checktype(L, 3, LUA_TTABLE);
	apiutil_opts(L, 3, "http.download", keys);
	struct dl_opts o;
	dl_opts_init(&o);
	o.sha256 = apiutil_opt_str(L, 3, "sha256", NULL);
	o.insecure_no_checksum = apiutil_opt_bool(L, 3, "insecure_no_checksum", false);
	if (!o.sha256 && !o.insecure_no_checksum)
		return luaL_error(L, "http.download: opts.sha256 is required (set insecure_no_checksum = "
		                     "true to download without one)");
	if (o.sha256 && !jv_sha256_hex_valid(o.sha256))
		return luaL_error(L, "http.download: opts.sha256 must be 64 hex digits");
	o.size = apiutil_opt_int(L, 3, "size", -1, -1, INT64_MAX);
	o.resume = apiutil_opt_bool(L, 3, "resume", true);
	o.max_bytes = (uint64_t)apiutil_opt_int(L, 3, "max_bytes", 0, 0, INT64_MAX);
	/* Modes come from vendor manifests: setuid/setgid/sticky are dropped, not kept. */
	o.mode = apiutil_opt_mode(L, 3, "mode");
	if (o.mode >= 0)
		o.mode &= 0777;
	o.reserve_bytes =
	    (uint64_t)apiutil_opt_int(L, 3, "reserve_bytes", (lua_Integer)DL_DEFAULT_RESERVE, 0, INT64_MAX);
	common_opts(L, 3, &o);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct apiutil_tick t;
	apiutil_tick_init(L, 3, &t, "downloading");
	o.hooks = &t.hooks;
	int dfd;
	const char *last;
	int rc = apiutil_parent(&fx, dst, &dfd, &last);
	if (rc < 0)
		return apiutil_fail(L, rc, "download to", dst);
	o.cache_fd = o.sha256 ? open_cache(t.ctx) : -1;
	struct dl_result r;
	char err[1024];
	rc = dl_download(url, &o, dfd, last, &r, err, sizeof(err));
	close(dfd);
	if (o.cache_fd >= 0)
		close(o.cache_fd);
	if (rc < 0)
		return apiutil_fail_msg(L, rc, "download failed", err);
	apiutil_tick_done(&t);
	lua_createtable(L, 0, 5);
	lua_pushinteger(L, (lua_Integer)r.bytes);
	lua_setfield(L, -2, "bytes");
	lua_pushstring(L, r.sha256);
	lua_setfield(L, -2, "sha256");
	lua_pushboolean(L, r.from_cache);
	lua_setfield(L, -2, "cached");
	lua_pushboolean(L, r.resumed);
	lua_setfield(L, -2, "resumed");
	lua_pushinteger(L, r.attempts);
	lua_setfield(L, -2, "attempts");
	return 1;
}

static int l_http_get_json(lua_State *L)
{
	static const char *const keys[] = {"max_bytes", "retries", "connect_timeout",
	                                   "low_speed_time", "timeout", NULL};
	const char *url = luaL_checkstring(L, 1);
	apiutil_opts(L, 2, "http.get_json", keys);
	size_t max = (size_t)apiutil_opt_int(L, 2, "max_bytes", GET_JSON_DEFAULT_MAX, 1,
	                                     GET_JSON_HARD_MAX);
	struct dl_opts o;
	dl_opts_init(&o);
	common_opts(L, 2, &o);
	if (o.total_timeout_s == 0)
		o.total_timeout_s = 60;
	struct apiutil_tick t;
	apiutil_tick_init(L, 0, &t, "fetching");
	o.hooks = &t.hooks;
	struct jv_buf b;
	char err[1024];
	int rc = dl_get(url, &o, max, &b, err, sizeof(err));
	if (rc < 0) {
		jv_buf_free(&b);
		if (rc == -EFBIG)
			return jv_push_fail(L, "request failed: '%s' sent more than %zu bytes (see max_bytes)",
			                    url, max);
		return apiutil_fail_msg(L, rc, "request failed", err);
	}
	cJSON *j = jv_json_parse(b.data ? b.data : "", b.len);
	jv_buf_free(&b);
	if (!j)
		return jv_push_fail(L, "request failed: '%s' did not answer valid JSON", url);
	jv_json_to_lua(L, j);
	cJSON_Delete(j);
	return 1;
}

static const luaL_Reg http_funcs[] = {
	{"download", l_http_download},
	{"get_json", l_http_get_json},
	{NULL, NULL},
};

int luaopen_jv_http(lua_State *L)
{
	luaL_newlib(L, http_funcs);
	static const struct apiutil_arity arity[] = {
		{"download", 3},
		{"get_json", 2},
		{NULL, 0},
	};
	apiutil_limit_args(L, -1, "http", arity);
	return 1;
}
