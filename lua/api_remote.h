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
const char *remote_check_rel(lua_State *L, int idx);
/* Load the remote (credentials included) and the full key of rel. Returns 0,
 * or pushes nil, message, class and returns the number of results. */
int remote_open(lua_State *L, const char *name, const char *rel, struct s3_remote *r, char *key,
                size_t keylen);
/* The remote, then a file of the instance (see api_remote.c). */
int remote_open_file(lua_State *L, const char *name, const char *rel, struct s3_remote *r,
                     char *key, size_t keylen, struct fsx *fx, const char *file, int flags,
                     int *fd);
/* After a failed call: wipe, raise on cancel, else nil, message, class. */
int remote_fail(lua_State *L, struct s3_remote *r, int rc, const struct s3_err *e);

int l_remote_mpu_create(lua_State *L);
int l_remote_mpu_part(lua_State *L);
int l_remote_mpu_upload(lua_State *L);
int l_remote_mpu_complete(lua_State *L);
int l_remote_mpu_abort(lua_State *L);
int l_remote_download(lua_State *L);
int l_remote_sha256(lua_State *L);
int l_remote_verify(lua_State *L);

#endif
