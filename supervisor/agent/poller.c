/* poller.c — the poll request, its answer, and when to poll next.
 *
 * Anything in an answer that does not fit the protocol is logged and
 * skipped; a whole answer that is not JSON counts as a failed poll and backs
 * off. A long poll is only repeated at once when the control plane actually
 * held it (a server that ignores waitSeconds gets the normal interval), so a
 * hostile or confused server cannot make the agent spin. */
#include "poller.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "instconsole.h"
#include "instwatch.h"
#include "jobvisor/ident.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "scheduler.h"
#include "transport.h"

#define BASE_DELAY_MS 1000
#define HELD_MS 1000       /* an answer this slow means the server held the long poll */
#define AFTER_WORK_MS 200  /* pause before polling again after an answer with work */
#define MAX_JOBS_EXTRA 16  /* assignments taken per answer beyond capacity (to refuse them) */

void poller_init(struct agent *ag)
{
	struct poller *p = &ag->poller;
	memset(p, 0, sizeof(*p));
	backoff_init(&p->bo, BASE_DELAY_MS, ag->cfg.backoff_max_ms);
	p->next_at_ms = jv_now_mono_ms();
}

static int64_t interval_ms(const struct agent *ag)
{
	const struct poller *p = &ag->poller;
	/* The control plane may ask for slower polling, never for faster. */
	int64_t base = ag->cfg.poll_interval_ms;
	if (p->server_interval_ms > base)
		base = p->server_interval_ms;
	int64_t jitter = ag->cfg.poll_jitter_ms;
	return base + (jitter > 0 ? (int64_t)(jv_random_u64() % (uint64_t)(jitter + 1)) : 0);
}

int64_t poller_next_deadline(const struct agent *ag)
{
	if (ag->flushing || ag->poller.req)
		return INT64_MAX;
	return ag->poller.next_at_ms;
}

void poller_abort(struct agent *ag)
{
	if (ag->poller.req) {
		transport_abort(ag->tp, ag->poller.req);
		ag->poller.req = NULL;
	}
}

void poller_abort_parked(struct agent *ag)
{
	/* A short poll answers within moments; its answer may carry assignments the
	 * control plane already counts as given, which the scheduler then refuses
	 * (retryable) instead of leaving them to the ack deadline. */
	if (ag->poller.req && ag->poller.sent_wait_s > 0)
		poller_abort(ag);
}

bool poller_in_flight(const struct agent *ag)
{
	return ag->poller.req != NULL;
}

void poller_poll_now(struct agent *ag)
{
	int64_t now = jv_now_mono_ms();
	if (ag->poller.req)
		ag->poller.again = true;
	else if (!ag->poller.failing && ag->poller.next_at_ms > now)
		ag->poller.next_at_ms = now;
}

static void failed(struct agent *ag, const char *why, int64_t retry_after_ms, bool loud)
{
	struct poller *p = &ag->poller;
	int64_t delay = backoff_next(&p->bo, retry_after_ms, jv_random_u64());
	/* Never poll faster than the normal interval because of a failure. */
	if (delay < ag->cfg.poll_interval_ms)
		delay = ag->cfg.poll_interval_ms;
	p->next_at_ms = jv_now_mono_ms() + delay;
	p->failures++;
	p->again = false;
	if (loud)
		jv_error(NULL, NULL, "poll failed: %s; next poll in %.1fs", why, (double)delay / 1000.0);
	else if (!p->failing)
		jv_warn(NULL, NULL, "cannot reach the control plane: %s; retrying in %.1fs", why,
		        (double)delay / 1000.0);
	else
		jv_debug(NULL, NULL, "poll failed: %s; retrying in %.1fs", why, (double)delay / 1000.0);
	p->failing = true;
}

/* The poll failed on a control-plane URL the agent has moved away from, to
 * one that has not failed yet (endpoints.h): ask that one at once. */
static void failed_over(struct agent *ag, const char *why)
{
	struct poller *p = &ag->poller;
	p->next_at_ms = jv_now_mono_ms();
	p->failures++;
	p->again = false;
	p->failing = true;
	jv_info(NULL, NULL, "poll failed: %s; polling %s now", why, transport_current_url(ag->tp));
}

static void handle_answer(struct agent *ag, const cJSON *o, int64_t elapsed_ms)
{
	struct poller *p = &ag->poller;
	int64_t piv = jv_json_int(o, "pollIntervalSeconds", -1);
	if (piv >= 1 && piv <= 3600)
		p->server_interval_ms = piv * 1000;
	int64_t lease = jv_json_int(o, "leaseSeconds", -1);
	if (lease >= 1 && lease <= 86400)
		p->lease_ms = lease * 1000;

	size_t work = 0;
	const cJSON *cancel = cJSON_GetObjectItemCaseSensitive(o, "cancel");
	if (cancel && !cJSON_IsNull(cancel) && !cJSON_IsArray(cancel))
		jv_warn(NULL, NULL, "poll answer: 'cancel' is not an array; ignored");
	const cJSON *c;
	if (cJSON_IsArray(cancel)) {
		cJSON_ArrayForEach(c, cancel)
		{
			if (cJSON_IsString(c) && jv_run_id_valid(c->valuestring)) {
				/* A cancel stays in every answer until the run ends: only a
				 * new one counts as work (else long polls would repeat fast). */
				if (scheduler_cancel(ag, c->valuestring))
					work++;
			} else {
				jv_warn(NULL, NULL, "poll answer: ignoring a cancel entry that is not a run id");
			}
		}
	}
	const cJSON *jobs = cJSON_GetObjectItemCaseSensitive(o, "jobs");
	if (jobs && !cJSON_IsNull(jobs) && !cJSON_IsArray(jobs))
		jv_warn(NULL, NULL, "poll answer: 'jobs' is not an array; ignored");
	if (cJSON_IsArray(jobs)) {
		/* A control plane that ignores capacity gets the extra runs refused,
		 * but only a few per answer: each refusal is a record on disk. */
		int limit = ag->cfg.capacity + MAX_JOBS_EXTRA, n = cJSON_GetArraySize(jobs), taken = 0;
		cJSON_ArrayForEach(c, jobs)
		{
			if (taken++ >= limit)
				break;
			if (scheduler_assign(ag, c))
				work++;
		}
		if (n > limit)
			jv_warn(NULL, NULL, "poll answer carried %d jobs for a capacity of %d; ignored %d",
			        n, ag->cfg.capacity, n - limit);
	}
	/* Consoles: what to stream and what to type; answered at once, so poll
	 * again soon like after work. */
	work += instconsole_set_watch(ag, cJSON_GetObjectItemCaseSensitive(o, "consoleWatch"));
	work += instconsole_commands(ag, cJSON_GetObjectItemCaseSensitive(o, "consoleCommands"));
	jv_debug(NULL, NULL, "poll answered in %lld ms: %zu jobs and cancels, %zu runs held",
	         (long long)elapsed_ms, work, scheduler_held(ag));
	int64_t now = jv_now_mono_ms();
	if (p->again)
		p->next_at_ms = now + AFTER_WORK_MS; /* a slot freed up while this poll was out */
	else if (p->sent_wait_s > 0 && elapsed_ms >= HELD_MS)
		p->next_at_ms = now; /* the server holds long polls: go straight back */
	else if (p->sent_wait_s > 0 && work > 0)
		p->next_at_ms = now + AFTER_WORK_MS;
	else
		p->next_at_ms = now + interval_ms(ag);
}

static void on_answer(void *ud, const struct transport_response *resp)
{
	struct agent *ag = ud;
	struct poller *p = &ag->poller;
	p->req = NULL;
	enum transport_class c = transport_classify(resp);
	char why[300];
	if (c == TRANSPORT_RETRY) {
		if (resp->status)
			snprintf(why, sizeof(why), "HTTP %ld", resp->status);
		else
			snprintf(why, sizeof(why), "%s", resp->error ? resp->error : "no answer");
		if (resp->failover)
			failed_over(ag, why);
		else
			failed(ag, why, resp->retry_after_ms, false);
		return;
	}
	if (c != TRANSPORT_OK) {
		cJSON *e = jv_json_parse(resp->body, resp->len);
		snprintf(why, sizeof(why), "control plane answered HTTP %ld: %.200s", resp->status,
		         jv_json_str(e, "error", "no error message"));
		cJSON_Delete(e);
		failed(ag, why, resp->retry_after_ms, true);
		return;
	}
	cJSON *o = jv_json_parse(resp->body, resp->len);
	if (!cJSON_IsObject(o)) {
		cJSON_Delete(o);
		failed(ag, "the answer is not a JSON object", -1, true);
		return;
	}
	if (p->failing) {
		jv_info(NULL, NULL, "control plane reachable again after %u failed polls", p->failures);
		instwatch_want_snapshot(ag); /* it may have lost what it knew */
	}
	if (jv_json_bool(o, "sendInstances", false))
		instwatch_want_snapshot(ag);

	p->failing = false;
	p->failures = 0;
	p->ok_at_real_ms = jv_now_real_ms();
	backoff_reset(&p->bo);
	handle_answer(ag, o, resp->elapsed_ms);
	p->again = false;
	cJSON_Delete(o);
}

void poller_tick(struct agent *ag, int64_t now_ms)
{
	struct poller *p = &ag->poller;
	/* While draining the agent keeps polling (capacity 0): leases stay
	 * renewed and cancellations still reach the runs that finish. */
	if (ag->flushing || p->req || now_ms < p->next_at_ms)
		return;
	int free_slots = scheduler_free_slots(ag);
	/* Long poll only with room for work: a full agent must still hear
	 * cancellations and renew leases at the normal interval. */
	int wait = free_slots > 0 ? ag->cfg.poll_wait_s : 0;
	if (wait > 0 && p->lease_ms > 0 && (int64_t)wait * 1000 > p->lease_ms / 2)
		wait = (int)(p->lease_ms / 2000);
	cJSON *body = cJSON_CreateObject();
	cJSON *running = scheduler_running_json(ag);
	char *text = NULL;
	if (body && running) {
		/* The agent's whole capacity: the control plane subtracts the runs it
		 * has assigned and not yet seen finished. */
		cJSON_AddNumberToObject(body, "capacity", ag->stopping ? 0 : ag->cfg.capacity);
		cJSON_AddItemToObject(body, "running", running);
		running = NULL;
		cJSON_AddNumberToObject(body, "waitSeconds", wait);
		text = jv_json_print(body);
	}
	cJSON_Delete(running);
	cJSON_Delete(body);
	if (!text) {
		failed(ag, "out of memory", -1, true);
		return;
	}
	char path[200];
	snprintf(path, sizeof(path), "/v1/agents/%s/poll", ag->cfg.agent_id);
	long timeout = (long)(ag->cfg.request_timeout_s + wait) * 1000;
	int rc = transport_post(ag->tp, path, text, timeout, on_answer, ag, &p->req);
	if (rc) {
		p->req = NULL;
		failed(ag, strerror(-rc), -1, true);
		return;
	}
	p->sent_at_ms = now_ms;
	p->sent_wait_s = wait;
}
