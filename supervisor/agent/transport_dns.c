/* transport_dns.c — getaddrinfo() on a short-lived thread.
 *
 * A resolver that hangs (a dead DNS server, NSS modules) must not stall the
 * agent's event loop: each lookup of a host name runs on its own detached
 * thread and signals an eventfd the loop waits on. The lookup's record is
 * shared by the thread and the caller and freed by whichever lets go last, so
 * a request that times out or is aborted just walks away from a hung lookup.
 * Numeric addresses (the usual case for a control plane on a LAN, and every
 * test) are resolved at once, without a thread. */
#include "transport_internal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define RESOLVER_STACK (256 * 1024)

struct tp_resolve {
	atomic_int refs;
	atomic_bool done;
	int efd;                /* -1 when resolved at once */
	int rc;                 /* getaddrinfo's */
	int sys_errno;          /* for EAI_SYSTEM */
	struct addrinfo *ai;
	char host[256];
	char port[8];
};

static void put(struct tp_resolve *r)
{
	if (atomic_fetch_sub(&r->refs, 1) != 1)
		return;
	if (r->ai)
		freeaddrinfo(r->ai);
	if (r->efd >= 0)
		close(r->efd);
	free(r);
}

static void lookup(struct tp_resolve *r, int flags)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
	                         .ai_protocol = IPPROTO_TCP, .ai_flags = AI_ADDRCONFIG | flags};
	r->rc = getaddrinfo(r->host, r->port, &hints, &r->ai);
	if (r->rc == EAI_SYSTEM)
		r->sys_errno = errno;
	if (r->rc == EAI_NONAME && (hints.ai_flags & AI_ADDRCONFIG)) {
		/* AI_ADDRCONFIG hides ::1 and 127.0.0.1 on a host whose only
		 * interface is the loopback one (containers); ask again without it. */
		hints.ai_flags &= ~AI_ADDRCONFIG;
		r->rc = getaddrinfo(r->host, r->port, &hints, &r->ai);
	}
}

static void *resolver_main(void *arg)
{
	struct tp_resolve *r = arg;
	lookup(r, 0);
	atomic_store(&r->done, true);
	uint64_t one = 1;
	if (write(r->efd, &one, sizeof(one)) < 0) {
		/* an eventfd write cannot fail short of a bug; the caller's timeout still ends the wait */
	}
	put(r);
	return NULL;
}

static int start_thread(struct tp_resolve *r)
{
	pthread_attr_t attr;
	if (pthread_attr_init(&attr))
		return -ENOMEM;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, RESOLVER_STACK);
	/* The thread takes no signal: they belong to the agent's signalfd. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_t t;
	atomic_fetch_add(&r->refs, 1);
	int rc = pthread_create(&t, &attr, resolver_main, r);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (rc) {
		atomic_fetch_sub(&r->refs, 1);
		return -rc;
	}
	return 0;
}

int tp_resolve_start(const char *host, const char *port, struct tp_resolve **out)
{
	*out = NULL;
	struct tp_resolve *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	atomic_init(&r->refs, 1);
	atomic_init(&r->done, false);
	r->efd = -1;
	snprintf(r->host, sizeof(r->host), "%s", host);
	snprintf(r->port, sizeof(r->port), "%s", port);
	lookup(r, AI_NUMERICHOST);
	if (r->rc != EAI_NONAME) { /* numeric: resolved (or refused) at once */
		atomic_store(&r->done, true);
		*out = r;
		return 0;
	}
	r->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (r->efd < 0) {
		int e = -errno;
		put(r);
		return e;
	}
	int rc = start_thread(r);
	if (rc) {
		put(r);
		return rc;
	}
	*out = r;
	return 0;
}

int tp_resolve_fd(const struct tp_resolve *r)
{
	return atomic_load(&r->done) ? -1 : r->efd;
}

int tp_resolve_result(struct tp_resolve *r, struct addrinfo **ai, char *err, size_t errlen)
{
	*ai = NULL;
	if (!atomic_load(&r->done))
		return -EAGAIN;
	if (r->rc) {
		snprintf(err, errlen, "cannot resolve '%s': %s", r->host,
		         r->rc == EAI_SYSTEM ? strerror(r->sys_errno) : gai_strerror(r->rc));
		return -EHOSTUNREACH;
	}
	*ai = r->ai;
	r->ai = NULL;
	return 0;
}

void tp_resolve_cancel(struct tp_resolve *r)
{
	if (r)
		put(r);
}
