/* inststats.h — instance resource stats (CPU, memory, processes, data size,
 * uptime) to POST /v1/agents/{agentId}/stats every stats_interval (0 = off).
 * See inststats.c. A 404 turns stats off for this run (logged once). */
#ifndef JOBVISOR_INSTSTATS_H
#define JOBVISOR_INSTSTATS_H

#include <stdint.h>

#include "agent.h"

int inststats_start(struct agent *ag);
void inststats_free(struct agent *ag); /* NULL-safe */
int64_t inststats_next_deadline(const struct agent *ag);
void inststats_tick(struct agent *ag, int64_t now_ms);

#endif
