/* jobrun_spawn.h — what jobrun_start (jobrun.c) prepares before the fork and
 * what its forked child does: the spec, its memfd, the CPU pin, the child's
 * setup up to the exec or the direct child mode (jobrun_spawn.c). */
#ifndef JOBVISOR_JOBRUN_SPAWN_H
#define JOBVISOR_JOBRUN_SPAWN_H

#include <sched.h>
#include <stdbool.h>
#include <sys/types.h>
#include <cjson/cJSON.h>

#include "jobvisor/jobrun.h"

/* Steps of jobrun_child_exec reported through the exec pipe (jv_exec_fail). */
enum exec_stage { EXEC_FDS = 1, EXEC_CWD, EXEC_USER, EXEC_EXEC };

/* The job-run child's spec: what the child reads (JV_CHILD_SPEC_FD or the tree). */
cJSON *jobrun_build_spec(const struct jobrun_spec *s);

/* The spec as JSON in a memfd for the exec'd child: 0 and *fd, or -errno. */
int jobrun_spec_memfd(const cJSON *sj, int *fd);

/* Restrict this thread to the CPU it runs on, its allowed set saved in
 * *allowed; false (nothing changed) when either is unknown. A child forked
 * meanwhile starts on this CPU.
 *
 * For jobvisor run's direct child: its parent only waits for it, and starting
 * it on the other CPU (for the scheduler, the idle one) costs a wake-up of that
 * CPU, and later of this one for every event, which in a VM means halted vCPUs
 * resumed by the host: spawned by a small C program, a no-op run took 8-12 %
 * longer that way (under Python's subprocess it made no difference either
 * way). Both sides get the whole allowed set back right after the fork, so a
 * real job spreads over the CPUs as before. */
bool jobrun_pin_to_this_cpu(cpu_set_t *allowed);

/* In the forked child, between fork and exec: system calls only (the agent may
 * hold threads). Process group, death signal, signals, rlimits, descriptors
 * (the spec on JV_CHILD_SPEC_FD, events on JV_CHILD_EVENT_FD), cwd, the run
 * user, no_new_privs; then the exec of `jobvisor __jobrun`, or with child_main
 * (jobvisor run: one thread) the job-run child mode on the spec tree in place of
 * the exec. A failed step goes to err_fd (enum exec_stage). Never returns. */
void jobrun_child_exec(int spec_fd, cJSON *spec, int ev_fd, int err_fd, pid_t parent, int uid,
                       int gid, char **argv, int (*child_main)(cJSON *));

#endif
