/* api_archive_mf.c — archive.manifest(path): a manifest file read into C.
 *
 * RESTORE_BACKUP and VERIFY_BACKUP used to json.decode the backup's manifest
 * into a Lua table (about 2 KiB of Lua and cJSON memory per file, then
 * converted back to C for the check). archive.manifest reads the file entry
 * by entry (arch_mfread.c) into the compact struct arch_manifest, held by a
 * userdata: the script reads its summary and top-level members as fields and
 * hands the handle to archive.extract, archive.verify or remote.verify,
 * which use it without a copy. */
#include "apiutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arch.h"
#include "box.h"
#include "jobvisor/jsonutil.h"

/* Manifests live on the heap, owned by a box (box.h): any push or option
 * check after they are filled may raise. */
static void release_manifest(void *p)
{
	arch_manifest_free(p);
	free(p);
}

struct arch_manifest *archive_manifest_push(lua_State *L)
{
	struct jv_box *box = jv_box_push(L);
	struct arch_manifest *m = malloc(sizeof(*m));
	if (!m)
		luaL_error(L, "out of memory");
	arch_manifest_init(m);
	jv_box_set(box, m, release_manifest);
	return m;
}

/* Manifest from the Lua value at idx; pushes nothing. 0 or -EINVAL with err. */
int archive_manifest_arg(lua_State *L, int idx, struct arch_manifest *m, char *err, size_t errlen)
{
	if (lua_type(L, idx) != LUA_TTABLE) {
		snprintf(err, errlen, "a manifest must be a table (as returned by archive.create)");
		return -EINVAL;
	}
	char jerr[256];
	cJSON *j = jv_lua_to_json(L, idx, jerr, sizeof(jerr));
	if (!j) {
		snprintf(err, errlen, "manifest is not JSON data: %s", jerr);
		return -EINVAL;
	}
	int rc = arch_manifest_from_json(j, m, err, errlen);
	cJSON_Delete(j);
	return rc;
}

#define MANIFEST_MT "jobvisor.manifest"

struct mf_handle {
	struct arch_manifest m;
	cJSON *top; /* the other top-level members; NULL until read */
	uint64_t nfiles, file_bytes;
};

static int mf_gc(lua_State *L)
{
	struct mf_handle *h = luaL_checkudata(L, 1, MANIFEST_MT);
	arch_manifest_free(&h->m);
	cJSON_Delete(h->top);
	h->top = NULL;
	return 0;
}

/* Fields: entries, file_count, file_bytes, sha256, bytes, and every other
 * top-level member of the file (backupId, jobId, complete, ...). There is no
 * "files" list: asking for one is a script written for a table. */
static int mf_index(lua_State *L)
{
	struct mf_handle *h = luaL_checkudata(L, 1, MANIFEST_MT);
	const char *k = luaL_checkstring(L, 2);
	if (strcmp(k, "entries") == 0)
		lua_pushinteger(L, (lua_Integer)h->m.n);
	else if (strcmp(k, "file_count") == 0)
		lua_pushinteger(L, (lua_Integer)h->nfiles);
	else if (strcmp(k, "file_bytes") == 0)
		lua_pushinteger(L, (lua_Integer)h->file_bytes);
	else if (strcmp(k, "sha256") == 0 && h->m.sha256[0])
		lua_pushstring(L, h->m.sha256);
	else if (strcmp(k, "bytes") == 0 && h->m.has_bytes)
		lua_pushinteger(L, (lua_Integer)h->m.bytes);
	else if (strcmp(k, "files") == 0)
		return luaL_error(L, "a manifest from archive.manifest has no 'files' list "
		                     "(use entries, file_count, file_bytes)");
	else {
		const cJSON *v = h->top ? cJSON_GetObjectItemCaseSensitive(h->top, k) : NULL;
		if (v)
			jv_json_to_lua(L, v);
		else
			lua_pushnil(L);
	}
	return 1;
}

static int mf_tostring(lua_State *L)
{
	struct mf_handle *h = luaL_checkudata(L, 1, MANIFEST_MT);
	lua_pushfstring(L, "manifest (%I entries)", (lua_Integer)h->m.n);
	return 1;
}

static int read_into(const struct fsx *fx, const char *path, struct mf_handle *h, char *err,
                     size_t errlen)
{
	int fd;
	int rc = fsx_open(fx, path, O_RDONLY, 0, FSX_NOFOLLOW, &fd);
	if (rc < 0) {
		snprintf(err, errlen, "cannot read '%s': %s", path, fsx_strerror(rc));
		return rc;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		snprintf(err, errlen, "cannot read '%s': not a regular file", path);
		return -EINVAL;
	}
	char merr[768];
	rc = arch_manifest_read_fd(fd, &h->m, &h->top, merr, sizeof(merr));
	close(fd);
	if (rc < 0) {
		snprintf(err, errlen, "'%s'%s%s", path, strncmp(merr, "is ", 3) == 0 ? " " : ": ", merr);
		return rc;
	}
	for (size_t i = 0; i < h->m.n; i++) {
		if (h->m.v[i].type == ARCH_FILE) {
			h->nfiles++;
			h->file_bytes += h->m.v[i].size;
		}
	}
	return 0;
}

int archive_manifest_read(const struct fsx *fx, const char *path, struct arch_manifest *m,
                          char *err, size_t errlen)
{
	struct mf_handle h = {0};
	int rc = read_into(fx, path, &h, err, errlen);
	cJSON_Delete(h.top);
	*m = h.m;
	return rc;
}

/* archive.manifest(path) -> handle, or nil, message, code. */
int archive_l_manifest(lua_State *L)
{
	char path[FSX_PATH_MAX];
	apiutil_path(L, 1, path, false);
	struct apiutil_call call;
	apiutil_call_init(L, 0, &call, "reading");
	struct mf_handle *h = lua_newuserdatauv(L, sizeof(*h), 0);
	memset(h, 0, sizeof(*h));
	if (luaL_newmetatable(L, MANIFEST_MT)) {
		static const luaL_Reg mt[] = {
			{"__gc", mf_gc}, {"__close", mf_gc}, {"__index", mf_index},
			{"__tostring", mf_tostring}, {NULL, NULL},
		};
		luaL_setfuncs(L, mt, 0);
		lua_pushliteral(L, "jobvisor internal");
		lua_setfield(L, -2, "__metatable");
	}
	lua_setmetatable(L, -2);
	char err[1024];
	int rc = read_into(&call.fx, path, h, err, sizeof(err));
	if (rc < 0) {
		return apiutil_fail_msg(L, rc, "archive.manifest", err);
	}
	return 1;
}

const struct arch_manifest *archive_manifest_use(lua_State *L, int idx, char *err, size_t errlen,
                                                 int *rc)
{
	struct mf_handle *h = luaL_testudata(L, idx, MANIFEST_MT);
	if (h) {
		*rc = 0;
		return &h->m;
	}
	struct arch_manifest *m = archive_manifest_push(L);
	*rc = archive_manifest_arg(L, idx, m, err, errlen);
	return *rc < 0 ? NULL : m;
}
