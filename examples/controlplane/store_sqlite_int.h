/* store_sqlite_int.h — internals shared by the SQLite backend's files
 * (store_sqlite*.c): the backend's struct and small statement helpers. */
#ifndef JV_CP_STORE_SQLITE_INT_H
#define JV_CP_STORE_SQLITE_INT_H

#include <pthread.h>
#include <stdarg.h>
#include <sqlite3.h>

#include "store_backend.h"

struct sq {
	struct store base;
	sqlite3 *db;         /* every call, under mu */
	sqlite3 *ck;         /* WAL checkpoints (store_maintain), main thread only */
	pthread_mutex_t mu;  /* recursive: serialises use of db */
	int64_t tx_now;      /* the clock read once the write lock was taken (sq_tx_begin) */
};

static inline struct sq *sq_of(struct store *s)
{
	return (struct sq *)s;
}

/* Lock / unlock the connection. */
void sq_lock(struct sq *q);
void sq_unlock(struct sq *q);
/* Prepare; logs and returns NULL on failure. */
sqlite3_stmt *sq_prep(struct sq *q, const char *sql);
/* Bind by a format, one letter per parameter from 1: s = const char *
 * (NULL binds NULL), i = int64_t, d = double, n = NULL (no argument). */
void sq_bind(sqlite3_stmt *st, const char *fmt, ...);
void sq_bindv(sqlite3_stmt *st, const char *fmt, va_list ap);
/* Prepare, bind, run to the end: rows changed, or -EIO (logged). */
int sq_exec(struct sq *q, const char *sql, const char *fmt, ...);
/* Prepare and bind for reading rows; NULL on failure (logged). */
sqlite3_stmt *sq_query(struct sq *q, const char *sql, const char *fmt, ...);
/* The first column of the first row as int64: 1 found, 0 no row, -EIO. */
int sq_int64(struct sq *q, int64_t *out, const char *sql, const char *fmt, ...);
/* Step a statement from sq_query: 1 row, 0 done, -EIO (logged). */
int sq_step(struct sq *q, sqlite3_stmt *st);
/* BEGIN IMMEDIATE (the write lock across processes), COMMIT, ROLLBACK. */
int sq_begin(struct sq *q);
int sq_commit(struct sq *q);
void sq_rollback(struct sq *q);
/* Finish a transaction: commit when rc == 0 (then 0 or -EIO), else roll back and return rc. */
int sq_end(struct sq *q, int rc);
/* Lock the connection and BEGIN IMMEDIATE: 0, or <0 (unlocked again). */
int sq_tx_begin(struct sq *q);
/* End what sq_tx_begin started and unlock: rc == 0 commits (0 or -EIO), rc > 0
 * (nothing to write) and rc < 0 roll back; returns rc. */
int sq_tx_end(struct sq *q, int rc);
/* The later of now and the clock read under the write lock: state-change
 * times follow commit order across processes. */
int64_t sq_tx_time(const struct sq *q, int64_t now);
/* Every row of st (finalized here) converted by conv into a new array *out; 0 or <0. */
int sq_rows(struct sq *q, sqlite3_stmt *st, cJSON *(*conv)(sqlite3_stmt *st, void *ud), void *ud, cJSON **out);
/* Column text copied into buf ("" for NULL). */
void sq_col(sqlite3_stmt *st, int col, char *buf, size_t len);
const char *sq_text(sqlite3_stmt *st, int col); /* NULL for NULL */

/* The operations of each domain file, gathered by store_sqlite.c. */
extern const struct store_ops sq_ops;

/* store_sqlite_jobs.c */
int sq_job_json(struct store *s, const char *job_id, cJSON **out);
int sq_run_json(struct store *s, const char *run_id, cJSON **out);
int sq_jobs_list(struct store *s, const struct store_filter *f, cJSON **jobs, int64_t *next_seq);
int sq_run_events(struct store *s, const char *run_id, int64_t after, int limit, cJSON **events);
int sq_run_state(struct store *s, const char *run_id, struct store_run_state *out);
int sq_job_info(struct store *s, const char *job_id, struct store_job_info *out);
int sq_assignment_json(struct store *s, const char *run_id, cJSON **out);
/* store_sqlite_life.c */
int sq_job_create(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                  int64_t now);
int sq_job_enqueue(struct store *s, const char *job_id, int64_t now, struct store_job_info *info);
int sq_jobs_created(struct store *s, int64_t before, char (*ids)[CP_ID_MAX], int max);
int sq_job_cancel(struct store *s, const char *job_id, int64_t now, struct store_job_info *info,
                  char run_id[CP_ID_MAX]);
int sq_job_retry(struct store *s, const char *job_id, int64_t now, struct store_job_info *info);
int sq_run_finish(struct store *s, const struct store_finish *f, struct store_finish_result *res);
int sq_sched_claim_locked(struct sq *q, const struct store_sched_claim *c); /* in a transaction: 0, 1 lost, <0 */
/* store_sqlite_dispatch.c */
int sq_agents_register(struct store *s, const char *const *agent_ids, size_t n);
int sq_agent_touch(struct store *s, const char *agent_id, int64_t last_seen, int capacity);
int sq_agents_each(struct store *s, void (*fn)(void *ud, const char *agent_id, int64_t last_seen, int capacity),
                   void *ud);
int sq_agent_running(struct store *s, const char *agent_id);
int sq_agents_running(struct store *s, void (*fn)(void *ud, const char *agent_id, int n), void *ud);
int sq_runs_renew(struct store *s, const char *agent_id, const char *const *run_ids, size_t n, int64_t lease_until,
                  bool *renewed);
int sq_agent_runs(struct store *s, const char *agent_id, bool unacked_only, bool cancel_only,
                  char (*ids)[CP_ID_MAX], int max);
int sq_runs_claim(struct store *s, const char *agent_id, int capacity, int64_t now, int64_t ack_deadline,
                  int64_t lease_until, char (*ids)[CP_ID_MAX], int max);
int sq_runs_lost(struct store *s, int64_t now, struct store_lost_run *out, int max);
int sq_retry_agents(struct store *s, int64_t after, int64_t until, void (*fn)(void *ud, const char *agent_id),
                    void *ud);
int sq_runs_refresh(struct store *s, int64_t lease_until, int64_t ack_deadline);
int sq_events_append(struct store *s, const char *run_id, struct store_event *ev, size_t n, int64_t now,
                     int64_t *ack_seq, bool *was_acked);
/* store_sqlite_inst.c */
int sq_instance_events_append(struct store *s, const char *agent_id, const char *instance_id,
                              struct store_inst_event *ev, size_t n, int64_t now, int keep, int64_t *last_seq,
                              bool *known);
int sq_instances_snapshot(struct store *s, const char *agent_id, struct store_inst_snap *items, size_t n,
                          int64_t now, char (**removed_ids)[JV_IDENT_MAX + 1], size_t *nremoved);
int sq_instances_list(struct store *s, const char *agent_id, const char *state, store_instance_fn fn, void *ud);
int sq_instance_get(struct store *s, const char *agent_id, const char *instance_id, store_instance_fn fn,
                    void *ud);
int sq_instance_history(struct store *s, const char *agent_id, const char *instance_id, int limit,
                        cJSON **events);
int sq_jobtypes_put(struct store *s, const char *agent_id, const char *body, int64_t now);
int sq_jobtypes_get(struct store *s, const char *agent_id, cJSON **report, int64_t *at);
/* store_sqlite_sched.c */
int sq_schedule_create(struct store *s, const struct store_schedule_def *d, int64_t next_fire, int64_t now);
int sq_schedule_json(struct store *s, const char *schedule_id, cJSON **out);
int sq_schedules_list(struct store *s, cJSON **arr);
int sq_schedule_update(struct store *s, const struct store_schedule_def *d, bool retime, int64_t next, int64_t now);
int sq_schedule_delete(struct store *s, const char *schedule_id);
int sq_schedules_due(struct store *s, int64_t now, int max, store_due_fn fn, void *ud);
int sq_schedule_claim(struct store *s, const struct store_sched_claim *c);
int sq_schedule_active_job(struct store *s, const char *schedule_id);
int sq_audit_append(struct store *s, const struct store_audit *a, int64_t *seq);
int sq_audit_set_status(struct store *s, int64_t seq, int status);
int sq_audit_list(struct store *s, int64_t cursor, int limit, cJSON **entries, int64_t *last);
int sq_metrics_jobs(struct store *s, void (*fn)(void *ud, const char *type, const char *status, int64_t n),
                    void *ud);
int sq_metrics_runs(struct store *s, int64_t *started, int64_t *completed, int64_t *failed, int64_t *cancelled);
int sq_retention_pick(struct store *s, int64_t cutoff, int keep, char job_id[CP_ID_MAX]);
int sq_retention_events(struct store *s, const char *job_id, int batch);
int sq_job_delete(struct store *s, const char *job_id);

#endif
