/* jobrun.h — one job run as its parent sees it (used by `jobvisor run` and the agent).
 *
 * jobrun spawns the job-run child (fork, exec self in child mode, own process
 * group, rlimits, no-new-privs, parent-death signal), reads its JSON-line
 * events from a pipe, numbers them (seq from 1), throttles progress (at most a
 * few per second; every status change and the final percent always go out),
 * enforces the wall-clock timeout, cancels (SIGTERM to the group, SIGKILL after
 * the grace period) and turns the child's exit into the final result.
 *
 * It never blocks and owns no event loop: the caller polls jobrun_fd() for
 * POLLIN, calls jobrun_reap() on SIGCHLD, and calls jobrun_on_timer() at
 * jobrun_next_deadline(). */
#ifndef JOBVISOR_JOBRUN_H
#define JOBVISOR_JOBRUN_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <cjson/cJSON.h>

struct jobrun;

struct jobrun_spec {
	const char *job_id;      /* borrowed */
	const char *run_id;      /* borrowed */
	const char *instance_id; /* borrowed, validated identifier */
	const char *type;        /* borrowed, job type (for events/logs) */
	int attempt;
	const cJSON *params;   /* borrowed, a JSON object (NULL = {}) */
	const char *data_dir;  /* borrowed, absolute */
	const char *script;    /* borrowed, absolute path of the resolved script */
	const char *jobs_dir;  /* borrowed, admin jobs dir (for require of lib/), may be NULL */
	int timeout_s;         /* wall clock; 0 = none */
	int cancel_grace_s;    /* SIGTERM -> SIGKILL; 0 = default 10 s */
	size_t mem_limit;      /* Lua allocator cap in bytes; 0 = default 256 MiB */
	const cJSON *settings; /* borrowed agent settings passed to the child, may be NULL */
	const char *created_at; /* borrowed, may be NULL */
	bool by_type;          /* resolved from the job type: the script must declare it */
	bool fresh_job_id;     /* a job id no retry can carry (jobvisor run without --job-id):
	                        * the child writes no completion record for it */
	int run_uid, run_gid;  /* switch the child to this user when >= 0 (agent as root) */
	const char *log_format; /* "logfmt"/"json" for the child's own log lines, may be NULL */
	const char *log_level;
	/* NULL: the child is a fork+exec of `jobvisor __jobrun` (the agent: a fresh image
	 * without its heap, curl handles or sockets). Set (jobvisor run, whose single-
	 * threaded process holds nothing a job must not see: no token, no connection):
	 * the forked child calls it after the same setup (process group, death signal,
	 * signals, rlimits, descriptors, cwd, no_new_privs) instead of the second exec,
	 * with the spec tree itself: no memfd to write and no JSON to parse again
	 * (the child reads it from its copy of the parent's memory). Ignored when
	 * the child switches user: that child is always exec'd. */
	int (*child_main)(struct cJSON *spec);
};

struct jobrun_ops {
	/* A wire event {seq, kind, jobId, jobRunId, instanceId, status, percent,
	 * message, level, timestamp}; consumed (cJSON_Delete it). */
	void (*event)(void *ud, struct jobrun *run, cJSON *event);
	/* The final result {status, output, error, finishedAt, lastSeq}; consumed.
	 * Called once, after the last event. */
	void (*done)(void *ud, struct jobrun *run, cJSON *result);
};

/* Spawn the child. On success *out is returned-owned (jobrun_free) and the
 * RUNNING status event has been emitted. Returns 0 or -errno. */
int jobrun_start(const struct jobrun_spec *spec, const struct jobrun_ops *ops, void *ud,
                 struct jobrun **out);

int jobrun_fd(const struct jobrun *run);   /* -1 once the pipe is closed */
pid_t jobrun_pid(const struct jobrun *run); /* also the process group id; 0 once reaped */
const char *jobrun_run_id(const struct jobrun *run);
const char *jobrun_job_id(const struct jobrun *run);
const char *jobrun_instance_id(const struct jobrun *run);
uint64_t jobrun_last_seq(const struct jobrun *run);

void jobrun_on_readable(struct jobrun *run);
/* On SIGCHLD: if this run's child has exited, kill what is left of its process
 * group (while the zombie still reserves the group id), reap it and go on as
 * jobrun_on_exit(). Waits for its own child only; never blocks. */
void jobrun_reap(struct jobrun *run);
/* For callers that reaped the child themselves. */
void jobrun_on_exit(struct jobrun *run, int wstatus);
/* Monotonic ms of the next timer (throttle flush, grace, timeout), or INT64_MAX. */
int64_t jobrun_next_deadline(const struct jobrun *run);
void jobrun_on_timer(struct jobrun *run, int64_t now_ms);

/* The result of job job_id reached whoever asked for it (the control plane
 * acknowledged it, `jobvisor run` printed it): remove the completion record
 * the child kept for a retry (see lua/completed.c). Never follows a symlink.
 * Returns 0 (also when there was none) or -errno. */
int jobrun_forget_completion(const char *data_dir, const char *instance_id, const char *job_id);

/* Why a run is asked to stop; jobrun_stop_name() is the result's error.reason. */
enum jobrun_stop {
	JOBRUN_NOT_STOPPING = 0,
	JOBRUN_CANCELLED, /* user request; a non-cancellable job only logs why it cannot */
	JOBRUN_TIMEOUT,   /* reported FAILED, reason timeout */
	JOBRUN_SHUTDOWN,  /* the agent stops: reported FAILED, retryable */
	JOBRUN_LOST,      /* reported FAILED, retryable */
};
const char *jobrun_stop_name(enum jobrun_stop why); /* "cancelled", "timeout", ... */

/* Ask the run to stop. Idempotent: the first reason stands. */
void jobrun_cancel(struct jobrun *run, enum jobrun_stop why);
/* SIGKILL the whole group now (409: the run is no longer ours). */
void jobrun_kill(struct jobrun *run);

bool jobrun_finished(const struct jobrun *run); /* done() has been called */
void jobrun_free(struct jobrun *run);           /* kills a live child first; NULL ok */

/* Find the script for TYPE (BACKUP_INSTANCE -> backup_instance.lua) in jobs_dir,
 * then the built-in jobs directory; or take a *.lua path as given. Writes an
 * absolute path. Returns 0, -ENOENT (unknown job type) or -EINVAL (bad name). */
int jobrun_resolve_script(const char *type_or_path, const char *jobs_dir, char *out, size_t outlen);
/* The built-in jobs directory this binary uses (source tree when run from its
 * build dir), written to dir and returned. Looked up afresh on each call. */
const char *jobrun_builtin_jobs_dir(char dir[PATH_MAX]);

#endif
