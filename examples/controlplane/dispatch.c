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
 * Long poll: a poll that came through the accept front (marked with its
 * secret) and finds nothing is parked there: the handler answers the front
 * "park" with the agent's wake generation and the time left, and the front
 * holds the client's connection without a thread, sending the poll again
 * when the agent is woken (lc_wake_parked) or at the deadline (with no time
 * left, so the handler gives the normal empty answer). A poll that reached
 * civetweb some other way waits on its agent's condition variable (signalled
 * on new work or a cancel for that agent) and holds its worker thread
 * meanwhile; at most cp->long_polls_max do, any beyond that is answered at
 * once (see docs/scaling.md, "Long polls at connection scale"). */
#include "cp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define AGENT_STORE_MS 30000 /* and written to the database at most this often (memory is authoritative) */

void dispatch_publish_agent(struct cp *cp, const struct cp_agent *a)
{
	cJSON *msg = cJSON_CreateObject();
	cJSON *o = dispatch_agent_json(cp, a);
	if (msg && o) {
		cJSON_AddStringToObject(msg, "type", "agent");
		cJSON_AddItemToObject(msg, "agent", o);
		ws_publish(cp, msg);
	} else {
		cJSON_Delete(msg);
		cJSON_Delete(o);
	}
}

/* WebSocket clients hear of an agent's state changes (first seen, capacity,
 * back online) at once; its other polls only in the next agents.seen batch
 * (ws_tick), so 10,000 polling agents cost one message a second. */
static void touch_agent(struct cp *cp, struct cp_agent *a, int capacity, int64_t now)
{
	bool changed = a->capacity != capacity || a->last_seen_ms == 0;
	a->last_seen_ms = now;
	a->capacity = capacity;
	if ((changed || now - a->stored_seen_ms >= AGENT_STORE_MS) &&
	    store_agent_touch(cp->store, a->id, now, capacity) == 0)
		a->stored_seen_ms = now;
	if (changed || !a->online_told) {
		a->online_told = true;
		dispatch_publish_agent(cp, a);
		a->pushed_seen_ms = now;
	}
}

/* Renew the lease of each listed run this agent holds; runs it lists but no
 * longer holds (lost, cancelled before it ran, unknown, someone else's) go to
 * cancel so the agent stops them. Runs it finished itself are left alone. */
static int renew_leases(struct cp *cp, struct cp_agent *a, const struct poll_req *req, int64_t now, cJSON *cancel)
{
	if (req->nrunning == 0)
		return 0;
	const char **ids = calloc(req->nrunning, sizeof(*ids));
	bool *renewed = calloc(req->nrunning, sizeof(*renewed));
	int rc = ids && renewed ? 0 : -ENOMEM;
	for (size_t i = 0; rc == 0 && i < req->nrunning; i++)
		ids[i] = req->running[i].run_id;
	if (rc == 0)
		rc = store_runs_renew(cp->store, a->id, ids, req->nrunning, now + (int64_t)cp->cfg.lease_s * 1000,
		                      renewed);
	for (size_t i = 0; rc == 0 && cancel && i < req->nrunning; i++) {
		if (renewed[i])
			continue;
		struct store_run_state rs;
		int q = store_run_state(cp->store, ids[i], &rs);
		if (q == -EIO) {
			rc = q;
			break;
		}
		bool own_finish = q == 0 && strcmp(rs.agent_id, a->id) == 0 && strcmp(rs.finished_by, "agent") == 0;
		if (!own_finish)
			cJSON_AddItemToArray(cancel, cJSON_CreateString(ids[i]));
	}
	free(ids);
	free(renewed);
	return rc;
}

static bool listed(const struct poll_req *req, const char *run_id)
{
	for (size_t i = 0; i < req->nrunning; i++)
		if (strcmp(req->running[i].run_id, run_id) == 0)
			return true;
	return false;
}

#define IDS_MAX 64 /* runs handled per poll answer and per sweep */

/* Re-deliver unacknowledged unlisted assignments, then assign new ones. */
static int assign(struct cp *cp, struct cp_agent *a, const struct poll_req *req, int64_t now, cJSON *jobs)
{
	char ids[IDS_MAX][CP_ID_MAX];
	int n = store_agent_runs(cp->store, a->id, true, false, ids, IDS_MAX);
	for (int i = 0; i < n; i++) {
		cJSON *as = NULL;
		if (!listed(req, ids[i]) && store_assignment_json(cp->store, ids[i], &as) == 0)
			cJSON_AddItemToArray(jobs, as);
	}
	if (n < 0)
		return n;
	n = store_runs_claim(cp->store, a->id, req->capacity, now, now + (int64_t)cp->cfg.ack_s * 1000,
	                     now + (int64_t)cp->cfg.lease_s * 1000, ids, IDS_MAX);
	if (n < 0) {
		jv_error(NULL, NULL, "cannot assign runs to agent '%s'", a->id);
		return n;
	}
	for (int i = 0; i < n; i++) {
		cJSON *as = NULL;
		if (store_assignment_json(cp->store, ids[i], &as) < 0)
			continue;
		const char *job_id = jv_json_str(as, "jobId", "");
		jv_info(job_id, ids[i], "run assigned to agent '%s'", a->id);
		lc_publish_job(cp, job_id);
		cJSON_AddItemToArray(jobs, as);
	}
	return 0;
}

/* Runs of the agent with a cancel requested, into cancel. */
static int add_cancels(struct cp *cp, struct cp_agent *a, cJSON *cancel)
{
	char ids[IDS_MAX][CP_ID_MAX];
	int n = store_agent_runs(cp->store, a->id, false, true, ids, IDS_MAX);
	for (int i = 0; i < n; i++)
		cJSON_AddItemToArray(cancel, cJSON_CreateString(ids[i]));
	return n < 0 ? n : 0;
}

static void deadline_ts(int64_t mono_ms, struct timespec *ts)
{
	ts->tv_sec = (time_t)(mono_ms / 1000);
	ts->tv_nsec = (long)(mono_ms % 1000) * 1000000L;
}

int dispatch_poll(struct cp *cp, struct cp_agent *agent, const struct poll_req *req, cJSON **answer,
                  struct poll_park *park)
{
	cJSON *ans = cJSON_CreateObject();
	cJSON *jobs = cJSON_AddArrayToObject(ans, "jobs");
	cJSON *cancel = cJSON_AddArrayToObject(ans, "cancel");
	if (!ans || !jobs || !cancel) {
		cJSON_Delete(ans);
		return -ENOMEM;
	}
	int64_t wait_ms = (int64_t)(req->wait_s > cp->cfg.max_wait_s ? cp->cfg.max_wait_s : req->wait_s) * 1000;
	if (wait_ms > req->wait_cap_ms)
		wait_ms = req->wait_cap_ms;
	int64_t deadline = jv_now_mono_ms() + wait_ms;
	int rc;
	bool waited = false, parked = false;

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
		if (rc == 0)
			rc = add_cancels(cp, agent, cancel);
		if (rc < 0)
			break;
		/* A console watch that changed or a command waiting answers at once. */
		if (cJSON_GetArraySize(jobs) > 0 || cJSON_GetArraySize(cancel) > 0 || atomic_load(&cp->stopping) ||
		    agent->console_gen != console_gen || console_has_commands(cp, agent->id) ||
		    jv_now_mono_ms() >= deadline)
			break;
		if (req->can_park) {
			/* The front holds it and sends it again on a wake-up newer than
			 * gen (lc_wake_parked) or at the deadline. */
			*park = (struct poll_park){.agent_index = (size_t)(agent - cp->agents),
			                           .gen = agent->gen + agent->console_gen,
			                           .wait_ms = deadline - jv_now_mono_ms()};
			parked = true;
			break;
		}
		if (cp->long_polls >= cp->long_polls_max)
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
	if (rc == 0 && !parked)
		agent->console_told = agent->console_gen; /* the list below is at least this new */
	pthread_mutex_unlock(&cp->mu);
	if (rc < 0 || parked) {
		cJSON_Delete(ans);
		return rc < 0 ? rc : 1;
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

static void wake_cb(void *ud, const char *agent_id)
{
	lc_wake_agent(ud, agent_id);
}

void dispatch_sweep(struct cp *cp)
{
	pthread_mutex_lock(&cp->mu);
	int64_t now = jv_now_real_ms();
	struct store_lost_run lost[IDS_MAX];
	int nlost = store_runs_lost(cp->store, now, lost, IDS_MAX);
	for (int i = 0; i < nlost; i++) {
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
		/* Only if still lost now: another replica may have ended it, or the agent renewed it. */
		int rc = lc_run_finish(cp, lost[i].run_id, "FAILED", NULL, err, "server", now);
		if (rc == 0)
			jv_warn(NULL, lost[i].run_id, "%s", msg);
		else if (rc < 0)
			jv_error(NULL, lost[i].run_id, "cannot mark the run lost");
		cJSON_Delete(err);
	}
	/* Retries whose backoff ended since the last sweep: wake their agents' long polls. */
	store_retry_agents(cp->store, cp->last_sweep_ms, now, wake_cb, cp);
	cp->last_sweep_ms = now;
	pthread_mutex_unlock(&cp->mu);
}

static void load_agent(void *ud, const char *agent_id, int64_t last_seen, int capacity)
{
	struct cp_agent *a = tokens_agent_find(ud, agent_id);
	if (a) {
		a->last_seen_ms = a->stored_seen_ms = last_seen;
		a->capacity = capacity;
	}
}

int dispatch_recover(struct cp *cp)
{
	pthread_mutex_lock(&cp->mu);
	int64_t now = jv_now_real_ms();
	/* The agents file is the list of agents; remember rows for them. */
	const char **ids = calloc(cp->nagents + 1, sizeof(*ids));
	int rc = ids ? 0 : -ENOMEM;
	for (size_t i = 0; rc == 0 && i < cp->nagents; i++)
		ids[i] = cp->agents[i].id;
	if (rc == 0)
		rc = store_agents_register(cp->store, ids, cp->nagents);
	free(ids);
	/* Time passed while we were down is nobody's fault: fresh lease and ack windows. */
	if (rc == 0)
		rc = store_runs_refresh(cp->store, now + (int64_t)cp->cfg.lease_s * 1000,
		                        now + (int64_t)cp->cfg.ack_s * 1000);
	/* Last seen times, and jobs stored but not yet queued when we stopped. */
	if (rc == 0)
		rc = store_agents_each(cp->store, load_agent, cp) < 0 ? -EIO : 0;
	char created[IDS_MAX][CP_ID_MAX];
	int n = IDS_MAX;
	while (rc == 0 && n == IDS_MAX) {
		n = store_jobs_created(cp->store, created, IDS_MAX);
		for (int i = 0; rc == 0 && i < n; i++)
			rc = lc_job_enqueue(cp, created[i]);
		rc = rc == 0 && n < 0 ? n : rc;
	}
	cp->last_sweep_ms = now;
	pthread_mutex_unlock(&cp->mu);
	return rc;
}

cJSON *dispatch_agent_json(struct cp *cp, const struct cp_agent *a)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "agentId", a->id);
	cJSON_AddItemToObject(o, "lastSeen", store_time(a->last_seen_ms));
	cJSON_AddNumberToObject(o, "capacity", a->capacity);
	int running = store_agent_running(cp->store, a->id);
	cJSON_AddNumberToObject(o, "running", running > 0 ? running : 0);
	/* Online: seen within three poll intervals plus the longest long poll. */
	int64_t window = (int64_t)(3 * cp->cfg.poll_interval_s + cp->cfg.max_wait_s) * 1000;
	cJSON_AddBoolToObject(o, "online", a->last_seen_ms > 0 && jv_now_real_ms() - a->last_seen_ms <= window);
	return o;
}

cJSON *dispatch_agents_json(struct cp *cp)
{
	cJSON *arr = cJSON_CreateArray();
	for (size_t i = 0; arr && i < cp->nagents; i++) {
		cJSON *o = dispatch_agent_json(cp, &cp->agents[i]);
		if (o)
			cJSON_AddItemToArray(arr, o);
	}
	return arr;
}
