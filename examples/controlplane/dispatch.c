/* dispatch.c — agent polls (leases, assignment, cancels, long poll) and the sweep.
 *
 * Assignment rules: an agent holds at most `capacity` RUNNING runs (its own
 * figure from the poll); jobs of one (agent, instance) run one at a time in
 * creation order — a queued run is assignable only when no earlier job of its
 * instance is still active and no run of its instance is RUNNING; a run in
 * retry backoff (not_before) waits. An assignment not yet acknowledged by an
 * event and not listed in the agent's `running` is delivered again, since the
 * answer that carried it may have been lost.
 *
 * Leases: every poll that lists a RUNNING run renews its lease; the sweep
 * (main thread, twice a second) fails runs whose lease lapsed or whose first
 * event did not come within the ack deadline, with reason `lost`.
 *
 * Long poll: the handler waits on its agent's condition variable (signalled
 * on new work or a cancel for that agent) and holds its civetweb worker
 * thread meanwhile. At most cp->long_polls_max polls wait at once; any poll
 * beyond that is answered at once, so waiting agents can never take the
 * threads that other requests need (see docs/protocol.md, "Long poll"). */
#include "cp.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define AGENT_PUSH_MS 10000  /* lastSeen pushed to WebSocket clients at most this often */
#define AGENT_STORE_MS 30000 /* and written to the database at most this often (memory is authoritative) */

static void touch_agent(struct cp *cp, struct cp_agent *a, int capacity, int64_t now)
{
	bool changed = a->capacity != capacity || a->last_seen_ms == 0;
	a->last_seen_ms = now;
	a->capacity = capacity;
	if (changed || now - a->stored_seen_ms >= AGENT_STORE_MS) {
		sqlite3_stmt *st = db_prepare(cp->db, "UPDATE agents SET last_seen = ?, capacity = ? WHERE agent_id = ?");
		if (st) {
			sqlite3_bind_int64(st, 1, now);
			sqlite3_bind_int(st, 2, capacity);
			sqlite3_bind_text(st, 3, a->id, -1, SQLITE_STATIC);
			if (db_step_done(cp->db, st) == 0)
				a->stored_seen_ms = now;
			sqlite3_finalize(st);
		}
	}
	if (changed || now - a->pushed_seen_ms >= AGENT_PUSH_MS) {
		cJSON *msg = cJSON_CreateObject();
		cJSON *o = store_agent_json(cp, a);
		if (msg && o) {
			cJSON_AddStringToObject(msg, "type", "agent");
			cJSON_AddItemToObject(msg, "agent", o);
			ws_publish(cp, msg);
			a->pushed_seen_ms = now;
		} else {
			cJSON_Delete(msg);
			cJSON_Delete(o);
		}
	}
}

/* Renew the lease of each listed run this agent holds; runs it lists but no
 * longer holds (lost, cancelled before it ran, unknown, someone else's) go to
 * cancel so the agent stops them. Runs it finished itself are left alone. */
static int renew_leases(struct cp *cp, struct cp_agent *a, const struct poll_req *req, int64_t now, cJSON *cancel)
{
	if (req->nrunning == 0)
		return 0;
	sqlite3_stmt *up = db_prepare(cp->db, "UPDATE job_runs SET lease_until = ?"
	                                      " WHERE run_id = ? AND agent_id = ? AND status = 'RUNNING'");
	if (!up)
		return -EIO;
	int rc = db_begin(cp->db);
	for (size_t i = 0; rc == 0 && i < req->nrunning; i++) {
		const char *run_id = req->running[i].run_id;
		sqlite3_reset(up);
		sqlite3_bind_int64(up, 1, now + (int64_t)cp->cfg.lease_s * 1000);
		sqlite3_bind_text(up, 2, run_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(up, 3, a->id, -1, SQLITE_STATIC);
		if (sqlite3_step(up) != SQLITE_DONE) {
			rc = -EIO;
			break;
		}
		if (sqlite3_changes(cp->db) == 1 || !cancel)
			continue;
		struct store_run_state rs;
		int q = store_run_state(cp, run_id, &rs);
		if (q == -EIO) {
			rc = q;
			break;
		}
		bool own_finish = q == 0 && strcmp(rs.agent_id, a->id) == 0 && strcmp(rs.finished_by, "agent") == 0;
		if (!own_finish)
			cJSON_AddItemToArray(cancel, cJSON_CreateString(run_id));
	}
	sqlite3_finalize(up);
	if (rc == 0)
		rc = db_commit(cp->db);
	if (rc < 0)
		db_rollback(cp->db);
	return rc;
}

static cJSON *assignment_json(struct cp *cp, const char *run_id)
{
	sqlite3_stmt *st = db_prepare(cp->db,
	                              "SELECT r.run_id, r.job_id, r.attempt, j.type, j.instance_id, j.params,"
	                              " j.timeout_s, j.cancel_grace_s, j.created_at"
	                              " FROM job_runs r JOIN jobs j ON j.job_id = r.job_id WHERE r.run_id = ?");
	if (!st)
		return NULL;
	sqlite3_bind_text(st, 1, run_id, -1, SQLITE_STATIC);
	cJSON *o = NULL;
	if (sqlite3_step(st) == SQLITE_ROW && (o = cJSON_CreateObject()) != NULL) {
		cJSON_AddStringToObject(o, "jobId", (const char *)sqlite3_column_text(st, 1));
		cJSON_AddStringToObject(o, "jobRunId", (const char *)sqlite3_column_text(st, 0));
		cJSON_AddNumberToObject(o, "attempt", sqlite3_column_int(st, 2));
		cJSON_AddStringToObject(o, "type", (const char *)sqlite3_column_text(st, 3));
		cJSON_AddStringToObject(o, "instanceId", (const char *)sqlite3_column_text(st, 4));
		cJSON *params = cJSON_Parse((const char *)sqlite3_column_text(st, 5));
		cJSON_AddItemToObject(o, "params", params ? params : cJSON_CreateObject());
		if (sqlite3_column_int(st, 6) > 0)
			cJSON_AddNumberToObject(o, "timeoutSeconds", sqlite3_column_int(st, 6));
		if (sqlite3_column_int(st, 7) > 0)
			cJSON_AddNumberToObject(o, "cancelGraceSeconds", sqlite3_column_int(st, 7));
		cJSON_AddItemToObject(o, "createdAt", store_time(sqlite3_column_int64(st, 8)));
	}
	sqlite3_finalize(st);
	return o;
}

static bool listed(const struct poll_req *req, const char *run_id)
{
	for (size_t i = 0; i < req->nrunning; i++)
		if (strcmp(req->running[i].run_id, run_id) == 0)
			return true;
	return false;
}

/* Collect the ids of one query into a small array; the query may use ?1 =
 * agent_id (when not NULL), ?2 = now, ?3 = limit. */
struct id_list {
	char ids[64][CP_ID_MAX];
	size_t n;
};

static int query_ids(struct cp *cp, const char *sql, const char *agent_id, int64_t now, int limit,
                     struct id_list *out)
{
	sqlite3_stmt *st = db_prepare(cp->db, sql);
	if (!st)
		return -EIO;
	if (agent_id)
		sqlite3_bind_text(st, 1, agent_id, -1, SQLITE_STATIC);
	if (sqlite3_bind_parameter_count(st) >= 2)
		sqlite3_bind_int64(st, 2, now);
	if (sqlite3_bind_parameter_count(st) >= 3)
		sqlite3_bind_int(st, 3, limit);
	out->n = 0;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW && out->n < JV_ARRAY_LEN(out->ids))
		snprintf(out->ids[out->n++], CP_ID_MAX, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -EIO;
}

static const char SQL_HELD[] =
	"SELECT run_id FROM job_runs WHERE agent_id = ?1 AND status = 'RUNNING' AND acked = 0";
static const char SQL_HELD_COUNT[] =
	"SELECT count(*) FROM job_runs WHERE agent_id = ? AND status = 'RUNNING'";
static const char SQL_ASSIGNABLE[] =
	"SELECT r.run_id FROM job_runs r JOIN jobs j ON j.job_id = r.job_id"
	" WHERE r.agent_id = ?1 AND r.status = 'QUEUED' AND r.not_before <= ?2"
	"   AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.agent_id = j.agent_id AND e.instance_id = j.instance_id"
	"                   AND e.seq < j.seq AND e.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED'))"
	"   AND NOT EXISTS (SELECT 1 FROM job_runs x JOIN jobs xj ON xj.job_id = x.job_id"
	"                   WHERE x.agent_id = ?1 AND x.status = 'RUNNING' AND xj.instance_id = j.instance_id)"
	" ORDER BY j.seq LIMIT ?3";
static const char SQL_CANCELS[] =
	"SELECT run_id FROM job_runs WHERE agent_id = ?1 AND status = 'RUNNING' AND cancel_requested = 1";

/* Re-deliver unacknowledged unlisted assignments, then assign new ones. */
static int assign(struct cp *cp, struct cp_agent *a, const struct poll_req *req, int64_t now, cJSON *jobs)
{
	struct id_list held, fresh;
	int rc = query_ids(cp, SQL_HELD, a->id, now, 0, &held);
	for (size_t i = 0; rc == 0 && i < held.n; i++) {
		if (listed(req, held.ids[i]))
			continue;
		cJSON *as = assignment_json(cp, held.ids[i]);
		if (as)
			cJSON_AddItemToArray(jobs, as);
	}
	if (rc < 0)
		return rc;
	int running = 0;
	sqlite3_stmt *st = db_prepare(cp->db, SQL_HELD_COUNT);
	if (!st)
		return -EIO;
	sqlite3_bind_text(st, 1, a->id, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		running = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	int free_slots = req->capacity - running;
	if (free_slots <= 0)
		return 0;
	if (free_slots > (int)JV_ARRAY_LEN(fresh.ids))
		free_slots = (int)JV_ARRAY_LEN(fresh.ids);
	rc = query_ids(cp, SQL_ASSIGNABLE, a->id, now, free_slots, &fresh);
	if (rc < 0 || fresh.n == 0)
		return rc;

	sqlite3_stmt *run_up = db_prepare(cp->db,
	                                  "UPDATE job_runs SET status = 'RUNNING', started_at = ?, ack_deadline = ?,"
	                                  " lease_until = ? WHERE run_id = ? AND status = 'QUEUED'");
	sqlite3_stmt *job_up = db_prepare(cp->db,
	                                  "UPDATE jobs SET status = 'RUNNING', updated_at = ?"
	                                  " WHERE job_id = (SELECT job_id FROM job_runs WHERE run_id = ?)");
	rc = run_up && job_up ? db_begin(cp->db) : -EIO;
	for (size_t i = 0; rc == 0 && i < fresh.n; i++) {
		sqlite3_reset(run_up);
		sqlite3_bind_int64(run_up, 1, now);
		sqlite3_bind_int64(run_up, 2, now + (int64_t)cp->cfg.ack_s * 1000);
		sqlite3_bind_int64(run_up, 3, now + (int64_t)cp->cfg.lease_s * 1000);
		sqlite3_bind_text(run_up, 4, fresh.ids[i], -1, SQLITE_STATIC);
		sqlite3_reset(job_up);
		sqlite3_bind_int64(job_up, 1, now);
		sqlite3_bind_text(job_up, 2, fresh.ids[i], -1, SQLITE_STATIC);
		if (sqlite3_step(run_up) != SQLITE_DONE || sqlite3_step(job_up) != SQLITE_DONE)
			rc = -EIO;
	}
	sqlite3_finalize(run_up);
	sqlite3_finalize(job_up);
	if (rc == 0)
		rc = db_commit(cp->db);
	if (rc < 0) {
		jv_error(NULL, NULL, "cannot assign runs to agent '%s': %s", a->id, sqlite3_errmsg(cp->db));
		db_rollback(cp->db);
		return rc;
	}
	for (size_t i = 0; i < fresh.n; i++) {
		cJSON *as = assignment_json(cp, fresh.ids[i]);
		if (!as)
			continue;
		const char *job_id = jv_json_str(as, "jobId", "");
		jv_info(job_id, fresh.ids[i], "run assigned to agent '%s'", a->id);
		lc_publish_job(cp, job_id);
		cJSON_AddItemToArray(jobs, as);
	}
	return 0;
}

static void deadline_ts(int64_t mono_ms, struct timespec *ts)
{
	ts->tv_sec = (time_t)(mono_ms / 1000);
	ts->tv_nsec = (long)(mono_ms % 1000) * 1000000L;
}

int dispatch_poll(struct cp *cp, struct cp_agent *agent, const struct poll_req *req, cJSON **answer)
{
	cJSON *ans = cJSON_CreateObject();
	cJSON *jobs = cJSON_AddArrayToObject(ans, "jobs");
	cJSON *cancel = cJSON_AddArrayToObject(ans, "cancel");
	if (!ans || !jobs || !cancel) {
		cJSON_Delete(ans);
		return -ENOMEM;
	}
	int wait_s = req->wait_s > cp->cfg.max_wait_s ? cp->cfg.max_wait_s : req->wait_s;
	int64_t deadline = jv_now_mono_ms() + (int64_t)wait_s * 1000;
	int rc;
	bool waited = false;

	pthread_mutex_lock(&cp->mu);
	/* A change since the last answer (made while no poll of this agent
	 * waited) counts as new, or the agent would hear of it a long poll late. */
	uint64_t console_gen = agent->console_told;
	touch_agent(cp, agent, req->capacity, jv_now_real_ms());
	rc = renew_leases(cp, agent, req, jv_now_real_ms(), cancel);
	for (;;) {
		int64_t now = jv_now_real_ms();
		if (rc == 0)
			rc = assign(cp, agent, req, now, jobs);
		struct id_list cancels;
		if (rc == 0)
			rc = query_ids(cp, SQL_CANCELS, agent->id, now, 0, &cancels);
		if (rc < 0)
			break;
		for (size_t i = 0; i < cancels.n; i++)
			cJSON_AddItemToArray(cancel, cJSON_CreateString(cancels.ids[i]));
		/* A console watch that changed or a command waiting answers at once. */
		if (cJSON_GetArraySize(jobs) > 0 || cJSON_GetArraySize(cancel) > 0 || atomic_load(&cp->stopping) ||
		    agent->console_gen != console_gen || console_has_commands(cp, agent->id) ||
		    jv_now_mono_ms() >= deadline || cp->long_polls >= cp->long_polls_max)
			break;
		uint64_t gen = agent->gen;
		struct timespec ts;
		deadline_ts(deadline, &ts);
		cp->long_polls++;
		while (agent->gen == gen && agent->console_gen == console_gen && !atomic_load(&cp->stopping) &&
		       pthread_cond_timedwait(&agent->cond, &cp->mu, &ts) != ETIMEDOUT)
			;
		cp->long_polls--;
		waited = true;
	}
	/* A long wait must not eat the lease it was meant to keep alive. */
	if (rc == 0 && waited)
		rc = renew_leases(cp, agent, req, jv_now_real_ms(), NULL);
	if (rc == 0)
		agent->console_told = agent->console_gen; /* the list below is at least this new */
	pthread_mutex_unlock(&cp->mu);
	if (rc < 0) {
		cJSON_Delete(ans);
		return rc;
	}
	cJSON_AddNumberToObject(ans, "pollIntervalSeconds", cp->cfg.poll_interval_s);
	if (!agent->instances_synced) /* unlocked read: a stale answer only costs one extra snapshot */
		cJSON_AddTrueToObject(ans, "sendInstances");
	cJSON *watch = console_watch_list(cp, agent->id);
	cJSON *cmds = console_take_commands(cp, agent->id);
	cJSON_AddItemToObject(ans, "consoleWatch", watch ? watch : cJSON_CreateArray());
	cJSON_AddItemToObject(ans, "consoleCommands", cmds ? cmds : cJSON_CreateArray());
	cJSON_AddNumberToObject(ans, "leaseSeconds", cp->cfg.lease_s);
	*answer = ans;
	return 0;
}

void dispatch_sweep(struct cp *cp)
{
	pthread_mutex_lock(&cp->mu);
	int64_t now = jv_now_real_ms();
	sqlite3_stmt *st = db_prepare(cp->db,
	                              "SELECT run_id, agent_id, acked, ack_deadline FROM job_runs WHERE status = 'RUNNING'"
	                              " AND ((acked = 0 AND ack_deadline < ?1) OR lease_until < ?1) LIMIT 64");
	struct lost {
		char run_id[CP_ID_MAX];
		char agent_id[JV_IDENT_MAX + 1];
		bool unacked;
	} lost[64];
	size_t nlost = 0;
	if (st) {
		sqlite3_bind_int64(st, 1, now);
		while (nlost < JV_ARRAY_LEN(lost) && sqlite3_step(st) == SQLITE_ROW) {
			snprintf(lost[nlost].run_id, CP_ID_MAX, "%s", (const char *)sqlite3_column_text(st, 0));
			snprintf(lost[nlost].agent_id, sizeof(lost[nlost].agent_id), "%s",
			         (const char *)sqlite3_column_text(st, 1));
			lost[nlost].unacked = sqlite3_column_int(st, 2) == 0 && sqlite3_column_int64(st, 3) < now;
			nlost++;
		}
		sqlite3_finalize(st);
	}
	for (size_t i = 0; i < nlost; i++) {
		char msg[256];
		if (lost[i].unacked)
			snprintf(msg, sizeof(msg), "run lost: agent '%s' sent no event within %d s of the assignment",
			         lost[i].agent_id, cp->cfg.ack_s);
		else
			snprintf(msg, sizeof(msg), "run lost: agent '%s' did not list it in a poll for %d s",
			         lost[i].agent_id, cp->cfg.lease_s);
		cJSON *err = cJSON_CreateObject();
		cJSON_AddStringToObject(err, "message", msg);
		cJSON_AddStringToObject(err, "reason", "lost");
		cJSON_AddBoolToObject(err, "retryable", true);
		jv_warn(NULL, lost[i].run_id, "%s", msg);
		if (lc_run_finish(cp, lost[i].run_id, "FAILED", NULL, err, "server") < 0)
			jv_error(NULL, lost[i].run_id, "cannot mark the run lost");
		cJSON_Delete(err);
	}
	/* Retries whose backoff ended since the last sweep: wake their agents' long polls. */
	st = db_prepare(cp->db, "SELECT DISTINCT agent_id FROM job_runs WHERE status = 'QUEUED'"
	                        " AND not_before > ? AND not_before <= ?");
	if (st) {
		sqlite3_bind_int64(st, 1, cp->last_sweep_ms);
		sqlite3_bind_int64(st, 2, now);
		while (sqlite3_step(st) == SQLITE_ROW)
			lc_wake_agent(cp, (const char *)sqlite3_column_text(st, 0));
		sqlite3_finalize(st);
	}
	cp->last_sweep_ms = now;
	pthread_mutex_unlock(&cp->mu);
}

int dispatch_recover(struct cp *cp)
{
	pthread_mutex_lock(&cp->mu);
	int64_t now = jv_now_real_ms();
	int rc = db_begin(cp->db);
	sqlite3_stmt *st = NULL;
	/* The agents file is the list of agents; remember rows for them. */
	if (rc == 0 && (st = db_prepare(cp->db, "INSERT OR IGNORE INTO agents (agent_id) VALUES (?)")) != NULL) {
		for (size_t i = 0; rc == 0 && i < cp->nagents; i++) {
			sqlite3_reset(st);
			sqlite3_bind_text(st, 1, cp->agents[i].id, -1, SQLITE_STATIC);
			if (sqlite3_step(st) != SQLITE_DONE)
				rc = -EIO;
		}
		sqlite3_finalize(st);
	} else if (rc == 0) {
		rc = -EIO;
	}
	/* Time passed while we were down is nobody's fault: fresh lease and ack windows. */
	if (rc == 0 && (st = db_prepare(cp->db, "UPDATE job_runs SET lease_until = ?,"
	                                        " ack_deadline = CASE acked WHEN 0 THEN ? ELSE ack_deadline END"
	                                        " WHERE status = 'RUNNING'")) != NULL) {
		sqlite3_bind_int64(st, 1, now + (int64_t)cp->cfg.lease_s * 1000);
		sqlite3_bind_int64(st, 2, now + (int64_t)cp->cfg.ack_s * 1000);
		rc = db_step_done(cp->db, st);
		sqlite3_finalize(st);
	}
	if (rc == 0)
		rc = db_commit(cp->db);
	if (rc < 0)
		db_rollback(cp->db);
	/* Last seen times, and jobs stored but not yet queued when we stopped. */
	st = rc == 0 ? db_prepare(cp->db, "SELECT agent_id, last_seen, capacity FROM agents") : NULL;
	while (st && sqlite3_step(st) == SQLITE_ROW) {
		struct cp_agent *a = tokens_agent_find(cp, (const char *)sqlite3_column_text(st, 0));
		if (a) {
			a->last_seen_ms = a->stored_seen_ms = sqlite3_column_int64(st, 1);
			a->capacity = sqlite3_column_int(st, 2);
		}
	}
	sqlite3_finalize(st);
	struct id_list created;
	created.n = 0;
	do {
		if (rc == 0)
			rc = query_ids(cp, "SELECT job_id FROM jobs WHERE status = 'CREATED' ORDER BY seq", NULL, 0, 0,
			               &created);
		for (size_t i = 0; rc == 0 && i < created.n; i++)
			rc = lc_job_enqueue(cp, created.ids[i]);
	} while (rc == 0 && created.n == JV_ARRAY_LEN(created.ids));
	cp->last_sweep_ms = now;
	pthread_mutex_unlock(&cp->mu);
	return rc;
}
