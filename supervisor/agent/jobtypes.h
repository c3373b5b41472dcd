/* jobtypes.h — reporting the job types this host can run to the control plane. */
#ifndef JOBVISOR_JOBTYPES_H
#define JOBVISOR_JOBTYPES_H

#include "agent.h"

/* Set up (watching jobs_dir) and fill src for the loop. The first report is
 * made at once. Returns 0 or -errno (then src does nothing). */
int jobtypes_start(struct agent *ag, struct loop_source *src);
/* After a reload: watch the (maybe new) jobs_dir and report again. */
void jobtypes_reconfigure(struct agent *ag);
void jobtypes_free(struct agent *ag);

#endif
