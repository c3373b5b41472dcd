/* cmd_health.c — `jobvisor health`: is the agent on this data dir alive and working?
 *
 * Reads <data_dir>/agent-state.json (jobvisor/health.h), which the agent's
 * loop rewrites every few seconds, and answers from it alone: the agent
 * process must be the one that wrote the file (pid + start time + boot id,
 * so a reused pid does not count), its loop must have gone round recently
 * (a stalled loop stops the heartbeat), and a poll must have been answered
 * recently (an agent that cannot reach or is refused by its control plane
 * does no work). Meant for container HEALTHCHECKs and monitoring; it only
 * reads. Exit: 0 healthy, 1 unhealthy (the reason on stdout), 2 usage or
 * configuration error. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobvisor/commands.h"
#include "jobvisor/config.h"
#include "jobvisor/durable.h"
#include "jobvisor/health.h"
#include "jobvisor/jobchild.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/procid.h"
#include "jobvisor/util.h"
#include "help.h"

#define DEFAULT_DATA_DIR "/var/lib/jobvisor"
#define DEFAULT_MAX_BEAT_S 30 /* the defaults are in help.c's text too */
#define DEFAULT_MAX_POLL_S 300

struct verdict {
	bool healthy;
	char reason[512];
	const cJSON *state; /* borrowed, may be NULL */
	double beat_age_s, poll_age_s;
};

static int parse_secs(const char *s, int *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0 || v > 7 * 24 * 3600)
		return -1;
	*out = (int)v;
	return 0;
}

static void unhealthy(struct verdict *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void unhealthy(struct verdict *v, const char *fmt, ...)
{
	v->healthy = false;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(v->reason, sizeof(v->reason), fmt, ap);
	va_end(ap);
}

static void judge(const char *data_dir, const cJSON *st, int max_beat_s, int max_poll_s,
                  struct verdict *v)
{
	v->healthy = true;
	v->state = st;
	int64_t now = jv_now_real_ms();
	int64_t pid = jv_json_int(st, "pid", -1);
	int64_t start = jv_json_int(st, "pidStartTime", -1);
	const char *boot = jv_json_str(st, "bootId", "");
	char my_boot[JV_BOOT_ID_LEN] = "";
	uint64_t actual = 0;
	int64_t beat = jv_json_int(st, "heartbeatAtMs", -1);
	if (pid <= 0 || start < 0 || beat < 0) {
		unhealthy(v, "'%s/" JV_HEALTH_STATE_FILE "' lacks pid, pidStartTime or heartbeatAtMs",
		          data_dir);
		return;
	}
	if (jv_boot_id(my_boot) == 0 && *boot && strcmp(boot, my_boot) != 0) {
		unhealthy(v, "no agent is running on '%s': its state file is from before the last boot",
		          data_dir);
		return;
	}
	if (jv_proc_start_time((pid_t)pid, &actual) != 0 || actual != (uint64_t)start) {
		unhealthy(v, "no agent is running on '%s': pid %lld, which wrote the state file, is gone",
		          data_dir, (long long)pid);
		return;
	}
	v->beat_age_s = now > beat ? (double)(now - beat) / 1000.0 : 0;
	if (v->beat_age_s > max_beat_s) {
		unhealthy(v, "the agent on '%s' is stalled: its loop last went round %.0f s ago (limit %d s)",
		          data_dir, v->beat_age_s, max_beat_s);
		return;
	}
	int64_t poll = jv_json_int(st, "lastPollAtMs", -1);
	int64_t since = poll > 0 ? poll : jv_json_int(st, "startedAtMs", beat);
	v->poll_age_s = now > since ? (double)(now - since) / 1000.0 : 0;
	if (max_poll_s > 0 && v->poll_age_s > max_poll_s) {
		if (poll > 0)
			unhealthy(v, "the agent on '%s' had no poll answered for %.0f s (limit %d s): the "
			          "control plane is unreachable or refuses it (see its log)",
			          data_dir, v->poll_age_s, max_poll_s);
		else
			unhealthy(v, "the agent on '%s' has had no poll answered since it started %.0f s ago "
			          "(limit %d s): the control plane is unreachable or refuses it (see its log)",
		          data_dir, v->poll_age_s, max_poll_s);
	}
}

static void print_verdict(const struct verdict *v, bool json)
{
	const cJSON *st = v->state;
	if (json) {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddBoolToObject(o, "healthy", v->healthy);
		if (v->healthy)
			cJSON_AddNullToObject(o, "reason");
		else
			cJSON_AddStringToObject(o, "reason", v->reason);
		if (st && v->healthy) {
			cJSON_AddStringToObject(o, "agentId", jv_json_str(st, "agentId", ""));
			cJSON_AddNumberToObject(o, "pid", (double)jv_json_int(st, "pid", 0));
			cJSON_AddStringToObject(o, "state", jv_json_str(st, "state", ""));
			cJSON_AddStringToObject(o, "url", jv_json_str(st, "url", ""));
			cJSON_AddNumberToObject(o, "heartbeatAgeSeconds", v->beat_age_s);
			cJSON_AddNumberToObject(o, "lastPollAgeSeconds", v->poll_age_s);
			cJSON_AddNumberToObject(o, "runsRunning", (double)jv_json_int(st, "runsRunning", 0));
		}
		char *s = cJSON_PrintUnformatted(o);
		if (s)
			printf("%s\n", s);
		free(s);
		cJSON_Delete(o);
		return;
	}
	if (!v->healthy) {
		printf("unhealthy: %s\n", v->reason);
		return;
	}
	printf("healthy: agent %s (pid %lld, %s): loop went round %.0f s ago, last poll answered "
	       "%.0f s ago, control plane %s, %lld runs running\n",
	       jv_json_str(st, "agentId", "?"), (long long)jv_json_int(st, "pid", 0),
	       jv_json_str(st, "state", "?"), v->beat_age_s, v->poll_age_s,
	       jv_json_str(st, "url", "?"),
	       (long long)jv_json_int(st, "runsRunning", 0));
}

int cmd_health(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},       {"data-dir", required_argument, NULL, 'd'},
		{"max-beat-age", required_argument, NULL, 'b'}, {"max-poll-age", required_argument, NULL, 'p'},
		{"json", no_argument, NULL, 'J'},               {NULL, 0, NULL, 0},
	};
	const char *config_path = NULL, *data_dir = NULL;
	int max_beat = DEFAULT_MAX_BEAT_S, max_poll = DEFAULT_MAX_POLL_S;
	bool json = false;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'c': config_path = optarg; break;
		case 'd': data_dir = optarg; break;
		case 'b':
			if (parse_secs(optarg, &max_beat) < 0 || max_beat < 1)
				return help_usage_error("health", "--max-beat-age must be a positive number of seconds");
			break;
		case 'p':
			if (parse_secs(optarg, &max_poll) < 0)
				return help_usage_error("health", "--max-poll-age must be a number of seconds (0 = do not check)");
			break;
		case 'J': json = true; break;
		default:
			return help_usage_error("health", "unknown option or missing value: '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return help_usage_error("health", "unexpected argument '%s'", argv[optind]);

	struct config cfg;
	char err[512];
	if (config_load_local(config_path, &cfg, err, sizeof(err)) != 0) {
		return help_usage_error("health", "%s", err);
	}
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s",
	         data_dir ? data_dir : (cfg.data_dir && *cfg.data_dir ? cfg.data_dir : DEFAULT_DATA_DIR));
	config_free(&cfg);
	if (dir[0] != '/')
		return help_usage_error("health", "--data-dir must be an absolute path, not '%s'", dir);

	struct verdict v = {0};
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", dir, JV_HEALTH_STATE_FILE);
	char *text = NULL;
	size_t len = 0;
	int rc = jv_read_file_at(AT_FDCWD, path, 1 << 20, &text, &len);
	cJSON *st = NULL;
	if (rc == -ENOENT) {
		unhealthy(&v, "no agent is running on '%s' (no " JV_HEALTH_STATE_FILE
		          ": it never started there, or it stopped)", dir);
	} else if (rc < 0) {
		unhealthy(&v, "cannot read '%s': %s", path, strerror(-rc));
	} else if (!cJSON_IsObject(st = jv_json_parse(text, len))) {
		unhealthy(&v, "'%s' is not a JSON object", path);
	} else {
		judge(dir, st, max_beat, max_poll, &v);
	}
	print_verdict(&v, json);
	cJSON_Delete(st);
	free(text);
	return v.healthy ? 0 : 1;
}
