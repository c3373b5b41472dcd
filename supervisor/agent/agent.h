/* agent.h — the state of `jobvisor agent`, shared by its modules.
 *
 * One struct agent lives on cmd_agent's stack for the life of the daemon;
 * every module gets it by pointer (no globals). The modules split the work:
 *   agent.c      wires the modules into the loop; signals, reload, shutdown
 *   loop.c       waits on what the modules register: fds, timers, the network
 *   poller.c     asks the control plane for work and cancellations
 *   scheduler.c  admits assignments, starts and tracks job runs
 *   delivery.c   sends each run's events and result, in order, with retries
 *   spool.c      keeps each run's record on disk until it is delivered
 *   instwatch.c  watches instance monitors, re-adopts, reports instance state
 *   jobtypes.c   reports the job types (params schemas) this host can run
 *   transport.c  HTTP (endpoints.c: which control-plane URL of the list);
 *                config.c settings; sdnotify.c systemd notifications
 */
#ifndef JOBVISOR_AGENT_H
#define JOBVISOR_AGENT_H

#include <stdbool.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "jobvisor/backoff.h"
#include "jobvisor/config.h"
#include "loop.h"
#include "sdnotify.h"

struct instconsole;
struct inststats;
struct instwatch;
struct jobrun;
struct jobtypes;
struct spool;
struct spool_run;
struct transport;
struct transport_req;

enum delivery_kind { DELIVER_NONE = 0, DELIVER_EVENTS, DELIVER_RESULT };
/* What delivery asks of the run's owner (delivery_take_verdict). */
enum delivery_verdict {
	DELIVERY_CONTINUE = 0, /* nothing: keep delivering */
	DELIVERY_DROP,         /* 409: the run is no longer ours */
	DELIVERY_REJECT,       /* refused too often: give up, keep the record aside */
};

/* One run the agent holds: running, or finished with events or a result not
 * yet acknowledged by the control plane. */
struct srun {
	struct agent *ag;
	char run_id[132];
	char job_id[132];
	char instance_id[68];
	char type[68];

	struct spool_run *sr; /* the durable record; NULL once removed (delivered or dropped) */
	struct jobrun *jr;    /* the child; NULL when none (replayed, refused, reaped) */
	bool finished;        /* the result is known (in sr) */
	bool dropped;         /* 409: the run is no longer ours; forget it once reaped */
	bool cancel_sent;     /* jobrun_cancel called (cancels repeat in every poll answer) */
	bool spool_warned;    /* a spool write failed (logged once) */

	/* Delivery state (delivery.c). */
	struct transport_req *req;
	enum delivery_kind req_kind;
	uint64_t req_last;   /* highest seq in the events request in flight */
	int64_t retry_at_ms; /* monotonic; 0 = now */
	struct backoff bo;
	unsigned rejects;    /* consecutive 4xx answers */
	bool failing;        /* the last attempt failed (logged once per streak) */
	bool failed_in_shutdown;
	enum delivery_verdict verdict; /* not yet taken by the scheduler */
	bool cancel_asked;             /* an events answer had cancelRequested */
	char verdict_why[300];

	struct srun *next;
};

struct poller {
	struct transport_req *req;
	int64_t next_at_ms;      /* monotonic */
	int64_t sent_at_ms;
	int sent_wait_s;
	struct backoff bo;
	bool failing;
	unsigned failures;
	int64_t server_interval_ms; /* pollIntervalSeconds from the control plane, 0 = none */
	int64_t lease_ms;           /* leaseSeconds, 0 = unknown */
	bool again;                 /* poll again as soon as the poll in flight answers */
	int64_t ok_at_real_ms;      /* wall clock of the last answered poll, 0 = none yet */
};

struct agent {
	struct config cfg;
	const char *config_path; /* borrowed from argv, may be NULL */
	cJSON *child_settings;   /* owned */
	int run_uid, run_gid;    /* job runs switch to cfg.user (agent as root), else -1 */

	struct transport *tp;
	struct spool *spool;
	struct poller poller;
	struct sdnotify notify;
	struct srun *runs;
	struct instwatch *iw; /* instance monitors (instwatch.c); NULL when off */
	struct instconsole *ic; /* watched consoles (instconsole.c); NULL when off */
	struct inststats *is;   /* resource stats (inststats.c); NULL when off */
	struct jobtypes *jt;    /* job types reported to the control plane (jobtypes.c) */

	struct loop loop;
	int sigfd;
	/* Shutdown (shutdown.c): drain, then cancel, then kill; each step later
	 * than the one before, never undone. */
	bool stopping;     /* a stop signal was taken: no new work, wind down */
	bool cancelling;   /* running runs were asked to stop (drain over, SIGQUIT, repeat) */
	bool hard_stop;    /* kill everything now, exit without the final delivery */
	bool killed;       /* children were SIGKILLed */
	bool flushing;     /* no children left: last delivery attempt, then exit */
	int64_t stop_at_ms;
	int64_t drain_until_ms;
	int64_t kill_at_ms;
	int64_t exit_by_ms;
	int64_t last_stop_signal_ms; /* the stop signal that last took effect */
	int64_t watchdog_at_ms;
	/* Liveness for `jobvisor health` (health_state.c). */
	int64_t started_real_ms;
	int64_t heartbeat_at_ms;    /* monotonic: next write of the state file */
	bool state_warned;
	uint64_t state_url_gen;     /* transport_url_gen() the state file shows */
};

/* agent.c */
void agent_reload(struct agent *ag);

/* shutdown.c — SIGTERM/SIGINT drain, SIGQUIT (or a repeat after the window)
 * cancels now, a further repeat kills. */
#define SHUTDOWN_REPEAT_WINDOW_MS 2000
void shutdown_on_signal(struct agent *ag, int sig);
/* Advance the shutdown (cancel at the drain deadline, kill at the grace
 * deadline, flush once no child is left). Returns true when the agent may
 * exit; *next is lowered to the next shutdown deadline. */
bool shutdown_step(struct agent *ag, int64_t now_ms, int64_t *next);

/* health_state.c — the state file `jobvisor health` reads (jobvisor/health.h). */
/* Write the state file when due; returns the next time it is due. */
int64_t health_state_beat(struct agent *ag, int64_t now_ms);
void health_state_remove(struct agent *ag);

#endif
