/* loop.h — the agent's single-threaded event loop.
 *
 * One wait (curl_multi_poll through transport_wait) covers the network, a
 * signalfd for SIGCHLD/SIGTERM/SIGINT/SIGHUP and every job run's event pipe;
 * its timeout is the earliest of the next poll, the next delivery retry,
 * the runs' timers (throttle, grace, timeout), the watchdog and the shutdown
 * deadlines. Idle, that is one wake-up per poll interval. Signal handlers do
 * nothing: the signals are blocked and read from the signalfd. */
#ifndef JOBVISOR_LOOP_H
#define JOBVISOR_LOOP_H

#include "agent.h"

/* Block the signals the loop reads and open ag->sigfd; ignore SIGPIPE.
 * Returns 0 or -errno. */
int loop_signals_init(struct agent *ag);
void loop_signals_close(struct agent *ag);

/* Run until a shutdown completes. Returns the exit status (0). */
int loop_run(struct agent *ag);

#endif
