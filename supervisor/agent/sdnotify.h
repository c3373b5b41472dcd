/* sdnotify.h — systemd service notifications (Type=notify) without libsystemd.
 *
 * When NOTIFY_SOCKET is set, READY=1, RELOADING=1, STOPPING=1, STATUS= and
 * WATCHDOG=1 go to it as datagrams; otherwise every call is a no-op. The
 * watchdog interval comes from WATCHDOG_USEC (honoured only when
 * WATCHDOG_PID is unset or ours); the agent pings at half of it. */
#ifndef JOBVISOR_SDNOTIFY_H
#define JOBVISOR_SDNOTIFY_H

#include <stdbool.h>
#include <stdint.h>

struct sdnotify {
	int fd;                 /* -1 when not under systemd */
	char addr[110];         /* sun_path (leading '\0' for abstract) */
	unsigned addrlen;
	int64_t watchdog_ms;    /* ping period, 0 = no watchdog */
};

/* Read the environment; never fails (a bad NOTIFY_SOCKET disables notifying). */
void sdnotify_open(struct sdnotify *n);
void sdnotify_close(struct sdnotify *n);
/* Send "KEY=VALUE\n..." lines. Returns 0 or -errno (ignored by callers). */
int sdnotify_send(struct sdnotify *n, const char *state);

#endif
