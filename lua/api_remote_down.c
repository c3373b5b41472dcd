/* api_remote_down.c — remote.download (resumable, into an instance file),
 * remote.sha256 and remote.verify (streamed, nothing written) (see
 * api_remote.c for the conventions). */
#include "api_remote.h"

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
int l_remote_download(lua_State *L)
{
	static const char *const keys[] = {"progress", NULL};
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	char file[FSX_PATH_MAX];
	apiutil_path(L, 3, file, true);
	apiutil_opts(L, 4, "remote.download", keys);
	struct apiutil_tick t;
	apiutil_tick_init(L, 4, &t, "downloading");
	struct remote_obj o;
	int fd;
	int n = remote_open_file(L, name, rel, &o, file, O_WRONLY | O_CREAT | O_APPEND, &fd);
	if (n)
		return n;
	struct stat st;
	if (fstat(fd, &st) != 0) {
		int frc = -errno;
		close(fd);
		s3_remote_wipe(&o.r);
		return apiutil_fail(L, frc, "write", file);
	}
	struct file_sink s = {fd, 0};
	int64_t size = -1;
	int rc = s3_get_range(&o.r, o.key, st.st_size, -1, file_sink, &s, &size, &t.hooks, &o.e);
	if (rc == 0 && fsync(fd) != 0) {
		rc = -errno;
		snprintf(o.e.msg, sizeof(o.e.msg), "remote '%s': cannot write '%s': %s", name, file,
		         strerror(errno));
		o.e.cls = S3_TRANSIENT;
	}
	close(fd);
	if (rc)
		return remote_fail(L, &o.r, rc, &o.e);
	s3_remote_wipe(&o.r);
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
int l_remote_sha256(lua_State *L)
{
	static const char *const keys[] = {"progress", NULL};
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	apiutil_opts(L, 3, "remote.sha256", keys);
	struct apiutil_tick t;
	apiutil_tick_init(L, 3, &t, "hashing");
	lua_settop(L, 3); /* the box goes above the arguments */
	/* the digest context is owned by a box: any push below may raise */
	struct jv_box *box = jv_box_push(L);
	struct remote_obj o;
	int n = remote_obj_open(L, name, rel, &o);
	if (n)
		return n;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	jv_box_set(box, md, release_md);
	if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		s3_remote_wipe(&o.r);
		return luaL_error(L, "out of memory");
	}
	int64_t size = -1;
	int rc = s3_get_range(&o.r, o.key, 0, -1, hash_sink, md, &size, &t.hooks, &o.e);
	unsigned char h[EVP_MAX_MD_SIZE];
	unsigned hl = 0;
	if (rc == 0)
		EVP_DigestFinal_ex(md, h, &hl);
	jv_box_release(box);
	if (rc)
		return remote_fail(L, &o.r, rc, &o.e);
	s3_remote_wipe(&o.r);
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
int l_remote_verify(lua_State *L)
{
	static const char *const keys[] = {"progress", NULL};
	const char *name = remote_check_name(L);
	const char *rel = remote_check_rel(L, 2);
	luaL_argexpected(L, lua_istable(L, 3) || lua_isuserdata(L, 3), 3, "manifest");
	apiutil_opts(L, 4, "remote.verify", keys);
	lua_settop(L, 4); /* the box goes above the arguments */
	char err[1024];
	/* owned by a box: reading the progress option below may raise */
	int rc;
	const struct arch_manifest *m = archive_manifest_use(L, 3, err, sizeof(err), &rc);
	if (!m)
		return luaL_error(L, "remote.verify: %s", err);
	struct apiutil_tick t;
	apiutil_tick_init(L, 4, &t, "verifying");
	struct s3_remote r;
	char key[1024];
	int n = remote_open(L, name, rel, &r, key, sizeof(key));
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
	p.hooks.tick = s3_stop_tick;
	p.hooks.arg = &p.stop;
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
		return remote_fail(L, &r, p.rc, &p.e); /* the download failed: not the archive's fault */
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

