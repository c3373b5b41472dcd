/* api_archive.c — the `archive` module: create, extract, verify, list.
 *
 * A thin binding over lua/arch*.c. Paths are instance paths (see api_fs.c);
 * the source directory and the archive file are resolved beneath the
 * instance, the destinations are created there. Manifests cross the boundary
 * as Lua tables in the JSON shape of docs/lua-api.md (json.encode/decode
 * round-trip them). */
#include "apiutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_remote.h"
#include "arch.h"
#include "box.h"
#include "jobvisor/durable.h"
#include "jobvisor/jsonutil.h"

#define ARCHIVE_MAX_EXCLUDES 1024
#define ARCHIVE_DEFAULT_RESERVE (128ll << 20)
/* Defaults of archive.extract's bomb guards when the agent settings
 * extract_max_bytes / extract_max_ratio do not say otherwise. */
#define ARCHIVE_DEFAULT_MAX_BYTES (16ll << 30)
#define ARCHIVE_DEFAULT_MAX_RATIO 20

/* Results live on the heap, owned by a box (box.h): any push or option
 * check after they are filled may raise (manifests: api_archive_mf.c). */
static void release_create_result(void *p)
{
	arch_create_result_free(p);
	free(p);
}

/* opts.exclude into o (the strings stay alive in the options table). */
static void create_excludes(lua_State *L, struct arch_create_opts *o, const char **pats)
{
	if (lua_isnoneornil(L, 3) || lua_getfield(L, 3, "exclude") == LUA_TNIL)
		return;
	luaL_argcheck(L, lua_istable(L, -1), 3, "exclude must be an array of patterns");
	lua_Integer n = luaL_len(L, -1);
	luaL_argcheck(L, n <= ARCHIVE_MAX_EXCLUDES, 3, "too many exclude patterns");
	for (lua_Integer i = 1; i <= n; i++) {
		lua_rawgeti(L, -1, i);
		luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 3, "exclude patterns must be strings");
		pats[o->nexclude++] = lua_tostring(L, -1); /* kept alive by the table */
		lua_pop(L, 1);
	}
	o->exclude = pats;
}

/* opts.reuse: a manifest table (a bad one raises), or the path of a manifest
 * file, read here; a file that cannot serve (missing, unreadable, not a
 * manifest) only costs the hashing: its reason goes to reuse_err. */
static void create_reuse(lua_State *L, const struct fsx *fx, struct arch_create_opts *o,
                         char *reuse_err, size_t errlen)
{
	if (lua_isnoneornil(L, 3) || lua_getfield(L, 3, "reuse") == LUA_TNIL)
		return;
	int idx = lua_gettop(L);
	struct arch_manifest *reuse = archive_manifest_push(L);
	char merr[512];
	if (lua_type(L, idx) == LUA_TSTRING) {
		char path[FSX_PATH_MAX];
		apiutil_path(L, idx, path, false);
		if (archive_manifest_read(fx, path, reuse, reuse_err, errlen) == 0)
			o->reuse = reuse;
		return;
	}
	if (archive_manifest_arg(L, idx, reuse, merr, sizeof(merr)) < 0)
		luaL_argerror(L, 3, lua_pushfstring(L, "reuse: %s", merr));
	o->reuse = reuse;
}

/* opts.manifest (the manifest file to write, into path) and
 * opts.manifest_fields (extra top-level members, into *extra, boxed; NULL
 * when none). false without opts.manifest. */
static bool create_manifest_opts(lua_State *L, const char *dst, char *path, const cJSON **extra)
{
	*extra = NULL;
	const char *p = apiutil_opt_str(L, 3, "manifest", NULL);
	bool fields = !lua_isnoneornil(L, 3) && lua_getfield(L, 3, "manifest_fields") != LUA_TNIL;
	if (!p) {
		luaL_argcheck(L, !fields, 3, "manifest_fields needs manifest (the file to write)");
		return false;
	}
	int fidx = lua_gettop(L);
	lua_pushstring(L, p);
	apiutil_path(L, -1, path, true);
	luaL_argcheck(L, strcmp(path, dst) != 0, 3, "manifest must not be the archive itself");
	if (!fields)
		return true;
	luaL_argcheck(L, lua_istable(L, fidx), 3, "manifest_fields must be a table of members");
	struct jv_box *box = jv_box_push(L);
	char jerr[256];
	cJSON *j = jv_lua_to_json(L, fidx, jerr, sizeof(jerr));
	if (!j)
		luaL_argerror(L, 3, lua_pushfstring(L, "manifest_fields: %s", jerr));
	jv_box_set(box, j, jv_box_release_json);
	if (cJSON_GetArraySize(j) == 0)
		return true;
	luaL_argcheck(L, cJSON_IsObject(j), 3, "manifest_fields must have string keys");
	const cJSON *c;
	cJSON_ArrayForEach(c, j) {
		if (arch_manifest_reserved(c->string))
			luaL_argerror(L, 3, lua_pushfstring(L, "manifest_fields: '%s' is written by "
			                                    "archive.create itself", c->string));
	}
	*extra = j;
	return true;
}

static void push_create_info(lua_State *L, const struct arch_create_result *r,
                             const char *reuse_err)
{
	lua_createtable(L, 0, 7);
	lua_pushinteger(L, (lua_Integer)r->files);
	lua_setfield(L, -2, "files");
	lua_pushinteger(L, (lua_Integer)r->dirs);
	lua_setfield(L, -2, "dirs");
	lua_pushinteger(L, (lua_Integer)r->symlinks);
	lua_setfield(L, -2, "symlinks");
	lua_pushinteger(L, (lua_Integer)r->data_bytes);
	lua_setfield(L, -2, "bytes");
	lua_pushinteger(L, (lua_Integer)r->reused);
	lua_setfield(L, -2, "reused");
	if (reuse_err[0]) {
		lua_pushstring(L, reuse_err);
		lua_setfield(L, -2, "reuse_error");
	}
	jv_json_push_array(L);
	for (size_t i = 0; i < r->nskipped; i++) {
		lua_pushstring(L, r->skipped[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	lua_setfield(L, -2, "skipped");
}

/* The manifest as archive.create returns it: the whole table, or with
 * opts.manifest only its summary (the file holds the entries). */
static void push_create_manifest(lua_State *L, const struct arch_manifest *m, bool summary)
{
	if (summary) {
		lua_createtable(L, 0, 4);
		lua_pushinteger(L, 1);
		lua_setfield(L, -2, "format");
		lua_pushstring(L, m->sha256);
		lua_setfield(L, -2, "sha256");
		lua_pushinteger(L, (lua_Integer)m->bytes);
		lua_setfield(L, -2, "bytes");
		lua_pushinteger(L, (lua_Integer)m->n);
		lua_setfield(L, -2, "entries");
		return;
	}
	struct jv_box *jbox = jv_box_push(L);
	cJSON *j = arch_manifest_to_json(m);
	if (!j)
		luaL_error(L, "out of memory");
	jv_box_set(jbox, j, jv_box_release_json);
	jv_json_to_lua(L, j);
	jv_box_release(jbox);
}

/* After the archive is in place: its manifest file, or neither. */
static int write_manifest_file(const struct fsx *fx, int dfd, const char *dlast, const char *mpath,
                               const struct arch_manifest *m, const cJSON *extra, char *err,
                               size_t errlen)
{
	int mfd = -1;
	const char *mlast;
	int rc = apiutil_parent(fx, mpath, &mfd, &mlast);
	if (rc < 0) {
		snprintf(err, errlen, "cannot open the directory of '%s': %s", mpath, fsx_strerror(rc));
		rc = -EIO;
	} else {
		rc = arch_manifest_write_at(mfd, mlast, m, extra, err, errlen);
		close(mfd);
	}
	if (rc < 0 && dfd >= 0)
		unlinkat(dfd, dlast, 0);
	return rc;
}

static int l_archive_create(lua_State *L)
{
	lua_settop(L, 3); /* boxes go above the arguments */
	static const char *const keys[] = {"level", "threads", "exclude", "progress", "reuse",
	                                   "manifest", "manifest_fields", "upload", NULL};
	char src[FSX_PATH_MAX], dst[FSX_PATH_MAX] = "", mpath[FSX_PATH_MAX];
	apiutil_path(L, 1, src, false);
	/* no destination: the upload gets the only copy */
	bool to_file = !lua_isnil(L, 2) || lua_isnoneornil(L, 3) ||
	               lua_getfield(L, 3, "upload") == LUA_TNIL;
	lua_settop(L, 3);
	if (to_file)
		apiutil_path(L, 2, dst, true);
	apiutil_opts(L, 3, "archive.create", keys);
	struct arch_create_opts o = {0};
	o.level = (int)apiutil_opt_int(L, 3, "level", 3, 1, 19);
	o.threads = (int)apiutil_opt_int(L, 3, "threads", 0, 0, 256);
	const char *pats[ARCHIVE_MAX_EXCLUDES];
	create_excludes(L, &o, pats);
	const cJSON *extra;
	bool mfile = create_manifest_opts(L, dst, mpath, &extra);
	struct apiutil_call call;
	apiutil_call_init(L, 3, &call, "archiving");
	o.hooks = &call.t.hooks;
	char reuse_err[600] = "";
	create_reuse(L, &call.fx, &o, reuse_err, sizeof(reuse_err));
	int nret = 0;
	struct remote_upload *up = remote_upload_arg(L, 3, &nret);
	if (nret)
		return nret;
	o.out = up ? remote_upload_out : NULL;
	o.out_arg = up;
	struct jv_box *rbox = jv_box_push(L);
	struct arch_create_result *r = calloc(1, sizeof(*r));
	if (!r)
		return luaL_error(L, "out of memory");
	jv_box_set(rbox, r, release_create_result);
	int sfd = -1, dfd = -1;
	const char *dlast = NULL;
	int rc = fsx_open(&call.fx, src, O_RDONLY | O_DIRECTORY, 0, 0, &sfd);
	if (rc < 0)
		return apiutil_fail(L, rc, "archive", src);
	rc = to_file ? apiutil_parent(&call.fx, dst, &dfd, &dlast) : 0;
	if (rc < 0) {
		close(sfd);
		return apiutil_fail(L, rc, "create archive", dst);
	}
	if (up && (nret = remote_upload_start(L, up, o.hooks)) != 0) {
		close(sfd);
		if (dfd >= 0)
			close(dfd);
		return nret;
	}
	char err[1024];
	char prefix[FSX_PATH_MAX + 64];
	rc = arch_create(sfd, dfd, dlast, &o, r, err, sizeof(err));
	close(sfd);
	if (up && (nret = remote_upload_end(L, up, rc)) != 0) {
		if (dfd >= 0)
			close(dfd);
		return nret;
	}
	if (rc == 0 && mfile)
		rc = write_manifest_file(&call.fx, dfd, dlast, mpath, &r->manifest, extra, err,
		                         sizeof(err));
	if (dfd >= 0)
		close(dfd);
	if (rc < 0) {
		snprintf(prefix, sizeof(prefix), "cannot create archive '%s'",
		         to_file ? dst : "(streamed to the remote)");
		return apiutil_fail_msg(L, rc, prefix, err);
	}
	apiutil_tick_done(&call.t);
	push_create_manifest(L, &r->manifest, mfile);
	push_create_info(L, r, reuse_err);
	if (up) {
		int sent = 0;
		lua_pushinteger(L, remote_upload_parts(up, &sent));
		lua_setfield(L, -2, "parts");
		lua_pushinteger(L, sent);
		lua_setfield(L, -2, "partsSent");
	}
	return 2;
}

static int l_archive_extract(lua_State *L)
{
	lua_settop(L, 3); /* boxes go above the arguments */
	static const char *const keys[] = {"strip_components", "max_bytes", "max_ratio",
	                                   "reserve_bytes", "manifest", "progress", NULL};
	char file[FSX_PATH_MAX], dst[FSX_PATH_MAX];
	apiutil_path(L, 1, file, false);
	apiutil_path(L, 2, dst, true);
	apiutil_opts(L, 3, "archive.extract", keys);
	struct arch_extract_opts o = {0};
	o.strip = (int)apiutil_opt_int(L, 3, "strip_components", 0, 0, 64);
	const cJSON *settings = jv_ctx(L)->settings;
	int64_t def_max = (int64_t)jv_json_num(settings, "extract_max_bytes", ARCHIVE_DEFAULT_MAX_BYTES);
	int64_t def_ratio = (int64_t)jv_json_num(settings, "extract_max_ratio", ARCHIVE_DEFAULT_MAX_RATIO);
	o.max_bytes = (uint64_t)apiutil_opt_int(L, 3, "max_bytes", def_max, 0, INT64_MAX);
	o.max_ratio = (double)apiutil_opt_int(L, 3, "max_ratio", def_ratio, 0, 1000000);
	o.reserve_bytes =
	    (uint64_t)apiutil_opt_int(L, 3, "reserve_bytes", ARCHIVE_DEFAULT_RESERVE, 0, INT64_MAX);
	char err[1024];
	char prefix[FSX_PATH_MAX + 64];
	snprintf(prefix, sizeof(prefix), "cannot extract '%s'", file);
	if (!lua_isnoneornil(L, 3) && lua_getfield(L, 3, "manifest") != LUA_TNIL) {
		int rc;
		o.manifest = archive_manifest_use(L, lua_gettop(L), err, sizeof(err), &rc);
		if (!o.manifest)
			return apiutil_fail_msg(L, rc, prefix, err);
	}
	struct apiutil_call call;
	apiutil_call_init(L, 3, &call, "extracting");
	o.hooks = &call.t.hooks;
	int afd = -1, dfd = -1;
	const char *alast, *dlast;
	int rc = fsx_parent(&call.fx, file, 0, &afd, &alast);
	if (rc < 0)
		return apiutil_fail(L, rc, "extract", file);
	rc = apiutil_parent(&call.fx, dst, &dfd, &dlast);
	if (rc < 0) {
		close(afd);
		return apiutil_fail(L, rc, "extract into", dst);
	}
	struct arch_extract_result r;
	rc = arch_extract(afd, alast, dfd, dlast, &o, &r, err, sizeof(err));
	close(afd);
	close(dfd);
	if (rc < 0)
		return apiutil_fail_msg(L, rc, prefix, err);
	apiutil_tick_done(&call.t);
	lua_createtable(L, 0, 5);
	lua_pushinteger(L, (lua_Integer)r.files);
	lua_setfield(L, -2, "files");
	lua_pushinteger(L, (lua_Integer)r.dirs);
	lua_setfield(L, -2, "dirs");
	lua_pushinteger(L, (lua_Integer)r.symlinks);
	lua_setfield(L, -2, "symlinks");
	lua_pushinteger(L, (lua_Integer)r.hardlinks);
	lua_setfield(L, -2, "hardlinks");
	lua_pushinteger(L, (lua_Integer)r.bytes);
	lua_setfield(L, -2, "bytes");
	return 1;
}

static int l_archive_verify(lua_State *L)
{
	lua_settop(L, 3); /* boxes go above the arguments */
	static const char *const keys[] = {"progress", NULL};
	char file[FSX_PATH_MAX];
	apiutil_path(L, 1, file, false);
	luaL_argexpected(L, lua_istable(L, 2) || lua_isuserdata(L, 2), 2, "manifest");
	apiutil_opts(L, 3, "archive.verify", keys);
	char err[1024], prefix[FSX_PATH_MAX + 64];
	snprintf(prefix, sizeof(prefix), "archive '%s' failed verification", file);
	int rc;
	const struct arch_manifest *m = archive_manifest_use(L, 2, err, sizeof(err), &rc);
	if (!m)
		return apiutil_fail_msg(L, rc, prefix, err);
	struct apiutil_call call;
	apiutil_call_init(L, 3, &call, "verifying");
	int afd;
	const char *alast;
	rc = fsx_parent(&call.fx, file, 0, &afd, &alast);
	if (rc < 0)
		return apiutil_fail(L, rc, "verify", file);
	rc = arch_verify(afd, alast, m, &call.t.hooks, err, sizeof(err));
	close(afd);
	if (rc < 0)
		return apiutil_fail_msg(L, rc, prefix, err);
	apiutil_tick_done(&call.t);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_archive_list(lua_State *L)
{
	char file[FSX_PATH_MAX];
	apiutil_path(L, 1, file, false);
	struct apiutil_call call;
	apiutil_call_init(L, 0, &call, "listing");
	int afd;
	const char *alast;
	int rc = fsx_parent(&call.fx, file, 0, &afd, &alast);
	if (rc < 0)
		return apiutil_fail(L, rc, "list", file);
	struct arch_manifest *l = archive_manifest_push(L);
	char err[1024], prefix[FSX_PATH_MAX + 64];
	rc = arch_list(afd, alast, l, &call.t.hooks, err, sizeof(err));
	close(afd);
	if (rc < 0) {
		snprintf(prefix, sizeof(prefix), "cannot list '%s'", file);
		return apiutil_fail_msg(L, rc, prefix, err);
	}
	jv_json_push_array(L);
	for (size_t i = 0; i < l->n; i++) {
		const struct arch_entry *e = &l->v[i];
		lua_createtable(L, 0, 6);
		lua_pushstring(L, e->path);
		lua_setfield(L, -2, "path");
		lua_pushstring(L, arch_type_name(e->type));
		lua_setfield(L, -2, "type");
		lua_pushinteger(L, (lua_Integer)e->size);
		lua_setfield(L, -2, "size");
		lua_pushinteger(L, (lua_Integer)e->mode);
		lua_setfield(L, -2, "mode");
		lua_pushinteger(L, (lua_Integer)e->mtime);
		lua_setfield(L, -2, "mtime");
		if (e->target) {
			lua_pushstring(L, e->target);
			lua_setfield(L, -2, "target");
		}
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

static const luaL_Reg archive_funcs[] = {
	{"create", l_archive_create},
	{"extract", l_archive_extract},
	{"verify", l_archive_verify},
	{"list", l_archive_list},
	{"manifest", archive_l_manifest},
	{NULL, NULL},
};

int luaopen_jv_archive(lua_State *L)
{
	luaL_newlib(L, archive_funcs);
	static const struct apiutil_arity arity[] = {
		{"create", 3},
		{"extract", 3},
		{"verify", 3},
		{"list", 1},
		{"manifest", 1},
		{NULL, 0},
	};
	apiutil_limit_args(L, -1, "archive", arity);
	return 1;
}
