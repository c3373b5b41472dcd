/* monitor_proc.h — the server process: spawn, adopt, signal, reap (monitor_proc.c). */
#ifndef JOBVISOR_MONITOR_PROC_H
#define JOBVISOR_MONITOR_PROC_H

#include "monitor_types.h"

int proc_spawn(struct monitor *m, char *err, size_t errlen);
int proc_adopt(struct monitor *m, pid_t pid, uint64_t start_time, const char *cgroup);
void proc_signal_tree(struct monitor *m, int sig);
/* Reap children; returns true when the leader's exit was noticed just now. */
bool proc_on_sigchld(struct monitor *m);
bool proc_on_pidfd(struct monitor *m);
bool proc_tree_empty(struct monitor *m);
/* Reap the leader and forget the server (after the sweep). */
void proc_release(struct monitor *m);
void proc_describe_exit(struct monitor *m, struct mon_exit *e);
void proc_shed_inheritance(void);

#endif
