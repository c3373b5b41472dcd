/* health_state.c — the agent's liveness file, read by `jobvisor health`.
 *
 * Every JV_HEALTH_BEAT_MS the loop rewrites <data_dir>/agent-state.json: who the
 * agent is (pid with its start time and boot id, so a reused pid is not
 * taken for the agent), the control-plane URL it talks to now, when the loop last went round (the heartbeat), when
 * a poll was last answered, and the shutdown phase. The file is replaced by
 * rename, so a reader never sees half of it, but deliberately not fsynced:
 * it describes a live process and means nothing after a crash, and an fsync
 * every few seconds would stall the loop on a busy disk. A clean exit
 * removes it. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "jobvisor/durable.h"
#include "jobvisor/health.h"
#include "jobvisor/log.h"
#include "jobvisor/procid.h"
#include "jobvisor/util.h"
#include "scheduler.h"
#include "transport.h"

static const char *phase(const struct agent *ag)
{
	if (!ag->stopping)
		return "running";
	if (ag->flushing)
		return "delivering";
	return ag->cancelling ? "cancelling" : "draining";
}

static void add_time(cJSON *o, const char *key, const char *ms_key, int64_t real_ms)
{
	if (real_ms <= 0) {
		cJSON_AddNullToObject(o, key);
		cJSON_AddNullToObject(o, ms_key);
		return;
	}
	char ts[JV_ISO8601_LEN];
	jv_iso8601(real_ms, ts);
	cJSON_AddStringToObject(o, key, ts);
	cJSON_AddNumberToObject(o, ms_key, (double)real_ms);
}

static int write_state(struct agent *ag)
{
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return -ENOMEM;
	uint64_t start = 0;
	char boot[JV_BOOT_ID_LEN] = "";
	jv_proc_start_time(getpid(), &start);
	jv_boot_id(boot);
	cJSON_AddStringToObject(o, "agentId", ag->cfg.agent_id);
	cJSON_AddStringToObject(o, "version", JV_VERSION);
	cJSON_AddNumberToObject(o, "pid", (double)getpid());
	cJSON_AddNumberToObject(o, "pidStartTime", (double)start);
	cJSON_AddStringToObject(o, "bootId", boot);
	cJSON_AddStringToObject(o, "state", phase(ag));
	add_time(o, "startedAt", "startedAtMs", ag->started_real_ms);
	add_time(o, "heartbeatAt", "heartbeatAtMs", jv_now_real_ms());
	cJSON_AddNumberToObject(o, "heartbeatIntervalSeconds", JV_HEALTH_BEAT_MS / 1000);
	cJSON_AddStringToObject(o, "url", transport_current_url(ag->tp));
	add_time(o, "lastPollAt", "lastPollAtMs", ag->poller.ok_at_real_ms);
	cJSON_AddNumberToObject(o, "pollFailures", (double)ag->poller.failures);
	cJSON_AddNumberToObject(o, "pollIntervalSeconds", (double)ag->cfg.poll_interval_ms / 1000.0);
	cJSON_AddNumberToObject(o, "runsRunning", (double)scheduler_live_children(ag));
	cJSON_AddNumberToObject(o, "runsHeld", (double)scheduler_held(ag));
	char *text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!text)
		return -ENOMEM;

	char path[4096], tmp[4096];
	snprintf(path, sizeof(path), "%s/%s", ag->cfg.data_dir, JV_HEALTH_STATE_FILE);
	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", ag->cfg.data_dir, JV_HEALTH_STATE_FILE);
	int rc = 0;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		rc = -errno;
	} else {
		rc = jv_write_all(fd, text, strlen(text));
		if (close(fd) < 0 && rc == 0)
			rc = -errno;
		if (rc == 0 && rename(tmp, path) < 0)
			rc = -errno;
		if (rc)
			unlink(tmp);
	}
	free(text);
	return rc;
}

int64_t health_state_beat(struct agent *ag, int64_t now)
{
	/* A move to another control-plane URL shows at once. */
	uint64_t gen = transport_url_gen(ag->tp);
	if (now < ag->heartbeat_at_ms && gen == ag->state_url_gen)
		return ag->heartbeat_at_ms;
	ag->state_url_gen = gen;
	int rc = write_state(ag);
	if (rc && !ag->state_warned) {
		jv_warn(NULL, NULL, "cannot write '%s/%s' (what `jobvisor health` reads): %s",
		        ag->cfg.data_dir, JV_HEALTH_STATE_FILE, strerror(-rc));
		ag->state_warned = true;
	} else if (rc == 0) {
		ag->state_warned = false;
	}
	ag->heartbeat_at_ms = now + JV_HEALTH_BEAT_MS;
	return ag->heartbeat_at_ms;
}

void health_state_remove(struct agent *ag)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", ag->cfg.data_dir, JV_HEALTH_STATE_FILE);
	if (unlink(path) < 0 && errno != ENOENT)
		jv_warn(NULL, NULL, "cannot remove '%s': %s", path, strerror(errno));
}
