/* monitor_cgroup.h — the instance's optional cgroup v2 leaf (monitor_cgroup.c). */
#ifndef JOBVISOR_MONITOR_CGROUP_H
#define JOBVISOR_MONITOR_CGROUP_H

#include "monitor_types.h"

int cg_create(struct monitor *m, char *err, size_t errlen);
int cg_open_existing(struct monitor *m, const char *path);
int cg_apply_limits(struct monitor *m);
int cg_procs_fd(struct monitor *m); /* O_WRONLY cgroup.procs, or -1 */
bool cg_contains(struct monitor *m, pid_t pid);
bool cg_populated(struct monitor *m);
void cg_kill(struct monitor *m);
void cg_signal(struct monitor *m, int sig);
uint64_t cg_oom_kills(struct monitor *m);
void cg_remove(struct monitor *m);

#endif
