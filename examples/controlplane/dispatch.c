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

/* What a poll does about the agent's lastSeen besides memory. */
struct touch {
	bool store, push; /* write it to the database / push it to WebSocket clients */
	int64_t seen;
	int capacity;
};

/* lastSeen and capacity in memory (mu held); whether to store it now and
 * push an agent message: WebSocket clients hear of an agent's state changes
 * (first seen, capacity, back online) at once, its other polls only in the
 * next agents.seen batch (ws_tick), so 10,000 polling agents cost one message
 * a second. Both are marked done here: a failed write is tried again in
 * AGENT_STORE_MS (memory is authoritative). */
static struct touch touch_agent(struct cp_agent *a, int capacity, int64_t now)
{
	bool changed = a->capacity != capacity || a->last_seen_ms == 0;
	struct touch t = {.seen = now, .capacity = capacity};
	a->last_seen_ms = now;
	a->capacity = capacity;
	t.store = changed || now - a->stored_seen_ms >= AGENT_STORE_MS;
	t.push = changed || !a->online_told;
	if (t.store)
		a->stored_seen_ms = now;
	if (t.push) {
		a->online_told = true;
		a->pushed_seen_ms = now;
	}
	return t;
}

/* An agent as GET /v1/agents and the WebSocket "agent" message show it. */
static cJSON *agent_json(const struct cp *cp, const char *id, int64_t last_seen, int capacity, int running)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "agentId", id);
	cJSON_AddItemToObject(o, "lastSeen", store_time(last_seen));
	cJSON_AddNumberToObject(o, "capacity", capacity);
	cJSON_AddNumberToObject(o, "running", running > 0 ? running : 0);
	/* Online: seen within three poll intervals plus the longest long poll. */
	int64_t window = (int64_t)(3 * cp->cfg.poll_interval_s + cp->cfg.max_wait_s) * 1000;
	cJSON_AddBoolToObject(o, "online", last_seen > 0 && jv_now_real_ms() - last_seen <= window);
	return o;
}

#define IDS_MAX 64 /* runs handled per poll answer and per sweep */
#define CREATED_GRACE_MS 10000 /* a job CREATED this long is a creation stopped halfway */

/* Log each claimed run and publish the claimed jobs (and the agent's
 * presence when due) to WebSocket clients; no cp->mu held. */
static void poll_publish(struct cp *cp, struct cp_agent *a, const struct touch *t,
                         const struct store_poll_result *r)
{
	int nclaimed = cJSON_GetArraySize(r->claimed), first = cJSON_GetArraySize(r->jobs) - nclaimed;
	cJSON **msgs = calloc((size_t)nclaimed + 1, sizeof(*msgs));
	size_t n = 0;
	if (msgs && t && t->push) {
		cJSON *msg = cJSON_CreateObject();
		cJSON_AddStringToObject(msg, "type", "agent");
		cJSON_AddItemToObject(msg, "agent", agent_json(cp, a->id, t->seen, t->capacity, r->running));
		msgs[n++] = msg;
	}
	for (int i = 0; i < nclaimed; i++) {
		const cJSON *as = cJSON_GetArrayItem(r->jobs, first + i);
		jv_info(jv_json_str(as, "jobId", ""), jv_json_str(as, "jobRunId", ""), "run assigned to agent '%s'", a->id);
		if (msgs)
			msgs[n++] = lc_job_msg(cJSON_Duplicate(cJSON_GetArrayItem(r->claimed, i), true));
	}
	if (n)
		ws_publish_wake(cp, msgs, n, NULL);
	free(msgs);
}

/* One look at the database without cp->mu (store_poll: renew the listed
 * leases, assign, collect cancels), its jobs and cancels into ans. Runs the
 * agent lists but no longer holds (lost, cancelled before it ran, unknown,
 * someone else's) go to cancel so the agent stops them; an unacknowledged
 * assignment it does not list is sent again. */
static int poll_once(struct cp *cp, struct cp_agent *a, const struct poll_req *req, const char **listed,
                     const struct touch *t, cJSON *ans)
{
	int64_t now = jv_now_real_ms();
	struct store_poll q = {
		.agent_id = a->id, .capacity = req->capacity, .listed = listed, .nlisted = req->nrunning, .now = now,
		.ack_deadline = now + (int64_t)cp->cfg.ack_s * 1000, .lease_until = now + (int64_t)cp->cfg.lease_s * 1000,
		.touch = t && t->store, .max = IDS_MAX,
	};
	struct store_poll_result r;
	int rc = store_poll(cp->store, &q, &r);
	if (rc < 0) {
		jv_error(NULL, NULL, "cannot answer the poll of agent '%s'", a->id);
		return rc;
	}
	poll_publish(cp, a, t, &r);
	cJSON_Delete(r.claimed);
	cJSON_ReplaceItemInObjectCaseSensitive(ans, "jobs", r.jobs);
	cJSON_ReplaceItemInObjectCaseSensitive(ans, "cancel", r.cancel);
	return 0;
}

static void deadline_ts(int64_t mono_ms, struct timespec *ts)
{
	ts->tv_sec = (time_t)(mono_ms / 1000);
	ts->tv_nsec = (long)(mono_ms % 1000) * 1000000L;
}

enum poll_next { POLL_ANSWER, POLL_AGAIN, POLL_PARK };

/* After a look found what it found (mu held): answer, look again (work
 * appeared meanwhile, or a long wait ended), or park. *gen: the wake
 * generation the next look starts from. */
static enum poll_next poll_decide(struct cp *cp, struct cp_agent *agent, const struct poll_req *req, cJSON *ans,
                                  uint64_t console_gen, int64_t deadline, uint64_t *gen, struct poll_park *park)
{
	/* A console watch that changed or a command waiting answers at once. */
	if (cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(ans, "jobs")) > 0 ||
	    cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(ans, "cancel")) > 0 || atomic_load(&cp->stopping) ||
	    agent->console_gen != console_gen || console_has_commands(cp, agent->id) || jv_now_mono_ms() >= deadline)
		return POLL_ANSWER;
	if (agent->gen != *gen) { /* woken while it looked: the look may have missed that work */
		*gen = agent->gen;
		return POLL_AGAIN;
	}
	if (req->can_park) {
		/* The front holds it and sends it again on a wake-up newer than
		 * gen (lc_wake_parked) or at the deadline. */
		*park = (struct poll_park){.agent_index = (size_t)(agent - cp->agents),
		                           .gen = agent->gen + agent->console_gen,
		                           .wait_ms = deadline - jv_now_mono_ms()};
		return POLL_PARK;
	}
	if (cp->long_polls >= cp->long_polls_max)
		return POLL_ANSWER;
	struct timespec ts;
	deadline_ts(deadline, &ts);
	cp->long_polls++;
	while (agent->gen == *gen && agent->console_gen == console_gen && !atomic_load(&cp->stopping) &&
	       pthread_cond_timedwait(&agent->cond, &cp->mu, &ts) != ETIMEDOUT)
		;
	cp->long_polls--;
	*gen = agent->gen;
	return POLL_AGAIN; /* look again: new work, or renew the leases the wait ran down */
}

int dispatch_poll(struct cp *cp, struct cp_agent *agent, const struct poll_req *req, cJSON **answer,
                  struct poll_park *park)
{
	cJSON *ans = cJSON_CreateObject();
	cJSON *jobs = cJSON_AddArrayToObject(ans, "jobs");
	cJSON *cancel = cJSON_AddArrayToObject(ans, "cancel");
	const char **listed = calloc(req->nrunning + 1, sizeof(*listed));
	if (!ans || !jobs || !cancel || !listed) {
		cJSON_Delete(ans);
		free(listed);
		return -ENOMEM;
	}
	for (size_t i = 0; i < req->nrunning; i++)
		listed[i] = req->running[i].run_id;
	int64_t wait_ms = (int64_t)(req->wait_s > cp->cfg.max_wait_s ? cp->cfg.max_wait_s : req->wait_s) * 1000;
	if (wait_ms > req->wait_cap_ms)
		wait_ms = req->wait_cap_ms;
	int64_t deadline = jv_now_mono_ms() + wait_ms;

	/* cp->mu for the in-memory state only, never across a store call. A
	 * change since the last answer (made while no poll of this agent waited)
	 * counts as new, or the agent would hear of it a long poll late. */
	pthread_mutex_lock(&cp->mu);
	uint64_t console_gen = agent->console_told, gen = agent->gen;
	struct touch t = touch_agent(agent, req->capacity, jv_now_real_ms());
	pthread_mutex_unlock(&cp->mu);
	enum poll_next next = POLL_AGAIN;
	int rc = 0;
	for (bool first = true; rc == 0 && next == POLL_AGAIN; first = false) {
		rc = poll_once(cp, agent, req, listed, first ? &t : NULL, ans);
		pthread_mutex_lock(&cp->mu);
		if (rc == 0)
			next = poll_decide(cp, agent, req, ans, console_gen, deadline, &gen, park);
		if (rc == 0 && next == POLL_ANSWER)
			agent->console_told = agent->console_gen; /* the list below is at least this new */
		pthread_mutex_unlock(&cp->mu);
	}
	free(listed);
	if (rc < 0 || next == POLL_PARK) {
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
	ws_publish_wake(ud, NULL, 0, agent_id);
}

/* Queue the jobs left CREATED since before `before` (0: all): a creation is
 * two transactions (store.h, store_job_submit), and one whose second never
 * ran (a database error between them, a replica killed there) would leave
 * its job CREATED until the next start. The move is conditional (another
 * replica's sweep, a late creation: whoever comes second changes nothing).
 * Without cp->mu. */
static int queue_created(struct cp *cp, int64_t before)
{
	char created[IDS_MAX][CP_ID_MAX];
	int n = IDS_MAX, rc = 0;
	while (rc == 0 && n == IDS_MAX) {
		n = store_jobs_created(cp->store, before, created, IDS_MAX);
		for (int i = 0; rc == 0 && i < n; i++)
			rc = lc_job_enqueue(cp, created[i]);
		rc = rc == 0 && n < 0 ? n : rc;
	}
	return rc;
}

/* Main thread only, without cp->mu: store calls and lc_run_finish (which
 * takes it for its wake-ups), so polls never wait for the sweep's round trips. */
void dispatch_sweep(struct cp *cp)
{
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
	/* Creations stopped halfway; the grace keeps clear of the ones in flight. */
	if (queue_created(cp, now - CREATED_GRACE_MS) < 0)
		jv_error(NULL, NULL, "cannot queue the jobs left CREATED");
	cp->last_sweep_ms = now;
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
	/* Last seen times. */
	if (rc == 0)
		rc = store_agents_each(cp->store, load_agent, cp) < 0 ? -EIO : 0;
	cp->last_sweep_ms = now;
	pthread_mutex_unlock(&cp->mu);
	/* Jobs stored but not yet queued when we stopped. */
	return rc == 0 ? queue_created(cp, 0) : rc;
}
