/* loop.c — wait, dispatch, repeat: signals, child pipes, HTTP, timers.
 *
 * Order within one pass: start what is due (poll, deliveries — which fsync
 * the spool first, so all events read in the previous pass share one
 * fdatasync), wait, then handle signals, child output, finished HTTP
 * requests, expired timers, and free what is done. Runs are only freed in
 * housekeeping at the end of a pass, so pointers gathered for the wait stay
 * valid while it is handled. */
#include "loop.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "delivery.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "poller.h"
#include "scheduler.h"
#include "transport.h"

#define MAX_FDS (1 + CONFIG_CAPACITY_MAX + 15) /* signalfd + one pipe per run */
#define MAX_SLEEP_MS (3600 * 1000)

int loop_signals_init(struct agent *ag)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -errno;
	signal(SIGPIPE, SIG_IGN); /* job-run children reset every disposition */
	ag->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	return ag->sigfd < 0 ? -errno : 0;
}

void loop_signals_close(struct agent *ag)
{
	if (ag->sigfd >= 0)
		close(ag->sigfd);
	ag->sigfd = -1;
}

static void on_signals(struct agent *ag)
{
	struct signalfd_siginfo si;
	bool reap = false, reload = false;
	for (;;) {
		ssize_t n = read(ag->sigfd, &si, sizeof(si));
		if (n != (ssize_t)sizeof(si))
			break;
		switch (si.ssi_signo) {
		case SIGCHLD:
			reap = true;
			break;
		case SIGHUP:
			reload = true;
			break;
		case SIGTERM:
		case SIGINT:
			if (!ag->stopping) {
				jv_info(NULL, NULL, "%s received: shutting down",
				        jv_signal_name((int)si.ssi_signo));
				agent_begin_shutdown(ag);
			} else if (!ag->hard_stop) {
				jv_warn(NULL, NULL, "%s received again: killing job runs and exiting now",
				        jv_signal_name((int)si.ssi_signo));
				ag->hard_stop = true;
				scheduler_kill_all(ag);
				ag->killed = true;
			}
			break;
		default:
			break;
		}
	}
	if (reap)
		scheduler_reap(ag);
	if (reload && !ag->stopping)
		agent_reload(ag);
}

static int64_t min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

/* During shutdown: kill at the grace deadline, exit once nothing is left. */
static bool shutdown_done(struct agent *ag, int64_t now)
{
	size_t live = scheduler_live_children(ag);
	if (live > 0 && !ag->killed && now >= ag->kill_at_ms) {
		scheduler_kill_all(ag);
		ag->killed = true;
		if (ag->exit_by_ms < now + 1000)
			ag->exit_by_ms = now + 1000;
	}
	if (live > 0)
		return false;
	return ag->hard_stop || delivery_settled(ag) || now >= ag->exit_by_ms;
}

int loop_run(struct agent *ag)
{
	struct pollfd fds[MAX_FDS];
	struct srun *owners[MAX_FDS];
	for (;;) {
		int64_t now = jv_now_mono_ms();
		if (ag->stopping && shutdown_done(ag, now))
			break;
		poller_tick(ag, now);
		delivery_kick_all(ag, now);
		if (ag->notify.watchdog_ms > 0 && now >= ag->watchdog_at_ms) {
			sdnotify_send(&ag->notify, "WATCHDOG=1");
			ag->watchdog_at_ms = now + ag->notify.watchdog_ms;
		}

		int64_t next = min64(poller_next_deadline(ag), delivery_next_deadline(ag));
		next = min64(next, scheduler_next_deadline(ag));
		if (ag->notify.watchdog_ms > 0)
			next = min64(next, ag->watchdog_at_ms);
		if (ag->stopping)
			next = min64(next, ag->killed ? ag->exit_by_ms : min64(ag->kill_at_ms, ag->exit_by_ms));
		int64_t wait = next == INT64_MAX ? MAX_SLEEP_MS : next - now;
		if (wait < 0)
			wait = 0;
		if (wait > MAX_SLEEP_MS)
			wait = MAX_SLEEP_MS;

		fds[0] = (struct pollfd){.fd = ag->sigfd, .events = POLLIN};
		owners[0] = NULL;
		size_t n = 1 + scheduler_pollfds(ag, fds + 1, owners + 1, MAX_FDS - 1);
		int rc = transport_wait(ag->tp, fds, (unsigned)n, (int)wait);
		if (rc) {
			/* Should not happen; never let it turn into a busy loop. */
			jv_warn(NULL, NULL, "waiting for events failed: %s", strerror(-rc));
			struct timespec pause = {0, 100 * 1000 * 1000};
			nanosleep(&pause, NULL);
		}

		if (fds[0].revents & POLLIN)
			on_signals(ag);
		for (size_t i = 1; i < n; i++)
			if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
				scheduler_on_readable(owners[i]);
		transport_perform(ag->tp);
		scheduler_on_timers(ag, jv_now_mono_ms());
		scheduler_housekeeping(ag);
	}
	return 0;
}
