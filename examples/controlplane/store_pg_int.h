/* store_pg_int.h — internals shared by the PostgreSQL backend's files.
 *
 * store_pg.c          opening, the operations table, reads of jobs and runs
 * store_pg_jobs.c     job and run state changes (create .. finish)
 * store_pg_dispatch.c agents, leases, claims, the sweep's queries
 * store_pg_evgroup.c  run events: group commit of concurrent requests
 * store_pg_events.c   run events: one group's transaction (and its ws_log rows)
 * store_pg_inst.c     instances and job types
 * store_pg_misc.c     schedules, audit log, metrics, retention
 * store_pg_bus.c      cross-replica wake-ups and the WebSocket log (store_pg.h)
 *
 * Every call takes a pooled connection for its duration (pgs_conn /
 * pgs_done); a transaction never outlives the call. */
#ifndef JV_CP_STORE_PG_INT_H
#define JV_CP_STORE_PG_INT_H

#include <pthread.h>

#include "store_pg_conn.h"
#include "store_backend.h"
#include "store_pg.h"

#include "jobvisor/util.h"

struct pg_listener;
struct pgs_evreq;

/* Group commit of run events (store_pg_evgroup.c): requests waiting for a
 * writer, and how many writers are committing a group now. */
struct pgs_evq {
	pthread_mutex_t mu;
	struct pgs_evreq *head, *tail;
	int writers;
};

struct store_pg {
	struct store base;
	struct pg_pool *pool;
	char *url;
	struct pg_listener *listener; /* store_pg_bus.c */
	struct store_signals sig;     /* set before the listener starts */
	uint64_t ws_delivered;        /* last WebSocket seq handed to sig.ws (listener thread) */
	int64_t ws_trimmed_ms;        /* last trim of ws_log (main thread) */
	struct pgs_evq evq;           /* store_pg_evgroup.c */
};

static inline struct store_pg *pgs(struct store *s)
{
	return (struct store_pg *)s;
}

static inline PGconn *pgs_conn(struct store *s)
{
	return pg_acquire(pgs(s)->pool);
}

static inline void pgs_done(struct store *s, PGconn *c)
{
	pg_release(pgs(s)->pool, c);
}

/* Append s as an element of a PostgreSQL text-array literal being built in b
 * ("{" and "}" by the caller; first = no comma before). */
int pgs_array_add(struct jv_buf *b, const char *s, bool first);
/* ids as a whole text-array literal, NUL-terminated (store_pg_dispatch.c); -ENOMEM. */
int pgs_text_array(struct jv_buf *b, const char *const *ids, size_t n);
/* A batch of (seq, body) rows as two array literals, for one
 * INSERT ... SELECT FROM unnest($seqs::bigint[], $bodies::text[]). */
struct pgs_batch {
	struct jv_buf seqs, bodies;
	size_t n;
	int rc;
};
void pgs_batch_init(struct pgs_batch *b);
void pgs_batch_add(struct pgs_batch *b, int64_t seq, const char *body);
int pgs_batch_end(struct pgs_batch *b); /* closes both literals: 0 or -ENOMEM */
void pgs_batch_free(struct pgs_batch *b);
/* Rollback (when c is in a transaction), release, return rc. */
int pgs_fail(struct store *s, PGconn *c, int rc);
/* One statement on a pooled connection (its own transaction): the result
 * or NULL (logged); pgs_cmd: rows affected or -EIO. */
PGresult *pgs_query(struct store *s, const char *sql, const struct pg_params *p);
int pgs_cmd(struct store *s, const char *sql, const struct pg_params *p);
/* pgs_query for a hot statement of fixed text: prepared on the connection
 * (a pipeline of one, store_pg_prep.c). */
PGresult *pgs_query_prepared(struct store *s, const char *sql, const struct pg_params *p);
/* Copy a column into a fixed buffer. */
void pgs_copy(char *dst, size_t len, const PGresult *r, int row, int col);
/* Serialise the instance ids of (agent, instance) inside a transaction. */
int pgs_lock_key(PGconn *c, const char *kind, const char *a, const char *b);
/* Its statement, for pipelines: $1 kind, $2 a, $3 b ("" when none). */
extern const char PGS_SQL_LOCK[];

/* store_pg.c */
/* The columns pgs_run_json_row and pgs_job_row read, in their order. */
#define RUN_COLUMNS                                                                             \
	"run_id, job_id, attempt, agent_id, status, percent, message, last_seq, acked,"         \
	" cancel_requested, output, error, finished_by, not_before, created_at, started_at,"     \
	" finished_at"
#define JOB_COLUMNS                                                                      \
	"seq, job_id, type, agent_id, instance_id, params, status, max_attempts, timeout_s," \
	" cancel_grace_s, cancel_requested, created_at, updated_at, schedule_id"
cJSON *pgs_run_json_row(const PGresult *r, int row);
int pgs_job_info(struct store *s, const char *job_id, struct store_job_info *out);
int pgs_job_info_c(PGconn *c, const char *job_id, bool lock, struct store_job_info *out);
int pgs_run_state(struct store *s, const char *run_id, struct store_run_state *out);
int pgs_assignment_json(struct store *s, const char *run_id, cJSON **out);
void pgs_job_row(const PGresult *r, int row, struct store_job_row *j);

/* store_pg_jobs.c */
int pgs_job_create(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                   int64_t now);
int pgs_job_enqueue(struct store *s, const char *job_id, int64_t now, struct store_job_info *info);
int pgs_jobs_created(struct store *s, int64_t before, char (*ids)[CP_ID_MAX], int max);
int pgs_job_cancel(struct store *s, const char *job_id, int64_t now, struct store_job_info *info,
                   char run_id[CP_ID_MAX]);
int pgs_job_retry(struct store *s, const char *job_id, int64_t now, struct store_job_info *info);
int pgs_run_finish(struct store *s, const struct store_finish *f, struct store_finish_result *res);
int pgs_insert_run(PGconn *c, const char *job_id, const char *agent_id, int attempt, int64_t not_before,
                   int64_t now);
int pgs_sched_claim_c(PGconn *c, const struct store_sched_claim *cl);

/* store_pg_dispatch.c */
int pgs_agents_register(struct store *s, const char *const *agent_ids, size_t n);
int pgs_agents_each(struct store *s, void (*fn)(void *ud, const char *agent_id, int64_t last_seen, int capacity),
                    void *ud);
int pgs_agent_running(struct store *s, const char *agent_id);
int pgs_agents_running(struct store *s, void (*fn)(void *ud, const char *agent_id, int n), void *ud);
int pgs_agent_runs(struct store *s, const char *agent_id, bool unacked_only, bool cancel_only,
                   char (*ids)[CP_ID_MAX], int max);
int pgs_runs_lost(struct store *s, int64_t now, struct store_lost_run *out, int max);
int pgs_retry_agents(struct store *s, int64_t after, int64_t until, void (*fn)(void *ud, const char *agent_id),
                     void *ud);
int pgs_runs_refresh(struct store *s, int64_t lease_until, int64_t ack_deadline);

/* store_pg_evgroup.c: events requests are committed in groups */
int pgs_events_append(struct store *s, const char *run_id, struct store_event *ev, size_t n, int64_t now,
                      int64_t *ack_seq, bool *was_acked);
void pgs_evq_init(struct pgs_evq *q);
void pgs_evq_destroy(struct pgs_evq *q);
/* One events request of a group: in run_id .. now, out the rest. */
struct pgs_evreq {
	const char *run_id;
	struct store_event *ev;
	size_t n;
	int64_t now;
	size_t bytes;     /* of the bodies */
	int64_t ack_seq;  /* out */
	bool was_acked;   /* out */
	int rc;           /* out: 0, -ENOENT (no such run) or -errno */
	bool taken, done; /* under evq.mu */
	pthread_cond_t cond;
	struct pgs_evreq *next;
};
/* store_pg_events.c: store the k requests (distinct runs) in one
 * transaction and publish the new events to WebSocket clients (ws_log) in
 * it; each r[i].rc is set. -EIO when the transaction failed (nothing of it
 * is stored), else 0. */
int pgs_events_group(struct store *s, struct pgs_evreq *const *r, size_t k);

/* store_pg_inst.c */
int pgs_instance_events_append(struct store *s, const char *agent_id, const char *instance_id,
                               struct store_inst_event *ev, size_t n, int64_t now, int keep, int64_t *last_seq,
                               bool *known);
int pgs_instances_snapshot(struct store *s, const char *agent_id, struct store_inst_snap *items, size_t n,
                           int64_t now, char (**removed_ids)[JV_IDENT_MAX + 1], size_t *nremoved);
int pgs_instances_list(struct store *s, const char *agent_id, const char *state, store_instance_fn fn, void *ud);
int pgs_instance_get(struct store *s, const char *agent_id, const char *instance_id, store_instance_fn fn,
                     void *ud);
int pgs_instance_history(struct store *s, const char *agent_id, const char *instance_id, int limit,
                         cJSON **events);
int pgs_jobtypes_put(struct store *s, const char *agent_id, const char *body, int64_t now);
int pgs_jobtypes_get(struct store *s, const char *agent_id, cJSON **report, int64_t *at);

/* store_pg_misc.c */
int pgs_schedule_create(struct store *s, const struct store_schedule_def *d, int64_t next_fire, int64_t now);
int pgs_schedule_json(struct store *s, const char *schedule_id, cJSON **out);
int pgs_schedules_list(struct store *s, cJSON **arr);
int pgs_schedule_update(struct store *s, const struct store_schedule_def *d, bool retime, int64_t next,
                        int64_t now);
int pgs_schedule_delete(struct store *s, const char *schedule_id);
int pgs_schedules_due(struct store *s, int64_t now, int max, store_due_fn fn, void *ud);
int pgs_schedule_claim(struct store *s, const struct store_sched_claim *c);
int pgs_schedule_active_job(struct store *s, const char *schedule_id);
int pgs_audit_append(struct store *s, const struct store_audit *a, int64_t *seq);
int pgs_audit_set_status(struct store *s, int64_t seq, int status);
int pgs_audit_list(struct store *s, int64_t cursor, int limit, cJSON **entries, int64_t *last);
int pgs_metrics_jobs(struct store *s, void (*fn)(void *ud, const char *type, const char *status, int64_t n),
                     void *ud);
int pgs_metrics_runs(struct store *s, int64_t *started, int64_t *completed, int64_t *failed, int64_t *cancelled);
int pgs_retention_pick(struct store *s, int64_t cutoff, int keep, char job_id[CP_ID_MAX]);
int pgs_retention_events(struct store *s, const char *job_id, int batch);
int pgs_job_delete(struct store *s, const char *job_id);

/* store_pg_poll.c: store_poll and store_job_submit, one pipeline each */
int pgs_poll(struct store *s, const struct store_poll *q, struct store_poll_result *out);
int pgs_job_submit(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                   int64_t now, struct store_submitted *out);
/* The claim statement ($1 agent, $2 now, $3 ack deadline, $4 lease end,
 * $5 capacity, $6 max): rows (run_id, job seq); needs the agent's lock. */
extern const char PGS_SQL_CLAIM[];
int pgs_claimed_ids(const PGresult *r, char (*ids)[CP_ID_MAX], int max);
/* Lease renewal ($1 lease end, $2 agent, $3 text[] of run ids): the run ids renewed. */
extern const char PGS_SQL_RENEW[];

/* store_pg_bus.c */
void pgs_bus_stop(struct store_pg *sp);
void pgs_bus_maintain(struct store_pg *sp); /* trims ws_log now and then */

#endif
