/* monitor_console.h — the server's console (monitor_console.c). Each complete
 * line is reported through m->hooks->console_line. */
#ifndef JOBVISOR_MONITOR_CONSOLE_H
#define JOBVISOR_MONITOR_CONSOLE_H

#include "monitor_types.h"

int con_open(struct monitor *m, bool fresh);
void con_on_readable(struct monitor *m);
void con_drain_output(struct monitor *m);
void con_drain_input(struct monitor *m);
int con_send(struct monitor *m, const char *line);
/* Last n complete lines; returned-owned cJSON array of strings. first_seq gets
 * the sequence number of the first line returned. */
cJSON *con_tail(struct monitor *m, int n, uint64_t since, uint64_t *first_seq);
void con_log_note(struct monitor *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void con_close(struct monitor *m);
bool con_ready_in_log(struct monitor *m);

#endif
