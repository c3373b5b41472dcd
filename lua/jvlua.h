/* jvlua.h — internal interface of lua/: the per-run context and the helpers
 * every Lua binding uses (cancellation, progress, events, errors).
 *
 * Only files in lua/ include this (and lua.h). The context lives in the Lua
 * registry under JV_CTX_KEY and is owned by the job-run child's main
 * (lua/child_main.c); bindings borrow it through jv_ctx(L). */
#ifndef JOBVISOR_JVLUA_H
#define JOBVISOR_JVLUA_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>
#include <lauxlib.h>
#include <cjson/cJSON.h>

struct jv_run_ctx {
	/* Identity of this run (borrowed from the spec JSON, valid for the run). */
	const char *job_id;
	const char *run_id;
	const char *instance_id;
	const char *type;
	int attempt;

	/* Absolute paths, no trailing slash. */
	const char *data_dir;     /* <data-dir> */
	const char *instance_dir; /* <data-dir>/instances/<instanceId> */

	/* Directory descriptors (O_DIRECTORY|O_CLOEXEC), owned by the child main. */
	int data_fd;     /* the data dir: for cache/ */
	int instance_fd; /* the instance root: every fs path resolves beneath it */

	int event_fd; /* JSON lines to the parent */

	/* Set by the SIGTERM/SIGINT handler; read at safe points. NULL: never. */
	volatile sig_atomic_t *cancel_flag;

	/* Process records proc.run has opened (lua/api_proc.c names them <run>.<n>). */
	unsigned proc_records;

	/* Agent settings passed down in the spec (borrowed, may be NULL). */
	const cJSON *settings; /* e.g. allowed_executables, user, console log sizes */
	const cJSON *spec;     /* the whole spec */

	/* Called by jv_emit_progress with every step/percent (NULL: nobody);
	 * the run marker registers itself here (jv_run_marker_start). */
	void (*on_progress)(struct jv_run_ctx *ctx, const char *step, double percent);

	/* Progress not yet written to the parent (lua/events.c coalesces it). */
	struct {
		bool pending;
		double percent;
		char message[1024];
		int64_t last_ms;
	} progress_out;

	/* The run marker (lua/api_job.c): <type>'s run.<type>.json, written at
	 * start (page cache only), made durable before the run's first job.mark
	 * and before a run that did not complete reports, removed on success; the
	 * latest step and percent go to run.<type>.progress (never fsynced). */
	struct {
		char file[128];
		char progress_file[128];
		cJSON *json; /* owned; NULL until jv_run_marker_start */
		int64_t written_ms; /* the progress file was last written */
		bool dirty;  /* step or percent changed since written_ms */
		bool synced; /* on disk (fsynced), not only in the page cache */
		bool progress_written; /* this run wrote run.<type>.progress */
	} run_marker;
};

/* The context of the running job (never NULL inside a job run). */
struct jv_run_ctx *jv_ctx(lua_State *L);
void jv_ctx_install(lua_State *L, struct jv_run_ctx *ctx);
/* A new object naming the run: jobId, runId, attempt, type, and the key
 * stamp (e.g. "startedAt") with the time now. Returned-owned: cJSON_Delete;
 * NULL when out of memory. */
cJSON *jv_ctx_ident_json(const struct jv_run_ctx *ctx, const char *stamp);

/* Cancellation. jv_cancelled() is cheap; jv_checkpoint() raises the
 * cancellation error (see jv_is_cancel_error) when cancel was requested. */
bool jv_cancelled(const struct jv_run_ctx *ctx);
void jv_checkpoint(lua_State *L);
int jv_raise_cancel(lua_State *L); /* never returns */
bool jv_is_cancel_error(lua_State *L, int idx);
/* A count hook that raises the cancellation error in pure-Lua code (a busy
 * loop calling no API). Prepare once (allocates); arming is async-signal-safe
 * and is what the cancel signal handler does. */
void jv_cancel_hook_prepare(lua_State *L);
void jv_cancel_hook_arm(lua_State *L);

/* Events to the parent. percent < 0 means "unknown" (step message only).
 * Progress is coalesced in the child (at most ~50 per second); the parent
 * applies the real throttle. message may be NULL. */
void jv_emit_progress(struct jv_run_ctx *ctx, double percent, const char *message);
void jv_emit_log(struct jv_run_ctx *ctx, const char *level, const char *message);
/* The string at idx as a C string for events, logs and results: each NUL
 * (which would end it early) becomes U+FFFD. Pushes a new string when it has
 * to (the pointer is valid while that stays on the stack); NULL if not a string. */
const char *jv_lua_text(lua_State *L, int idx);
/* Any other event object (consumed). */
void jv_emit_event(struct jv_run_ctx *ctx, cJSON *event);
void jv_emit_flush(struct jv_run_ctx *ctx);

/* Progress mapping for long API calls: opts.progress = {from, to} (percent of
 * the job) maps the call's own fraction done into the job's percent. */
struct jv_progress {
	double from, to;  /* < 0 when the call should not report percent */
	int64_t last_ms;  /* monotonic ms of the last report */
	const char *what; /* message prefix, e.g. "archiving" */
};
void jv_progress_init(lua_State *L, int opts_idx, struct jv_progress *p, const char *what);
/* Report fraction (0..1) with an optional detail; rate-limited to ~4/s. */
void jv_progress_report(struct jv_run_ctx *ctx, struct jv_progress *p, double fraction,
                        const char *detail);

/* Expected failure: push nil, "message" and return 2 (luaL_fileresult style). */
int jv_push_fail(lua_State *L, const char *fmt, ...);

/* Lua <-> cJSON (lua/api_json.c). jv_lua_to_json returns NULL and pushes nothing
 * on failure, with a message in err. */
cJSON *jv_lua_to_json(lua_State *L, int idx, char *err, size_t errlen);
void jv_json_to_lua(lua_State *L, const cJSON *v);
/* Push an empty table marked as a JSON array (json.encode keeps it "[]"). */
void jv_json_push_array(lua_State *L);

/* Marker files under <instance>/.jobvisor/markers (lua/api_job.c). file is
 * "<name>.json". Return 0 or -errno (-ENOENT: no such marker). */
int jv_markers_dir(struct jv_run_ctx *ctx);
int jv_marker_write(struct jv_run_ctx *ctx, const char *file, const cJSON *value);
int jv_marker_read(struct jv_run_ctx *ctx, const char *file, cJSON **out);
int jv_marker_remove(struct jv_run_ctx *ctx, const char *file);
/* Completion records under <instance>/.jobvisor/completed (lua/completed.c).
 * find: 0 none, 1 a record of this job (same id, type and params; *record is
 * returned-owned), 2 a record of another job under this id (*record set too),
 * or -errno. write: 0 or -errno (nothing is written for a job id that is not
 * an identifier). */
int jv_completed_find(struct jv_run_ctx *ctx, const cJSON *params, cJSON **record);
int jv_completed_write(struct jv_run_ctx *ctx, const cJSON *params, const cJSON *output);
/* The run marker. start: expose the one an interrupted earlier run left as
 * job.previous (the table at job_idx) and write this run's; step: record
 * the latest progress (message and/or percent >= 0; NULL/-1 only write a
 * pending change that is due; to run.<type>.progress, never fsynced, at most
 * every 500 ms); sync: the marker durable (before a job.mark, at a failure);
 * done: remove it (the run completed). */
void jv_run_marker_start(lua_State *L, struct jv_run_ctx *ctx, int job_idx);
void jv_run_marker_step(struct jv_run_ctx *ctx, const char *step, double percent);
void jv_run_marker_done(struct jv_run_ctx *ctx);
int jv_run_marker_sync(struct jv_run_ctx *ctx);

/* print() replacement (lua/api_log.c). */
int jv_lua_print(lua_State *L);

/* Module openers: each pushes its module table. */
int luaopen_jv_job(lua_State *L);
int luaopen_jv_log(lua_State *L);
int luaopen_jv_json(lua_State *L);
int luaopen_jv_fs(lua_State *L);
int luaopen_jv_archive(lua_State *L);
int luaopen_jv_http(lua_State *L);
int luaopen_jv_instance(lua_State *L);
int luaopen_jv_remote(lua_State *L);
int luaopen_jv_proc(lua_State *L);

/* Whether a job may run path (absolute): listed in the settings'
 * job_executables, or the steamcmd setting (lua/api_proc.c). */
bool jv_proc_allowed(const cJSON *settings, const char *path);

#endif
