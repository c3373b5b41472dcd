/* store.c — store_open picks the backend from --db; every other store_*
 * call forwards to the backend's operations table (store_backend.h). */
#include "store_backend.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static bool is_pg_url(const char *db)
{
	return strncmp(db, "postgresql://", 13) == 0 || strncmp(db, "postgres://", 11) == 0;
}

int store_open(const char *db, const struct store_options *o, struct store **out, char *err, size_t errlen)
{
	if (!db || !*db) {
		snprintf(err, errlen, "--db must name a SQLite file or a postgresql:// URL");
		return -EINVAL;
	}
	if (is_pg_url(db))
		return store_pg_open(db, o, out, err, errlen);
	return store_sqlite_open(db, o, out, err, errlen);
}

void store_close(struct store *s)
{
	if (s)
		s->ops->close(s);
}

void store_maintain(struct store *s, bool final)
{
	s->ops->maintain(s, final);
}

int store_ping(struct store *s, char *why, size_t len)
{
	return s->ops->ping(s, why, len);
}

int store_schema_version(struct store *s)
{
	return s->ops->schema_version(s);
}

const char *store_backend_name(const struct store *s)
{
	return s->ops->backend_name(s);
}

int store_job_json(struct store *s, const char *job_id, cJSON **out)
{
	return s->ops->job_json(s, job_id, out);
}

int store_run_json(struct store *s, const char *run_id, cJSON **out)
{
	return s->ops->run_json(s, run_id, out);
}

int store_jobs_list(struct store *s, const struct store_filter *f, cJSON **jobs, int64_t *next_seq)
{
	return s->ops->jobs_list(s, f, jobs, next_seq);
}

int store_run_events(struct store *s, const char *run_id, int64_t after, int limit, cJSON **events)
{
	return s->ops->run_events(s, run_id, after, limit, events);
}

int store_run_state(struct store *s, const char *run_id, struct store_run_state *out)
{
	return s->ops->run_state(s, run_id, out);
}

int store_job_info(struct store *s, const char *job_id, struct store_job_info *out)
{
	return s->ops->job_info(s, job_id, out);
}

int store_assignment_json(struct store *s, const char *run_id, cJSON **out)
{
	return s->ops->assignment_json(s, run_id, out);
}

int store_job_create(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim, int64_t now)
{
	return s->ops->job_create(s, nj, claim, now);
}

int store_job_enqueue(struct store *s, const char *job_id, int64_t now, struct store_job_info *info)
{
	return s->ops->job_enqueue(s, job_id, now, info);
}

int store_jobs_created(struct store *s, int64_t before, char (*ids)[CP_ID_MAX], int max)
{
	return s->ops->jobs_created(s, before, ids, max);
}

int store_job_cancel(struct store *s, const char *job_id, int64_t now, struct store_job_info *info, char run_id[CP_ID_MAX])
{
	return s->ops->job_cancel(s, job_id, now, info, run_id);
}

int store_job_retry(struct store *s, const char *job_id, int64_t now, struct store_job_info *info)
{
	return s->ops->job_retry(s, job_id, now, info);
}

int store_run_finish(struct store *s, const struct store_finish *f, struct store_finish_result *res)
{
	return s->ops->run_finish(s, f, res);
}

int store_agents_register(struct store *s, const char *const *agent_ids, size_t n)
{
	return s->ops->agents_register(s, agent_ids, n);
}

int store_agents_each(struct store *s, void (*fn)(void *ud, const char *agent_id, int64_t last_seen, int capacity), void *ud)
{
	return s->ops->agents_each(s, fn, ud);
}

int store_agent_running(struct store *s, const char *agent_id)
{
	return s->ops->agent_running(s, agent_id);
}

int store_agents_running(struct store *s, void (*fn)(void *ud, const char *agent_id, int n), void *ud)
{
	return s->ops->agents_running(s, fn, ud);
}

int store_agent_runs(struct store *s, const char *agent_id, bool unacked_only, bool cancel_only, char (*ids)[CP_ID_MAX], int max)
{
	return s->ops->agent_runs(s, agent_id, unacked_only, cancel_only, ids, max);
}

int store_runs_lost(struct store *s, int64_t now, struct store_lost_run *out, int max)
{
	return s->ops->runs_lost(s, now, out, max);
}

int store_retry_agents(struct store *s, int64_t after, int64_t until, void (*fn)(void *ud, const char *agent_id), void *ud)
{
	return s->ops->retry_agents(s, after, until, fn, ud);
}

int store_runs_refresh(struct store *s, int64_t lease_until, int64_t ack_deadline)
{
	return s->ops->runs_refresh(s, lease_until, ack_deadline);
}

int store_events_append(struct store *s, const char *run_id, struct store_event *ev, size_t n, int64_t now, int64_t *ack_seq, bool *was_acked)
{
	return s->ops->events_append(s, run_id, ev, n, now, ack_seq, was_acked);
}

int store_instance_events_append(struct store *s, const char *agent_id, const char *instance_id, struct store_inst_event *ev, size_t n, int64_t now, int keep, int64_t *last_seq, bool *known)
{
	return s->ops->instance_events_append(s, agent_id, instance_id, ev, n, now, keep, last_seq, known);
}

int store_instances_snapshot(struct store *s, const char *agent_id, struct store_inst_snap *items, size_t n, int64_t now, char (**removed_ids)[JV_IDENT_MAX + 1], size_t *nremoved)
{
	return s->ops->instances_snapshot(s, agent_id, items, n, now, removed_ids, nremoved);
}

int store_instances_list(struct store *s, const char *agent_id, const char *state, store_instance_fn fn, void *ud)
{
	return s->ops->instances_list(s, agent_id, state, fn, ud);
}

int store_instance_get(struct store *s, const char *agent_id, const char *instance_id, store_instance_fn fn, void *ud)
{
	return s->ops->instance_get(s, agent_id, instance_id, fn, ud);
}

int store_instance_history(struct store *s, const char *agent_id, const char *instance_id, int limit, cJSON **events)
{
	return s->ops->instance_history(s, agent_id, instance_id, limit, events);
}

int store_jobtypes_put(struct store *s, const char *agent_id, const char *body, int64_t now)
{
	return s->ops->jobtypes_put(s, agent_id, body, now);
}

int store_jobtypes_get(struct store *s, const char *agent_id, cJSON **report, int64_t *at)
{
	return s->ops->jobtypes_get(s, agent_id, report, at);
}

int store_schedule_create(struct store *s, const struct store_schedule_def *d, int64_t next_fire, int64_t now)
{
	return s->ops->schedule_create(s, d, next_fire, now);
}

int store_schedule_json(struct store *s, const char *schedule_id, cJSON **out)
{
	return s->ops->schedule_json(s, schedule_id, out);
}

int store_schedules_list(struct store *s, cJSON **arr)
{
	return s->ops->schedules_list(s, arr);
}

int store_schedule_update(struct store *s, const struct store_schedule_def *d, bool retime, int64_t next, int64_t now)
{
	return s->ops->schedule_update(s, d, retime, next, now);
}

int store_schedule_delete(struct store *s, const char *schedule_id)
{
	return s->ops->schedule_delete(s, schedule_id);
}

int store_schedules_due(struct store *s, int64_t now, int max, store_due_fn fn, void *ud)
{
	return s->ops->schedules_due(s, now, max, fn, ud);
}

int store_schedule_claim(struct store *s, const struct store_sched_claim *c)
{
	return s->ops->schedule_claim(s, c);
}

int store_schedule_active_job(struct store *s, const char *schedule_id)
{
	return s->ops->schedule_active_job(s, schedule_id);
}

int store_audit_append(struct store *s, const struct store_audit *a, int64_t *seq)
{
	return s->ops->audit_append(s, a, seq);
}

int store_audit_set_status(struct store *s, int64_t seq, int status)
{
	return s->ops->audit_set_status(s, seq, status);
}

int store_audit_list(struct store *s, int64_t cursor, int limit, cJSON **entries, int64_t *last)
{
	return s->ops->audit_list(s, cursor, limit, entries, last);
}

int store_metrics_jobs(struct store *s, void (*fn)(void *ud, const char *type, const char *status, int64_t n), void *ud)
{
	return s->ops->metrics_jobs(s, fn, ud);
}

int store_metrics_runs(struct store *s, int64_t *started, int64_t *completed, int64_t *failed, int64_t *cancelled)
{
	return s->ops->metrics_runs(s, started, completed, failed, cancelled);
}

int store_retention_pick(struct store *s, int64_t cutoff, int keep, char job_id[CP_ID_MAX])
{
	return s->ops->retention_pick(s, cutoff, keep, job_id);
}

int store_retention_events(struct store *s, const char *job_id, int batch)
{
	return s->ops->retention_events(s, job_id, batch);
}

int store_job_delete(struct store *s, const char *job_id)
{
	return s->ops->job_delete(s, job_id);
}

int store_poll(struct store *s, const struct store_poll *q, struct store_poll_result *out)
{
	return s->ops->poll(s, q, out);
}

int store_job_submit(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                     int64_t now, struct store_submitted *out)
{
	return s->ops->job_submit(s, nj, claim, now, out);
}
