/* scheduler.c — admit assignments, start and track job runs, replay the spool.
 *
 * Every assignment is checked before anything touches the disk or forks:
 * ids, job type, params, limits, capacity, one run per instance, and that a
 * script exists for the type. A refused assignment that carries a valid
 * jobRunId still gets a record in the spool, a FAILED status event and a
 * FAILED result, so the control plane hears why instead of waiting for its
 * ack deadline. One refusal is different: an agent that is shutting down
 * gives the run back unstarted (a FAILED result with reason "not_started"
 * and no event, docs/protocol.md section 5), so the control plane queues
 * it again without counting an attempt. The children themselves are jobrun's business; this file
 * feeds it descriptors, exit statuses and timer ticks, and turns its events
 * and result into spool records that delivery.c sends. */
#include "scheduler.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delivery.h"
#include "jobvisor/jobrun.h"
#include "jobvisor/ident.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/protocol.h"
#include "jobvisor/util.h"
#include "spool.h"

#define RESTART_MESSAGE "agent restarted during run"

static void seterr(char *err, size_t errlen, const char *msg)
{
	snprintf(err, errlen, "%s", msg);
}

/* Seconds from the assignment: absent or null -> def; a positive whole
 * number -> capped at max; anything else -> error. */
static int seconds_field(const cJSON *a, const char *key, int def, int max, int *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(a, key);
	if (!v || cJSON_IsNull(v)) {
		*out = def;
		return 0;
	}
	int64_t n = jv_json_int(a, key, -1);
	if (n < 0)
		return -EINVAL;
	*out = n == 0 ? def : (n > max ? max : (int)n);
	return 0;
}

int scheduler_parse_assignment(const cJSON *a, const struct config *cfg, struct assignment *out,
                               char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (!cJSON_IsObject(a)) {
		seterr(err, errlen, "assignment is not a JSON object");
		return -EINVAL;
	}
	const char *run_id = jv_json_str(a, "jobRunId", NULL);
	if (!jv_run_id_valid(run_id)) {
		seterr(err, errlen, "assignment has no valid jobRunId");
		return -EINVAL;
	}
	out->run_id = run_id;
	/* A "\u0000" or invalid UTF-8 anywhere: refused, never cut or passed on. */
	char where[96], msg[160];
	const char *what;
	if (!jv_json_text_ok(a, where, sizeof(where), &what)) {
		snprintf(msg, sizeof(msg), "assignment field '%s' %s", where, what);
		seterr(err, errlen, msg);
		return -EINVAL;
	}
	const char *job_id = jv_json_str(a, "jobId", NULL);
	if (!jv_run_id_valid(job_id)) {
		seterr(err, errlen, "assignment has no valid jobId");
		return -EINVAL;
	}
	out->job_id = job_id;
	const char *type = jv_json_str(a, "type", NULL);
	if (!jv_job_type_valid(type)) {
		seterr(err, errlen, "job type is missing or not of the form [A-Z][A-Z0-9_]*");
		return -EINVAL;
	}
	out->type = type;
	const char *inst = jv_json_str(a, "instanceId", NULL);
	if (!jv_ident_valid(inst)) {
		seterr(err, errlen,
		       "instanceId is missing or not an identifier ([A-Za-z0-9][A-Za-z0-9._-]{0,63})");
		return -EINVAL;
	}
	out->instance_id = inst;
	const cJSON *params = cJSON_GetObjectItemCaseSensitive(a, "params");
	if (params && !cJSON_IsNull(params) && !cJSON_IsObject(params)) {
		seterr(err, errlen, "params must be a JSON object");
		return -EINVAL;
	}
	out->params = cJSON_IsObject(params) ? params : NULL;
	const cJSON *att = cJSON_GetObjectItemCaseSensitive(a, "attempt");
	int64_t attempt = att && !cJSON_IsNull(att) ? jv_json_int(a, "attempt", -1) : 1;
	if (attempt < 1 || attempt > 1000000) {
		seterr(err, errlen, "attempt must be a positive whole number");
		return -EINVAL;
	}
	out->attempt = (int)attempt;
	if (seconds_field(a, "timeoutSeconds", cfg->job_timeout_s, cfg->job_timeout_max_s,
	                  &out->timeout_s)) {
		seterr(err, errlen, "timeoutSeconds must be a non-negative whole number");
		return -EINVAL;
	}
	if (seconds_field(a, "cancelGraceSeconds", cfg->cancel_grace_s, cfg->cancel_grace_max_s,
	                  &out->cancel_grace_s)) {
		seterr(err, errlen, "cancelGraceSeconds must be a non-negative whole number");
		return -EINVAL;
	}
	const cJSON *created = cJSON_GetObjectItemCaseSensitive(a, "createdAt");
	out->created_at = cJSON_IsString(created) ? created->valuestring : NULL;
	return 0;
}

static struct srun *find_run(const struct agent *ag, const char *run_id)
{
	for (struct srun *r = ag->runs; r; r = r->next)
		if (!r->dropped && strcmp(r->run_id, run_id) == 0)
			return r;
	return NULL;
}

static struct srun *run_new(struct agent *ag, const char *run_id, const char *job_id,
                            const char *instance_id, const char *type)
{
	struct srun *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->ag = ag;
	snprintf(r->run_id, sizeof(r->run_id), "%s", run_id);
	snprintf(r->job_id, sizeof(r->job_id), "%s", jv_run_id_valid(job_id) ? job_id : "-");
	snprintf(r->instance_id, sizeof(r->instance_id), "%s",
	         jv_ident_valid(instance_id) ? instance_id : "-");
	snprintf(r->type, sizeof(r->type), "%s", jv_job_type_valid(type) ? type : "-");
	delivery_init(r);
	r->next = ag->runs;
	ag->runs = r;
	return r;
}

static void run_unlink_free(struct agent *ag, struct srun *run)
{
	for (struct srun **pp = &ag->runs; *pp; pp = &(*pp)->next)
		if (*pp == run) {
			*pp = run->next;
			break;
		}
	delivery_abort(run);
	jobrun_free(run->jr);
	spool_run_close(run->sr);
	free(run);
}

/* A status event in the wire format, for runs the agent ends itself. */
static cJSON *status_event(const struct srun *run, uint64_t seq, const char *status,
                           const char *message)
{
	struct jv_proto_event e = {
		.seq = seq,
		.kind = "status",
		.job_id = run->job_id,
		.run_id = run->run_id,
		.instance_id = strcmp(run->instance_id, "-") != 0 ? run->instance_id : NULL,
		.status = status,
		.percent = -1,
		.message = message,
		.level = "error",
	};
	return jv_proto_event(&e);
}

static cJSON *failed_result(const char *message, bool retryable, uint64_t last_seq)
{
	cJSON *e = jv_proto_error(message, NULL, retryable, NULL);
	return e ? jv_proto_result("FAILED", NULL, e, last_seq) : NULL;
}

/* End a run the agent never started or lost: one FAILED status event after
 * the spooled ones, then the FAILED result, both durable before sending. */
static void finish_failed(struct srun *run, const char *message, bool retryable)
{
	uint64_t seq = spool_run_last_seq(run->sr) + 1;
	cJSON *ev = status_event(run, seq, "FAILED", message);
	int rc = ev ? spool_run_append(run->sr, ev) : -ENOMEM;
	cJSON_Delete(ev);
	if (rc)
		jv_warn(run->job_id, run->run_id, "cannot spool final event: %s", strerror(-rc));
	cJSON *res = failed_result(message, retryable, spool_run_last_seq(run->sr));
	rc = res ? spool_run_set_result(run->sr, res) : -ENOMEM;
	cJSON_Delete(res);
	if (rc)
		jv_error(run->job_id, run->run_id, "cannot record result: %s", strerror(-rc));
	run->finished = true;
}

/* Why an assignment is refused, and so what the control plane may do with it. */
enum refusal {
	REFUSE_BAD,         /* the assignment itself is wrong: FAILED, not retryable */
	REFUSE_BUSY,        /* no room now (instance, capacity): FAILED, retryable, an attempt */
	REFUSE_NOT_STARTED, /* the agent is going away: given back, not an attempt */
};

/* Give back a run this agent never started: no event (the first event would
 * acknowledge the run as started), only a FAILED result with reason
 * "not_started", durable before sending. */
static void finish_not_started(struct srun *run, const char *message)
{
	cJSON *e = jv_proto_error(message, NULL, true, JV_REASON_NOT_STARTED);
	cJSON *res = e ? jv_proto_result("FAILED", NULL, e, 0) : NULL;
	int rc = res ? spool_run_set_result(run->sr, res) : -ENOMEM;
	cJSON_Delete(res);
	if (rc)
		jv_error(run->job_id, run->run_id, "cannot record result: %s", strerror(-rc));
	run->finished = true;
}

static bool refuse(struct agent *ag, const cJSON *a, const char *run_id, const char *message,
                   enum refusal why)
{
	const char *job_id = jv_json_str(a, "jobId", NULL);
	const char *inst = jv_json_str(a, "instanceId", NULL);
	const char *type = jv_json_str(a, "type", NULL);
	const char *log_job = jv_run_id_valid(job_id) ? job_id : NULL;
	if (!run_id) {
		jv_error(log_job, NULL, "refusing assignment: %s (cannot report it without a valid jobRunId)",
		         message);
		return true;
	}
	if (find_run(ag, run_id)) {
		jv_debug(log_job, run_id, "refused assignment repeated; already reported");
		return false;
	}
	if (why == REFUSE_NOT_STARTED)
		jv_warn(log_job, run_id, "giving back assignment unstarted: %s", message);
	else
		jv_error(log_job, run_id, "refusing assignment: %s", message);
	struct srun *run = run_new(ag, run_id, job_id, inst, type);
	if (!run)
		return false;
	int rc = spool_run_create(ag->spool, run_id, a, &run->sr);
	if (rc) {
		jv_error(log_job, run_id, "cannot record run in '%s/runs': %s", ag->cfg.data_dir,
		         strerror(-rc));
		run_unlink_free(ag, run);
		return false;
	}
	if (why == REFUSE_NOT_STARTED)
		finish_not_started(run, message);
	else
		finish_failed(run, message, why == REFUSE_BUSY);
	return true;
}

static void on_event(void *ud, struct jobrun *jr, cJSON *event)
{
	struct srun *run = ud;
	if (!run->dropped && run->sr) {
		int rc = spool_run_append(run->sr, event);
		if (rc && !run->spool_warned) {
			/* Once per run: a full disk would otherwise log every event. The
			 * event is still queued for delivery; only its durability is lost. */
			jv_warn(run->job_id, run->run_id, "cannot write event to the spool: %s", strerror(-rc));
			run->spool_warned = true;
		}
	}
	cJSON_Delete(event);
}

static void on_done(void *ud, struct jobrun *jr, cJSON *result)
{
	struct srun *run = ud;
	if (!run->dropped && run->sr) {
		/* jobrun has logged the outcome; the spool makes it durable. */
		int rc = spool_run_set_result(run->sr, result);
		if (rc)
			jv_error(run->job_id, run->run_id, "cannot record result: %s", strerror(-rc));
		run->finished = true;
	}
	cJSON_Delete(result);
}

static const struct jobrun_ops run_ops = {.event = on_event, .done = on_done};

size_t scheduler_live_children(const struct agent *ag)
{
	size_t n = 0;
	for (const struct srun *r = ag->runs; r; r = r->next)
		if (r->jr)
			n++;
	return n;
}

size_t scheduler_held(const struct agent *ag)
{
	size_t n = 0;
	for (const struct srun *r = ag->runs; r; r = r->next)
		if (r->sr && !r->dropped)
			n++;
	return n;
}

int scheduler_free_slots(const struct agent *ag)
{
	if (ag->stopping)
		return 0;
	int free_slots = ag->cfg.capacity - (int)scheduler_live_children(ag);
	return free_slots > 0 ? free_slots : 0;
}

bool scheduler_assign(struct agent *ag, const cJSON *a)
{
	struct assignment as;
	char err[256];
	if (scheduler_parse_assignment(a, &ag->cfg, &as, err, sizeof(err))) {
		return refuse(ag, a, as.run_id, err, REFUSE_BAD);
	}
	if (find_run(ag, as.run_id)) {
		jv_debug(as.job_id, as.run_id, "assignment repeated; already held");
		return false;
	}
	if (ag->stopping) {
		return refuse(ag, a, as.run_id, "agent is shutting down", REFUSE_NOT_STARTED);
	}
	for (struct srun *r = ag->runs; r; r = r->next) {
		if (r->jr && !r->dropped && strcmp(r->instance_id, as.instance_id) == 0) {
			snprintf(err, sizeof(err), "instance '%s' is busy with run '%s'", as.instance_id,
			         r->run_id);
			return refuse(ag, a, as.run_id, err, REFUSE_BUSY);
		}
	}
	if (scheduler_free_slots(ag) <= 0) {
		snprintf(err, sizeof(err), "agent is at capacity (%d runs)", ag->cfg.capacity);
		return refuse(ag, a, as.run_id, err, REFUSE_BUSY);
	}
	char script[PATH_MAX];
	int rc = jobrun_resolve_script(as.type, ag->cfg.jobs_dir, script, sizeof(script));
	if (rc) {
		snprintf(err, sizeof(err), rc == -ENOENT ? "unknown job type '%s'" : "bad job type '%s'",
		         as.type);
		return refuse(ag, a, as.run_id, err, REFUSE_BAD);
	}

	struct srun *run = run_new(ag, as.run_id, as.job_id, as.instance_id, as.type);
	if (!run)
		return false;
	rc = spool_run_create(ag->spool, as.run_id, a, &run->sr);
	if (rc) {
		/* Without a durable record the run must not start: its events could
		 * not survive a restart. The control plane's ack deadline reclaims it. */
		jv_error(as.job_id, as.run_id, "cannot record run in '%s/runs': %s; not starting it",
		         ag->cfg.data_dir, strerror(-rc));
		run_unlink_free(ag, run);
		return false;
	}
	struct jobrun_spec spec = {
		.job_id = as.job_id,
		.run_id = as.run_id,
		.instance_id = as.instance_id,
		.type = as.type,
		.attempt = as.attempt,
		.params = as.params,
		.data_dir = ag->cfg.data_dir,
		.script = script,
		.jobs_dir = ag->cfg.jobs_dir,
		.timeout_s = as.timeout_s,
		.cancel_grace_s = as.cancel_grace_s,
		.mem_limit = (size_t)ag->cfg.job_memory,
		.settings = ag->child_settings,
		.created_at = as.created_at,
		.by_type = true,
		.run_uid = ag->run_uid,
		.run_gid = ag->run_gid,
		.log_format = ag->cfg.log_format == JV_LOG_JSON ? "json" : "logfmt",
		.log_level = jv_log_level_name((enum jv_log_level)ag->cfg.log_level),
	};
	jv_info(as.job_id, as.run_id, "starting %s on instance %s (attempt %d, timeout %ds)", as.type,
	        as.instance_id, as.attempt, as.timeout_s);
	rc = jobrun_start(&spec, &run_ops, run, &run->jr);
	if (rc) {
		run->jr = NULL;
		snprintf(err, sizeof(err), "cannot start job run: %s", strerror(-rc));
		jv_error(as.job_id, as.run_id, "%s", err);
		finish_failed(run, err, true);
	}
	return true;
}

static bool cancel_run(struct srun *run)
{
	if (!run->jr || run->finished || run->cancel_sent)
		return false;
	run->cancel_sent = true;
	jv_info(run->job_id, run->run_id, "cancel requested by the control plane");
	jobrun_cancel(run->jr, JOBRUN_CANCELLED);
	return true;
}

bool scheduler_cancel(struct agent *ag, const char *run_id)
{
	struct srun *run = find_run(ag, run_id);
	if (!run) {
		jv_debug(NULL, run_id, "cancel for a run this agent does not hold");
		return false;
	}
	return cancel_run(run);
}

static void stop_child(struct srun *run)
{
	if (run->jr && jobrun_pid(run->jr) > 0)
		jobrun_kill(run->jr);
}

static void drop_run(struct srun *run, const char *why)
{
	if (run->dropped)
		return;
	jv_warn(run->job_id, run->run_id, "dropping run: %s", why);
	run->dropped = true;
	delivery_abort(run);
	stop_child(run);
	if (run->sr) {
		int rc = spool_run_remove(run->sr);
		run->sr = NULL;
		if (rc)
			jv_warn(run->job_id, run->run_id, "cannot remove run record: %s", strerror(-rc));
	}
}

static void reject_run(struct srun *run, const char *why)
{
	if (run->dropped)
		return;
	jv_error(run->job_id, run->run_id,
	         "giving up on run: %s; record kept in runs/.rejected/%s for inspection", why,
	         run->run_id);
	run->dropped = true;
	delivery_abort(run);
	stop_child(run);
	if (run->sr) {
		int rc = spool_run_reject(run->sr);
		run->sr = NULL;
		if (rc)
			jv_warn(run->job_id, run->run_id, "cannot move run record: %s", strerror(-rc));
	}
}

void scheduler_take_verdicts(struct agent *ag)
{
	for (struct srun *r = ag->runs; r; r = r->next) {
		bool cancel;
		const char *why;
		switch (delivery_take_verdict(r, &cancel, &why)) {
		case DELIVERY_CONTINUE:
			break;
		case DELIVERY_DROP:
			drop_run(r, why);
			break;
		case DELIVERY_REJECT:
			reject_run(r, why);
			break;
		}
		if (cancel)
			cancel_run(r);
	}
}

cJSON *scheduler_running_json(const struct agent *ag)
{
	cJSON *arr = cJSON_CreateArray();
	if (!arr)
		return NULL;
	for (const struct srun *r = ag->runs; r; r = r->next) {
		if (r->dropped || !r->sr)
			continue;
		cJSON *o = cJSON_CreateObject();
		if (!o) {
			cJSON_Delete(arr);
			return NULL;
		}
		cJSON_AddStringToObject(o, "jobRunId", r->run_id);
		cJSON_AddNumberToObject(o, "lastSeq", (double)spool_run_last_seq(r->sr));
		cJSON_AddItemToArray(arr, o);
	}
	return arr;
}

size_t scheduler_pollfds(struct agent *ag, struct pollfd *fds, struct srun **owners, size_t max)
{
	size_t n = 0;
	for (struct srun *r = ag->runs; r && n < max; r = r->next) {
		int fd = r->jr ? jobrun_fd(r->jr) : -1;
		if (fd < 0)
			continue;
		fds[n] = (struct pollfd){.fd = fd, .events = POLLIN};
		owners[n] = r;
		n++;
	}
	return n;
}

void scheduler_on_readable(struct srun *run)
{
	if (run->jr)
		jobrun_on_readable(run->jr);
}

void scheduler_reap(struct agent *ag)
{
	/* Each run reaps its own child (jobrun_reap kills what is left of the
	 * group first); the agent has no other children. */
	for (struct srun *r = ag->runs; r; r = r->next)
		if (r->jr)
			jobrun_reap(r->jr);
}

int64_t scheduler_next_deadline(const struct agent *ag)
{
	int64_t next = INT64_MAX;
	for (const struct srun *r = ag->runs; r; r = r->next) {
		if (!r->jr)
			continue;
		int64_t d = jobrun_next_deadline(r->jr);
		if (d < next)
			next = d;
	}
	return next;
}

void scheduler_on_timers(struct agent *ag, int64_t now_ms)
{
	for (struct srun *r = ag->runs; r; r = r->next)
		if (r->jr && jobrun_next_deadline(r->jr) <= now_ms)
			jobrun_on_timer(r->jr, now_ms);
}

size_t scheduler_housekeeping(struct agent *ag)
{
	size_t freed = 0;
	struct srun *r = ag->runs;
	while (r) {
		struct srun *next = r->next;
		if (r->jr && jobrun_pid(r->jr) == 0 && (jobrun_finished(r->jr) || r->dropped)) {
			jobrun_free(r->jr);
			r->jr = NULL;
			freed++;
		}
		if (!r->jr && !r->sr)
			run_unlink_free(ag, r);
		r = next;
	}
	return freed;
}

void scheduler_cancel_all(struct agent *ag, enum jobrun_stop why)
{
	for (struct srun *r = ag->runs; r; r = r->next)
		if (r->jr && !r->finished && !r->dropped) {
			jv_info(r->job_id, r->run_id, "stopping run: %s", jobrun_stop_name(why));
			jobrun_cancel(r->jr, why);
		}
}

void scheduler_kill_all(struct agent *ag)
{
	for (struct srun *r = ag->runs; r; r = r->next)
		if (r->jr && jobrun_pid(r->jr) > 0) {
			jv_warn(r->job_id, r->run_id, "killing run: it did not stop in time");
			jobrun_kill(r->jr);
		}
}

void scheduler_free_all(struct agent *ag)
{
	while (ag->runs)
		run_unlink_free(ag, ag->runs);
}

static void replay_one(void *ud, const char *run_id, struct spool_run *sr, int err)
{
	struct agent *ag = ud;
	if (!sr) {
		jv_error(NULL, jv_run_id_valid(run_id) ? run_id : NULL,
		         "cannot load run record '%s/runs/%s': %s; moved to runs/.rejected", ag->cfg.data_dir,
		         run_id, strerror(-err));
		if (jv_run_id_valid(run_id))
			spool_reject_name(ag->spool, run_id);
		return;
	}
	const cJSON *a = spool_run_assignment(sr);
	struct srun *run = run_new(ag, run_id, jv_json_str(a, "jobId", NULL),
	                           jv_json_str(a, "instanceId", NULL), jv_json_str(a, "type", NULL));
	if (!run) {
		spool_run_close(sr);
		return;
	}
	run->sr = sr;
	if (spool_run_skipped(sr))
		jv_warn(run->job_id, run->run_id, "skipped %zu unreadable spooled event lines",
		        spool_run_skipped(sr));
	if (spool_run_result(sr)) {
		run->finished = true;
		jv_info(run->job_id, run->run_id, "resuming delivery: %zu events and the result",
		        spool_run_pending(sr));
		return;
	}
	/* The child died with the previous agent (parent-death signal). */
	jv_warn(run->job_id, run->run_id, "run was in flight when the agent stopped; reporting FAILED");
	finish_failed(run, RESTART_MESSAGE, true);
}

size_t scheduler_replay(struct agent *ag)
{
	int rc = spool_replay(ag->spool, replay_one, ag);
	if (rc)
		jv_error(NULL, NULL, "cannot scan '%s/runs': %s", ag->cfg.data_dir, strerror(-rc));
	size_t n = 0;
	for (struct srun *r = ag->runs; r; r = r->next)
		n++;
	return n;
}
