/* procx.h — running one program for a job script, and ending everything it
 * started: the pure-C core of the `proc` Lua module (lua/api_proc.c). No Lua.
 *
 * Process layout:
 *
 *   job-run child ──fork──> shepherd (own process group, child subreaper)
 *                                └──fork+execve──> program (own process group,
 *                                                  PDEATHSIG, NO_NEW_PRIVS, rlimits)
 *
 * The shepherd is a forked copy of the job-run child that never returns to
 * Lua: it waits for the program, and because it is a child subreaper every
 * process the program orphans (double fork, setsid) becomes its child. When
 * the program exits, when the job asks (cancel, timeout, an on_line error) or
 * when the job-run child dies (its control pipe reaches EOF, e.g. after kill
 * -9), the shepherd signals the program's group and every process it has
 * collected — SIGTERM, the grace period, SIGKILL — and exits only when none is
 * left. Being in its own process group, the agent's SIGKILL of the job's group
 * does not reach it. A program that is only killed is killed by PDEATHSIG when
 * the shepherd dies.
 *
 * Should the shepherd itself be killed, the record file (one "pid starttime"
 * line per process it saw) lets the next run of the instance end what is left
 * (procx_sweep): each recorded process still alive with the same start time,
 * plus the members of a group or session it leads.
 *
 * A process-count watchdog in the shepherd ends the program when its group and
 * the processes collected exceed max_procs (RLIMIT_NPROC does the same for a
 * non-root job, but the kernel exempts root).
 *
 * Fork constraints: between fork and execve (program) and in the whole
 * shepherd only system calls and stack buffers are used, never malloc. */
#ifndef JOBVISOR_PROCX_H
#define JOBVISOR_PROCX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PROCX_STDOUT 1
#define PROCX_STDERR 2
#define PROCX_LINE_MAX 65536 /* a longer line is passed on in pieces */

struct procx_spec {
	const char *path;   /* absolute path of the executable (already allowed) */
	char *const *argv;  /* argv[0] is path; borrowed */
	char *const *envp;  /* the complete environment; borrowed */
	int cwd_fd;         /* directory the program starts in (borrowed); < 0 = the caller's */
	const char *stdin_data; /* NULL = /dev/null */
	size_t stdin_len;
	int64_t timeout_ms; /* 0 = none */
	int64_t grace_ms;   /* SIGTERM to SIGKILL */
	int max_procs;      /* processes the program may have at once (> 0) */
	int nofile;         /* RLIMIT_NOFILE of the program */
	size_t capture_max; /* bytes kept per stream */
	int record_fd;      /* append-only record for procx_sweep, or -1 (borrowed) */
	int extra_fd;       /* handed to the program as descriptor 4 (e.g. a memfd it reads
	                       as /proc/self/fd/4), or -1 (borrowed) */

	/* Called for each complete line (without its newline) and for a last
	 * unterminated one. Return false to stop the program (the callback keeps
	 * its error). */
	bool (*on_line)(void *arg, int stream, const char *line, size_t len);
	/* Polled about every 50 ms: true = the job was cancelled. */
	bool (*cancelled)(void *arg);
	void *arg;
};

enum procx_end {
	PROCX_EXITED,    /* the program exited or was killed by a signal on its own */
	PROCX_TIMEOUT,   /* spec.timeout_ms passed: ended */
	PROCX_CANCELLED, /* spec.cancelled() said so: ended */
	PROCX_ABORTED,   /* spec.on_line() returned false: ended */
	PROCX_TOO_MANY,  /* more than max_procs processes: ended */
};

struct procx_result {
	enum procx_end end;
	int exit_code;    /* >= 0 when the program exited, else -1 */
	int signal;       /* > 0 when a signal ended it, else 0 */
	unsigned leftovers; /* other processes the shepherd had to end */
	int64_t ms;       /* wall-clock duration */
	/* Captured output (NUL-terminated, returned-owned: procx_result_free). */
	char *out, *err;
	size_t out_len, err_len;
	bool out_truncated, err_truncated;
};

/* Run the program to its end. 0 with *r filled, or a negative errno when it
 * could not be started (err says which step failed, e.g. "cannot execute
 * '/usr/bin/x': Permission denied"). */
int procx_run(const struct procx_spec *s, struct procx_result *r, char *err, size_t errlen);
void procx_result_free(struct procx_result *r);

/* End what the record files in dirfd (an open directory) describe and remove
 * them. *ended gets the number of processes signalled. Returns 0 or -errno. */
int procx_sweep(int dirfd, unsigned *ended);

/* Processes whose real uid is uid (a /proc scan); -1 when /proc is unusable. */
int procx_count_user(uid_t uid);

#endif
