/* monitor_state.c — `.jobvisor/state.json` and the status object.
 *
 * The status object is what `status` answers on the socket and, as written
 * on every state change through jv_durable_write_at(), what state.json holds
 * once the monitor is gone. Fields (camelCase, times ISO-8601 UTC; the *Ms
 * twins are for programs):
 *   instanceId, state, since, message, pid (null when none), startTime
 *   (clock ticks since boot, with pid the identity that survives pid reuse),
 *   bootId, cgroup, adopted, startedAt[Ms], readyAt, restarts, policy,
 *   nextRestartAt and restartDelaySeconds (BACKOFF: when, and the delay
 *   chosen), crashLoop (CRASHED by the crash-loop breaker), phase (STOPPING: console|signal|kill|sweep),
 *   monitorPid, monitorStartTime, lastExit {code, signal, oom, core,
 *   requested, unknown, reason, at, uptimeSeconds}. */
#include "monitor_state.h"
#include "jobvisor/durable.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *state_name(enum mon_state st)
{
	switch (st) {
	case MON_STARTING: return "STARTING";
	case MON_RUNNING: return "RUNNING";
	case MON_STOPPING: return "STOPPING";
	case MON_STOPPED: return "STOPPED";
	case MON_CRASHED: return "CRASHED";
	case MON_BACKOFF: return "BACKOFF";
	case MON_NSTATES: break;
	}
	return "UNKNOWN";
}

static void add_time(cJSON *o, const char *key, int64_t real_ms)
{
	if (real_ms <= 0) {
		cJSON_AddNullToObject(o, key);
		return;
	}
	char ts[JV_ISO8601_LEN];
	jv_iso8601(real_ms, ts);
	cJSON_AddStringToObject(o, key, ts);
}

static const char *phase_name(enum mon_phase p)
{
	switch (p) {
	case PH_CONSOLE: return "console";
	case PH_SIGNAL: return "signal";
	case PH_KILL: return "kill";
	case PH_SWEEP: return "sweep";
	default: return NULL;
	}
}

static cJSON *exit_object(const struct mon_exit *e)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	if (e->code >= 0 && !e->unknown)
		cJSON_AddNumberToObject(o, "code", e->code);
	else
		cJSON_AddNullToObject(o, "code");
	if (e->signal)
		cJSON_AddStringToObject(o, "signal", jv_signal_name(e->signal));
	else
		cJSON_AddNullToObject(o, "signal");
	cJSON_AddBoolToObject(o, "oom", e->oom);
	cJSON_AddBoolToObject(o, "core", e->core);
	cJSON_AddBoolToObject(o, "requested", e->requested);
	cJSON_AddBoolToObject(o, "unknown", e->unknown);
	cJSON_AddStringToObject(o, "reason", e->reason);
	add_time(o, "at", e->at_real_ms);
	cJSON_AddNumberToObject(o, "uptimeSeconds", (double)e->uptime_ms / 1000.0);
	return o;
}

cJSON *state_object(struct monitor *m)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	cJSON_AddStringToObject(o, "instanceId", m->instance_id);
	cJSON_AddStringToObject(o, "state", state_name(m->state));
	add_time(o, "since", m->since_real);
	cJSON_AddStringToObject(o, "message", m->message);
	bool live = m->pid > 0 && !m->leader_exited;
	if (m->pid > 0) {
		cJSON_AddNumberToObject(o, "pid", m->pid);
		cJSON_AddNumberToObject(o, "startTime", (double)m->start_time);
	} else {
		cJSON_AddNullToObject(o, "pid");
		cJSON_AddNullToObject(o, "startTime");
	}
	cJSON_AddBoolToObject(o, "alive", live);
	cJSON_AddStringToObject(o, "bootId", m->boot_id);
	if (m->cg.active && m->pid > 0)
		cJSON_AddStringToObject(o, "cgroup", m->cg.path);
	else
		cJSON_AddNullToObject(o, "cgroup");
	cJSON_AddBoolToObject(o, "adopted", m->adopted);
	if (m->pid > 0) {
		add_time(o, "startedAt", m->spawned_real);
		cJSON_AddNumberToObject(o, "startedAtMs", (double)m->spawned_real);
		cJSON_AddNumberToObject(o, "uptimeSeconds",
		                        (double)(jv_now_mono_ms() - m->spawned_mono) / 1000.0);
	}
	add_time(o, "readyAt", m->state == MON_RUNNING || m->state == MON_STOPPING ? m->ready_real : 0);
	cJSON_AddNumberToObject(o, "restarts", m->restarts);
	if (m->spec)
		cJSON_AddStringToObject(o, "policy", jv_restart_policy_name(m->spec->policy));
	if (m->state == MON_BACKOFF && m->restart_at >= 0)
	{
		add_time(o, "nextRestartAt", jv_now_real_ms() + (m->restart_at - jv_now_mono_ms()));
		cJSON_AddNumberToObject(o, "restartDelaySeconds", round(m->restart_delay_s * 1000) / 1000);
	}
	cJSON_AddBoolToObject(o, "crashLoop", m->state == MON_CRASHED && m->crash_loop);
	const char *ph = m->state == MON_STOPPING ? phase_name(m->phase) : NULL;
	if (ph)
		cJSON_AddStringToObject(o, "phase", ph);
	bool gone = m->exiting;
	if (gone)
		cJSON_AddNullToObject(o, "monitorPid");
	else
		cJSON_AddNumberToObject(o, "monitorPid", getpid());
	cJSON_AddNumberToObject(o, "monitorStartTime", (double)m->self_start_time);
	if (m->last_exit.valid)
		cJSON_AddItemToObject(o, "lastExit", exit_object(&m->last_exit));
	else
		cJSON_AddNullToObject(o, "lastExit");
	return o;
}

int state_write(struct monitor *m)
{
	cJSON *o = state_object(m);
	char *text = o ? jv_json_print(o) : NULL;
	cJSON_Delete(o);
	if (!text)
		return -ENOMEM;
	size_t len = strlen(text);
	int rc = jv_durable_write_at(m->jv_fd, "state.json", text, len, 0644);
	free(text);
	if (rc)
		jv_error(NULL, NULL, "instance %s: cannot write '.jobvisor/state.json': %s",
		         m->instance_id, strerror(-rc));
	return rc;
}
