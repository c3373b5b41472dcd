/* child_main.c — the job-run child: `jobvisor __jobrun` after fork+exec.
 *
 * Reads its spec (JSON) from JV_CHILD_SPEC_FD, prepares the instance
 * directory, takes the instance lock, builds the sandbox, loads the job script
 * as text, validates its table and the params, calls run(job) and writes the
 * result as the last event line on JV_CHILD_EVENT_FD. It exits with 0/1/3
 * (COMPLETED/FAILED/CANCELLED) through _exit: the Lua state is never closed,
 * so a hostile __gc finalizer cannot hang the exit.
 *
 * Signals: SIGTERM/SIGINT only set the cancel flag; the script sees it at
 * job.checkpoint(), inside long API calls and, through a count hook the handler
 * arms, within a thousand VM instructions of pure Lua in run()'s thread (a
 * coroutine inherits the hook only when created after the cancel). The parent SIGKILLs the process
 * group after the grace period (a script that catches the cancellation and
 * goes on). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/jobchild.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/protocol.h"
#include "jobvisor/util.h"
#include "fsx.h"
#include "procx.h"
#include "sandbox.h"
#include "scriptdef.h"

#define MAX_SPEC_BYTES (16u << 20)

static volatile sig_atomic_t cancel_requested;
/* The state running run(), for the handler to arm the cancel hook in. */
static lua_State *volatile hook_state;

static void on_cancel_signal(int sig)
{
	(void)sig;
	cancel_requested = 1;
	lua_State *L = hook_state;
	if (L)
		jv_cancel_hook_arm(L);
}

struct child {
	struct jv_run_ctx ctx;
	struct jv_scriptdef def; /* ctx.type may point into it until exit */
	cJSON *spec;
	char data_dir[4096];
	char instance_dir[4200];
	char lib_dirs[2][4200]; /* the sandbox keeps pointers to them */
};

static void emit_result(struct jv_run_ctx *ctx, const char *status, cJSON *output,
                        const char *message, const char *stack, bool retryable,
                        const char *reason)
{
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "k", "result");
	cJSON_AddStringToObject(ev, "status", status);
	if (output)
		cJSON_AddItemToObject(ev, "output", output);
	else
		cJSON_AddItemToObject(ev, "output", cJSON_CreateObject());
	if (message)
		cJSON_AddItemToObject(ev, "error", jv_proto_error(message, stack, retryable, reason));
	else
		cJSON_AddNullToObject(ev, "error");
	jv_emit_event(ctx, ev);
}

static int fail_early(struct jv_run_ctx *ctx, const char *message, bool retryable)
{
	jv_run_marker_sync(ctx); /* the marker stays for the next run: on disk */
	emit_result(ctx, "FAILED", NULL, message, NULL, retryable, NULL);
	return JV_EXIT_FAILED;
}

/* The spec is a memfd the parent wrote in full before the fork: its size is
 * known, so one buffer of that size and (mostly) one read. */
static int read_spec(cJSON **out)
{
	struct stat st;
	if (fstat(JV_CHILD_SPEC_FD, &st) < 0)
		return -errno;
	if (st.st_size <= 0 || (uint64_t)st.st_size > MAX_SPEC_BYTES)
		return -EFBIG;
	size_t len = (size_t)st.st_size, got = 0;
	char *text = malloc(len);
	if (!text)
		return -ENOMEM;
	while (got < len) {
		ssize_t r = pread(JV_CHILD_SPEC_FD, text + got, len - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int rc = r < 0 ? -errno : -EBADMSG;
			free(text);
			return rc;
		}
		got += (size_t)r;
	}
	close(JV_CHILD_SPEC_FD);
	*out = jv_json_parse(text, len);
	free(text);
	return *out ? 0 : -EBADMSG;
}

static int open_dir_nofollow(int at, const char *name, bool create)
{
	if (create && mkdirat(at, name, 0750) < 0 && errno != EEXIST)
		return -errno;
	int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* <data>/instances/<id>/.jobvisor/{markers,staging}; the lock. */
static int prepare_instance(struct child *c, char *err, size_t errlen)
{
	int rc = jv_mkdir_p(c->data_dir, 0750);
	if (rc < 0) {
		snprintf(err, errlen, "cannot create data dir '%s': %s", c->data_dir, strerror(-rc));
		return rc;
	}
	int dfd = open(c->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		snprintf(err, errlen, "cannot open data dir '%s': %s", c->data_dir, strerror(errno));
		return -errno;
	}
	c->ctx.data_fd = dfd;
	int ifd = open_dir_nofollow(dfd, "instances", true);
	int root = ifd < 0 ? ifd : open_dir_nofollow(ifd, c->ctx.instance_id, true);
	if (ifd >= 0)
		close(ifd);
	if (root < 0) {
		snprintf(err, errlen, "cannot open instance directory '%s': %s", c->instance_dir,
		         strerror(-root));
		return root;
	}
	c->ctx.instance_fd = root;
	int jfd = open_dir_nofollow(root, ".jobvisor", true);
	if (jfd < 0) {
		snprintf(err, errlen, "cannot create '.jobvisor' in instance '%s': %s",
		         c->ctx.instance_id, strerror(-jfd));
		return jfd;
	}
	const char *subs[] = {"markers", "staging"};
	for (size_t i = 0; i < JV_ARRAY_LEN(subs); i++) {
		int s = open_dir_nofollow(jfd, subs[i], true);
		if (s < 0) {
			snprintf(err, errlen, "cannot create '.jobvisor/%s': %s", subs[i], strerror(-s));
			close(jfd);
			return s;
		}
		close(s);
	}
	/* The instance lock: one job run per instance at a time. Held until exit;
	 * not inherited by monitors (they close every descriptor). */
	int lfd = openat(jfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
	close(jfd);
	if (lfd < 0) {
		snprintf(err, errlen, "cannot open instance lock: %s", strerror(errno));
		return -errno;
	}
	if (flock(lfd, LOCK_EX | LOCK_NB) < 0) {
		snprintf(err, errlen, "instance '%s' is busy: another job run holds its lock",
		         c->ctx.instance_id);
		return -EBUSY;
	}
	/* With the lock held, programs recorded in procs/ belong to a run that was
	 * killed together with its shepherd (lua/procx.h): end what is left. */
	int pfd = openat(root, ".jobvisor/procs", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (pfd >= 0) {
		unsigned ended = 0;
		procx_sweep(pfd, &ended);
		close(pfd);
		if (ended) {
			char msg[256];
			snprintf(msg, sizeof(msg), "ended %u process(es) that an earlier run's programs left "
			                           "behind", ended);
			jv_emit_log(&c->ctx, "warn", msg);
		}
	}
	/* With the lock held, temp files in markers/ and completed/ belong to a killed run. */
	int mfd = jv_markers_dir(&c->ctx);
	if (mfd >= 0) {
		jv_durable_cleanup_temps(mfd);
		close(mfd);
	}
	int jfd2 = openat(root, ".jobvisor", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int cfd = jfd2 < 0 ? -1 : openat(jfd2, JV_COMPLETED_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (cfd >= 0) {
		jv_durable_cleanup_temps(cfd);
		close(cfd);
	}
	if (jfd2 >= 0)
		close(jfd2);
	/* What completed runs left to delete goes while this one runs. */
	jv_trash_sweep_start(&c->ctx);
	return 0;
}

/* A retry of a job that already COMPLETED (its result was lost on the way):
 * report the recorded output again, without running the script. Returns the
 * exit status, or -1 to run the job. */
static int replay_completed(struct child *c, const cJSON *params)
{
	struct jv_run_ctx *ctx = &c->ctx;
	cJSON *rec = NULL;
	int rc = jv_completed_find(ctx, params, &rec);
	char msg[600];
	if (rc == 2) {
		snprintf(msg, sizeof(msg),
		         "job id '%s' completed before as a %s job with other parameters (run %s): "
		         "running this one as new work",
		         ctx->job_id, jv_json_str(rec, "type", "?"), jv_json_str(rec, "runId", "?"));
		jv_emit_log(ctx, "warn", msg);
	} else if (rc < 0) {
		snprintf(msg, sizeof(msg), "cannot read the completion record of job '%s' (%s): running it",
		         ctx->job_id, rc == -EBADMSG ? "not a valid record" : strerror(-rc));
		jv_emit_log(ctx, "warn", msg);
	}
	if (rc != 1) {
		cJSON_Delete(rec);
		return -1;
	}
	snprintf(msg, sizeof(msg),
	         "job '%s' already completed in run %s (attempt %lld) at %s; its result did not reach "
	         "the control plane: reporting the same output again, nothing was redone",
	         ctx->job_id, jv_json_str(rec, "runId", "?"), (long long)jv_json_int(rec, "attempt", 0),
	         jv_json_str(rec, "finishedAt", "?"));
	jv_emit_log(ctx, "info", msg);
	/* The completed run may have been killed after writing its record and
	 * before moving its staging away (jv_staging_cleanup): that staging is
	 * garbage now, and no script runs here to sweep it. */
	const char *done_run = jv_json_str(rec, "runId", NULL);
	if (ctx->instance_fd >= 0 && done_run && jv_run_id_valid(done_run) &&
	    strcmp(done_run, ctx->run_id) != 0) {
		struct fsx fx;
		fsx_init(&fx, ctx->instance_fd);
		fsx_staging_clean(&fx, done_run);
	}
	jv_emit_progress(ctx, 100, "already completed");
	cJSON *output = cJSON_DetachItemFromObjectCaseSensitive(rec, "output");
	cJSON_Delete(rec);
	emit_result(ctx, "COMPLETED", output, NULL, NULL, false, NULL);
	return JV_EXIT_COMPLETED;
}

static int traceback_handler(lua_State *L)
{
	jv_sandbox_mem_grace(L);
	lua_newtable(L); /* {err = original, tb = traceback} */
	lua_pushvalue(L, 1);
	lua_setfield(L, -2, "err");
	luaL_traceback(L, L, NULL, 1);
	lua_setfield(L, -2, "tb");
	return 1;
}

/* Turn the error at idx (from traceback_handler) into the run's result. */
static int finish_error(struct child *c, lua_State *L, int idx)
{
	jv_sandbox_mem_grace(L);
	idx = lua_absindex(L, idx);
	struct jv_run_ctx *ctx = &c->ctx;
	/* The marker stays for the next run (job.previous): on disk, not only in
	 * the page cache, whatever ended this one. */
	jv_run_marker_sync(ctx);
	const char *stack = NULL;
	if (lua_istable(L, idx)) {
		lua_getfield(L, idx, "tb");
		stack = lua_tostring(L, -1);
		lua_getfield(L, idx, "err");
		idx = lua_gettop(L);
	}
	char sstack[8192] = "";
	if (stack)
		jv_sanitize(sstack, sizeof(sstack), stack, c->data_dir);

	if (jv_is_cancel_error(L, idx)) {
		/* A requested cancel is not a bug in the script: no traceback. */
		emit_result(ctx, "CANCELLED", NULL, "job cancelled", NULL, false, "cancelled");
		return JV_EXIT_CANCELLED;
	}
	bool retryable = false;
	const char *msg = NULL;
	if (lua_istable(L, idx)) {
		lua_getfield(L, idx, "jobvisor_fail");
		bool is_fail = lua_toboolean(L, -1);
		lua_pop(L, 1);
		if (is_fail) {
			lua_getfield(L, idx, "retryable");
			retryable = lua_toboolean(L, -1);
			lua_getfield(L, idx, "message");
			msg = jv_lua_text(L, -1);
		}
	}
	if (!msg) {
		if (lua_type(L, idx) != LUA_TSTRING)
			luaL_tolstring(L, idx, NULL);
		msg = jv_lua_text(L, lua_type(L, idx) == LUA_TSTRING ? idx : -1);
	}
	char smsg[4096];
	if (msg && strstr(msg, "not enough memory")) {
		snprintf(smsg, sizeof(smsg), "memory limit of %zu MiB exceeded (not enough memory)",
		         jv_sandbox_mem_limit(L) >> 20);
	} else {
		jv_sanitize(smsg, sizeof(smsg), msg ? msg : "error", c->data_dir);
	}
	emit_result(ctx, "FAILED", NULL, smsg, sstack, retryable, NULL);
	return JV_EXIT_FAILED;
}

static void setup_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_cancel_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	sigset_t all;
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
}

/* The sandbox for the spec: its memory cap and the lib/ folders of the
 * jobs directory and the built-in jobs. NULL when out of memory. */
static lua_State *new_sandbox(struct child *c)
{
	struct jv_sandbox_opts so = {.ctx = &c->ctx};
	so.mem_limit = (size_t)jv_json_num(c->spec, "memLimit", 0);
	int nlib = 0;
	const char *const dirs[] = {jv_json_str(c->spec, "jobsDir", NULL),
	                            jv_json_str(c->spec, "builtinJobsDir", NULL)};
	for (size_t i = 0; i < 2; i++) {
		if (dirs[i]) {
			snprintf(c->lib_dirs[nlib], sizeof(c->lib_dirs[nlib]), "%s/lib", dirs[i]);
			so.lib_dirs[nlib] = c->lib_dirs[nlib];
			nlib++;
		}
	}
	so.lib_dirs[nlib] = NULL;
	return jv_sandbox_new(&so);
}

/* What the script declares: its type (the parent logs it for runs by path)
 * and whether it may be cancelled. */
static void emit_meta(struct jv_run_ctx *ctx, const struct jv_scriptdef *def)
{
	cJSON *meta = cJSON_CreateObject();
	cJSON_AddStringToObject(meta, "k", "meta");
	cJSON_AddStringToObject(meta, "type", def->type);
	cJSON_AddBoolToObject(meta, "cancellable", def->cancellable);
	if (!def->cancellable)
		cJSON_AddStringToObject(meta, "why", def->why);
	jv_emit_event(ctx, meta);
}

/* run(job) under the traceback handler, with the cancel hook armable for
 * its duration. Leaves the result or the error on top. */
static int call_run(lua_State *L, const struct jv_scriptdef *def, int job_idx)
{
	lua_pushcfunction(L, traceback_handler);
	int handler = lua_gettop(L);
	lua_rawgeti(L, LUA_REGISTRYINDEX, def->run_ref);
	lua_pushvalue(L, job_idx);
	jv_cancel_hook_prepare(L);
	hook_state = L;
	if (cancel_requested)
		jv_cancel_hook_arm(L); /* the signal came before hook_state was set */
	int status = lua_pcall(L, 1, 1, handler);
	hook_state = NULL;
	lua_sethook(L, NULL, 0, 0);
	return status;
}

/* The value run() returned as the output: a table, nil meaning {}. NULL
 * with the reason in err. */
static cJSON *output_of(lua_State *L, char *err, size_t errlen)
{
	if (lua_isnil(L, -1))
		return cJSON_CreateObject();
	if (!lua_istable(L, -1)) {
		snprintf(err, errlen, "run() must return a table or nil, got %s", luaL_typename(L, -1));
		return NULL;
	}
	char jerr[900];
	cJSON *output = jv_lua_to_json(L, -1, jerr, sizeof(jerr));
	if (!output) {
		snprintf(err, errlen, "run() returned an output that is not JSON: %s", jerr);
		return NULL;
	}
	if (!cJSON_IsObject(output)) {
		/* A Lua sequence encodes as an array; outputs are objects. */
		cJSON *wrap = cJSON_CreateObject();
		cJSON_AddItemToObject(wrap, "result", output);
		output = wrap;
	}
	return output;
}

/* A run that returned output: recorded, then reported COMPLETED. */
static int complete(struct jv_run_ctx *ctx, const cJSON *params, cJSON *output)
{
	/* Recorded before anything says COMPLETED: from here on a retry of this job
	 * reports this output instead of doing the work again. A job id no retry
	 * can carry (jobvisor run without --job-id) needs no record. */
	bool record = jv_json_bool(ctx->spec, "recordCompletion", true);
	int rc = record ? jv_completed_write(ctx, params, output) : 0;
	if (rc < 0) {
		char msg[300];
		snprintf(msg, sizeof(msg),
		         "cannot record the completion of job '%s' (%s): a retry of it would run it again",
		         ctx->job_id, strerror(-rc));
		jv_emit_log(ctx, "warn", msg);
	}
	jv_run_marker_done(ctx);
	jv_staging_cleanup(ctx);
	emit_result(ctx, "COMPLETED", output, NULL, NULL, false, NULL);
	return JV_EXIT_COMPLETED;
}

static int run_child(struct child *c)
{
	struct jv_run_ctx *ctx = &c->ctx;
	cJSON *spec = c->spec;
	ctx->job_id = jv_json_str(spec, "jobId", "-");
	ctx->run_id = jv_json_str(spec, "jobRunId", "-");
	ctx->instance_id = jv_json_str(spec, "instanceId", "");
	ctx->type = jv_json_str(spec, "type", "");
	ctx->attempt = (int)jv_json_int(spec, "attempt", 1);
	ctx->settings = cJSON_GetObjectItemCaseSensitive(spec, "settings");
	ctx->spec = spec;
	jv_log_set_component("job");

	if (!jv_ident_valid(ctx->instance_id))
		return fail_early(ctx, "invalid instanceId: must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
		                  false);
	const char *dd = jv_json_str(spec, "dataDir", NULL);
	const char *script = jv_json_str(spec, "script", NULL);
	if (!dd || dd[0] != '/' || !script)
		return fail_early(ctx, "internal error: incomplete job-run spec", false);
	snprintf(c->data_dir, sizeof(c->data_dir), "%s", dd);
	snprintf(c->instance_dir, sizeof(c->instance_dir), "%s/instances/%s", dd, ctx->instance_id);
	ctx->data_dir = c->data_dir;
	ctx->instance_dir = c->instance_dir;

	char err[1024];
	int rc = prepare_instance(c, err, sizeof(err));
	if (rc < 0)
		return fail_early(ctx, err, rc == -EBUSY);

	lua_State *L = new_sandbox(c);
	if (!L)
		return fail_early(ctx, "cannot create Lua state: out of memory", true);

	struct jv_scriptdef *def = &c->def;
	if (jv_scriptdef_load(L, script, NULL, def, err, sizeof(err)) != 0) {
		char serr[1024];
		jv_sanitize(serr, sizeof(serr), err, c->data_dir);
		return fail_early(ctx, serr, false);
	}
	if (!ctx->type[0])
		ctx->type = def->type; /* run by path: the script names its type */
	emit_meta(ctx, def);
	const char *want_type = jv_json_str(spec, "expectType", NULL);
	if (want_type && strcmp(want_type, def->type) != 0) {
		snprintf(err, sizeof(err), "script '%s' declares type '%s' but was run as '%s'",
		         def->chunkname, def->type, want_type);
		return fail_early(ctx, err, false);
	}

	/* job table */
	lua_pushcfunction(L, luaopen_jv_job);
	lua_call(L, 0, 1);
	int job_idx = lua_gettop(L);
	const cJSON *params = cJSON_GetObjectItemCaseSensitive(spec, "params");
	if (jv_scriptdef_check_params(L, def, params, err, sizeof(err)) != 0)
		return fail_early(ctx, err, false);
	if (params && cJSON_IsObject(params))
		jv_json_to_lua(L, params);
	else
		lua_newtable(L);
	lua_setfield(L, job_idx, "params");
	int done = jv_json_bool(spec, "recordCompletion", true) ? replay_completed(c, params) : -1;
	if (done >= 0)
		return done;
	jv_run_marker_start(L, ctx, job_idx);
	static const char *const job_optional[] = {"previous", NULL};
	jv_sandbox_strict(L, job_idx, "job", job_optional);

	if (call_run(L, def, job_idx) != LUA_OK)
		return finish_error(c, L, -1);

	cJSON *output = output_of(L, err, sizeof(err));
	if (!output)
		return fail_early(ctx, err, false);
	return complete(ctx, params, output);
}

static int child_body(cJSON *spec);

int jv_jobrun_child_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	cJSON *spec = NULL;
	int rc = read_spec(&spec);
	return child_body(rc < 0 ? NULL : spec);
}

int jv_jobrun_child_run(cJSON *spec)
{
	return child_body(spec);
}

/* spec NULL: it could not be read (the run fails with an internal error). */
static int child_body(cJSON *spec)
{
	setup_signals();
	jv_set_cloexec(JV_CHILD_EVENT_FD);
	struct child c;
	memset(&c, 0, sizeof(c));
	c.ctx.event_fd = JV_CHILD_EVENT_FD;
	c.ctx.data_fd = -1;
	c.ctx.instance_fd = -1;
	c.ctx.cancel_flag = &cancel_requested;
	c.ctx.job_id = "-";
	c.ctx.run_id = "-";
	int code;
	c.spec = spec;
	if (!spec) {
		c.ctx.instance_id = "";
		c.ctx.type = "";
		code = fail_early(&c.ctx, "internal error: cannot read job-run spec", false);
	} else {
		int lvl = jv_log_level_parse(jv_json_str(c.spec, "logLevel", "info"));
		int fmt = jv_log_format_parse(jv_json_str(c.spec, "logFormat", "logfmt"));
		jv_log_setup(fmt < 0 ? JV_LOG_LOGFMT : fmt, lvl < 0 ? JV_LOG_INFO : lvl);
		code = run_child(&c);
	}
	jv_emit_flush(&c.ctx);
	_exit(code);
}
