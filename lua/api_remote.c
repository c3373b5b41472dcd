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
#include "apiutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "arch.h"
#include "box.h"
#include "s3.h"

#define GET_DEFAULT_MAX (64 << 20)
#define GET_HARD_MAX (256 << 20)
#define PARTS_MAX 10000

static const char *class_name(enum s3_class c)
{
	return c == S3_TRANSIENT ? "transient" : c == S3_NOT_FOUND ? "not_found" : "permanent";
}

/* Object names are relative keys: 1-512 printable characters, no leading
 * '/', no '..' component, no backslash. */
static const char *check_rel(lua_State *L, int idx)
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
static int open_remote(lua_State *L, const char *name, const char *rel, struct s3_remote *r,
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

/* The remote, then a file of the instance: the order the bindings need, since
 * open_remote's failure pushes (and so may raise) only while nothing is held.
 * On failure nothing is held and the returned count of results is pushed;
 * on success the caller owns r (s3_remote_wipe) and *fd. */
static int open_remote_file(lua_State *L, const char *name, const char *rel, struct s3_remote *r,
                            char *key, size_t keylen, struct fsx *fx, const char *file,
                            int flags, int *fd)
{
	int n = open_remote(L, name, rel, r, key, keylen);
	if (n)
		return n;
	*fd = -1;
	int frc = fsx_open(fx, file, flags, 0640, 0, fd);
	if (frc) {
		s3_remote_wipe(r);
		return apiutil_fail(L, frc, (flags & O_ACCMODE) == O_RDONLY ? "read" : "write", file);
	}
	return 0;
}

/* After a failed call: wipe, raise on cancel, else nil, message, class. */
static int fail(lua_State *L, struct s3_remote *r, int rc, const struct s3_err *e)
{
	s3_remote_wipe(r);
	if (rc == -ECANCELED)
		return jv_raise_cancel(L);
	jv_push_fail(L, "%s", e->msg[0] ? e->msg : strerror(-rc));
	lua_pushstring(L, class_name(e->cls));
	return 3;
}

static const char *check_name(lua_State *L)
{
	size_t len = 0;
	const char *n = luaL_checklstring(L, 1, &len);
	luaL_argcheck(L, len > 0 && len <= 32, 1, "a remote name");
	return n;
}

/* remote.info(name) -> {name, endpoint, bucket, region, prefix, part_size, parallel} */
static int l_remote_info(lua_State *L)
{
	const char *name = check_name(L);
	struct s3_remote r;
	char key[8];
	int n = open_remote(L, name, NULL, &r, key, sizeof(key));
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
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	size_t len = 0;
	const char *data = luaL_checklstring(L, 3, &len);
	luaL_argcheck(L, len <= GET_HARD_MAX, 3, "at most 256 MiB (use a multipart upload)");
	struct s3_remote r;
	char key[1024];
	int n = open_remote(L, name, rel, &r, key, sizeof(key));
	if (n)
		return n;
	struct s3_err e = {0};
	int rc = s3_put(&r, key, data, len, &e);
	if (rc)
		return fail(L, &r, rc, &e);
	s3_remote_wipe(&r);
	lua_pushboolean(L, 1);
	return 1;
}

/* remote.get(name, object[, {max_bytes}]) -> data */
static int l_remote_get(lua_State *L)
{
	static const char *const keys[] = {"max_bytes", NULL};
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	apiutil_opts(L, 3, "remote.get", keys);
	size_t max = (size_t)apiutil_opt_int(L, 3, "max_bytes", GET_DEFAULT_MAX, 1, GET_HARD_MAX);
	struct s3_remote r;
	char key[1024];
	int n = open_remote(L, name, rel, &r, key, sizeof(key));
	if (n)
		return n;
	struct s3_err e = {0};
	char *data = NULL;
	size_t len = 0;
	int rc = s3_get_mem(&r, key, max, &data, &len, &e);
	if (rc == -EFBIG) {
		s3_remote_wipe(&r);
		jv_push_fail(L, "remote '%s': '%s' is larger than %zu bytes (see max_bytes)", name, rel, max);
		lua_pushstring(L, "permanent");
		return 3;
	}
	if (rc)
		return fail(L, &r, rc, &e);
	s3_remote_wipe(&r);
	lua_pushlstring(L, data, len);
	free(data);
	return 1;
}

/* remote.head(name, object) -> {size, etag} */
static int l_remote_head(lua_State *L)
{
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	struct s3_remote r;
	char key[1024];
	int n = open_remote(L, name, rel, &r, key, sizeof(key));
	if (n)
		return n;
	struct s3_err e = {0};
	int64_t size = -1;
	char etag[80] = "";
	int rc = s3_head(&r, key, &size, etag, &e);
	if (rc)
		return fail(L, &r, rc, &e);
	s3_remote_wipe(&r);
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
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	struct s3_remote r;
	char key[1024];
	int n = open_remote(L, name, rel, &r, key, sizeof(key));
	if (n)
		return n;
	struct s3_err e = {0};
	int rc = s3_delete(&r, key, &e);
	if (rc && e.cls != S3_NOT_FOUND)
		return fail(L, &r, rc, &e);
	s3_remote_wipe(&r);
	lua_pushboolean(L, 1);
	return 1;
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
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	struct s3_remote r;
	char key[1024];
	int n = open_remote(L, name, rel, &r, key, sizeof(key));
	if (n)
		return n;
	jv_json_push_array(L);
	struct list_ctx c = {L, r.prefix[0] ? strlen(r.prefix) + 1 : 0, 0};
	struct s3_err e = {0};
	int rc = s3_list(&r, key, list_one, &c, &e);
	if (rc) {
		lua_pop(L, 1);
		return fail(L, &r, rc, &e);
	}
	s3_remote_wipe(&r);
	return 1;
}

/* remote.mpu_create(name, object) -> upload id */
static int l_remote_mpu_create(lua_State *L)
{
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	struct s3_remote r;
	char key[1024], id[1024];
	int n = open_remote(L, name, rel, &r, key, sizeof(key));
	if (n)
		return n;
	struct s3_err e = {0};
	int rc = s3_mpu_create(&r, key, id, sizeof(id), &e);
	if (rc)
		return fail(L, &r, rc, &e);
	s3_remote_wipe(&r);
	lua_pushstring(L, id);
	return 1;
}

/* remote.mpu_part(name, object, upload_id, part_number, file, {offset, length, progress})
 * -> etag. The bytes come from the instance file `file`. */
static int l_remote_mpu_part(lua_State *L)
{
	static const char *const keys[] = {"offset", "length", "progress", NULL};
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	const char *id = luaL_checkstring(L, 3);
	int partno = (int)luaL_checkinteger(L, 4);
	luaL_argcheck(L, partno >= 1 && partno <= PARTS_MAX, 4, "a part number from 1 to 10000");
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
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct s3_remote r;
	char key[1024];
	int fd;
	int n = open_remote_file(L, name, rel, &r, key, sizeof(key), &fx, file, O_RDONLY, &fd);
	if (n)
		return n;
	struct s3_err e = {0};
	char etag[80] = "";
	int rc = s3_mpu_part(&r, key, id, partno, fd, (off_t)off, (size_t)len, etag, &t.hooks, &e);
	close(fd);
	if (rc)
		return fail(L, &r, rc, &e);
	s3_remote_wipe(&r);
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

static bool pool_stop(void *arg, uint64_t done, uint64_t total)
{
	(void)done;
	(void)total;
	return atomic_load(&((struct up_pool *)arg)->stop);
}

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
		luaL_argcheck(L, a && b && c && pn >= 1 && pn <= PARTS_MAX && off >= 0 && len >= 0 &&
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
			struct timespec until;
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_nsec += 100 * 1000000L;
			if (until.tv_nsec >= 1000000000L) {
				until.tv_sec++;
				until.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&p->cv, &p->mu, &until);
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
static int l_remote_mpu_upload(lua_State *L)
{
	static const char *const keys[] = {"parallel", NULL};
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	const char *id = luaL_checkstring(L, 3);
	char file[FSX_PATH_MAX];
	apiutil_path(L, 4, file, false);
	luaL_checktype(L, 5, LUA_TTABLE);
	luaL_checktype(L, 6, LUA_TFUNCTION);
	apiutil_opts(L, 7, "remote.mpu_upload", keys);
	lua_settop(L, 7); /* opts stays at 7 (nil when absent) under what is pushed below */
	lua_Integer np = luaL_len(L, 5);
	luaL_argcheck(L, np >= 0 && np <= PARTS_MAX, 5, "at most 10000 parts");
	/* userdata-owned arrays: a raise below cannot leak them */
	struct up_part *parts = lua_newuserdatauv(L, sizeof(*parts) * (size_t)(np ? np : 1), 0);
	size_t *done = lua_newuserdatauv(L, sizeof(*done) * (size_t)(np ? np : 1), 0);
	memset(parts, 0, sizeof(*parts) * (size_t)(np ? np : 1));
	read_parts(L, np, parts);
	/* read (and so refused) before anything is held: 0 = the remote's own */
	int parallel = (int)apiutil_opt_int(L, 7, "parallel", 0, 1, 32);
	struct apiutil_tick t;
	apiutil_tick_init(L, 0, &t, "uploading");
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct s3_remote r;
	char key[1024];
	int fd;
	int n = open_remote_file(L, name, rel, &r, key, sizeof(key), &fx, file, O_RDONLY, &fd);
	if (n)
		return n;
	if (parallel == 0)
		parallel = r.parallel > 0 ? r.parallel : 1;
	if (parallel > np)
		parallel = np > 0 ? (int)np : 1;
	/* the rate cap is for the remote as a whole: shared by the connections */
	struct s3_remote each = r;
	if (each.bandwidth_limit > 0)
		each.bandwidth_limit = each.bandwidth_limit / parallel > 0 ? each.bandwidth_limit / parallel : 1;
	struct up_pool p = {.parts = parts, .np = (size_t)np, .done = done, .r = &each, .key = key,
	                    .id = id, .fd = fd};
	pthread_mutex_init(&p.mu, NULL);
	pthread_cond_init(&p.cv, NULL);
	atomic_init(&p.stop, false);
	p.hooks.tick = pool_stop;
	p.hooks.arg = &p;
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
		s3_remote_wipe(&r);
		return lua_error(L);
	}
	if (end == UP_CANCELLED) {
		s3_remote_wipe(&r);
		return jv_raise_cancel(L);
	}
	if (nth == 0 && np > 0) {
		s3_remote_wipe(&r);
		return luaL_error(L, "remote.mpu_upload: cannot start a thread");
	}
	if (end == UP_FAILED)
		return fail(L, &r, parts[failed].rc, &parts[failed].e);
	s3_remote_wipe(&r);
	lua_pushboolean(L, 1);
	return 1;
}

/* remote.mpu_complete(name, object, upload_id, {{n=, etag=}, ...}) -> true */
static int l_remote_mpu_complete(lua_State *L)
{
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	const char *id = luaL_checkstring(L, 3);
	luaL_checktype(L, 4, LUA_TTABLE);
	lua_Integer np = luaL_len(L, 4);
	luaL_argcheck(L, np >= 1 && np <= PARTS_MAX, 4, "1 to 10000 parts");
	struct s3_part *parts = lua_newuserdatauv(L, sizeof(*parts) * (size_t)np, 0);
	for (lua_Integer i = 1; i <= np; i++) {
		lua_geti(L, 4, i);
		luaL_argcheck(L, lua_istable(L, -1), 4, "each part is {n = number, etag = string}");
		lua_getfield(L, -1, "n");
		lua_getfield(L, -2, "etag");
		int isnum = 0;
		lua_Integer pn = lua_tointegerx(L, -2, &isnum);
		const char *etag = lua_tostring(L, -1);
		luaL_argcheck(L, isnum && pn >= 1 && pn <= PARTS_MAX && etag && strlen(etag) < 80 &&
		                  (i == 1 || pn > parts[i - 2].n), 4,
		              "each part is {n = number, etag = string}, in increasing order");
		parts[i - 1].n = (int)pn;
		snprintf(parts[i - 1].etag, sizeof(parts[i - 1].etag), "%s", etag);
		lua_pop(L, 3);
	}
	struct s3_remote r;
	char key[1024];
	int n = open_remote(L, name, rel, &r, key, sizeof(key));
	if (n)
		return n;
	struct s3_err e = {0};
	int rc = s3_mpu_complete(&r, key, id, parts, (size_t)np, &e);
	if (rc)
		return fail(L, &r, rc, &e);
	s3_remote_wipe(&r);
	lua_pushboolean(L, 1);
	return 1;
}

/* remote.mpu_abort(name, object, upload_id) -> true, or nil, message, class
 * ("not_found" when the upload no longer exists). */
static int l_remote_mpu_abort(lua_State *L)
{
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	const char *id = luaL_checkstring(L, 3);
	struct s3_remote r;
	char key[1024];
	int n = open_remote(L, name, rel, &r, key, sizeof(key));
	if (n)
		return n;
	struct s3_err e = {0};
	int rc = s3_mpu_abort(&r, key, id, &e);
	if (rc)
		return fail(L, &r, rc, &e);
	s3_remote_wipe(&r);
	lua_pushboolean(L, 1);
	return 1;
}

struct file_sink {
	int fd;
	int64_t written;
};

static int file_sink(void *arg, const void *buf, size_t n)
{
	struct file_sink *s = arg;
	const char *p = buf;
	while (n) {
		ssize_t k = write(s->fd, p, n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		p += k;
		n -= (size_t)k;
		s->written += k;
	}
	return 0;
}

/* remote.download(name, object, file[, {progress}]) -> size
 * Appends the object's bytes to `file` from the file's current size on (a
 * resumed download continues where the last one stopped), then fsyncs it. */
static int l_remote_download(lua_State *L)
{
	static const char *const keys[] = {"progress", NULL};
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	char file[FSX_PATH_MAX];
	apiutil_path(L, 3, file, true);
	apiutil_opts(L, 4, "remote.download", keys);
	struct apiutil_tick t;
	apiutil_tick_init(L, 4, &t, "downloading");
	struct fsx fx;
	apiutil_fsx(L, &fx);
	struct s3_remote r;
	char key[1024];
	int fd;
	int n = open_remote_file(L, name, rel, &r, key, sizeof(key), &fx, file,
	                         O_WRONLY | O_CREAT | O_APPEND, &fd);
	if (n)
		return n;
	struct stat st;
	if (fstat(fd, &st) != 0) {
		int frc = -errno;
		close(fd);
		s3_remote_wipe(&r);
		return apiutil_fail(L, frc, "write", file);
	}
	struct s3_err e = {0};
	struct file_sink s = {fd, 0};
	int64_t size = -1;
	int rc = s3_get_range(&r, key, st.st_size, -1, file_sink, &s, &size, &t.hooks, &e);
	if (rc == 0 && fsync(fd) != 0) {
		rc = -errno;
		snprintf(e.msg, sizeof(e.msg), "remote '%s': cannot write '%s': %s", name, file,
		         strerror(errno));
		e.cls = S3_TRANSIENT;
	}
	close(fd);
	if (rc)
		return fail(L, &r, rc, &e);
	s3_remote_wipe(&r);
	apiutil_tick_done(&t);
	lua_pushinteger(L, st.st_size + s.written);
	return 1;
}

static void release_md(void *p)
{
	EVP_MD_CTX_free(p);
}

static int hash_sink(void *arg, const void *buf, size_t n)
{
	return EVP_DigestUpdate(arg, buf, n) == 1 ? 0 : -EIO;
}

/* remote.sha256(name, object[, {progress}]) -> hex digest, size
 * Streams the object through SHA-256; nothing is written to disk. */
static int l_remote_sha256(lua_State *L)
{
	static const char *const keys[] = {"progress", NULL};
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	apiutil_opts(L, 3, "remote.sha256", keys);
	struct apiutil_tick t;
	apiutil_tick_init(L, 3, &t, "hashing");
	lua_settop(L, 3); /* the box goes above the arguments */
	/* the digest context is owned by a box: any push below may raise */
	struct jv_box *box = jv_box_push(L);
	struct s3_remote r;
	char key[1024];
	int n = open_remote(L, name, rel, &r, key, sizeof(key));
	if (n)
		return n;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	jv_box_set(box, md, release_md);
	if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		s3_remote_wipe(&r);
		return luaL_error(L, "out of memory");
	}
	struct s3_err e = {0};
	int64_t size = -1;
	int rc = s3_get_range(&r, key, 0, -1, hash_sink, md, &size, &t.hooks, &e);
	unsigned char h[EVP_MAX_MD_SIZE];
	unsigned hl = 0;
	if (rc == 0)
		EVP_DigestFinal_ex(md, h, &hl);
	jv_box_release(box);
	if (rc)
		return fail(L, &r, rc, &e);
	s3_remote_wipe(&r);
	apiutil_tick_done(&t);
	char hex[JV_SHA256_HEX];
	jv_hex(h, hl, hex);
	lua_pushstring(L, hex);
	lua_pushinteger(L, size);
	return 2;
}

/* remote.verify: a thread downloads the object into one end of a socket
 * pair while this thread checks the archive read from the other end; nothing
 * touches the disk. */
struct pump {
	const struct s3_remote *r;
	const char *key;
	int fd;
	int rc;
	struct s3_err e;
	atomic_bool stop;
	struct jv_io_hooks hooks;
};

static int sock_sink(void *arg, const void *buf, size_t n)
{
	struct pump *p = arg;
	const char *b = buf;
	while (n) {
		ssize_t k = send(p->fd, b, n, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno; /* EPIPE: the reader stopped (a verdict or a cancel) */
		b += k;
		n -= (size_t)k;
	}
	return 0;
}

static bool pump_stop(void *arg, uint64_t done, uint64_t total)
{
	(void)done;
	(void)total;
	return atomic_load(&((struct pump *)arg)->stop);
}

static void *pump_main(void *arg)
{
	struct pump *p = arg;
	p->rc = s3_get_range(p->r, p->key, 0, -1, sock_sink, p, NULL, &p->hooks, &p->e);
	shutdown(p->fd, SHUT_WR);
	return NULL;
}

/* remote.verify(name, object, manifest[, {progress}]) -> true
 * The object checked against the manifest as it streams: the archive's
 * SHA-256 and size, every entry's type, size and SHA-256. A corrupt object
 * returns nil, message, "corrupt"; a download failure nil, message, class. */
static int l_remote_verify(lua_State *L)
{
	static const char *const keys[] = {"progress", NULL};
	const char *name = check_name(L);
	const char *rel = check_rel(L, 2);
	luaL_checktype(L, 3, LUA_TTABLE);
	apiutil_opts(L, 4, "remote.verify", keys);
	lua_settop(L, 4); /* the box goes above the arguments */
	char err[1024];
	/* owned by a box: reading the progress option below may raise */
	struct arch_manifest *m = archive_manifest_push(L);
	int rc = archive_manifest_arg(L, 3, m, err, sizeof(err));
	if (rc < 0)
		return luaL_error(L, "remote.verify: %s", err);
	struct apiutil_tick t;
	apiutil_tick_init(L, 4, &t, "verifying");
	struct s3_remote r;
	char key[1024];
	int n = open_remote(L, name, rel, &r, key, sizeof(key));
	if (n)
		return n;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
		int e = -errno;
		s3_remote_wipe(&r);
		return apiutil_fail(L, e, "verify", rel);
	}
	struct pump p = {.r = &r, .key = key, .fd = sv[1]};
	atomic_init(&p.stop, false);
	p.hooks.tick = pump_stop;
	p.hooks.arg = &p;
	pthread_t th;
	if (pthread_create(&th, NULL, pump_main, &p) != 0) {
		close(sv[0]);
		close(sv[1]);
		s3_remote_wipe(&r);
		return luaL_error(L, "remote.verify: cannot start a thread");
	}
	char label[1100];
	snprintf(label, sizeof(label), "%s", rel);
	rc = arch_verify_fd(sv[0], label, m->has_bytes ? m->bytes : 0, m, &t.hooks, err, sizeof(err));
	atomic_store(&p.stop, true); /* sv[0] is closed: the pump ends with EPIPE if still sending */
	pthread_join(th, NULL);
	close(sv[1]);
	if (p.rc != 0 && p.rc != -EPIPE && p.rc != -ECANCELED)
		return fail(L, &r, p.rc, &p.e); /* the download failed: not the archive's fault */
	s3_remote_wipe(&r);
	if (rc == -ECANCELED)
		return jv_raise_cancel(L);
	if (rc < 0) {
		jv_push_fail(L, "%s", err);
		lua_pushstring(L, "corrupt");
		return 3;
	}
	apiutil_tick_done(&t);
	lua_pushboolean(L, 1);
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
