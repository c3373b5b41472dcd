/* cmd_status.c — `jobvisor status [--data-dir DIR] [--json]`.
 *
 * Lists every instance under <data-dir>/instances/ with its state, pid,
 * uptime, restarts and last exit, asking each running monitor over its
 * socket and reading state.json for the rest (instance_client.c), then the
 * job runs in flight: every <data-dir>/runs/<jobRunId>/ without a result
 * file. It only reads: an orphaned server (its monitor died) is reported as
 * such; `instance.status()` or a START job adopts it. */
#include "jobvisor/commands.h"
#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/instance_client.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"
#include "help.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ENTRIES 4096

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the subdirectories of dir that are valid identifiers
 * (ids: jv_ident_valid, else jv_run_id_valid). Returned-owned. */
static int list_dirs(const char *dir, bool run_ids, char ***out, size_t *count)
{
	*out = NULL;
	*count = 0;
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	char **names = calloc(MAX_ENTRIES, sizeof(char *));
	if (!names) {
		closedir(d);
		return -ENOMEM;
	}
	size_t n = 0;
	struct dirent *e;
	while (n < MAX_ENTRIES && (e = readdir(d))) {
		bool ok = run_ids ? jv_run_id_valid(e->d_name) : jv_ident_valid(e->d_name);
		struct stat st;
		if (!ok || fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISDIR(st.st_mode))
			continue;
		if (!(names[n] = strdup(e->d_name)))
			break;
		n++;
	}
	closedir(d);
	qsort(names, n, sizeof(char *), cmp_str);
	*out = names;
	*count = n;
	return 0;
}

static void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

static double uptime_of(const cJSON *st)
{
	if (cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(st, "pid")) ||
	    !cJSON_GetObjectItemCaseSensitive(st, "pid"))
		return -1;
	if (jv_json_bool(st, "monitor", false) && jv_json_has_num(st, "uptimeSeconds"))
		return jv_json_num(st, "uptimeSeconds", -1);
	if (jv_json_bool(st, "alive", false) && jv_json_has_num(st, "startedAtMs"))
		return (double)(jv_now_real_ms() - jv_json_int(st, "startedAtMs", 0)) / 1000.0;
	return -1;
}

static void fmt_duration(double s, char *out, size_t len)
{
	if (s < 0) {
		snprintf(out, len, "-");
		return;
	}
	long t = (long)s;
	if (t < 60)
		snprintf(out, len, "%lds", t);
	else if (t < 3600)
		snprintf(out, len, "%ldm%02lds", t / 60, t % 60);
	else if (t < 86400)
		snprintf(out, len, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
	else
		snprintf(out, len, "%ldd%02ldh", t / 86400, (t % 86400) / 3600);
}

/* One run record, or NULL when the run has finished. Returned-owned. */
static cJSON *run_record(const char *runs_dir, const char *id)
{
	char dir[PATH_MAX];
	if (snprintf(dir, sizeof(dir), "%s/%s", runs_dir, id) >= (int)sizeof(dir))
		return NULL;
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return NULL;
	struct stat st;
	bool finished = fstatat(dfd, "result.json", &st, 0) == 0;
	cJSON *rec = NULL;
	if (!finished) {
		char *text = NULL;
		size_t len = 0;
		rec = cJSON_CreateObject();
		cJSON_AddStringToObject(rec, "jobRunId", id);
		if (jv_read_file_at(dfd, "assignment.json", 1 << 20, &text, &len) == 0) {
			cJSON *a = jv_json_parse(text, len);
			static const char *const keys[] = {"jobId", "type", "instanceId", "attempt"};
			for (size_t i = 0; i < JV_ARRAY_LEN(keys); i++) {
				const cJSON *v = cJSON_GetObjectItemCaseSensitive(a, keys[i]);
				if (v)
					cJSON_AddItemToObject(rec, keys[i], cJSON_Duplicate(v, true));
			}
			cJSON_Delete(a);
			free(text);
		}
	}
	close(dfd);
	return rec;
}

static void print_text(const cJSON *instances, const cJSON *runs)
{
	printf("%-24s %-9s %-8s %-9s %-8s %s\n", "INSTANCE", "STATE", "PID", "UPTIME", "RESTARTS",
	       "DETAIL");
	const cJSON *st;
	cJSON_ArrayForEach(st, instances) {
		char pid[16] = "-", up[24], detail[320] = "";
		if (jv_json_has_num(st, "pid"))
			snprintf(pid, sizeof(pid), "%lld", (long long)jv_json_int(st, "pid", 0));
		fmt_duration(uptime_of(st), up, sizeof(up));
		const char *err = jv_json_str(st, "error", NULL);
		const cJSON *le = cJSON_GetObjectItemCaseSensitive(st, "lastExit");
		if (err)
			snprintf(detail, sizeof(detail), "error: %s", err);
		else if (jv_json_bool(st, "orphan", false))
			snprintf(detail, sizeof(detail), "orphan: monitor gone, server still running");
		else if (!jv_json_bool(st, "monitor", false) && jv_json_bool(st, "neverStarted", false))
			snprintf(detail, sizeof(detail), "never started");
		else if (cJSON_IsObject(le))
			snprintf(detail, sizeof(detail), "last exit: %s", jv_json_str(le, "reason", "?"));
		const char *msg = jv_json_str(st, "message", "");
		if (!detail[0] && *msg)
			snprintf(detail, sizeof(detail), "%s", msg);
		printf("%-24s %-9s %-8s %-9s %-8lld %s\n", jv_json_str(st, "instanceId", "?"),
		       jv_json_str(st, "state", "?"), pid, up, (long long)jv_json_int(st, "restarts", 0),
		       detail);
	}
	if (cJSON_GetArraySize(instances) == 0)
		printf("(no instances)\n");
	printf("\nruns in flight:");
	if (cJSON_GetArraySize(runs) == 0)
		printf(" none\n");
	else
		printf("\n");
	const cJSON *r;
	cJSON_ArrayForEach(r, runs)
		printf("  %s  %s  instance=%s job=%s\n", jv_json_str(r, "jobRunId", "?"),
		       jv_json_str(r, "type", "?"), jv_json_str(r, "instanceId", "-"),
		       jv_json_str(r, "jobId", "-"));
}

int cmd_status(int argc, char **argv)
{
	const char *data_dir = getenv("JOBVISOR_DATA_DIR");
	bool json = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = true;
		else if (strcmp(argv[i], "--data-dir") == 0 && i + 1 < argc)
			data_dir = argv[++i];
		else if (strcmp(argv[i], "--data-dir") == 0)
			return help_usage_error("status", "option '--data-dir' needs a value");
		else if (argv[i][0] == '-')
			return help_usage_error("status", "unknown option '%s'", argv[i]);
		else
			return help_usage_error("status", "unexpected argument '%s'", argv[i]);
	}
	if (!data_dir || !*data_dir)
		data_dir = "/var/lib/jobvisor";
	char abs[PATH_MAX], dir[PATH_MAX];
	if (!realpath(data_dir, abs)) {
		fprintf(stderr, "jobvisor status: cannot open data dir '%s': %s\n", data_dir, strerror(errno));
		return 1;
	}
	snprintf(dir, sizeof(dir), "%.4000s/instances", abs);
	cJSON *out = cJSON_CreateObject();
	cJSON *instances = cJSON_AddArrayToObject(out, "instances");
	cJSON *runs = cJSON_AddArrayToObject(out, "runs");
	char **names = NULL;
	size_t n = 0;
	int rc = list_dirs(dir, false, &names, &n);
	if (rc) {
		fprintf(stderr, "jobvisor: cannot list '%s': %s\n", dir, strerror(-rc));
		cJSON_Delete(out);
		return 1;
	}
	for (size_t i = 0; i < n; i++) {
		char inst[PATH_MAX];
		if (snprintf(inst, sizeof(inst), "%s/%s", dir, names[i]) >= (int)sizeof(inst))
			continue;
		cJSON *st = NULL;
		int src = jv_instance_status(inst, &st);
		if (src) {
			st = cJSON_CreateObject();
			cJSON_AddStringToObject(st, "state", "UNKNOWN");
			cJSON_AddStringToObject(st, "error", strerror(-src));
		}
		cJSON_DeleteItemFromObjectCaseSensitive(st, "instanceId");
		cJSON_AddStringToObject(st, "instanceId", names[i]);
		cJSON_AddItemToArray(instances, st);
	}
	free_names(names, n);
	snprintf(dir, sizeof(dir), "%.4000s/runs", abs);
	if (list_dirs(dir, true, &names, &n) == 0) {
		for (size_t i = 0; i < n; i++) {
			cJSON *r = run_record(dir, names[i]);
			if (r)
				cJSON_AddItemToArray(runs, r);
		}
		free_names(names, n);
	}
	if (json) {
		char *text = jv_json_print(out);
		if (text)
			printf("%s\n", text);
		free(text);
	} else {
		print_text(instances, runs);
	}
	cJSON_Delete(out);
	return 0;
}
