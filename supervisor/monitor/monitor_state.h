/* monitor_state.h — state.json, the status object and state names (monitor_state.c). */
#ifndef JOBVISOR_MONITOR_STATE_H
#define JOBVISOR_MONITOR_STATE_H

#include "monitor_types.h"

/* "STARTING", "RUNNING", ...: what clients and state.json see. */
const char *state_name(enum mon_state st);
/* The status object; returned-owned (cJSON_Delete), NULL when out of memory. */
cJSON *state_object(struct monitor *m);
int state_write(struct monitor *m);

#endif
