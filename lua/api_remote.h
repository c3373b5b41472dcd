/* api_remote.h — what the parts of the `remote` module share: argument
 * checks, loading a remote (credentials included) and the failure triple.
 * api_remote.c: the module, single objects and listing; api_remote_up.c:
 * multipart uploads; api_remote_down.c: download, sha256, verify;
 * api_remote_stream.c: archive.create's streamed upload (opts.upload). */
#ifndef JOBVISOR_API_REMOTE_H
#define JOBVISOR_API_REMOTE_H

#include "apiutil.h"
#include "s3.h"

#define REMOTE_PARTS_MAX 10000

const char *remote_class_name(enum s3_class c);
/* A remote's name at index 1 / an object name at idx (raise when malformed). */
const char *remote_check_name(lua_State *L);
const char *remote_check_name_at(lua_State *L, int idx);
const char *remote_check_rel(lua_State *L, int idx);
/* Load the remote (credentials included) and the full key of rel. Returns 0,
 * or pushes nil, message, class and returns the number of results. */
int remote_open(lua_State *L, const char *name, const char *rel, struct s3_remote *r, char *key,
                size_t keylen);
/* What a call on one object holds: the remote, the object's key, the error. */
struct remote_obj {
	struct s3_remote r;
	char key[1024];
	struct s3_err e;
};
/* remote_open into o (o->e cleared). */
int remote_obj_open(lua_State *L, const char *name, const char *rel, struct remote_obj *o);
/* remote_obj_open, then a file of the instance (see api_remote.c). */
int remote_open_file(lua_State *L, const char *name, const char *rel, struct remote_obj *o,
                     const char *file, int flags, int *fd);
/* After a failed call: wipe, raise on cancel, else nil, message, class. */
int remote_fail(lua_State *L, struct s3_remote *r, int rc, const struct s3_err *e);
/* After a call: remote_fail when rc, else wipe and push true (1 result). */
int remote_done(lua_State *L, struct s3_remote *r, int rc, const struct s3_err *e);

int l_remote_mpu_create(lua_State *L);
int l_remote_mpu_part(lua_State *L);
int l_remote_mpu_upload(lua_State *L);
int l_remote_mpu_complete(lua_State *L);
int l_remote_mpu_abort(lua_State *L);
int l_remote_download(lua_State *L);
int l_remote_sha256(lua_State *L);
int l_remote_verify(lua_State *L);

/* archive.create's opts.upload (api_remote_stream.c). remote_upload_arg
 * reads and checks opts.upload of the options at opts_idx: NULL when there
 * is none (nothing pushed), else an upload owned by a box it pushes (with two
 * slots under it); a remote that cannot be loaded: NULL with *nret results
 * (nil, message, class) pushed. _start starts the workers (0, or the count of
 * results pushed); _out is arch_create's opts->out; _end, after arch_create
 * returned arch_rc, sends the last part and waits for every acknowledgement:
 * 0 (then arch_rc is the caller's to report), the count of results pushed
 * (nil, message, class), or raises (cancel, an error onPart raised). */
struct remote_upload;
struct remote_upload *remote_upload_arg(lua_State *L, int opts_idx, int *nret);
int remote_upload_start(lua_State *L, struct remote_upload *u, const struct jv_io_hooks *hooks);
int remote_upload_out(void *arg, const void *buf, size_t n);
int remote_upload_end(lua_State *L, struct remote_upload *u, int arch_rc);
/* The number of parts of the finished stream; *sent: how many were sent. */
int remote_upload_parts(const struct remote_upload *u, int *sent);

#endif
