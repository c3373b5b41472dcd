/* monitor.h — the instance monitor's loop and state machine (monitor.c).
 *
 * The top of the monitor below cmd_monitor() (monitor_setup.c): it calls
 * every part, and the parts reach it only through the struct mon_hooks table
 * it installs (monitor_types.h draws the files and their order). */
#ifndef JOBVISOR_MONITOR_H
#define JOBVISOR_MONITOR_H

#include "monitor_types.h"

/* Point m->hooks at monitor.c's table; before any part runs. */
void mon_attach_hooks(struct monitor *m);
/* Run what ev means in the current state. Returns false when it means nothing there. */
bool mon_event(struct monitor *m, enum mon_event ev, bool force);
int mon_run_loop(struct monitor *m);
int mon_load_spec(struct monitor *m, char *err, size_t errlen);
int mon_spawn(struct monitor *m, char *err, size_t errlen); /* load the spec, start, set state */
void mon_set_state(struct monitor *m, enum mon_state st, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void mon_request_stop(struct monitor *m, bool force, double timeout_s);

#endif
