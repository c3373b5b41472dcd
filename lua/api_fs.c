/* api_fs.c — the `fs` module: file operations confined to the instance
 * directory, for job scripts.
 *
 * A thin binding over lua/fsx.c: check every argument first, call the core,
 * push results. Paths are relative to <data-dir>/instances/<id>/; writes into
 * .jobvisor/ are refused except inside staging directories (fs.staging()).
 * Long calls (remove_tree, commit, sha256) report progress with
 * opts.progress = {from, to} and stop on cancel. */
#include "apiutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobvisor/ident.h"

#define FS_READ_DEFAULT_MAX (16 << 20)
#define FS_READ_HARD_MAX (256 << 20)

static const char *type_name(mode_t m)
{
	if (S_ISREG(m))
		return "file";
	if (S_ISDIR(m))
		return "dir";
	if (S_ISLNK(m))
		return "symlink";
	return "other";
}

static void push_stat(lua_State *L, const struct stat *st)
{
	lua_createtable(L, 0, 5);
	lua_pushstring(L, type_name(st->st_mode));
	lua_setfield(L, -2, "type");
	lua_pushinteger(L, (lua_Integer)st->st_size);
	lua_setfield(L, -2, "size");
	lua_pushinteger(L, (lua_Integer)(st->st_mode & 07777));
	lua_setfield(L, -2, "mode");
	lua_pushinteger(L, (lua_Integer)st->st_mtim.tv_sec);
	lua_setfield(L, -2, "mtime");
}

static int l_fs_exists(lua_State *L)
{
	char p[FSX_PATH_MAX];
	apiutil_path(L, 1, p, false);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct stat st;
	int rc = fsx_lstat(&fx, p, &st);
	if (rc == -ENOENT || rc == -ENOTDIR) {
		lua_pushboolean(L, 0);
		return 1;
	}
	if (rc < 0)
		return apiutil_fail(L, rc, "check", p);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_fs_stat(lua_State *L)
{
	char p[FSX_PATH_MAX];
	apiutil_path(L, 1, p, false);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct stat st;
	int rc = fsx_lstat(&fx, p, &st);
	if (rc < 0)
		return apiutil_fail(L, rc, "stat", p);
	push_stat(L, &st);
	if (S_ISLNK(st.st_mode)) {
		char t[FSX_PATH_MAX];
		if (fsx_readlink(&fx, p, t, sizeof(t)) == 0) {
			lua_pushstring(L, t);
			lua_setfield(L, -2, "target");
		}
	}
	return 1;
}

static int l_fs_list(lua_State *L)
{
	char p[FSX_PATH_MAX];
	if (lua_isnoneornil(L, 1))
		memcpy(p, ".", 2);
	else
		apiutil_path(L, 1, p, false);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct fsx_list l;
	int rc = fsx_list(&fx, p, &l);
	if (rc < 0)
		return apiutil_fail(L, rc, "list", p);
	jv_json_push_array(L);
	for (size_t i = 0; i < l.n; i++) {
		push_stat(L, &l.v[i].st);
		lua_pushstring(L, l.v[i].name);
		lua_setfield(L, -2, "name");
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	fsx_list_free(&l);
	return 1;
}

static int l_fs_mkdir(lua_State *L)
{
	static const char *const keys[] = {"parents", "mode", NULL};
	char p[FSX_PATH_MAX];
	apiutil_path(L, 1, p, true);
	apiutil_opts(L, 2, "fs.mkdir", keys);
	bool parents = apiutil_opt_bool(L, 2, "parents", true);
	mode_t mode = (mode_t)apiutil_opt_int(L, 2, "mode", 0755, 0, 07777);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	int rc = fsx_mkdir(&fx, p, mode, parents);
	if (rc < 0)
		return apiutil_fail(L, rc, "create directory", p);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_fs_read(lua_State *L)
{
	static const char *const keys[] = {"max_bytes", NULL};
	char p[FSX_PATH_MAX];
	apiutil_path(L, 1, p, false);
	apiutil_opts(L, 2, "fs.read", keys);
	size_t max = (size_t)apiutil_opt_int(L, 2, "max_bytes", FS_READ_DEFAULT_MAX, 0,
	                                     FS_READ_HARD_MAX);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	char *data;
	size_t len;
	int rc = fsx_read(&fx, p, max, &data, &len);
	if (rc == -EFBIG)
		return jv_push_fail(L, "cannot read '%s': larger than %zu bytes (see max_bytes)", p, max);
	if (rc == -EINVAL)
		return jv_push_fail(L, "cannot read '%s': not a regular file", p);
	if (rc < 0)
		return apiutil_fail(L, rc, "read", p);
	lua_pushlstring(L, data, len);
	free(data);
	return 1;
}

static int l_fs_write(lua_State *L)
{
	static const char *const keys[] = {"mode", NULL};
	char p[FSX_PATH_MAX];
	apiutil_path(L, 1, p, true);
	size_t len;
	const char *data = luaL_checklstring(L, 2, &len);
	apiutil_opts(L, 3, "fs.write", keys);
	mode_t mode = (mode_t)apiutil_opt_int(L, 3, "mode", 0644, 0, 07777);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	int rc = fsx_write(&fx, p, data, len, mode);
	if (rc < 0)
		return apiutil_fail(L, rc, "write", p);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_fs_remove(lua_State *L)
{
	char p[FSX_PATH_MAX];
	apiutil_path(L, 1, p, true);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	bool removed;
	int rc = fsx_remove(&fx, p, &removed);
	if (rc == -ENOTEMPTY)
		return jv_push_fail(L, "cannot remove '%s': directory not empty (use fs.remove_tree)", p);
	if (rc < 0)
		return apiutil_fail(L, rc, "remove", p);
	lua_pushboolean(L, removed);
	return 1;
}

static int l_fs_remove_tree(lua_State *L)
{
	static const char *const keys[] = {"progress", NULL};
	char p[FSX_PATH_MAX];
	apiutil_path(L, 1, p, true);
	apiutil_opts(L, 2, "fs.remove_tree", keys);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct apiutil_tick t;
	apiutil_tick_init(L, 2, &t, "removing");
	/* Removal is what cleanup after a cancel does: a pending cancel must not stop it. */
	t.cancellable = false;
	bool removed;
	int rc = fsx_remove_tree(&fx, p, &removed, &t.hooks);
	if (rc < 0)
		return apiutil_fail(L, rc, "remove", p);
	lua_pushboolean(L, removed);
	return 1;
}

static int l_fs_staging(lua_State *L)
{
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct jv_run_ctx *ctx = jv_ctx(L);
	char out[FSX_PATH_MAX];
	int rc = fsx_staging_new(&fx, ctx->run_id, out);
	if (rc < 0)
		return apiutil_fail(L, rc, "create a staging directory for run", ctx->run_id);
	lua_pushstring(L, out);
	return 1;
}

static int l_fs_stale_staging(lua_State *L)
{
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct fsx_list l;
	int rc = fsx_staging_runs(&fx, jv_ctx(L)->run_id, &l);
	if (rc < 0)
		return apiutil_fail(L, rc, "list", ".jobvisor/staging");
	jv_json_push_array(L);
	for (size_t i = 0; i < l.n; i++) {
		lua_pushstring(L, l.v[i].name);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	fsx_list_free(&l);
	return 1;
}

static int l_fs_clean_staging(lua_State *L)
{
	const char *only = luaL_optstring(L, 1, NULL);
	struct jv_run_ctx *ctx = jv_ctx(L);
	luaL_argcheck(L, !only || jv_run_id_valid(only), 1, "not a run id");
	luaL_argcheck(L, !only || strcmp(only, ctx->run_id) != 0, 1,
	              "the running job's own staging is removed when it succeeds");
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct fsx_list l = {0};
	int rc = 0, n = 0;
	if (!only)
		rc = fsx_staging_runs(&fx, ctx->run_id, &l);
	for (size_t i = 0; rc == 0 && i < (only ? 1 : l.n); i++) {
		const char *run = only ? only : l.v[i].name;
		if (!jv_run_id_valid(run))
			continue;
		rc = fsx_staging_clean(&fx, run);
		if (rc == 0)
			n++;
	}
	fsx_list_free(&l);
	if (rc < 0)
		return apiutil_fail(L, rc, "clean", ".jobvisor/staging");
	lua_pushinteger(L, n);
	return 1;
}

static int l_fs_commit(lua_State *L)
{
	static const char *const keys[] = {"progress", NULL};
	char src[FSX_PATH_MAX], dst[FSX_PATH_MAX];
	apiutil_path(L, 1, src, true);
	apiutil_path(L, 2, dst, true);
	apiutil_opts(L, 3, "fs.commit", keys);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct apiutil_tick t;
	apiutil_tick_init(L, 3, &t, "committing");
	int rc = fsx_commit(&fx, src, dst, &t.hooks);
	if (rc == -ENOTEMPTY)
		return jv_push_fail(L, "cannot commit '%s' to '%s': the destination exists and is not "
		                       "empty (use fs.swap)", src, dst);
	if (rc < 0)
		return apiutil_fail(L, rc, "commit", src);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_fs_swap(lua_State *L)
{
	char a[FSX_PATH_MAX], b[FSX_PATH_MAX];
	apiutil_path(L, 1, a, true);
	apiutil_path(L, 2, b, true);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	int rc = fsx_swap(&fx, a, b);
	if (rc < 0 && !fsx_is_policy_error(rc) && rc != -ECANCELED)
		return jv_push_fail(L, "cannot swap '%s' and '%s': %s", a, b, fsx_strerror(rc));
	if (rc < 0)
		return apiutil_fail(L, rc, "swap", a);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_fs_link_swap(lua_State *L)
{
	char link[FSX_PATH_MAX];
	apiutil_path(L, 1, link, true);
	const char *target = luaL_checkstring(L, 2);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	int rc = fsx_link_swap(&fx, link, target);
	if (rc == -ENOENT)
		return jv_push_fail(L, "cannot point '%s' at '%s': the target does not exist", link,
		                    target);
	if (rc == -EISDIR || rc == -ENOTEMPTY || rc == -EEXIST)
		return jv_push_fail(L, "cannot point '%s' at '%s': '%s' is a directory, not a symlink",
		                    link, target, link);
	if (rc < 0)
		return apiutil_fail(L, rc, "replace symlink", link);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_fs_sha256(lua_State *L)
{
	static const char *const keys[] = {"progress", NULL};
	char p[FSX_PATH_MAX];
	apiutil_path(L, 1, p, false);
	apiutil_opts(L, 2, "fs.sha256", keys);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct apiutil_tick t;
	apiutil_tick_init(L, 2, &t, "hashing");
	char hex[JV_SHA256_HEX];
	uint64_t size = 0;
	int rc = fsx_sha256(&fx, p, hex, &size, &t.hooks);
	if (rc == -EINVAL || rc == -EISDIR)
		return jv_push_fail(L, "cannot hash '%s': not a regular file", p);
	if (rc < 0)
		return apiutil_fail(L, rc, "hash", p);
	lua_pushstring(L, hex);
	lua_pushinteger(L, (lua_Integer)size);
	return 2;
}

static int l_fs_chmod(lua_State *L)
{
	char p[FSX_PATH_MAX];
	apiutil_path(L, 1, p, true);
	mode_t mode = (mode_t)apiutil_mode(L, 2, "mode");
	if (mode & 07000) {
		char m[16];
		snprintf(m, sizeof(m), "%04o", (unsigned)mode);
		return luaL_error(L, "fs.chmod: setuid, setgid and sticky bits are not allowed (mode %s)", m);
	}
	luaL_argcheck(L, strcmp(p, ".") != 0, 1, "cannot change the mode of the instance root");
	struct fsx fx;
	apiutil_fsx(L, &fx);
	int rc = fsx_chmod(&fx, p, mode);
	if (rc == -EINVAL)
		return jv_push_fail(L, "cannot change the mode of '%s': not a regular file or directory", p);
	if (rc < 0)
		return apiutil_fail(L, rc, "change the mode of", p);
	lua_pushboolean(L, 1);
	return 1;
}

/* The host path of an existing instance path, for a program that must be
 * told where to write (SteamCMD's +force_install_dir). Resolved beneath the
 * instance like every path, then read back from the descriptor. */
static int l_fs_abspath(lua_State *L)
{
	char p[FSX_PATH_MAX];
	apiutil_path(L, 1, p, false);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	int fd;
	int rc = fsx_open(&fx, p, O_PATH, 0, 0, &fd);
	if (rc < 0)
		return apiutil_fail(L, rc, "resolve", p);
	char self[64], out[FSX_PATH_MAX];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(self, out, sizeof(out) - 1);
	close(fd);
	if (n < 0)
		return apiutil_fail(L, -errno, "resolve", p);
	out[n] = '\0';
	lua_pushstring(L, out);
	return 1;
}

static int l_fs_free_space(lua_State *L)
{
	struct fsx fx;
	apiutil_fsx(L, &fx);
	uint64_t avail, total;
	int rc = fsx_free_space(&fx, &avail, &total);
	if (rc < 0)
		return apiutil_fail(L, rc, "check free space of", ".");
	lua_pushinteger(L, (lua_Integer)avail);
	lua_pushinteger(L, (lua_Integer)total);
	return 2;
}

static const luaL_Reg fs_funcs[] = {
	{"exists", l_fs_exists},
	{"stat", l_fs_stat},
	{"list", l_fs_list},
	{"mkdir", l_fs_mkdir},
	{"read", l_fs_read},
	{"write", l_fs_write},
	{"remove", l_fs_remove},
	{"remove_tree", l_fs_remove_tree},
	{"staging", l_fs_staging},
	{"stale_staging", l_fs_stale_staging},
	{"clean_staging", l_fs_clean_staging},
	{"commit", l_fs_commit},
	{"swap", l_fs_swap},
	{"link_swap", l_fs_link_swap},
	{"sha256", l_fs_sha256},
	{"free_space", l_fs_free_space},
	{"chmod", l_fs_chmod},
	{"abspath", l_fs_abspath},
	{NULL, NULL},
};

int luaopen_jv_fs(lua_State *L)
{
	luaL_newlib(L, fs_funcs);
	static const struct apiutil_arity arity[] = {
		{"exists", 1},
		{"stat", 1},
		{"list", 1},
		{"mkdir", 2},
		{"read", 2},
		{"write", 3},
		{"remove", 1},
		{"remove_tree", 2},
		{"staging", 0},
		{"stale_staging", 0},
		{"clean_staging", 1},
		{"commit", 3},
		{"swap", 2},
		{"link_swap", 2},
		{"sha256", 2},
		{"free_space", 0},
		{NULL, 0},
	};
	apiutil_limit_args(L, -1, "fs", arity);
	return 1;
}
