/* api_remote_stream.c — archive.create's opts.upload: the archive's bytes
 * go to a multipart upload on a remote while they are produced (s3_stream.c).
 *
 *   upload = {remote =, object =, uploadId =, partSize =, parallel =,
 *             parts = {{n =, size =, etag =, md5 =}, ...}, onPart = function}
 *
 * `parts` are the parts an earlier attempt of this upload id had
 * acknowledged: those the archive produces again with the same size and MD5
 * are not sent. onPart(n, etag, size, md5, sent) runs on the calling thread
 * for each acknowledged part (sent = false: one of `parts`, matched), in the
 * order the store answered, while the archive is still being written; an
 * error it raises stops the archive and is raised again once everything is
 * released. The call's failure: nil, message, class, where class is the
 * remote's ("transient", "permanent", "not_found": the upload id is gone) or
 * "changed" (a part differs from the acknowledged one: the data changed since
 * the earlier attempt, this upload id cannot be completed with it).
 *
 * Lua is re-entered from inside arch_create only through lua_pcall, with
 * nothing pushed that may raise outside it: a memory error cannot unwind
 * through the archive's C frames. */
#include "api_remote.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "box.h"
#include "s3_stream.h"

struct remote_upload {
	lua_State *L;
	int fn_idx;  /* onPart, on the calling function's stack */
	int err_idx; /* where an error onPart raised is kept */
	bool raised;
	struct s3_remote r;
	char key[1024];
	char id[1024];
	struct s3_stream_part *prior;
	size_t nprior;
	int64_t part_size;
	int parallel;
	struct s3_stream *s;
	int nparts, sent;
};

static void release_upload(void *p)
{
	struct remote_upload *u = p;
	s3_stream_close(u->s);
	s3_remote_wipe(&u->r);
	free(u->prior);
	free(u);
}

static const char *field_str(lua_State *L, int t, const char *k, size_t max)
{
	lua_getfield(L, t, k);
	size_t len = 0;
	const char *s = lua_tolstring(L, -1, &len);
	if (!s || len == 0 || len >= max || strlen(s) != len)
		luaL_error(L, "archive.create: opts.upload.%s must be a non-empty string", k);
	lua_pop(L, 1); /* still referenced by the table */
	return s;
}

static int64_t field_int(lua_State *L, int t, const char *k, int64_t def, int64_t min, int64_t max)
{
	lua_getfield(L, t, k);
	int ok = 0;
	int64_t v = lua_isnil(L, -1) ? def : (int64_t)lua_tointegerx(L, -1, &ok);
	if ((!lua_isnil(L, -1) && !ok) || v < min || v > max)
		luaL_error(L, "archive.create: opts.upload.%s must be an integer from %lld to %lld", k,
		           (long long)min, (long long)max);
	lua_pop(L, 1);
	return v;
}

/* opts.upload.parts into u->prior. */
static void read_prior(lua_State *L, int t, struct remote_upload *u)
{
	lua_getfield(L, t, "parts");
	int pt = lua_gettop(L);
	luaL_argcheck(L, lua_isnil(L, pt) || lua_istable(L, pt), 3,
	              "opts.upload.parts must be an array of {n =, size =, etag =, md5 =}");
	lua_Integer np = lua_isnil(L, pt) ? 0 : luaL_len(L, pt);
	luaL_argcheck(L, np >= 0 && np <= REMOTE_PARTS_MAX, 3, "opts.upload.parts: at most 10000");
	u->prior = calloc((size_t)(np ? np : 1), sizeof(*u->prior));
	if (!u->prior)
		luaL_error(L, "out of memory");
	for (lua_Integer i = 1; i <= np; i++) {
		lua_geti(L, pt, i);
		int e = lua_gettop(L);
		luaL_argcheck(L, lua_istable(L, e), 3, "opts.upload.parts: each is {n =, size =, etag =}");
		struct s3_stream_part *p = &u->prior[u->nprior++];
		p->n = (int)field_int(L, e, "n", 0, 1, REMOTE_PARTS_MAX);
		p->len = (uint64_t)field_int(L, e, "size", -1, 0, 5LL << 30);
		snprintf(p->etag, sizeof(p->etag), "%s", field_str(L, e, "etag", sizeof(p->etag)));
		lua_getfield(L, e, "md5");
		const char *md5 = lua_tostring(L, -1);
		snprintf(p->md5, sizeof(p->md5), "%s", md5 && strlen(md5) == 32 ? md5 : "");
		lua_pop(L, 2);
	}
	lua_pop(L, 1);
}

struct remote_upload *remote_upload_arg(lua_State *L, int opts_idx, int *nret)
{
	*nret = 0;
	if (lua_isnoneornil(L, opts_idx) || lua_getfield(L, opts_idx, "upload") == LUA_TNIL) {
		lua_settop(L, lua_gettop(L) - (lua_isnoneornil(L, opts_idx) ? 0 : 1));
		return NULL;
	}
	int t = lua_gettop(L);
	luaL_argcheck(L, lua_istable(L, t), opts_idx, "opts.upload must be a table");
	static const char *const keys[] = {"remote", "object", "uploadId", "partSize", "parallel",
	                                   "parts", "onPart", NULL};
	apiutil_opts(L, t, "archive.create: opts.upload", keys);
	lua_getfield(L, t, "onPart");
	luaL_argcheck(L, lua_isfunction(L, -1), opts_idx, "opts.upload.onPart must be a function");
	lua_pushnil(L); /* the error slot */
	struct jv_box *box = jv_box_push(L);
	struct remote_upload *u = calloc(1, sizeof(*u));
	if (!u)
		luaL_error(L, "out of memory");
	jv_box_set(box, u, release_upload);
	u->L = L;
	u->fn_idx = t + 1;
	u->err_idx = t + 2;
	const char *id = field_str(L, t, "uploadId", sizeof(u->id));
	memcpy(u->id, id, strlen(id) + 1);
	u->part_size = field_int(L, t, "partSize", -1, 1, 5LL << 30);
	u->parallel = (int)field_int(L, t, "parallel", 0, 0, 32);
	read_prior(L, t, u);
	lua_getfield(L, t, "remote");
	lua_getfield(L, t, "object");
	const char *name = remote_check_name_at(L, lua_gettop(L) - 1);
	const char *rel = remote_check_rel(L, lua_gettop(L));
	int n = remote_open(L, name, rel, &u->r, u->key, sizeof(u->key));
	if (n) {
		*nret = n;
		return NULL;
	}
	if (u->parallel == 0)
		u->parallel = u->r.parallel >= 1 && u->r.parallel <= 32 ? u->r.parallel : 4;
	return u;
}

static int ack_call(lua_State *L)
{
	const struct s3_stream_part *p = lua_touserdata(L, 2);
	lua_pushvalue(L, 1);
	lua_pushinteger(L, p->n);
	lua_pushstring(L, p->etag);
	lua_pushinteger(L, (lua_Integer)p->len);
	lua_pushstring(L, p->md5);
	lua_pushboolean(L, p->sent);
	lua_call(L, 5, 0);
	return 0;
}

static int on_ack(void *arg, const struct s3_stream_part *p)
{
	struct remote_upload *u = arg;
	lua_State *L = u->L;
	u->sent += p->sent;
	if (!lua_checkstack(L, 8))
		return -ENOMEM;
	lua_pushcfunction(L, ack_call);
	lua_pushvalue(L, u->fn_idx);
	lua_pushlightuserdata(L, (void *)p);
	if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
		lua_replace(L, u->err_idx);
		u->raised = true;
		return -EINTR;
	}
	return 0;
}

int remote_upload_start(lua_State *L, struct remote_upload *u, const struct jv_io_hooks *hooks)
{
	struct s3_stream_opts o = {.r = &u->r, .key = u->key, .upload_id = u->id,
	                           .part_size = (size_t)u->part_size, .parallel = u->parallel,
	                           .prior = u->prior, .nprior = u->nprior, .on_ack = on_ack,
	                           .ack_arg = u, .hooks = hooks};
	struct s3_err e = {0};
	int rc = s3_stream_open(&o, &u->s, &e);
	if (rc == 0)
		return 0;
	s3_remote_wipe(&u->r);
	jv_push_fail(L, "%s", e.msg);
	lua_pushstring(L, remote_class_name(e.cls));
	return 3;
}

int remote_upload_out(void *arg, const void *buf, size_t n)
{
	return s3_stream_write(((struct remote_upload *)arg)->s, buf, n);
}

int remote_upload_end(lua_State *L, struct remote_upload *u, int arch_rc)
{
	int rc = 0;
	if (u->s && arch_rc == 0)
		rc = s3_stream_finish(u->s, &u->nparts);
	else if (u->s)
		rc = s3_stream_write(u->s, NULL, 0); /* the stream's own failure, if it had one */
	struct s3_err e = {0};
	if (u->s)
		e = *s3_stream_error(u->s);
	s3_stream_close(u->s); /* the workers end before anything is raised */
	u->s = NULL;
	s3_remote_wipe(&u->r);
	if (u->raised) {
		lua_pushvalue(L, u->err_idx);
		return lua_error(L);
	}
	if (rc == 0)
		return 0;
	if (rc == -ECANCELED)
		return jv_raise_cancel(L);
	jv_push_fail(L, "%s", e.msg[0] ? e.msg : strerror(-rc));
	lua_pushstring(L, rc == -ESTALE ? "changed" : remote_class_name(e.cls));
	return 3;
}

int remote_upload_parts(const struct remote_upload *u, int *sent)
{
	*sent = u->sent;
	return u->nparts;
}
