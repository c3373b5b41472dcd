/* quiet_thread.h — worker threads that never take a signal.
 *
 * The job-run child handles its signals (cancel, the run's deadline) on the
 * main thread; a worker (hash queue, decompressor, trash sweeper) is started
 * with every signal blocked, so none is ever delivered to it. */
#ifndef JOBVISOR_QUIET_THREAD_H
#define JOBVISOR_QUIET_THREAD_H

#include <pthread.h>
#include <signal.h>

/* pthread_create with all signals blocked in the new thread; 0 or an errno. */
static inline int jv_quiet_thread(pthread_t *th, const pthread_attr_t *attr,
                                  void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	int rc = pthread_create(th, attr, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return rc;
}

#endif
