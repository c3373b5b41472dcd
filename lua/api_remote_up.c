/* api_remote_up.c — remote.mpu_*: multipart uploads of an instance file,
 * part by part or by a pool of `parallel` worker threads (see api_remote.c
 * for the conventions). */
#include "api_remote.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>
#include <stdatomic.h>

#include "s3_stream.h"

/* remote.mpu_create(name, object) -> upload id */
int l_remote_mpu_create(lua_State *L)
{
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	struct remote_obj o;
	char id[1024];
	int n = remote_obj_open(L, name, rel, &o);
	if (n)
		return n;
	int rc = s3_mpu_create(&o.r, o.key, id, sizeof(id), &o.e);
	if (rc)
		return remote_fail(L, &o.r, rc, &o.e);
	s3_remote_wipe(&o.r);
	lua_pushstring(L, id);
	return 1;
}

/* remote.mpu_part(name, object, upload_id, part_number, file, {offset, length, progress})
 * -> etag. The bytes come from the instance file `file`. */
int l_remote_mpu_part(lua_State *L)
{
	static const char *const keys[] = {"offset", "length", "progress", NULL};
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	const char *id = luaL_checkstring(L, 3);
	int partno = (int)luaL_checkinteger(L, 4);
	luaL_argcheck(L, partno >= 1 && partno <= REMOTE_PARTS_MAX, 4, "a part number from 1 to 10000");
	char file[FSX_PATH_MAX];
	apiutil_path(L, 5, file, false);
	luaL_checktype(L, 6, LUA_TTABLE);
	apiutil_opts(L, 6, "remote.mpu_part", keys);
	int64_t off = apiutil_opt_int(L, 6, "offset", -1, 0, INT64_MAX);
	int64_t len = apiutil_opt_int(L, 6, "length", -1, 0, 5LL << 30);
	if (off < 0 || len < 0)
		return luaL_error(L, "remote.mpu_part: opts.offset and opts.length are required");
	struct apiutil_tick t;
	apiutil_tick_init(L, 6, &t, "uploading");
	struct remote_obj o;
	int fd;
	int n = remote_open_file(L, name, rel, &o, file, O_RDONLY, &fd);
	if (n)
		return n;
	char etag[80] = "";
	int rc = s3_mpu_part(&o.r, o.key, id, partno, fd, (off_t)off, (size_t)len, etag, &t.hooks, &o.e);
	close(fd);
	if (rc)
		return remote_fail(L, &o.r, rc, &o.e);
	s3_remote_wipe(&o.r);
	apiutil_tick_done(&t);
	lua_pushstring(L, etag);
	return 1;
}

/* remote.mpu_upload: parts uploaded by `parallel` worker threads; this
 * thread hands each acknowledgement to the script's on_part callback (which
 * records it durably) as it arrives, and is the only one touching Lua. */
struct up_part {
	int n;
	off_t off;
	size_t len;
	char etag[80];
	int rc;
	struct s3_err e;
};

struct up_pool {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct up_part *parts;
	size_t np, next, ndone;
	size_t *done; /* indexes in order of completion */
	atomic_bool stop;
	const struct s3_remote *r;
	const char *key, *id;
	int fd;
	struct jv_io_hooks hooks; /* workers: stop flag only */
};

static void *up_worker(void *arg)
{
	struct up_pool *p = arg;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		if (atomic_load(&p->stop) || p->next == p->np) {
			pthread_mutex_unlock(&p->mu);
			return NULL;
		}
		struct up_part *u = &p->parts[p->next++];
		pthread_mutex_unlock(&p->mu);
		u->rc = s3_mpu_part(p->r, p->key, p->id, u->n, p->fd, u->off, u->len, u->etag, &p->hooks,
		                    &u->e);
		pthread_mutex_lock(&p->mu);
		p->done[p->ndone++] = (size_t)(u - p->parts);
		pthread_cond_signal(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
}

/* The parts array at index 5 into parts[0..np). */
static void read_parts(lua_State *L, lua_Integer np, struct up_part *parts)
{
	for (lua_Integer i = 1; i <= np; i++) {
		lua_geti(L, 5, i);
		luaL_argcheck(L, lua_istable(L, -1), 5, "each part is {n =, offset =, length =}");
		lua_getfield(L, -1, "n");
		lua_getfield(L, -2, "offset");
		lua_getfield(L, -3, "length");
		int a = 0, b = 0, c = 0;
		lua_Integer pn = lua_tointegerx(L, -3, &a), off = lua_tointegerx(L, -2, &b),
		            len = lua_tointegerx(L, -1, &c);
		luaL_argcheck(L, a && b && c && pn >= 1 && pn <= REMOTE_PARTS_MAX && off >= 0 && len >= 0 &&
		                  len <= (5LL << 30), 5, "each part is {n =, offset =, length =}");
		parts[i - 1].n = (int)pn;
		parts[i - 1].off = (off_t)off;
		parts[i - 1].len = (size_t)len;
		lua_pop(L, 4);
	}
}

enum up_end { UP_DONE, UP_FAILED, UP_RAISED, UP_CANCELLED };

/* This thread's side of the upload: each acknowledgement handed to on_part
 * (at index 6) as it arrives. UP_FAILED sets *failed to the part's index;
 * UP_RAISED leaves on_part's error on the stack. */
static enum up_end collect(lua_State *L, struct up_pool *p, struct jv_io_hooks *hooks, int *failed)
{
	size_t seen = 0;
	while (seen < p->np) {
		pthread_mutex_lock(&p->mu);
		while (p->ndone == seen) {
			s3_cond_wait_ms(&p->cv, &p->mu, 100);
			if (p->ndone == seen) {
				pthread_mutex_unlock(&p->mu);
				if (jv_io_tick(hooks, 0, 0))
					return UP_CANCELLED;
				pthread_mutex_lock(&p->mu);
			}
		}
		size_t idx = p->done[seen++];
		pthread_mutex_unlock(&p->mu);
		struct up_part *u = &p->parts[idx];
		if (u->rc) {
			*failed = (int)idx;
			return UP_FAILED;
		}
		lua_pushvalue(L, 6);
		lua_pushinteger(L, u->n);
		lua_pushstring(L, u->etag);
		lua_pushinteger(L, (lua_Integer)u->len);
		if (lua_pcall(L, 3, 0, 0) != LUA_OK)
			return UP_RAISED;
	}
	return UP_DONE;
}

/* remote.mpu_upload(name, object, upload_id, file, parts, on_part[, {parallel}]) -> true
 * parts: array of {n =, offset =, length =} of the instance file `file`;
 * on_part(n, etag, length) runs for each acknowledged part, in the order the
 * store answered. On a failure the parts in flight are stopped and the call
 * returns nil, message, class; an error raised by on_part stops them too and
 * is raised again once every worker has ended. */
int l_remote_mpu_upload(lua_State *L)
{
	static const char *const keys[] = {"parallel", NULL};
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	const char *id = luaL_checkstring(L, 3);
	char file[FSX_PATH_MAX];
	apiutil_path(L, 4, file, false);
	luaL_checktype(L, 5, LUA_TTABLE);
	luaL_checktype(L, 6, LUA_TFUNCTION);
	apiutil_opts(L, 7, "remote.mpu_upload", keys);
	lua_settop(L, 7); /* opts stays at 7 (nil when absent) under what is pushed below */
	lua_Integer np = luaL_len(L, 5);
	luaL_argcheck(L, np >= 0 && np <= REMOTE_PARTS_MAX, 5, "at most 10000 parts");
	/* userdata-owned arrays: a raise below cannot leak them */
	struct up_part *parts = lua_newuserdatauv(L, sizeof(*parts) * (size_t)(np ? np : 1), 0);
	size_t *done = lua_newuserdatauv(L, sizeof(*done) * (size_t)(np ? np : 1), 0);
	memset(parts, 0, sizeof(*parts) * (size_t)(np ? np : 1));
	read_parts(L, np, parts);
	/* read (and so refused) before anything is held: 0 = the remote's own */
	int parallel = (int)apiutil_opt_int(L, 7, "parallel", 0, 1, 32);
	struct apiutil_tick t;
	apiutil_tick_init(L, 0, &t, "uploading");
	struct remote_obj o;
	int fd;
	int n = remote_open_file(L, name, rel, &o, file, O_RDONLY, &fd);
	if (n)
		return n;
	if (parallel == 0)
		parallel = o.r.parallel > 0 ? o.r.parallel : 1;
	if (parallel > np)
		parallel = np > 0 ? (int)np : 1;
	/* the rate cap is for the remote as a whole: shared by the connections */
	struct s3_remote each = o.r;
	if (each.bandwidth_limit > 0)
		each.bandwidth_limit = each.bandwidth_limit / parallel > 0 ? each.bandwidth_limit / parallel : 1;
	struct up_pool p = {.parts = parts, .np = (size_t)np, .done = done, .r = &each, .key = o.key,
	                    .id = id, .fd = fd};
	pthread_mutex_init(&p.mu, NULL);
	pthread_cond_init(&p.cv, NULL);
	atomic_init(&p.stop, false);
	p.hooks.tick = s3_stop_tick;
	p.hooks.arg = &p.stop;
	pthread_t th[32];
	int nth = 0;
	while (nth < parallel && pthread_create(&th[nth], NULL, up_worker, &p) == 0)
		nth++;
	int failed = -1; /* index of the first failed part */
	enum up_end end = nth > 0 ? collect(L, &p, &t.hooks, &failed) : UP_DONE;
	atomic_store(&p.stop, true);
	for (int i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	pthread_cond_destroy(&p.cv);
	pthread_mutex_destroy(&p.mu);
	s3_remote_wipe(&each);
	close(fd);
	if (end == UP_RAISED) {
		s3_remote_wipe(&o.r);
		return lua_error(L);
	}
	if (end == UP_CANCELLED) {
		s3_remote_wipe(&o.r);
		return jv_raise_cancel(L);
	}
	if (nth == 0 && np > 0) {
		s3_remote_wipe(&o.r);
		return luaL_error(L, "remote.mpu_upload: cannot start a thread");
	}
	if (end == UP_FAILED)
		return remote_fail(L, &o.r, parts[failed].rc, &parts[failed].e);
	s3_remote_wipe(&o.r);
	lua_pushboolean(L, 1);
	return 1;
}

/* remote.mpu_complete(name, object, upload_id, {{n=, etag=}, ...}) -> true */
int l_remote_mpu_complete(lua_State *L)
{
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	const char *id = luaL_checkstring(L, 3);
	luaL_checktype(L, 4, LUA_TTABLE);
	lua_Integer np = luaL_len(L, 4);
	luaL_argcheck(L, np >= 1 && np <= REMOTE_PARTS_MAX, 4, "1 to 10000 parts");
	struct s3_part *parts = lua_newuserdatauv(L, sizeof(*parts) * (size_t)np, 0);
	for (lua_Integer i = 1; i <= np; i++) {
		lua_geti(L, 4, i);
		luaL_argcheck(L, lua_istable(L, -1), 4, "each part is {n = number, etag = string}");
		lua_getfield(L, -1, "n");
		lua_getfield(L, -2, "etag");
		int isnum = 0;
		lua_Integer pn = lua_tointegerx(L, -2, &isnum);
		const char *etag = lua_tostring(L, -1);
		luaL_argcheck(L, isnum && pn >= 1 && pn <= REMOTE_PARTS_MAX && etag && strlen(etag) < 80 &&
		                  (i == 1 || pn > parts[i - 2].n), 4,
		              "each part is {n = number, etag = string}, in increasing order");
		parts[i - 1].n = (int)pn;
		snprintf(parts[i - 1].etag, sizeof(parts[i - 1].etag), "%s", etag);
		lua_pop(L, 3);
	}
	struct remote_obj o;
	int n = remote_obj_open(L, name, rel, &o);
	if (n)
		return n;
	int rc = s3_mpu_complete(&o.r, o.key, id, parts, (size_t)np, &o.e);
	return remote_done(L, &o.r, rc, &o.e);
}

/* remote.mpu_abort(name, object, upload_id) -> true, or nil, message, class
 * ("not_found" when the upload no longer exists). */
int l_remote_mpu_abort(lua_State *L)
{
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	const char *id = luaL_checkstring(L, 3);
	struct remote_obj o;
	int n = remote_obj_open(L, name, rel, &o);
	if (n)
		return n;
	int rc = s3_mpu_abort(&o.r, o.key, id, &o.e);
	return remote_done(L, &o.r, rc, &o.e);
}

