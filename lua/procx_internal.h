/* procx_internal.h — what the parts of proc.run share: procx.c (the job-run
 * side), procx_shepherd.c (the shepherd and the program, after fork),
 * procx_sweep.c (the next-run sweep) and procx_scan.c (/proc without malloc).
 * Private to lua/. */
#ifndef JOBVISOR_PROCX_INTERNAL_H
#define JOBVISOR_PROCX_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

#include "procx.h"

#define TICK_MS 50
#define MAX_SCAN 32768
#define MAX_RECORDED 4096

/* Shepherd -> job-run child messages (fixed size: one write each, < PIPE_BUF). */
enum { M_STARTED = 1, M_EXECFAIL, M_EXIT, M_TOOMANY, M_DONE };
struct msg {
	int32_t kind, a;
};

/* Descriptors in the shepherd after renumbering. */
enum { FD_IN = 3, FD_OUT, FD_ERR, FD_CTL, FD_ST, FD_CWD, FD_REC, FD_EXTRA, FD_FIRST_FREE };

/* One process as /proc tells it. */
struct pinfo {
	pid_t pid, ppid, pgid, sid;
	uint64_t start;
	uid_t uid;
	bool zombie;
};

/* ---- procx_scan.c: system calls and stack buffers only (safe after fork) ----*/

int64_t procx_now_ms(void);
void procx_close_from(int low);
/* /proc/<pid>/stat; with_uid adds the owner. 0 or -errno. */
int procx_read_stat(pid_t pid, struct pinfo *p, bool with_uid);
/* each(ud, name) for every entry of the directory dfd (getdents64: no malloc). */
void procx_dirents(int dfd, void (*each)(void *ud, const char *name), void *ud);
/* Every process in /proc, up to max, into out. Returns the count, or -errno. */
int procx_scan(struct pinfo *out, int max, bool with_uid);

/* ---- procx_shepherd.c ----*/

/* The shepherd, in the child of fork(): renumbers fds (the job-run child's
 * FD_IN..FD_EXTRA, -1 for none), starts the program and watches its tree. */
__attribute__((noreturn)) void procx_shepherd(const struct procx_spec *s, int fds[FD_FIRST_FREE],
                                              struct rlimit nproc);

#endif
