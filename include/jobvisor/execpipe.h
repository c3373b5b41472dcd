/* execpipe.h — why a forked child failed before exec, told to its parent.
 *
 * The parent makes a pipe with O_CLOEXEC before fork. The child, between
 * fork and exec, reports a failing step with jv_exec_fail() (the step's
 * number and errno, then _exit(127)); a successful exec closes the pipe, so
 * the parent's jv_exec_wait() reads EOF. Used by the job-run parent and the
 * instance monitor, so neither reports a bare exit status 127. */
#ifndef JOBVISOR_EXECPIPE_H
#define JOBVISOR_EXECPIPE_H

#include <sys/types.h>

/* Child side (async-signal-safe): write {stage, err} to fd and _exit(127). */
__attribute__((noreturn)) void jv_exec_fail(int fd, int stage, int err);

/* Parent side, after closing its write end: 0 when the child exec'd, 1 when
 * it failed before (*stage and *err set; the child has been reaped). */
int jv_exec_wait(int fd, pid_t pid, int *stage, int *err);

#endif
