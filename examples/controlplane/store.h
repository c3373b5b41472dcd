/* store.h — the control plane's storage interface (issue 14).
 *
 * Handlers never see SQL: they call the functions below, and each backend
 * owns the SQL of its engine. Two backends:
 *   - SQLite (store_sqlite*.c): --db PATH, the default; one connection.
 *   - PostgreSQL (store_pg*.c): --db postgresql://user@host/dbname, libpq.
 * store_open() picks one from the --db string.
 *
 * Conventions for every call:
 *   - Return 0 on success, a negative errno on failure (-EIO for any engine
 *     error, which the backend logs; -ENOENT for an unknown id; -ENOMEM).
 *     Calls documented with other results say so.
 *   - Thread safety: every call may be made from any thread at any time; the
 *     backend serialises what it must (SQLite: one connection behind the
 *     backend's own mutex; PostgreSQL: one connection per call from a pool).
 *     Callers still hold cp->mu around calls today for the in-memory state;
 *     the store must not rely on that.
 *   - Atomicity: each call is one transaction unless documented otherwise —
 *     a crash or an error leaves all of it or none of it.
 *   - Several replicas may share one database (PostgreSQL, or SQLite files
 *     opened by several processes on one host). "A second replica" below
 *     means another process running the same call on the same database at
 *     the same time. State changes are conditional UPDATEs (old state in the
 *     WHERE clause) inside the transaction, so the loser of a race changes
 *     nothing and learns so from the result, never by a constraint error.
 *   - Times are wall-clock milliseconds (int64_t), 0 = unset; the caller
 *     passes `now` so one request uses one clock reading. The times a state
 *     change writes (started_at, finished_at, not_before) are the later of
 *     `now` and the clock read once the transaction holds its locks, so
 *     they follow commit order across replicas (a claim that waited for
 *     the lock shifts its ack and lease windows by the wait too).
 *   - Strings passed in are borrowed for the call; cJSON results and
 *     malloc'd strings handed out are owned by the caller.
 *   - JSON returned in the shapes of docs/protocol.md (jobs, runs,
 *     schedules, events) is built by the shared helpers of store_json.c from
 *     the row structs below, so both backends answer byte-identically.
 *
 * Schema and migrations: each backend has an ordered list of migrations;
 * migration i takes the schema from version i to i + 1 in one transaction
 * together with the version bump, and records it in a table
 * schema_version(version, applied_at). (SQLite keeps the current version
 * in PRAGMA user_version, as before the interface existed; PostgreSQL takes
 * max(version) of schema_version.) store_open() applies the missing ones at
 * start under the backend's migration lock (SQLite: BEGIN IMMEDIATE, the
 * version re-read inside; PostgreSQL: an advisory lock on a fixed key), so
 * of several replicas starting at once exactly one migrates and the others
 * find the schema current. A database newer than the binary is refused. */
#ifndef JV_CP_STORE_H
#define JV_CP_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "jobvisor/ident.h"

#ifndef CP_ID_MAX
#define CP_ID_MAX 129 /* job and run ids: 128 chars + NUL (also in cp.h) */
#endif

struct store;

/* ---- rows (plain C; strings are NUL-terminated copies) ---- */

/* A run's owner and state (store_run_state). */
struct store_run_state {
	char job_id[CP_ID_MAX];
	char agent_id[JV_IDENT_MAX + 1];
	char instance_id[JV_IDENT_MAX + 1];
	char status[16];
	char finished_by[16]; /* "" while not finished */
	int attempt;
	bool acked;
	bool cancel_requested;
	int64_t last_seq;
};

/* A job's basics (store_job_info). */
struct store_job_info {
	char status[16];
	char agent_id[JV_IDENT_MAX + 1];
	char type[72];
	char instance_id[JV_IDENT_MAX + 1];
	int max_attempts;
	bool cancel_requested;
	int last_attempt; /* highest attempt of its runs, 0 = none */
};

/* Filter of GET /v1/jobs. Newest first; before_seq continues below a seq. */
struct store_filter {
	const char *status[8];
	size_t nstatus;
	const char *agent_id;
	const char *instance_id;
	const char *type;
	int64_t before_seq;
	int limit;
};

/* A job to create. params is JSON text ("{}" when none). */
struct store_new_job {
	const char *job_id; /* required: the caller generates one */
	const char *type;
	const char *agent_id;
	const char *instance_id;
	const char *params;
	int max_attempts;
	int timeout_s;           /* 0 = agent default */
	int cancel_grace_s;      /* 0 = agent default */
	const char *schedule_id; /* NULL = none */
};

/* A schedule firing claim: move next_fire from old_next to new_next (and
 * record the firing) only if it still is old_next and the schedule is
 * enabled. */
struct store_sched_claim {
	const char *schedule_id;
	int64_t old_next, new_next, fire_at;
	const char *job_id; /* the job it made, NULL = none */
	const char *outcome;
};

/* Ending a run (store_run_finish). */
struct store_finish {
	const char *run_id;
	const char *status;      /* COMPLETED, FAILED or CANCELLED */
	const char *output;      /* JSON text or NULL */
	const char *error;       /* JSON text or NULL */
	const char *finished_by; /* "agent" or "server" */
	bool retryable;          /* the failure may be retried automatically */
	int64_t backoff_base_ms; /* retry delay: base * 2^(attempt-1), capped at backoff_cap_ms */
	int64_t backoff_cap_ms;
	int64_t lost_before;     /* server finish of a lost run: only if still lost at this time, else 0 */
	bool not_started;        /* the agent gave the run back unstarted (error.reason "not_started") */
	const char *note;        /* not_started: the run's message while it waits again */
	int64_t now;
};
struct store_finish_result {
	char job_id[CP_ID_MAX];
	char agent_id[JV_IDENT_MAX + 1];
	int attempt, max_attempts;
	bool retried;       /* a new run (attempt + 1) was queued */
	bool released;      /* not_started honoured: this run is QUEUED again, same attempt */
	bool cancelled;     /* not_started with a cancel requested: run and job CANCELLED */
	int64_t not_before; /* the backoff end of the new run (retried) or of this one (released) */
};

/* One event of a run (store_events_append). */
struct store_event {
	int64_t seq;
	const char *body;  /* JSON text as stored and replayed */
	bool progress;     /* not a log line: may change the run's percent/message */
	bool has_percent;
	double percent;
	const char *message; /* NULL = none */
	bool inserted;       /* out: new (false: this (run, seq) was stored before) */
};

/* One instance event (store_instance_events_append). */
struct store_inst_event {
	int64_t seq;
	const char *body;  /* JSON text */
	const char *state; /* non-NULL for kind "state" */
	bool inserted;     /* out */
};

/* One instance of an agent's snapshot (store_instances_snapshot). */
struct store_inst_snap {
	const char *instance_id;
	int64_t seq;
	const char *state;
	const char *body; /* JSON text: the state event */
	bool changed;     /* out: the row was written (its seq was not older) */
};

/* An instance row, handed to a callback (borrowed for the call). */
struct store_instance_row {
	const char *agent_id, *instance_id, *state, *body;
	int64_t last_seq, state_seq, updated_at;
	bool removed;
};
typedef int (*store_instance_fn)(void *ud, const struct store_instance_row *row);

/* A schedule's definition (create, update). */
struct store_schedule_def {
	const char *schedule_id;
	const char *cron, *timezone;
	const char *job; /* JSON text: the job template */
	bool enabled;
	const char *overlap; /* "skip" or "queue" */
};

/* A schedule that is due, handed to a callback (borrowed). */
struct store_due_schedule {
	const char *schedule_id, *cron, *timezone, *job, *overlap;
	int64_t next_fire;
};
typedef int (*store_due_fn)(void *ud, const struct store_due_schedule *d);

/* An expired run found by the sweep. */
struct store_lost_run {
	char run_id[CP_ID_MAX];
	char agent_id[JV_IDENT_MAX + 1];
	bool unacked; /* the ack deadline passed (else the lease) */
};

struct store_audit {
	int64_t at;
	const char *who, *role, *method, *path, *remote;
	int status;
};

struct store_options {
	bool sync_full;  /* SQLite: synchronous=FULL; PostgreSQL: ignored */
	int connections; /* PostgreSQL: the pool's size (0 = 8); SQLite: ignored */
};

/* ISO-8601 string, or JSON null for 0 (store_json.c); returned-owned. */
cJSON *store_time(int64_t ms);

/* ---- opening ---- */

/* Open the database named by --db: "postgresql://..." or "postgres://..."
 * selects PostgreSQL (an error naming the reason when built without it),
 * anything else is a SQLite file path. Applies migrations (see above).
 * 0 and *out, or <0 with err. */
int store_open(const char *db, const struct store_options *o, struct store **out, char *err, size_t errlen);
void store_close(struct store *s); /* NULL is a no-op */
/* Housekeeping from the main thread twice a second (SQLite: a PASSIVE WAL
 * checkpoint on a second connection, TRUNCATE when final). Never blocks
 * request calls for long. */
void store_maintain(struct store *s, bool final);
/* Readiness: 0 when a trivial query answers, else <0 with why. */
int store_ping(struct store *s, char *why, size_t len);
int store_schema_version(struct store *s); /* current version, <0 on error */
const char *store_backend_name(const struct store *s); /* "sqlite" or "postgresql" */

/* ---- jobs and runs: reads ---- */

/* A job with its runs (protocol JSON). -ENOENT when unknown. */
int store_job_json(struct store *s, const char *job_id, cJSON **out);
int store_run_json(struct store *s, const char *run_id, cJSON **out);
/* Jobs newest first; *next_seq = cursor for the next page, 0 = last page. */
int store_jobs_list(struct store *s, const struct store_filter *f, cJSON **jobs, int64_t *next_seq);
/* Events of a run with seq > after, ascending, at most limit (protocol JSON array). */
int store_run_events(struct store *s, const char *run_id, int64_t after, int limit, cJSON **events);
int store_run_state(struct store *s, const char *run_id, struct store_run_state *out); /* -ENOENT */
int store_job_info(struct store *s, const char *job_id, struct store_job_info *out);   /* -ENOENT */
/* The assignment object of a poll answer for a run. -ENOENT. */
int store_assignment_json(struct store *s, const char *run_id, cJSON **out);

/* ---- jobs and runs: state changes (each one transaction) ---- */

/* Insert a CREATED job, and when claim is not NULL, claim the schedule
 * firing in the same transaction. Results: 0 created; 1 a job with this id
 * exists with the same type, agent and instance (nothing changed: a
 * repeated create); -EEXIST it exists with another type/agent/instance;
 * -EAGAIN the claim was lost (another replica fired it; nothing inserted).
 * Two replicas creating the same job_id: one gets 0, the other 1. */
int store_job_create(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                     int64_t now);
/* CREATED -> QUEUED with run attempt 1 (new uuid). 0 done (*info filled,
 * may be NULL); 1 the job was not CREATED (another replica queued it:
 * nothing done); -ENOENT. */
int store_job_enqueue(struct store *s, const char *job_id, int64_t now, struct store_job_info *info);
/* Up to max ids of CREATED jobs last changed before `before` (0: all),
 * oldest first: restart recovery, and the sweep's for a creation whose
 * second transaction never ran. Returns the count. ids is max * CP_ID_MAX
 * chars. */
int store_jobs_created(struct store *s, int64_t before, char (*ids)[CP_ID_MAX], int max);

enum store_cancel {
	STORE_CANCELLED = 0,     /* not on an agent yet: job and run CANCELLED now */
	STORE_CANCEL_REQUESTED,  /* its run is RUNNING: cancel_requested set for the agent */
	STORE_CANCEL_ALREADY,    /* RUNNING and asked before: nothing changed */
};
/* Cancel a job. Returns an enum store_cancel (>= 0), -ENOENT, or
 * -EALREADY when the job is terminal (info->status says which). info and
 * run_id (the current run, "" when none) are filled. Atomic against a
 * concurrent assignment: the run is either cancelled before it was handed
 * out or marked cancel_requested after. */
int store_job_cancel(struct store *s, const char *job_id, int64_t now, struct store_job_info *info,
                     char run_id[CP_ID_MAX]);
/* Manual retry of a FAILED or CANCELLED job: a new QUEUED run (attempt =
 * last + 1, maxAttempts does not limit it), job RETRIED. 0, -ENOENT, or
 * -EBUSY when the job is in another state (info->status says which). Two
 * replicas retrying at once: one gets 0, the other -EBUSY (job RETRIED). */
int store_job_retry(struct store *s, const char *job_id, int64_t now, struct store_job_info *info);
/* End a run that is QUEUED or RUNNING: set its outcome; decide in the same
 * transaction whether an automatic retry follows (status FAILED, retryable,
 * no cancel requested on job or run, attempt < max_attempts) and if so
 * queue attempt + 1 with not_before = now + backoff; set the job's status
 * (RETRIED or the run's). Results: 0 done (*res filled); 1 the run was
 * already finished (or, with lost_before, no longer lost: renewed or
 * acknowledged meanwhile) — nothing changed, so a second replica's sweep or
 * a resent result is harmless; -ENOENT.
 * not_started (a FAILED result from the agent, error.reason "not_started"),
 * honoured only while the run is RUNNING and unacknowledged (no event
 * stored: nothing says it started): the attempt is not counted. The run goes
 * back to QUEUED (same run id and attempt, started_at cleared, message =
 * note, not_before = now + backoff_base_ms, one step) and its job to QUEUED
 * (attempt 1) or RETRIED; res->released. With a cancel requested on job or
 * run it is cancelled instead, as one not yet on an agent (run CANCELLED,
 * finished_by "server", job CANCELLED); res->cancelled. An acknowledged run
 * is finished as FAILED as usual. */
int store_run_finish(struct store *s, const struct store_finish *f, struct store_finish_result *res);

/* ---- dispatch ---- */

/* Make sure a row exists for each agent of the agents file. */
int store_agents_register(struct store *s, const char *const *agent_ids, size_t n);
/* Every stored agent: fn(ud, agent_id, last_seen, capacity). */
int store_agents_each(struct store *s, void (*fn)(void *ud, const char *agent_id, int64_t last_seen, int capacity),
                      void *ud);
int store_agent_running(struct store *s, const char *agent_id); /* RUNNING runs held, or <0 */
/* RUNNING runs per agent holding any, in one query: fn(ud, agent_id, n). */
int store_agents_running(struct store *s, void (*fn)(void *ud, const char *agent_id, int n), void *ud);
/* Ids of the agent's RUNNING runs, filtered: unacked_only = not yet
 * acknowledged by an event, cancel_only = cancel requested. Returns the
 * count (at most max). */
int store_agent_runs(struct store *s, const char *agent_id, bool unacked_only, bool cancel_only,
                     char (*ids)[CP_ID_MAX], int max);
/* RUNNING runs whose ack deadline (unacked) or lease passed before now; at
 * most max. Only candidates: finish them with lost_before = now, which
 * re-checks inside its transaction. */
int store_runs_lost(struct store *s, int64_t now, struct store_lost_run *out, int max);
/* Agents with a QUEUED run whose backoff ends in (after, until]: fn(ud, agent_id). */
int store_retry_agents(struct store *s, int64_t after, int64_t until, void (*fn)(void *ud, const char *agent_id),
                       void *ud);
/* After a restart: every RUNNING run gets lease_until, and unacked ones
 * ack_deadline (time while down is nobody's fault). */
int store_runs_refresh(struct store *s, int64_t lease_until, int64_t ack_deadline);

/* One agent poll's database work in one call (dispatch.c): renew the
 * leases of the listed runs the agent holds RUNNING, claim new work (the
 * guarantees of store_backend.h's runs_claim), and collect what the
 * answer needs. PostgreSQL: one transaction sent as one pipeline (one round
 * trip); the agent's advisory lock orders concurrent polls of one agent.
 * SQLite: the single calls in turn. Results (all returned-owned):
 *   jobs:    assignment objects: the agent's unacknowledged RUNNING runs it
 *            did not list (sent again: the answer that carried them may have
 *            been lost), then the runs claimed now in job seq order;
 *   cancel:  run ids: listed but not held RUNNING by this agent (unless the
 *            agent finished the run itself), then its RUNNING runs with a
 *            cancel requested;
 *   claimed: the job of each run claimed now, as stored after the claim
 *            (protocol JSON, for WebSocket clients);
 *   running: RUNNING runs the agent holds after the claim.
 * On error (<0) nothing is returned. */
struct store_poll {
	const char *agent_id;
	int capacity;
	const char *const *listed; /* run ids the agent lists as running */
	size_t nlisted;
	int64_t now, ack_deadline, lease_until;
	bool touch; /* also store last_seen = now and capacity */
	int max;    /* at most this many runs claimed, sent again, cancelled */
};
struct store_poll_result {
	cJSON *jobs, *cancel, *claimed;
	int running;
};
int store_poll(struct store *s, const struct store_poll *q, struct store_poll_result *out);

/* Job creation in one call (lifecycle.c): store_job_create, then on 0 (or 1
 * when the job found is still CREATED with the same type, agent and
 * instance) store_job_enqueue — two transactions, as the protocol's
 * CREATED -> QUEUED says; PostgreSQL sends both and the reads in one
 * pipeline (one round trip). Results as store_job_create. out->created and
 * out->queued: the job after each transaction made a change (NULL when it
 * made none); out->job: the job as stored at the end (on 0 and 1). All
 * returned-owned. When the enqueue fails after the create committed, the
 * result is -EIO and the job stays CREATED (queued by a repeated create or
 * at the next start). */
struct store_submitted {
	cJSON *created, *queued, *job;
};
int store_job_submit(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                     int64_t now, struct store_submitted *out);

/* ---- run events ---- */

/* Store a batch of a run's events, each (run, seq) once (ev[i].inserted),
 * in one transaction with one statement per batch where the engine allows:
 * move the run's last_seq to the highest contiguous seq from 1 (read inside
 * the transaction, so two replicas storing parts of one run's events
 * concurrently still agree), set acked, and take percent/message from the
 * highest-seq inserted progress event if newer than the stored one.
 * *ack_seq = the run's last_seq after; *was_acked = acked before.
 * PostgreSQL also publishes the inserted events to WebSocket clients, as
 * {"type":"event","event":BODY}, in the same transaction, and commits
 * concurrent calls together (group commit); it returns after the commit. */
int store_events_append(struct store *s, const char *run_id, struct store_event *ev, size_t n, int64_t now,
                        int64_t *ack_seq, bool *was_acked);

/* ---- instances ---- */

/* Store an instance's events with seq > its last_seq (ev[i].inserted) and
 * update the row: last_seq, and state/body from the newest state event
 * newer than state_seq (REMOVED marks it removed). Creates the row only
 * from a state event. Keeps the newest keep events of the instance.
 * *last_seq after; *known: the instance row exists now. One transaction. */
int store_instance_events_append(struct store *s, const char *agent_id, const char *instance_id,
                                 struct store_inst_event *ev, size_t n, int64_t now, int keep, int64_t *last_seq,
                                 bool *known);
/* An agent's full list: write each listed instance whose seq >= its
 * state_seq (changed = true; not removed), mark removed the agent's
 * instances not listed. removed_ids: malloc'd array of the instance ids
 * newly marked removed (*nremoved), caller frees. One transaction. */
int store_instances_snapshot(struct store *s, const char *agent_id, struct store_inst_snap *items, size_t n,
                             int64_t now, char (**removed_ids)[JV_IDENT_MAX + 1], size_t *nremoved);
/* Instances not removed, agent_id/state NULL = any, ordered by agent and
 * instance, at most 10000: fn per row (a non-zero return stops). */
int store_instances_list(struct store *s, const char *agent_id, const char *state, store_instance_fn fn, void *ud);
/* One instance (removed too): fn once; -ENOENT when unknown. */
int store_instance_get(struct store *s, const char *agent_id, const char *instance_id, store_instance_fn fn,
                       void *ud);
/* The newest limit events of an instance, oldest first (JSON array). */
int store_instance_history(struct store *s, const char *agent_id, const char *instance_id, int limit,
                           cJSON **events);

/* ---- job types reported by agents ---- */

int store_jobtypes_put(struct store *s, const char *agent_id, const char *body, int64_t now);
/* *report (parsed body) and *at; -ENOENT when never reported. */
int store_jobtypes_get(struct store *s, const char *agent_id, cJSON **report, int64_t *at);

/* ---- schedules ---- */

/* next_fire = 0 when disabled. -EEXIST when the id exists. */
int store_schedule_create(struct store *s, const struct store_schedule_def *d, int64_t next_fire, int64_t now);
/* Protocol JSON of one schedule (with lastJobStatus); -ENOENT. */
int store_schedule_json(struct store *s, const char *schedule_id, cJSON **out);
int store_schedules_list(struct store *s, cJSON **arr); /* oldest first, at most 10000 */
/* Replace the definition. next_fire: 0 when disabled; else next when
 * retime or when it was 0; else unchanged. -ENOENT. */
int store_schedule_update(struct store *s, const struct store_schedule_def *d, bool retime, int64_t next,
                          int64_t now);
int store_schedule_delete(struct store *s, const char *schedule_id); /* -ENOENT; its jobs are kept */
/* Enabled schedules with 0 < next_fire <= now, soonest first, at most max:
 * fn per row. Candidates only: firing goes through a claim. */
int store_schedules_due(struct store *s, int64_t now, int max, store_due_fn fn, void *ud);
/* Claim a firing without a job (skipped, missed, refused): 0 claimed, 1
 * lost (another replica moved next_fire first). */
int store_schedule_claim(struct store *s, const struct store_sched_claim *c);
/* 1 when a job of the schedule is not terminal, 0 when none, <0 on error. */
int store_schedule_active_job(struct store *s, const char *schedule_id);

/* ---- audit log ---- */

/* Append; *seq = the entry's seq (monotonic across replicas). */
int store_audit_append(struct store *s, const struct store_audit *a, int64_t *seq);
int store_audit_set_status(struct store *s, int64_t seq, int status);
/* Newest first below cursor (0 = from the top), at most limit: protocol
 * JSON entries {seq, at, who, role, method, path, status}; *last = the
 * smallest seq returned (0 when none). */
int store_audit_list(struct store *s, int64_t cursor, int limit, cJSON **entries, int64_t *last);

/* ---- metrics ---- */

/* fn(ud, type, status, count) per (type, status) of jobs, ordered. */
int store_metrics_jobs(struct store *s, void (*fn)(void *ud, const char *type, const char *status, int64_t n),
                       void *ud);
/* The run counters (table run_counters, moved by triggers on job_runs; they
 * only go up): times a run went QUEUED -> RUNNING; runs that reached
 * COMPLETED / FAILED / CANCELLED. Rows deleted by retention still count. */
int store_metrics_runs(struct store *s, int64_t *started, int64_t *completed, int64_t *failed, int64_t *cancelled);

/* ---- retention ---- */

/* One terminal job updated before cutoff that is not among the newest keep
 * jobs of its instance, oldest first: 1 and job_id, 0 none. */
int store_retention_pick(struct store *s, int64_t cutoff, int keep, char job_id[CP_ID_MAX]);
/* Delete up to batch events of the job's runs: the count deleted. */
int store_retention_events(struct store *s, const char *job_id, int batch);
/* Delete the job and its runs (after its events). */
int store_job_delete(struct store *s, const char *job_id);

/* ---- for backends: the operations table and the shared JSON builders ---- */

/* Every public call above maps 1:1 onto a member of struct store_ops (store.c
 * forwards); a backend's struct begins with struct store. */
struct store_ops;
struct store {
	const struct store_ops *ops;
};

#endif
