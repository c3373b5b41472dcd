/* api_remote.c — the `remote` module: objects on a configured S3 remote.
 *
 * A thin binding over lua/s3.c. Every function takes the remote's name (a
 * `remote.NAME.*` agent setting) and object names relative to the remote's
 * prefix; the credentials are read from the remote's credentials file at each
 * call and wiped before the call returns, so no secret stays in the Lua state
 * or reaches a message. Arguments and options are checked before anything is
 * loaded (misuse raises); an expected failure returns nil, a message naming
 * the remote, and a class: "transient" (worth retrying later: 5xx, SlowDown,
 * timeouts, connection errors, after the retries made inside the call),
 * "permanent" (403, NoSuchBucket, bad credentials...) or "not_found". */
#include "api_remote.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#define GET_DEFAULT_MAX (64 << 20)
#define GET_HARD_MAX (256 << 20)

const char *remote_class_name(enum s3_class c)
{
	return c == S3_TRANSIENT ? "transient" : c == S3_NOT_FOUND ? "not_found" : "permanent";
}

/* Object names are relative keys: 1-512 printable characters, no leading
 * '/', no '..' component, no backslash. */
const char *remote_check_rel(lua_State *L, int idx)
{
	size_t len = 0;
	const char *s = luaL_checklstring(L, idx, &len);
	bool ok = len > 0 && len <= 512 && s[0] != '/' && !strchr(s, '\\') && strlen(s) == len;
	for (size_t i = 0; ok && i < len; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			ok = false;
	for (const char *p = s; ok && (p = strstr(p, "..")); p += 2)
		if ((p == s || p[-1] == '/') && (p[2] == '\0' || p[2] == '/'))
			ok = false;
	luaL_argcheck(L, ok, idx, "an object name: 1-512 printable characters, relative, no '..'");
	return s;
}

/* Load the remote (credentials included) and the full key of rel. Returns 0,
 * or pushes nil, message, class and returns the number of results. */
int remote_open(lua_State *L, const char *name, const char *rel, struct s3_remote *r,
                       char *key, size_t keylen)
{
	char err[1024];
	int rc = s3_remote_load(jv_ctx(L)->settings, name, r, err, sizeof(err));
	if (rc == 0 && rel && s3_key(r, rel, key, keylen) != 0) {
		snprintf(err, sizeof(err), "remote '%s': object name '%s' is too long", name, rel);
		rc = -ENAMETOOLONG;
	}
	if (rc == 0)
		return 0;
	s3_remote_wipe(r);
	jv_push_fail(L, "%s", err);
	lua_pushstring(L, "permanent");
	return 3;
}

int remote_obj_open(lua_State *L, const char *name, const char *rel, struct remote_obj *o)
{
	o->e = (struct s3_err){0};
	return remote_open(L, name, rel, &o->r, o->key, sizeof(o->key));
}

/* The remote, then a file of the instance: the order the bindings need, since
 * open_remote's failure pushes (and so may raise) only while nothing is held.
 * On failure nothing is held and the returned count of results is pushed;
 * on success the caller owns r (s3_remote_wipe) and *fd. */
int remote_open_file(lua_State *L, const char *name, const char *rel, struct remote_obj *o,
                     const char *file, int flags, int *fd)
{
	struct fsx fx;
	apiutil_fsx(L, &fx); /* raises without an instance directory: before anything is held */
	int n = remote_obj_open(L, name, rel, o);
	if (n)
		return n;
	*fd = -1;
	int frc = fsx_open(&fx, file, flags, 0640, 0, fd);
	if (frc) {
		s3_remote_wipe(&o->r);
		return apiutil_fail(L, frc, (flags & O_ACCMODE) == O_RDONLY ? "read" : "write", file);
	}
	return 0;
}

/* After a failed call: wipe, raise on cancel, else nil, message, class. */
int remote_fail(lua_State *L, struct s3_remote *r, int rc, const struct s3_err *e)
{
	s3_remote_wipe(r);
	if (rc == -ECANCELED)
		return jv_raise_cancel(L);
	jv_push_fail(L, "%s", e->msg[0] ? e->msg : strerror(-rc));
	lua_pushstring(L, remote_class_name(e->cls));
	return 3;
}

/* After a call: remote_fail when it failed, else wipe and return true. */
int remote_done(lua_State *L, struct s3_remote *r, int rc, const struct s3_err *e)
{
	if (rc)
		return remote_fail(L, r, rc, e);
	s3_remote_wipe(r);
	lua_pushboolean(L, 1);
	return 1;
}

const char *remote_check_name_at(lua_State *L, int idx)
{
	size_t len = 0;
	const char *n = luaL_checklstring(L, idx, &len);
	luaL_argcheck(L, len > 0 && len <= 32, idx, "a remote name");
	return n;
}

const char *remote_check_name(lua_State *L)
{
	return remote_check_name_at(L, 1);
}

/* remote.info(name) -> {name, endpoint, bucket, region, prefix, part_size, parallel} */
static int l_remote_info(lua_State *L)
{
	const char *name = remote_check_name(L);
	struct s3_remote r;
	char key[8];
	int n = remote_open(L, name, NULL, &r, key, sizeof(key));
	if (n)
		return n;
	s3_remote_wipe(&r);
	lua_createtable(L, 0, 8);
	lua_pushstring(L, r.name);
	lua_setfield(L, -2, "name");
	lua_pushstring(L, r.endpoint);
	lua_setfield(L, -2, "endpoint");
	lua_pushstring(L, r.bucket);
	lua_setfield(L, -2, "bucket");
	lua_pushstring(L, r.region);
	lua_setfield(L, -2, "region");
	lua_pushstring(L, r.prefix);
	lua_setfield(L, -2, "prefix");
	lua_pushinteger(L, r.part_size);
	lua_setfield(L, -2, "part_size");
	lua_pushinteger(L, r.parallel);
	lua_setfield(L, -2, "parallel");
	return 1;
}

/* remote.put(name, object, data) -> true */
static int l_remote_put(lua_State *L)
{
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	size_t len = 0;
	const char *data = luaL_checklstring(L, 3, &len);
	luaL_argcheck(L, len <= GET_HARD_MAX, 3, "at most 256 MiB (use a multipart upload)");
	struct remote_obj o;
	int n = remote_obj_open(L, name, rel, &o);
	if (n)
		return n;
	int rc = s3_put(&o.r, o.key, data, len, &o.e);
	return remote_done(L, &o.r, rc, &o.e);
}

/* remote.get(name, object[, {max_bytes}]) -> data */
static int l_remote_get(lua_State *L)
{
	static const char *const keys[] = {"max_bytes", NULL};
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	apiutil_opts(L, 3, "remote.get", keys);
	size_t max = (size_t)apiutil_opt_int(L, 3, "max_bytes", GET_DEFAULT_MAX, 1, GET_HARD_MAX);
	struct remote_obj o;
	int n = remote_obj_open(L, name, rel, &o);
	if (n)
		return n;
	char *data = NULL;
	size_t len = 0;
	int rc = s3_get_mem(&o.r, o.key, max, &data, &len, &o.e);
	if (rc == -EFBIG) {
		s3_remote_wipe(&o.r);
		jv_push_fail(L, "remote '%s': '%s' is larger than %zu bytes (see max_bytes)", name, rel, max);
		lua_pushstring(L, "permanent");
		return 3;
	}
	if (rc)
		return remote_fail(L, &o.r, rc, &o.e);
	s3_remote_wipe(&o.r);
	lua_pushlstring(L, data, len);
	free(data);
	return 1;
}

/* remote.head(name, object) -> {size, etag} */
static int l_remote_head(lua_State *L)
{
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	struct remote_obj o;
	int n = remote_obj_open(L, name, rel, &o);
	if (n)
		return n;
	int64_t size = -1;
	char etag[80] = "";
	int rc = s3_head(&o.r, o.key, &size, etag, &o.e);
	if (rc)
		return remote_fail(L, &o.r, rc, &o.e);
	s3_remote_wipe(&o.r);
	lua_createtable(L, 0, 2);
	lua_pushinteger(L, size);
	lua_setfield(L, -2, "size");
	lua_pushstring(L, etag);
	lua_setfield(L, -2, "etag");
	return 1;
}

/* remote.delete(name, object) -> true (also when it did not exist) */
static int l_remote_delete(lua_State *L)
{
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	struct remote_obj o;
	int n = remote_obj_open(L, name, rel, &o);
	if (n)
		return n;
	int rc = s3_delete(&o.r, o.key, &o.e);
	return remote_done(L, &o.r, o.e.cls == S3_NOT_FOUND ? 0 : rc, &o.e);
}

struct list_ctx {
	lua_State *L;
	size_t strip; /* length of "<prefix>/" */
	lua_Integer n;
};

static int list_one(void *arg, const struct s3_object *o)
{
	struct list_ctx *c = arg;
	lua_State *L = c->L;
	if (!lua_checkstack(L, 4))
		return -ENOMEM;
	if (strlen(o->key) < c->strip)
		return 0;
	lua_createtable(L, 0, 4);
	lua_pushstring(L, o->key + c->strip);
	lua_setfield(L, -2, "name");
	lua_pushinteger(L, o->size);
	lua_setfield(L, -2, "size");
	lua_pushstring(L, o->etag);
	lua_setfield(L, -2, "etag");
	lua_pushstring(L, o->last_modified);
	lua_setfield(L, -2, "lastModified");
	lua_rawseti(L, -2, ++c->n);
	return 0;
}

/* remote.list(name, object_prefix) -> array of {name, size, etag, lastModified} */
static int l_remote_list(lua_State *L)
{
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	struct remote_obj o;
	int n = remote_obj_open(L, name, rel, &o);
	if (n)
		return n;
	jv_json_push_array(L);
	struct list_ctx c = {L, o.r.prefix[0] ? strlen(o.r.prefix) + 1 : 0, 0};
	int rc = s3_list(&o.r, o.key, list_one, &c, &o.e);
	if (rc) {
		lua_pop(L, 1);
		return remote_fail(L, &o.r, rc, &o.e);
	}
	s3_remote_wipe(&o.r);
	return 1;
}

static const luaL_Reg remote_funcs[] = {
	{"verify", l_remote_verify},
	{"sha256", l_remote_sha256},
	{"info", l_remote_info},
	{"put", l_remote_put},
	{"get", l_remote_get},
	{"head", l_remote_head},
	{"delete", l_remote_delete},
	{"list", l_remote_list},
	{"mpu_create", l_remote_mpu_create},
	{"mpu_part", l_remote_mpu_part},
	{"mpu_complete", l_remote_mpu_complete},
	{"mpu_upload", l_remote_mpu_upload},
	{"mpu_abort", l_remote_mpu_abort},
	{"download", l_remote_download},
	{NULL, NULL},
};

int luaopen_jv_remote(lua_State *L)
{
	luaL_newlib(L, remote_funcs);
	static const struct apiutil_arity arity[] = {
		{"verify", 4},       {"sha256", 3},     {"info", 1},       {"put", 3},
		{"get", 3},          {"head", 2},       {"delete", 2},     {"list", 2},
		{"mpu_create", 2},   {"mpu_part", 6},   {"mpu_complete", 4}, {"mpu_abort", 3},
		{"mpu_upload", 7},
		{"download", 4},     {NULL, 0},
	};
	apiutil_limit_args(L, -1, "remote", arity);
	return 1;
}
