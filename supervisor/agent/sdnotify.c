/* sdnotify.c — the sd_notify(3) datagram protocol, enough of it for Type=notify. */
#include "sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

void sdnotify_open(struct sdnotify *n)
{
	memset(n, 0, sizeof(*n));
	n->fd = -1;
	const char *path = getenv("NOTIFY_SOCKET");
	size_t len = path ? strlen(path) : 0;
	if (len >= 2 && len < sizeof(n->addr) && (path[0] == '/' || path[0] == '@')) {
		memcpy(n->addr, path, len);
		if (path[0] == '@')
			n->addr[0] = '\0'; /* abstract namespace */
		n->addrlen = (unsigned)len;
		n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	}
	const char *usec = getenv("WATCHDOG_USEC");
	const char *pid = getenv("WATCHDOG_PID");
	if (usec && (!pid || atol(pid) == (long)getpid())) {
		long long us = atoll(usec);
		if (us > 0)
			n->watchdog_ms = us / 2000 > 0 ? us / 2000 : 1;
	}
}

void sdnotify_close(struct sdnotify *n)
{
	if (n->fd >= 0)
		close(n->fd);
	n->fd = -1;
}

int sdnotify_send(struct sdnotify *n, const char *state)
{
	if (n->fd < 0)
		return 0;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, n->addr, n->addrlen);
	socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n->addrlen);
	ssize_t w = sendto(n->fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
	return w < 0 ? -errno : 0;
}
