/* api_job.c — the `job` table handed to run(job): identity, progress, steps,
 * cancellation, failure and marker files.
 *
 * Markers live in <instance>/.jobvisor/markers/<name>.json and are written
 * with the one durability helper, so a retry after kill -9 reads either the
 * old or the new marker, never half of one. */
#include "apiutil.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"

#define MAX_MARKER_BYTES (1 << 20)

/* Open <instance>/.jobvisor/markers without following symlinks. */
int jv_markers_dir(struct jv_run_ctx *ctx)
{
	int jfd = openat(ctx->instance_fd, ".jobvisor", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (jfd < 0)
		return -errno;
	int mfd = openat(jfd, "markers", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int rc = mfd < 0 ? -errno : mfd;
	close(jfd);
	return rc;
}

static int marker_write(struct jv_run_ctx *ctx, const char *file, const cJSON *value, bool durable)
{
	char *s = cJSON_PrintUnformatted(value);
	if (!s)
		return -ENOMEM;
	int dfd = jv_markers_dir(ctx);
	if (dfd < 0) {
		free(s);
		return dfd;
	}
	int rc = durable ? jv_durable_write_at(dfd, file, s, strlen(s), 0640)
	                 : jv_atomic_write_at(dfd, file, s, strlen(s), 0640);
	close(dfd);
	free(s);
	return rc;
}

/* The run marker's inode, kept between runs. Creating a file costs a new
 * inode, and removing it frees the inode and its block; on ext4 under other
 * I/O that create alone took 0.7-1.3 ms, most of a no-op run. So the marker a
 * completed run removes is renamed to this name in .jobvisor/ (not a marker:
 * outside markers/, no ".json"), and the next run writes its marker into it and
 * renames it into place: the same atomic appearance and disappearance of the
 * marker, with no inode made or freed. Scripts cannot write in .jobvisor/
 * outside staging (fsx_resolve.c); a spare that is not one plain file is
 * removed and the marker written the usual way. */
#define RUN_MARKER_SPARE "run-marker.spare"

/* Write s into the spare and rename it to markers/<file>: 0, or -errno with
 * the spare gone (the caller writes the marker the usual way). */
static int spare_write(int jfd, int mfd, const char *file, const char *s, size_t len)
{
	int fd = openat(jfd, RUN_MARKER_SPARE, O_WRONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	int rc = fstat(fd, &st) < 0 ? -errno : 0;
	if (rc == 0 && (!S_ISREG(st.st_mode) || st.st_nlink != 1))
		rc = -EINVAL;
	for (size_t off = 0; rc == 0 && off < len;) {
		ssize_t w = pwrite(fd, s + off, len - off, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			rc = w < 0 ? -errno : -EIO;
		else
			off += (size_t)w;
	}
	if (rc == 0 && ftruncate(fd, (off_t)len) < 0)
		rc = -errno;
	close(fd);
	if (rc == 0 && renameat(jfd, RUN_MARKER_SPARE, mfd, file) < 0)
		rc = -errno;
	if (rc < 0)
		unlinkat(jfd, RUN_MARKER_SPARE, 0);
	return rc;
}

/* The run marker at the start of a run: page cache only (see
 * jv_run_marker_start), through the spare when there is one. */
static int run_marker_write(struct jv_run_ctx *ctx, const char *file, const cJSON *value)
{
	char *s = cJSON_PrintUnformatted(value);
	if (!s)
		return -ENOMEM;
	int rc;
	int jfd = openat(ctx->instance_fd, ".jobvisor", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int mfd = jfd < 0 ? -1 : openat(jfd, "markers", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (mfd < 0)
		rc = -errno;
	else if (spare_write(jfd, mfd, file, s, strlen(s)) == 0)
		rc = 0;
	else
		rc = jv_atomic_write_at(mfd, file, s, strlen(s), 0640);
	if (mfd >= 0)
		close(mfd);
	if (jfd >= 0)
		close(jfd);
	free(s);
	return rc;
}

/* The run marker of a completed run leaves markers/ (atomically, as by unlink)
 * and becomes the spare; the markers directory is fsynced when asked. */
static int run_marker_remove(struct jv_run_ctx *ctx, const char *file, bool durable)
{
	int jfd = openat(ctx->instance_fd, ".jobvisor", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (jfd < 0)
		return -errno;
	int mfd = openat(jfd, "markers", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int rc = mfd < 0 ? -errno : 0;
	if (rc == 0 && renameat(mfd, file, jfd, RUN_MARKER_SPARE) < 0 && unlinkat(mfd, file, 0) < 0)
		rc = errno == ENOENT ? 0 : -errno;
	else if (rc == 0 && durable)
		rc = jv_fsync_dirfd(mfd);
	if (mfd >= 0)
		close(mfd);
	close(jfd);
	return rc;
}

static int marker_remove(struct jv_run_ctx *ctx, const char *file, bool durable)
{
	int dfd = jv_markers_dir(ctx);
	if (dfd < 0)
		return dfd;
	int rc = 0;
	if (unlinkat(dfd, file, 0) < 0)
		rc = errno == ENOENT ? 0 : -errno;
	else if (durable)
		rc = jv_fsync_dirfd(dfd);
	close(dfd);
	return rc;
}

/* How often a progress change is written to the progress file: a kill -9
 * loses at most this much of where the run got to. */
#define PROGRESS_WRITE_MS 500

/* Step and percent from the progress file of the run `prev` names, if it is
 * that run's (a file a later run overwrote or an older run left is not). */
static void merge_progress(struct jv_run_ctx *ctx, cJSON *prev)
{
	cJSON *p = NULL;
	if (jv_marker_read(ctx, ctx->run_marker.progress_file, &p) == 0 && cJSON_IsObject(p) &&
	    strcmp(jv_json_str(p, "runId", ""), jv_json_str(prev, "runId", "?")) == 0) {
		const cJSON *step = cJSON_GetObjectItemCaseSensitive(p, "step");
		if (cJSON_IsString(step))
			cJSON_ReplaceItemInObject(prev, "step", cJSON_CreateString(step->valuestring));
		if (jv_json_has_num(p, "percent")) {
			cJSON_DeleteItemFromObject(prev, "percent");
			cJSON_AddNumberToObject(prev, "percent", jv_json_num(p, "percent", 0));
		}
	}
	cJSON_Delete(p);
}

/* Say how far the interrupted run got: "stopped during step 'start'" was
 * wrong for a script that reported only percents. */
static void log_previous(struct jv_run_ctx *ctx, const cJSON *prev)
{
	char msg[1024], pct[32] = "";
	const char *step = jv_json_str(prev, "step", "start");
	if (jv_json_has_num(prev, "percent"))
		snprintf(pct, sizeof(pct), " at %.0f%%", jv_json_num(prev, "percent", 0));
	if (strcmp(step, "start") == 0 && !pct[0])
		snprintf(msg, sizeof(msg),
		         "an earlier run of this job (run %s, attempt %lld, started %s) did not finish; "
		         "it recorded no progress",
		         jv_json_str(prev, "runId", "?"), (long long)jv_json_int(prev, "attempt", 0),
		         jv_json_str(prev, "startedAt", "?"));
	else
		snprintf(msg, sizeof(msg),
		         "an earlier run of this job (run %s, attempt %lld, started %s) did not finish; "
		         "the last progress it recorded: '%.600s'%s",
		         jv_json_str(prev, "runId", "?"), (long long)jv_json_int(prev, "attempt", 0),
		         jv_json_str(prev, "startedAt", "?"), step, pct);
	jv_emit_log(ctx, "warn", msg);
}

/* The run marker: written at start, removed on success. A retry finds the one
 * an interrupted run left and exposes it as job.previous. Where the run got to
 * (step, percent) goes to a separate file, run.<type>.progress, which is never
 * fsynced: the run marker itself is written at most twice (at start, and
 * durably where the protocol needs it), so a power cut can never leave it
 * half-replaced by a progress update (docs/jobs.md, "The run marker"). */
void jv_run_marker_start(lua_State *L, struct jv_run_ctx *ctx, int job_idx)
{
	snprintf(ctx->run_marker.file, sizeof(ctx->run_marker.file), "run.%s.json", ctx->type);
	/* No ".json": job.mark cannot make a file of this name. */
	snprintf(ctx->run_marker.progress_file, sizeof(ctx->run_marker.progress_file), "run.%s.progress",
	         ctx->type);
	cJSON *prev = NULL;
	if (jv_marker_read(ctx, ctx->run_marker.file, &prev) == 0 && cJSON_IsObject(prev)) {
		merge_progress(ctx, prev);
		jv_json_to_lua(L, prev);
		lua_setfield(L, job_idx, "previous");
		log_previous(ctx, prev);
	}
	cJSON_Delete(prev);
	cJSON *m = jv_ctx_ident_json(ctx, "startedAt");
	cJSON_AddStringToObject(m, "step", "start");
	ctx->run_marker.json = m;
	ctx->on_progress = jv_run_marker_step;
	/* In the page cache only: enough for a kill -9 of the run (or of the
	 * agent), which leaves the page cache alone. Against a power cut it is made
	 * durable where the protocol depends on it: before the run's first job.mark
	 * (a later run adopts those markers through job.previous, common.adopts)
	 * and before a run that did not complete reports its result. A run that
	 * never marks anything and completes costs no fsync at all, however long
	 * it runs; see docs/jobs.md, "The run marker". */
	run_marker_write(ctx, ctx->run_marker.file, m);
	ctx->run_marker.synced = false;
	ctx->run_marker.progress_written = false;
	ctx->run_marker.written_ms = jv_now_mono_ms();
}

/* The latest step and percent to the progress file (page cache only). */
static void progress_write(struct jv_run_ctx *ctx)
{
	ctx->run_marker.written_ms = jv_now_mono_ms();
	ctx->run_marker.dirty = false;
	if (marker_write(ctx, ctx->run_marker.progress_file, ctx->run_marker.json, false) == 0)
		ctx->run_marker.progress_written = true;
}

/* The run marker on disk before what follows (a job.mark, the end of a run that
 * did not complete). Returns 0 or -errno. */
int jv_run_marker_sync(struct jv_run_ctx *ctx)
{
	if (!ctx->run_marker.json)
		return 0;
	/* The progress file of this run, if any, must not say less than the
	 * marker: a kill -9 now leaves both as they are. */
	if (ctx->run_marker.dirty && ctx->run_marker.progress_written)
		progress_write(ctx);
	if (ctx->run_marker.synced)
		return 0;
	int rc = marker_write(ctx, ctx->run_marker.file, ctx->run_marker.json, true);
	if (rc == 0)
		ctx->run_marker.synced = true;
	return rc;
}

/* Called for every progress line (lua/events.c), job.step, job.checkpoint and
 * job.sleep: the progress file follows the run so a retry can say where the
 * earlier run got to. No fsync (nothing a retry does depends on it) and at
 * most one write every PROGRESS_WRITE_MS; a change in between is written by
 * the next call after that. */
void jv_run_marker_step(struct jv_run_ctx *ctx, const char *step, double percent)
{
	if (!ctx->run_marker.json)
		return;
	if (step && *step) {
		cJSON_ReplaceItemInObject(ctx->run_marker.json, "step", cJSON_CreateString(step));
		ctx->run_marker.dirty = true;
	}
	if (percent >= 0) {
		cJSON_DeleteItemFromObject(ctx->run_marker.json, "percent");
		cJSON_AddNumberToObject(ctx->run_marker.json, "percent", percent);
		ctx->run_marker.dirty = true;
	}
	if (ctx->run_marker.dirty && jv_now_mono_ms() - ctx->run_marker.written_ms >= PROGRESS_WRITE_MS)
		progress_write(ctx);
}

void jv_run_marker_done(struct jv_run_ctx *ctx)
{
	/* The progress file first: one left behind (a power cut) names a run with
	 * no marker and is ignored. A marker that never reached the disk needs no
	 * fsync to leave it. */
	if (ctx->run_marker.progress_written)
		marker_remove(ctx, ctx->run_marker.progress_file, false);
	if (ctx->run_marker.file[0])
		run_marker_remove(ctx, ctx->run_marker.file, ctx->run_marker.synced);
	cJSON_Delete(ctx->run_marker.json);
	ctx->run_marker.json = NULL;
}

static const char *check_marker_name(lua_State *L, int idx, char *file, size_t filelen)
{
	const char *name = luaL_checkstring(L, idx);
	luaL_argcheck(L, jv_ident_valid(name), idx,
	              "marker name must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$");
	snprintf(file, filelen, "%s.json", name);
	return name;
}

int jv_marker_write(struct jv_run_ctx *ctx, const char *file, const cJSON *value)
{
	return marker_write(ctx, file, value, true);
}

int jv_marker_read(struct jv_run_ctx *ctx, const char *file, cJSON **out)
{
	*out = NULL;
	int dfd = jv_markers_dir(ctx);
	if (dfd < 0)
		return dfd;
	char *data = NULL;
	size_t len = 0;
	int rc = jv_read_file_at(dfd, file, MAX_MARKER_BYTES, &data, &len);
	close(dfd);
	if (rc < 0)
		return rc;
	*out = jv_json_parse(data, len);
	free(data);
	return *out ? 0 : -EBADMSG;
}

int jv_marker_remove(struct jv_run_ctx *ctx, const char *file)
{
	return marker_remove(ctx, file, true);
}

static int l_job_progress(lua_State *L)
{
	lua_Number pct = luaL_checknumber(L, 1);
	luaL_argcheck(L, !isnan(pct) && pct >= 0 && pct <= 100, 1, "percent must be within 0..100");
	const char *msg = luaL_optstring(L, 2, NULL) ? jv_lua_text(L, 2) : NULL;
	jv_emit_progress(jv_ctx(L), pct, msg);
	return 0;
}

static int l_job_step(lua_State *L)
{
	luaL_checkstring(L, 1);
	const char *msg = jv_lua_text(L, 1);
	struct jv_run_ctx *ctx = jv_ctx(L);
	jv_emit_progress(ctx, -1, msg);
	return 0;
}

static int l_job_checkpoint(lua_State *L)
{
	jv_run_marker_step(jv_ctx(L), NULL, -1);
	jv_checkpoint(L);
	return 0;
}

/* job.sleep(seconds): wait without burning CPU; raises the cancellation
 * error as soon as cancel is requested. At most one day. */
static int l_job_sleep(lua_State *L)
{
	lua_Number secs = luaL_checknumber(L, 1);
	luaL_argcheck(L, !isnan(secs) && secs >= 0 && secs <= 86400, 1, "seconds must be within 0..86400");
	struct jv_run_ctx *ctx = jv_ctx(L);
	int64_t until = jv_now_mono_ms() + (int64_t)(secs * 1000);
	for (;;) {
		if (jv_cancelled(ctx))
			return jv_raise_cancel(L);
		jv_run_marker_step(ctx, NULL, -1);
		int64_t left = until - jv_now_mono_ms();
		if (left <= 0)
			return 0;
		if (left > 50)
			left = 50;
		struct timespec ts = {0, (long)left * 1000000L};
		nanosleep(&ts, NULL); /* EINTR on SIGTERM: checked above */
	}
}

static int l_job_cancelled(lua_State *L)
{
	lua_pushboolean(L, jv_cancelled(jv_ctx(L)));
	return 1;
}

static int fail_tostring(lua_State *L)
{
	lua_getfield(L, 1, "message");
	return 1;
}

/* job.fail(message [, {retryable = bool}]): fail the run with exactly this message. */
static int l_job_fail(lua_State *L)
{
	const char *msg = luaL_checkstring(L, 1);
	static const char *const keys[] = {"retryable", NULL};
	apiutil_opts(L, 2, "job.fail", keys);
	bool retryable = apiutil_opt_bool(L, 2, "retryable", false);
	lua_newtable(L);
	lua_pushstring(L, msg);
	lua_setfield(L, -2, "message");
	lua_pushboolean(L, retryable);
	lua_setfield(L, -2, "retryable");
	lua_pushboolean(L, 1);
	lua_setfield(L, -2, "jobvisor_fail");
	lua_newtable(L);
	lua_pushcfunction(L, fail_tostring);
	lua_setfield(L, -2, "__tostring");
	lua_setmetatable(L, -2);
	return lua_error(L);
}

static int l_job_mark(lua_State *L)
{
	char file[80];
	const char *name = check_marker_name(L, 1, file, sizeof(file));
	luaL_checktype(L, 2, LUA_TTABLE);
	char err[256];
	cJSON *j = jv_lua_to_json(L, 2, err, sizeof(err));
	if (!j)
		return luaL_error(L, "job.mark('%s'): %s", name, err);
	struct jv_run_ctx *ctx = jv_ctx(L);
	int rc = jv_run_marker_sync(ctx);
	if (rc < 0) {
		cJSON_Delete(j);
		return luaL_error(L, "cannot write marker '%s': the run marker: %s", name, strerror(-rc));
	}
	rc = jv_marker_write(ctx, file, j);
	cJSON_Delete(j);
	if (rc < 0)
		return luaL_error(L, "cannot write marker '%s': %s", name, strerror(-rc));
	return 0;
}

static int l_job_marker(lua_State *L)
{
	char file[80];
	const char *name = check_marker_name(L, 1, file, sizeof(file));
	cJSON *j = NULL;
	int rc = jv_marker_read(jv_ctx(L), file, &j);
	if (rc == -ENOENT) {
		lua_pushnil(L);
		return 1;
	}
	if (rc < 0)
		return jv_push_fail(L, "cannot read marker '%s': %s", name,
		                    rc == -EBADMSG ? "not valid JSON" : jv_read_strerror(rc));
	jv_json_to_lua(L, j);
	cJSON_Delete(j);
	return 1;
}

static int l_job_unmark(lua_State *L)
{
	char file[80];
	const char *name = check_marker_name(L, 1, file, sizeof(file));
	int rc = jv_marker_remove(jv_ctx(L), file);
	if (rc < 0)
		return luaL_error(L, "cannot remove marker '%s': %s", name, strerror(-rc));
	return 0;
}

static const luaL_Reg job_funcs[] = {
	{"progress", l_job_progress},
	{"step", l_job_step},
	{"checkpoint", l_job_checkpoint},
	{"cancelled", l_job_cancelled},
	{"sleep", l_job_sleep},
	{"fail", l_job_fail},
	{"mark", l_job_mark},
	{"marker", l_job_marker},
	{"unmark", l_job_unmark},
	{NULL, NULL},
};

/* The job table: functions plus identity fields from the context. params and
 * previous are set by the child main. */
int luaopen_jv_job(lua_State *L)
{
	struct jv_run_ctx *ctx = jv_ctx(L);
	luaL_newlib(L, job_funcs);
	static const struct apiutil_arity arity[] = {
		{"progress", 2},
		{"step", 1},
		{"checkpoint", 0},
		{"cancelled", 0},
		{"sleep", 1},
		{"fail", 2},
		{"mark", 2},
		{"marker", 1},
		{"unmark", 1},
		{NULL, 0},
	};
	apiutil_limit_args(L, -1, "job", arity);
	lua_pushstring(L, ctx->job_id);
	lua_setfield(L, -2, "id");
	lua_pushstring(L, ctx->run_id);
	lua_setfield(L, -2, "run_id");
	lua_pushinteger(L, ctx->attempt);
	lua_setfield(L, -2, "attempt");
	lua_pushstring(L, ctx->type);
	lua_setfield(L, -2, "type");
	lua_pushstring(L, ctx->instance_id);
	lua_setfield(L, -2, "instance_id");
	return 1;
}
