/* monitor_sock.h — `.jobvisor/monitor.sock` (monitor_sock.c). Stop requests
 * and lines sent to the console are reported through m->hooks. */
#ifndef JOBVISOR_MONITOR_SOCK_H
#define JOBVISOR_MONITOR_SOCK_H

#include "monitor_types.h"

int sock_listen(struct monitor *m);
void sock_accept(struct monitor *m);
void sock_on_client(struct monitor *m, struct mon_client *c, short revents);
void sock_broadcast_state(struct monitor *m);
void sock_broadcast_line(struct monitor *m, const char *line, size_t len, uint64_t seq);
void sock_finish_stop(struct monitor *m);
void sock_flush_all(struct monitor *m, int timeout_ms);
void sock_close(struct monitor *m);

#endif
