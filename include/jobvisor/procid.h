/* procid.h — process identity that survives pid reuse: pid + start time + boot id.
 *
 * A bare pid read from a file may name a different process by the time it is
 * used. jobvisor never signals such a pid: it opens a pidfd first and then
 * checks that the process behind it started at the recorded time (clock
 * ticks since boot, /proc/PID/stat field 22) during the recorded boot. Once
 * the pidfd is verified, signals go through pidfd_send_signal(), which cannot
 * reach a different process. */
#ifndef JOBVISOR_PROCID_H
#define JOBVISOR_PROCID_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define JV_BOOT_ID_LEN 37 /* 36 chars + NUL */

/* The fields of /proc/PID/stat a supervisor needs (proc(5) field numbers). */
struct jv_proc_stat {
	char state;          /* 3: R, S, D, Z, X... */
	pid_t ppid;          /* 4 */
	pid_t pgid;          /* 5 */
	pid_t sid;           /* 6 */
	uint64_t start_time; /* 22: clock ticks since boot */
};
/* Returns 0, -ESRCH (no such process), -EINVAL (unreadable line) or -errno. */
int jv_proc_stat(pid_t pid, struct jv_proc_stat *st);
/* Call fn for every process in /proc whose stat could be read, until it
 * returns true. Returns 0 or -errno (cannot open /proc). */
typedef bool (*jv_proc_visit)(void *ud, pid_t pid, const struct jv_proc_stat *st);
int jv_proc_each(jv_proc_visit fn, void *ud);

/* Start time of pid in clock ticks since boot. Returns 0, -ESRCH, or -errno. */
int jv_proc_start_time(pid_t pid, uint64_t *out);

/* Process group and session of pid (from /proc/PID/stat). Returns 0 or -errno. */
int jv_proc_pgid_sid(pid_t pid, pid_t *pgid, pid_t *sid);

/* This boot's id (/proc/sys/kernel/random/boot_id). Returns 0 or -errno. */
int jv_boot_id(char out[JV_BOOT_ID_LEN]);

/* pidfd_open(2) without a libc wrapper. Returns the fd or -errno. */
int jv_pidfd_open(pid_t pid);
/* pidfd_send_signal(2). Returns 0 or -errno (-ESRCH once the process is gone). */
int jv_pidfd_signal(int pidfd, int sig);

/* Open a pidfd for pid and verify it is the process that started at
 * start_time during boot boot_id (NULL: do not check the boot). On success
 * *pidfd is returned-owned (close it). Returns 0, -ESRCH when the process is
 * gone or the pid now names another process, or -errno. */
int jv_proc_open_verified(pid_t pid, uint64_t start_time, const char *boot_id, int *pidfd);

/* Whether a pidfd's process has exited (poll, no wait). */
bool jv_pidfd_exited(int pidfd);

#endif
