/* store_backend.h — what a storage backend implements (store_sqlite*.c,
 * store_pg*.c), and the JSON builders all backends share (store_json.c).
 *
 * A backend allocates a struct whose first member is struct store, points
 * ops at its table, and is opened by store_open() (store.c) through its open
 * function below. Each member of struct store_ops has the contract of the
 * store_<member>() call of the same name in store.h; store.c forwards. */
#ifndef JV_CP_STORE_BACKEND_H
#define JV_CP_STORE_BACKEND_H

#include "store.h"

struct store_ops {
	void (*close)(struct store *s);
	void (*maintain)(struct store *s, bool final);
	int (*ping)(struct store *s, char *why, size_t len);
	int (*schema_version)(struct store *s);
	const char *(*backend_name)(const struct store *s);
	int (*job_json)(struct store *s, const char *job_id, cJSON **out);
	int (*run_json)(struct store *s, const char *run_id, cJSON **out);
	int (*jobs_list)(struct store *s, const struct store_filter *f, cJSON **jobs, int64_t *next_seq);
	int (*run_events)(struct store *s, const char *run_id, int64_t after, int limit, cJSON **events);
	int (*run_state)(struct store *s, const char *run_id, struct store_run_state *out);
	int (*job_info)(struct store *s, const char *job_id, struct store_job_info *out);
	int (*assignment_json)(struct store *s, const char *run_id, cJSON **out);
	int (*job_create)(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
	                  int64_t now);
	int (*job_enqueue)(struct store *s, const char *job_id, int64_t now, struct store_job_info *info);
	int (*jobs_created)(struct store *s, int64_t before, char (*ids)[CP_ID_MAX], int max);
	int (*job_cancel)(struct store *s, const char *job_id, int64_t now, struct store_job_info *info,
	                  char run_id[CP_ID_MAX]);
	int (*job_retry)(struct store *s, const char *job_id, int64_t now, struct store_job_info *info);
	int (*run_finish)(struct store *s, const struct store_finish *f, struct store_finish_result *res);
	int (*agents_register)(struct store *s, const char *const *agent_ids, size_t n);
	int (*agents_each)(struct store *s, void (*fn)(void *ud, const char *agent_id, int64_t last_seen, int capacity),
	                   void *ud);
	int (*agent_running)(struct store *s, const char *agent_id);
	int (*agents_running)(struct store *s, void (*fn)(void *ud, const char *agent_id, int n), void *ud);
	int (*agent_runs)(struct store *s, const char *agent_id, bool unacked_only, bool cancel_only,
	                  char (*ids)[CP_ID_MAX], int max);
	int (*runs_lost)(struct store *s, int64_t now, struct store_lost_run *out, int max);
	int (*retry_agents)(struct store *s, int64_t after, int64_t until, void (*fn)(void *ud, const char *agent_id),
	                    void *ud);
	int (*runs_refresh)(struct store *s, int64_t lease_until, int64_t ack_deadline);
	int (*events_append)(struct store *s, const char *run_id, struct store_event *ev, size_t n, int64_t now,
	                     int64_t *ack_seq, bool *was_acked);
	int (*instance_events_append)(struct store *s, const char *agent_id, const char *instance_id,
	                              struct store_inst_event *ev, size_t n, int64_t now, int keep, int64_t *last_seq,
	                              bool *known);
	int (*instances_snapshot)(struct store *s, const char *agent_id, struct store_inst_snap *items, size_t n,
	                          int64_t now, char (**removed_ids)[JV_IDENT_MAX + 1], size_t *nremoved);
	int (*instances_list)(struct store *s, const char *agent_id, const char *state, store_instance_fn fn, void *ud);
	int (*instance_get)(struct store *s, const char *agent_id, const char *instance_id, store_instance_fn fn,
	                    void *ud);
	int (*instance_history)(struct store *s, const char *agent_id, const char *instance_id, int limit,
	                        cJSON **events);
	int (*jobtypes_put)(struct store *s, const char *agent_id, const char *body, int64_t now);
	int (*jobtypes_get)(struct store *s, const char *agent_id, cJSON **report, int64_t *at);
	int (*schedule_create)(struct store *s, const struct store_schedule_def *d, int64_t next_fire, int64_t now);
	int (*schedule_json)(struct store *s, const char *schedule_id, cJSON **out);
	int (*schedules_list)(struct store *s, cJSON **arr);
	int (*schedule_update)(struct store *s, const struct store_schedule_def *d, bool retime, int64_t next,
	                       int64_t now);
	int (*schedule_delete)(struct store *s, const char *schedule_id);
	int (*schedules_due)(struct store *s, int64_t now, int max, store_due_fn fn, void *ud);
	int (*schedule_claim)(struct store *s, const struct store_sched_claim *c);
	int (*schedule_active_job)(struct store *s, const char *schedule_id);
	int (*audit_append)(struct store *s, const struct store_audit *a, int64_t *seq);
	int (*audit_set_status)(struct store *s, int64_t seq, int status);
	int (*audit_list)(struct store *s, int64_t cursor, int limit, cJSON **entries, int64_t *last);
	int (*metrics_jobs)(struct store *s, void (*fn)(void *ud, const char *type, const char *status, int64_t n),
	                    void *ud);
	int (*metrics_runs)(struct store *s, int64_t *started, int64_t *completed, int64_t *failed, int64_t *cancelled);
	int (*retention_pick)(struct store *s, int64_t cutoff, int keep, char job_id[CP_ID_MAX]);
	int (*retention_events)(struct store *s, const char *job_id, int batch);
	int (*job_delete)(struct store *s, const char *job_id);
	int (*poll)(struct store *s, const struct store_poll *q, struct store_poll_result *out);
	int (*job_submit)(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
	                  int64_t now, struct store_submitted *out);

	/* The steps of store_poll_steps (below), called by nothing else: NULL
	 * in a backend with its own poll (PostgreSQL's is one pipeline). */
	/* Store the agent's last_seen and capacity. */
	int (*agent_touch)(struct store *s, const char *agent_id, int64_t last_seen, int capacity);
	/* Renew the lease (until lease_until) of each listed run the agent holds
	 * RUNNING; renewed[i] says which were. One transaction. */
	int (*runs_renew)(struct store *s, const char *agent_id, const char *const *run_ids, size_t n,
	                  int64_t lease_until, bool *renewed);
	/* Claim work for an agent: in one transaction (SQLite: BEGIN IMMEDIATE),
	 * count its RUNNING runs, pick up to min(capacity - running, max) QUEUED
	 * runs whose not_before <= now, in job seq order, skipping any whose
	 * instance has an earlier job still active or a run RUNNING (at most one
	 * per instance per claim), and move each QUEUED -> RUNNING (job too) with
	 * a conditional UPDATE (status = 'QUEUED'), started_at = now,
	 * ack_deadline, lease_until. Returns the count claimed, ids filled in
	 * order. Guarantee: a run is claimed by exactly one call, across all
	 * replicas, and an instance's jobs start one at a time in creation order
	 * (PostgreSQL's poll claims with the same guarantees: PGS_SQL_CLAIM). */
	int (*runs_claim)(struct store *s, const char *agent_id, int capacity, int64_t now, int64_t ack_deadline,
	                  int64_t lease_until, char (*ids)[CP_ID_MAX], int max);
};

/* store_poll and store_job_submit made of the single calls above, for a
 * backend whose engine serialises its calls anyway (SQLite, which holds its
 * connection's recursive mutex around them) (store_steps.c). */
int store_poll_steps(struct store *s, const struct store_poll *q, struct store_poll_result *out);
int store_job_submit_steps(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                           int64_t now, struct store_submitted *out);

/* Backends' open functions (store_open picks one). Same contract as store_open. */
int store_sqlite_open(const char *path, const struct store_options *o, struct store **out, char *err, size_t errlen);
int store_pg_open(const char *conninfo, const struct store_options *o, struct store **out, char *err, size_t errlen);

/* ---- shared row -> protocol JSON (store_json.c); strings borrowed, NULL = JSON null ---- */

struct store_run_row {
	const char *run_id, *job_id, *agent_id, *status, *message, *finished_by;
	const char *output, *error; /* JSON text or NULL */
	int attempt;
	bool has_percent;
	double percent;
	int64_t last_seq;
	bool acked, cancel_requested;
	int64_t not_before, created_at, started_at, finished_at;
};
struct store_job_row {
	int64_t seq;
	const char *job_id, *type, *agent_id, *instance_id, *status, *schedule_id;
	const char *params; /* JSON text */
	int max_attempts, timeout_s, cancel_grace_s;
	bool cancel_requested;
	int64_t created_at, updated_at;
};
struct store_schedule_row {
	const char *schedule_id, *cron, *timezone, *overlap, *last_job_id, *last_outcome, *last_job_status;
	const char *job; /* JSON text */
	bool enabled;
	int64_t next_fire, last_fire, created_at, updated_at;
};
/* Parsed JSON text; JSON null for NULL or unparsable text. */
cJSON *store_json_parse(const char *text);
cJSON *store_run_row_json(const struct store_run_row *r);
/* runs: the job's runs array (consumed); NULL = []. */
cJSON *store_job_row_json(const struct store_job_row *j, cJSON *runs);
/* The assignment object of a poll answer. */
cJSON *store_assignment_row_json(const struct store_job_row *j, const char *run_id, int attempt);
cJSON *store_schedule_row_json(const struct store_schedule_row *r);
cJSON *store_audit_row_json(int64_t seq, const struct store_audit *a);
/* Retry delay of an attempt: base * 2^(attempt-1), capped. */
int64_t store_backoff_ms(int64_t base_ms, int64_t cap_ms, int attempt);

#endif
