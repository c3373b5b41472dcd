/* loop.c — wait, dispatch, repeat.
 *
 * Order within one pass: every source's prepare() (a source that decides the
 * work is over calls loop_stop() there, and the loop returns before the next
 * source runs), one wait on every source's descriptors with the earliest
 * deadline as timeout, ready() per ready descriptor in the order they were
 * filled, then every after(). A source frees what its descriptors point to
 * only in after(), so tags gathered for the wait stay valid while it is
 * handled. */
#include "loop.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define MAX_SLEEP_MS (3600 * 1000)

void loop_init(struct loop *l, loop_wait_fn wait, void *wait_ud)
{
	*l = (struct loop){.wait = wait, .wait_ud = wait_ud};
}

void loop_add(struct loop *l, struct loop_source *src)
{
	struct loop_source **p = &l->sources;
	while (*p)
		p = &(*p)->next;
	src->next = NULL;
	*p = src;
}

void loop_stop(struct loop *l)
{
	l->stop = true;
}

static int wait_events(struct loop *l, struct pollfd *fds, unsigned n, int timeout_ms)
{
	if (l->wait)
		return l->wait(l->wait_ud, fds, n, timeout_ms);
	return poll(fds, n, timeout_ms) < 0 && errno != EINTR ? -errno : 0;
}

int loop_run(struct loop *l)
{
	struct pollfd fds[LOOP_MAX_FDS];
	void *tags[LOOP_MAX_FDS];
	struct loop_source *owners[LOOP_MAX_FDS];
	l->stop = false;
	for (;;) {
		int64_t now = jv_now_mono_ms(), next = INT64_MAX;
		for (struct loop_source *s = l->sources; s; s = s->next) {
			int64_t d = s->prepare ? s->prepare(s->ud, now) : INT64_MAX;
			if (l->stop)
				return 0;
			if (d < next)
				next = d;
		}
		int64_t wait = next == INT64_MAX ? MAX_SLEEP_MS : next - now;
		if (wait < 0)
			wait = 0;
		if (wait > MAX_SLEEP_MS)
			wait = MAX_SLEEP_MS;

		size_t n = 0;
		for (struct loop_source *s = l->sources; s; s = s->next) {
			if (!s->fds)
				continue;
			size_t k = s->fds(s->ud, fds + n, tags + n, LOOP_MAX_FDS - n);
			for (size_t i = n; i < n + k; i++)
				owners[i] = s;
			n += k;
		}
		int rc = wait_events(l, fds, (unsigned)n, (int)wait);
		if (rc) {
			/* Should not happen; never let it turn into a busy loop. */
			jv_warn(NULL, NULL, "waiting for events failed: %s", strerror(-rc));
			struct timespec pause = {0, 100 * 1000 * 1000};
			nanosleep(&pause, NULL);
		}

		for (size_t i = 0; i < n; i++)
			if (fds[i].revents)
				owners[i]->ready(owners[i]->ud, tags[i], fds[i].revents);
		now = jv_now_mono_ms();
		for (struct loop_source *s = l->sources; s; s = s->next)
			if (s->after)
				s->after(s->ud, now);
	}
}
