/* loop.h — a single-threaded event loop that knows no module by name.
 *
 * Modules register a struct loop_source (libuv's uv__io_start is the model):
 * before each wait the loop asks every source to start what is due and for
 * its next deadline, then for the descriptors it waits on; after the wait it
 * hands each ready descriptor back to its source, then lets every source
 * handle what finished and what expired. The wait itself is a callback too
 * (the agent waits in transport_wait, so the network and the descriptors
 * share one wait). Idle, that is one wake-up per earliest deadline. */
#ifndef JOBVISOR_LOOP_H
#define JOBVISOR_LOOP_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOOP_MAX_FDS 1024 /* signalfd, job runs, instance monitors and consoles */

/* Every hook is optional (NULL). ud is the source's own, borrowed. */
struct loop_source {
	void *ud;
	/* Start what is due; return the next deadline (monotonic ms, INT64_MAX for none). */
	int64_t (*prepare)(void *ud, int64_t now_ms);
	/* Fill up to max descriptors to wait on, tagging each; returns how many. */
	size_t (*fds)(void *ud, struct pollfd *fds, void **tags, size_t max);
	/* A descriptor this source filled has revents (any: the source decides). */
	void (*ready)(void *ud, void *tag, short revents);
	/* After the wait and every ready(): finished work, expired timers. */
	void (*after)(void *ud, int64_t now_ms);
	struct loop_source *next; /* the loop's */
};

/* Waits up to timeout_ms for network activity or one of fds. Returns 0 or -errno. */
typedef int (*loop_wait_fn)(void *ud, struct pollfd *fds, unsigned nfds, int timeout_ms);

struct loop {
	struct loop_source *sources; /* in registration order */
	loop_wait_fn wait;           /* NULL: poll(2) */
	void *wait_ud;
	bool stop;
};

void loop_init(struct loop *l, loop_wait_fn wait, void *wait_ud);
/* Register src (borrowed; it must outlive the loop). Hooks run in
 * registration order. */
void loop_add(struct loop *l, struct loop_source *src);
/* Return from loop_run before the next wait (call from a hook). */
void loop_stop(struct loop *l);
/* Run until loop_stop. Returns 0. */
int loop_run(struct loop *l);

#endif
