/* instwatch_internal.h — what instwatch.c (instances, monitors, scanning)
 * and instreport.c (state events, their stream and delivery) share: the
 * per-instance record and the module's state. Private to supervisor/agent/. */
#ifndef JOBVISOR_INSTWATCH_INTERNAL_H
#define JOBVISOR_INSTWATCH_INTERNAL_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "jobvisor/backoff.h"
#include "jobvisor/ident.h"
#include "instwatch.h"

#define LAUNCH_BURST 5 /* launches per instance within LAUNCH_WINDOW_MS */

struct spool_run;
struct transport_req;
struct jv_monconn;

struct inst {
	struct instwatch *iw;
	char id[JV_IDENT_MAX + 1];
	char dir[PATH_MAX];
	int wd; /* inotify watch on .jobvisor/, -1 none */

	struct jv_monconn *mc; /* subscription */
	bool sub_ok;           /* the subscribe answer came */
	int64_t sub_deadline;
	int launch_fd; /* status pipe of a monitor the agent launched, -1 none */
	int64_t launch_deadline;
	int64_t launches[LAUNCH_BURST];
	size_t nlaunch;
	int64_t next_try_ms; /* next attach attempt when not subscribed; INT64_MAX = on change only */
	bool present;        /* seen in the last scan */

	struct spool_run *stream;
	cJSON *last; /* the last state event reported (owned) */
	/* What the stats need, from the latest status (live server only). */
	int64_t live_pid;
	uint64_t live_start_time;
	int64_t live_started_ms;
	char cgroup[PATH_MAX];

	struct transport_req *req;
	uint64_t req_last;
	int64_t retry_at_ms;
	struct backoff bo;
	bool failing;
	bool unanswered; /* the last failure got no answer: the control plane was unreachable */

	struct inst *next;
};

struct instwatch {
	struct agent *ag;
	char root[PATH_MAX]; /* <data_dir>/instances */
	int ino_fd;
	int root_wd;
	int64_t scan_at_ms;
	struct inst *list;
	size_t n;
	bool reporting;     /* the control plane knows instances (no 404 yet) */
	bool snap_wanted;
	int64_t snap_at_ms;
	struct transport_req *snap_req;
	struct backoff snap_bo;
	bool snap_unanswered; /* as inst.unanswered, for the snapshot */
	bool too_many_warned;
};

/* ---- instreport.c: what the control plane hears ---------------------------*/

/* A status (borrowed) from the monitor or state.json: report what changed;
 * override_state and message (NULL: the status's own) replace its words. */
void instreport_status(struct inst *in, const cJSON *st, const char *override_state, const char *message);
/* A non-state event of kind what ("monitor"), with message. */
void instreport_note(struct inst *in, const char *what, const char *message);
/* The instance directory is gone: REMOVED, once. */
void instreport_removed(struct inst *in);
/* The state last reported (borrowed from in->last), NULL if none. */
const char *instreport_last_state(const struct inst *in);
/* in->last at start, from the stream (see instreport.c). Returned-owned. */
cJSON *instreport_load_last(struct inst *in);
/* Send the instance's pending events when due (one request in flight). */
void instreport_deliver(struct instwatch *iw, struct inst *in, int64_t now);
/* Send the snapshot of every instance when wanted and due. */
void instreport_snapshot(struct instwatch *iw, int64_t now);
/* The control plane answered: retry now every report that is waiting out a
 * backoff because the control plane did not answer. */
void instreport_wake(struct instwatch *iw);

#endif
