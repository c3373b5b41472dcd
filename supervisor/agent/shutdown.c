/* shutdown.c — how `jobvisor agent` stops: drain, cancel, kill, flush.
 *
 * SIGTERM or SIGINT starts a drain: the agent takes no new work (its polls
 * go on, with capacity 0, so leases stay renewed and cancellations still
 * arrive), running runs may finish for up to drain_timeout, then they are
 * cancelled (SIGTERM to their groups, seen by the scripts at safe points)
 * and SIGKILLed after shutdown_grace. Once no child is left, everything not
 * yet delivered gets one last attempt, and the agent exits 0; what the
 * control plane did not take stays in the spool for the next start.
 *
 * SIGQUIT cancels at once. A repeated SIGTERM/SIGINT moves one step further
 * (drain -> cancel -> kill) only when it comes SHUTDOWN_REPEAT_WINDOW_MS or
 * more after the signal that last took effect: Ctrl-C in a terminal together
 * with a wrapper's SIGTERM, or a process manager's SIGTERM to the whole
 * group, is one request, not an impatient second one.
 *
 * Called from the loop only (signals arrive through the signalfd); nothing
 * here runs in a signal handler. */
#include <signal.h>
#include <stdio.h>

#include "agent.h"
#include "delivery.h"
#include "instwatch.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "poller.h"
#include "scheduler.h"

#define FLUSH_MS 5000 /* the last delivery attempt once no child is left */

static void cancel_runs(struct agent *ag, int64_t now, const char *why)
{
	size_t live = scheduler_live_children(ag);
	ag->cancelling = true;
	ag->heartbeat_at_ms = 0; /* the state file shows the new phase now */
	ag->kill_at_ms = now + (int64_t)ag->cfg.shutdown_grace_s * 1000;
	if (live > 0)
		jv_warn(NULL, NULL, "%s: cancelling %zu running runs (SIGKILL after %d s)", why, live,
		        ag->cfg.shutdown_grace_s);
	sdnotify_send(&ag->notify, "STATUS=shutting down: cancelling running runs");
	scheduler_cancel_all(ag, JOBRUN_SHUTDOWN);
}

static void kill_runs(struct agent *ag)
{
	ag->hard_stop = true;
	scheduler_kill_all(ag);
	ag->killed = true;
}

static void begin(struct agent *ag, int sig, int64_t now)
{
	size_t live = scheduler_live_children(ag);
	ag->stopping = true;
	ag->heartbeat_at_ms = 0;
	ag->stop_at_ms = now;
	ag->drain_until_ms = now + (int64_t)ag->cfg.drain_timeout_s * 1000;
	ag->exit_by_ms = INT64_MAX; /* set when the flush starts */
	sdnotify_send(&ag->notify, "STOPPING=1\nSTATUS=shutting down: draining");
	if (sig == SIGQUIT) {
		jv_info(NULL, NULL, "SIGQUIT received: shutting down now");
		cancel_runs(ag, now, "SIGQUIT");
	} else if (ag->cfg.drain_timeout_s == 0) {
		jv_info(NULL, NULL, "%s received: shutting down (drain_timeout is 0)", jv_signal_name(sig));
		cancel_runs(ag, now, "drain_timeout is 0");
	} else {
		jv_info(NULL, NULL,
		        "%s received: shutting down: taking no new work; %zu running runs get up to %d s "
		        "to finish (drain_timeout); SIGQUIT, or the signal again after %d s, cancels them",
		        jv_signal_name(sig), live, ag->cfg.drain_timeout_s,
		        SHUTDOWN_REPEAT_WINDOW_MS / 1000);
	}
	/* A long poll held by the control plane could still bring work: drop it.
	 * A short poll is let answer: assignments in it are given back unstarted
	 * (not an attempt), not lost until the ack deadline. The next poll says
	 * capacity 0. */
	poller_abort_parked(ag);
	poller_poll_now(ag);
}

void shutdown_on_signal(struct agent *ag, int sig)
{
	int64_t now = jv_now_mono_ms();
	if (!ag->stopping) {
		ag->last_stop_signal_ms = now;
		begin(ag, sig, now);
		return;
	}
	int64_t since = now - ag->last_stop_signal_ms;
	if (sig == SIGQUIT && !ag->cancelling) {
		ag->last_stop_signal_ms = now;
		cancel_runs(ag, now, "SIGQUIT received while draining");
		return;
	}
	if (since < SHUTDOWN_REPEAT_WINDOW_MS) {
		jv_info(NULL, NULL, "%s received %.1f s after the last stop signal: the same request, "
		        "nothing more to do", jv_signal_name(sig), (double)since / 1000.0);
		return;
	}
	ag->last_stop_signal_ms = now;
	if (!ag->cancelling) {
		char why[64];
		snprintf(why, sizeof(why), "%s received again", jv_signal_name(sig));
		cancel_runs(ag, now, why);
	} else if (!ag->hard_stop) {
		jv_warn(NULL, NULL, "%s received again: killing job runs and exiting now",
		        jv_signal_name(sig));
		kill_runs(ag);
	}
}

static int64_t min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

bool shutdown_step(struct agent *ag, int64_t now, int64_t *next)
{
	if (!ag->stopping)
		return false;
	size_t live = scheduler_live_children(ag);
	if (live > 0) {
		if (!ag->cancelling && now >= ag->drain_until_ms) {
			char why[80];
			snprintf(why, sizeof(why), "drain_timeout (%d s) reached", ag->cfg.drain_timeout_s);
			cancel_runs(ag, now, why);
		}
		if (ag->cancelling && !ag->killed && now >= ag->kill_at_ms) {
			scheduler_kill_all(ag);
			ag->killed = true;
		}
		if (!ag->cancelling)
			*next = min64(*next, ag->drain_until_ms);
		else if (!ag->killed)
			*next = min64(*next, ag->kill_at_ms);
		return false; /* SIGCHLD wakes the loop when the children go */
	}
	if (ag->hard_stop)
		return true;
	if (!ag->flushing) {
		/* One last delivery attempt for everything, now, whatever its backoff;
		 * a run that fails it waits in the spool for the next start. */
		ag->flushing = true;
		ag->heartbeat_at_ms = 0;
		ag->exit_by_ms = now + FLUSH_MS;
		poller_abort_parked(ag);
		for (struct srun *r = ag->runs; r; r = r->next) {
			r->retry_at_ms = 0;
			r->failed_in_shutdown = false;
		}
		sdnotify_send(&ag->notify, "STATUS=shutting down: delivering what is left");
		*next = now; /* let the deliveries start before judging them settled */
		return false;
	}
	/* Run results and instance reports both get their last attempt, and a short
	 * poll in flight its answer (refusals of what it assigns are deliveries too). */
	if ((delivery_settled(ag) && !instwatch_busy(ag) && !poller_in_flight(ag)) ||
	    now >= ag->exit_by_ms)
		return true;
	*next = min64(*next, ag->exit_by_ms);
	return false;
}
