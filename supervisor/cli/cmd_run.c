/* cmd_run.c — `jobvisor run`: one job run locally, with no control plane.
 *
 * (`jobvisor check` is dispatched by main.c straight into lua/.)
 * The run command is a tiny event loop around one jobrun: poll() on the event
 * pipe and a signalfd (SIGINT/SIGTERM cancel gracefully, one more 2 s or more
 * later kills, SIGCHLD reaps). Output: a progress bar on a TTY, plain log lines otherwise,
 * or with --json one event object per line on stdout and the result last.
 * Exit: 0 COMPLETED, 1 FAILED, 2 usage/configuration, 3 CANCELLED. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "jobvisor/commands.h"
#include "jobvisor/config.h"
#include "jobvisor/jobrun.h"
#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/jobchild.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "help.h"

#define DEFAULT_DATA_DIR "/var/lib/jobvisor"
#define MAX_PARAMS_FILE (16u << 20)

struct run_out {
	bool json;
	bool tty;
	bool bar_drawn;
	cJSON *result;
	double percent;
	char message[256];
};

static void clear_bar(struct run_out *o)
{
	if (o->bar_drawn) {
		fputs("\r\033[K", stderr);
		o->bar_drawn = false;
	}
}

static void draw_bar(struct run_out *o)
{
	const int width = 30;
	int filled = o->percent >= 0 ? (int)(o->percent * width / 100) : 0;
	char bar[64];
	for (int i = 0; i < width; i++)
		bar[i] = i < filled ? '#' : (o->percent >= 0 ? '.' : ' ');
	bar[width] = '\0';
	char pct[8] = "  ?%";
	if (o->percent >= 0)
		snprintf(pct, sizeof(pct), "%3.0f%%", o->percent);
	fprintf(stderr, "\r\033[K[%s] %s %.60s", bar, pct, o->message);
	o->bar_drawn = true;
}

static void on_event(void *ud, struct jobrun *run, cJSON *ev)
{
	(void)run;
	struct run_out *o = ud;
	if (o->json) {
		char *s = jv_json_print(ev);
		if (s) {
			printf("%s\n", s);
			fflush(stdout);
			free(s);
		}
	} else if (o->tty) {
		const char *kind = jv_json_str(ev, "kind", "");
		if (jv_json_has_num(ev, "percent"))
			o->percent = jv_json_num(ev, "percent", -1);
		const char *msg = jv_json_str(ev, "message", NULL);
		if (strcmp(kind, "log") == 0) {
			clear_bar(o);
			fprintf(stderr, "%-5s %s\n", jv_json_str(ev, "level", "info"), msg ? msg : "");
		} else if (msg && strcmp(kind, "progress") == 0) {
			snprintf(o->message, sizeof(o->message), "%s", msg);
		}
		draw_bar(o);
	}
	cJSON_Delete(ev);
}

static void on_done(void *ud, struct jobrun *run, cJSON *result)
{
	(void)run;
	struct run_out *o = ud;
	o->result = result;
}

static int run_usage(const char *msg)
{
	return help_usage_error("run", "%s", msg);
}

static int parse_seconds(const char *s, int *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || v > 7 * 24 * 3600)
		return -1;
	*out = (int)v;
	return 0;
}

static cJSON *load_params(const char *arg, char *err, size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	if (arg[0] == '@') {
		int rc = jv_read_file_at(AT_FDCWD, arg + 1, MAX_PARAMS_FILE, &text, &len);
		if (rc < 0) {
			snprintf(err, errlen, "cannot read params file '%s': %s", arg + 1, jv_read_strerror(rc));
			return NULL;
		}
	} else {
		text = strdup(arg);
		len = strlen(arg);
	}
	if (!text) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	char why[256];
	cJSON *p = jv_json_parse_err(text, len, why, sizeof(why));
	free(text);
	const char *where = arg[0] == '@' ? arg + 1 : NULL;
	if (!p) {
		if (where)
			snprintf(err, errlen, "--params file '%s': %s", where, why);
		else
			snprintf(err, errlen, "--params: %s", why);
		return NULL;
	}
	if (!cJSON_IsObject(p)) {
		cJSON_Delete(p);
		snprintf(err, errlen, "--params must be a JSON object like '{\"backupId\": \"b1\"}'");
		return NULL;
	}
	char field[96];
	const char *what;
	if (!jv_json_text_ok(p, field, sizeof(field), &what)) {
		cJSON_Delete(p);
		snprintf(err, errlen, "--params: '%s' %s", field, what);
		return NULL;
	}
	return p;
}

static int exit_for(const char *status)
{
	if (strcmp(status, "COMPLETED") == 0)
		return JV_EXIT_COMPLETED;
	if (strcmp(status, "CANCELLED") == 0)
		return JV_EXIT_CANCELLED;
	return JV_EXIT_FAILED;
}

/* The event loop of one local run. Returns the exit status. */
static int drive(struct jobrun *run, struct run_out *o, int sfd)
{
	/* A signal within the window of the one that took effect is the same
	 * request (Ctrl-C plus a wrapper's SIGTERM), not an impatient repeat. */
	const int64_t window_ms = 2000;
	int interrupts = 0;
	int64_t last_ms = 0;
	while (!jobrun_finished(run)) {
		int64_t now = jv_now_mono_ms();
		int64_t dl = jobrun_next_deadline(run);
		int timeout = -1;
		if (dl != INT64_MAX)
			timeout = dl <= now ? 0 : (int)(dl - now > 60000 ? 60000 : dl - now);
		struct pollfd pfd[2] = {{.fd = sfd, .events = POLLIN},
		                        {.fd = jobrun_fd(run), .events = POLLIN}};
		int n = poll(pfd, jobrun_fd(run) >= 0 ? 2 : 1, timeout);
		if (n < 0 && errno != EINTR)
			break;
		if (n > 0 && (pfd[0].revents & POLLIN)) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				if (si.ssi_signo == SIGCHLD) {
					jobrun_reap(run);
				} else if (interrupts > 0 && jv_now_mono_ms() - last_ms < window_ms) {
					continue;
				} else if (++interrupts == 1) {
					last_ms = jv_now_mono_ms();
					clear_bar(o);
					jv_warn(NULL, NULL, "%s: cancelling the job (again after %d s to kill it)",
					        jv_signal_name((int)si.ssi_signo), (int)(window_ms / 1000));
					jobrun_cancel(run, JOBRUN_CANCELLED);
				} else {
					clear_bar(o);
					jv_warn(NULL, NULL, "%s again: killing the job", jv_signal_name((int)si.ssi_signo));
					jobrun_kill(run);
				}
			}
		}
		if (n > 0 && jobrun_fd(run) >= 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)))
			jobrun_on_readable(run);
		jobrun_reap(run);
		jobrun_on_timer(run, jv_now_mono_ms());
	}
	clear_bar(o);
	if (!o->result)
		return JV_EXIT_FAILED;
	const char *status = jv_json_str(o->result, "status", "FAILED");
	if (o->json) {
		cJSON *r = cJSON_CreateObject();
		cJSON_AddStringToObject(r, "status", status);
		cJSON_AddItemReferenceToObject(r, "output", cJSON_GetObjectItem(o->result, "output"));
		cJSON_AddItemReferenceToObject(r, "error", cJSON_GetObjectItem(o->result, "error"));
		char *s = jv_json_print(r);
		if (s)
			printf("%s\n", s);
		free(s);
		cJSON_Delete(r);
	} else {
		/* The result is what the command produces: stdout, so `> out` keeps
		 * it; logs and progress went to stderr. */
		const cJSON *err = cJSON_GetObjectItem(o->result, "error");
		if (strcmp(status, "COMPLETED") == 0) {
			char *s = jv_json_print(cJSON_GetObjectItem(o->result, "output"));
			printf("COMPLETED %s\n", s ? s : "{}");
			free(s);
		} else {
			printf("%s: %s\n", status, jv_json_str(err, "message", "-"));
			const char *stack = jv_json_str(err, "stack", "");
			if (*stack && strcmp(status, "CANCELLED") != 0)
				printf("%s\n", stack);
		}
	}
	fflush(stdout);
	return exit_for(status);
}

/* The command line of `jobvisor run`. */
struct run_args {
	const char *instance, *data_dir, *params_arg, *config_path, *jobs_dir, *job_id_arg, *what;
	int timeout, grace, mem_mib;
	bool json;
};

/* Parse and check the arguments: -1 when the run goes on, else the exit code. */
static int parse_run_args(int argc, char **argv, struct run_args *a)
{
	static const struct option opts[] = {
		{"instance", required_argument, NULL, 'i'}, {"data-dir", required_argument, NULL, 'd'},
		{"params", required_argument, NULL, 'p'},   {"jobs-dir", required_argument, NULL, 'j'},
		{"timeout", required_argument, NULL, 't'},  {"cancel-grace", required_argument, NULL, 'g'},
		{"memory-limit", required_argument, NULL, 'm'}, {"json", no_argument, NULL, 'J'},
		{"config", required_argument, NULL, 'c'},   {"job-id", required_argument, NULL, 'k'},
		{"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
	};
	*a = (struct run_args){.grace = 10};
	int c;
	optind = 1;
	opterr = 0; /* unknown options are reported in the one usage-error style */
	while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
		switch (c) {
		case 'i': a->instance = optarg; break;
		case 'd': a->data_dir = optarg; break;
		case 'p': a->params_arg = optarg; break;
		case 'j': a->jobs_dir = optarg; break;
		case 't':
			if (parse_seconds(optarg, &a->timeout) < 0)
				return run_usage("--timeout must be a number of seconds");
			break;
		case 'g':
			if (parse_seconds(optarg, &a->grace) < 0 || a->grace < 1)
				return run_usage("--cancel-grace must be a positive number of seconds");
			break;
		case 'm':
			if (parse_seconds(optarg, &a->mem_mib) < 0 || a->mem_mib < 4 || a->mem_mib > 65536)
				return run_usage("--memory-limit must be 4..65536 MiB");
			break;
		case 'J': a->json = true; break;
		case 'c': a->config_path = optarg; break;
		case 'k': a->job_id_arg = optarg; break;
		case 'h': help_command("run", stdout); return 0;
		case ':':
			return help_usage_error("run", "option '%s' needs a value", argv[optind - 1]);
		default:
			return help_usage_error("run", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return run_usage("missing job type or script");
	a->what = argv[optind];
	if (optind + 1 < argc)
		return run_usage("too many arguments");
	if (!a->instance)
		return run_usage("--instance is required");
	if (a->job_id_arg && !jv_ident_valid(a->job_id_arg))
		return help_usage_error("run", "invalid job id '%s': must match "
		                        "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}", a->job_id_arg);
	if (!jv_ident_valid(a->instance))
		return help_usage_error("run", "invalid instance id '%s': must match "
		                        "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}", a->instance);
	/* As data_dir for the agent (config.c): an absolute path, never relative
	 * to wherever the command happens to run. */
	if (a->data_dir && a->data_dir[0] != '/')
		return help_usage_error("run", "--data-dir '%s' must be an absolute path (as data_dir "
		                        "for the agent)", a->data_dir);
	return -1;
}

/* The script to run (a job type or a .lua file) and the data dir, created
 * and made absolute. 0 or JV_EXIT_USAGE (the reason printed). */
static int resolve_run(const char *what, const char *jobs_dir, const char *data_dir,
                       char script[PATH_MAX], char abs_data[PATH_MAX])
{
	int rc = jobrun_resolve_script(what, jobs_dir, script, PATH_MAX);
	if (rc < 0) {
		if (rc == -EINVAL) {
			fprintf(stderr, "jobvisor run: '%s' is neither a job type (like BACKUP_INSTANCE) nor a .lua script\n", what);
		} else if (strstr(what, ".lua")) {
			fprintf(stderr, "jobvisor run: cannot open script '%s': %s\n", what, strerror(-rc));
		} else {
			char builtin[PATH_MAX];
			fprintf(stderr, "jobvisor run: unknown job type '%s' (no %s script in %s%s%s)\n", what,
			        "matching", jobs_dir ? jobs_dir : "", jobs_dir ? " or " : "",
			        jobrun_builtin_jobs_dir(builtin));
		}
		return JV_EXIT_USAGE;
	}
	rc = jv_mkdir_p(data_dir, 0750);
	if (rc < 0 || !realpath(data_dir, abs_data)) {
		fprintf(stderr, "jobvisor run: cannot create data dir '%s': %s\n", data_dir,
		        strerror(rc < 0 ? -rc : errno));
		return JV_EXIT_USAGE;
	}
	return 0;
}

/* SIGINT, SIGTERM and SIGCHLD blocked and read from a signalfd, or -1. */
static int run_signalfd(void)
{
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		fprintf(stderr, "jobvisor run: signalfd: %s\n", strerror(errno));
		return -1;
	}
	return sfd;
}

int cmd_run(int argc, char **argv)
{
	struct run_args a;
	int code = parse_run_args(argc, argv, &a);
	if (code >= 0)
		return code;
	code = JV_EXIT_USAGE;
	const char *what = a.what, *instance = a.instance, *data_dir = a.data_dir;
	const char *jobs_dir = a.jobs_dir, *job_id_arg = a.job_id_arg;
	char err[512];
	struct config cfg;
	if (config_load_local(a.config_path, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "jobvisor run: %s\n", err);
		return JV_EXIT_USAGE;
	}
	if (!data_dir || !*data_dir)
		data_dir = cfg.data_dir && *cfg.data_dir ? cfg.data_dir : DEFAULT_DATA_DIR;
	if (!jobs_dir)
		jobs_dir = cfg.jobs_dir;
	size_t mem_limit = a.mem_mib ? (size_t)a.mem_mib << 20 : (size_t)cfg.job_memory;
	int run_uid, run_gid;
	config_run_user(&cfg, &run_uid, &run_gid);
	cJSON *settings = config_child_settings(&cfg);
	cJSON *params = NULL;
	if (a.params_arg) {
		params = load_params(a.params_arg, err, sizeof(err));
		if (!params) {
			code = help_usage_error("run", "%s", err);
			goto out;
		}
	}
	char script[PATH_MAX], abs_data[PATH_MAX];
	code = resolve_run(what, jobs_dir, data_dir, script, abs_data);
	if (code)
		goto out;

	char job_id[72], run_id[JV_UUID_LEN];
	if (job_id_arg)
		snprintf(job_id, sizeof(job_id), "%s", job_id_arg);
	else
		jv_uuid4(job_id);
	jv_uuid4(run_id);
	struct run_out out = {.json = a.json, .tty = !a.json && isatty(STDERR_FILENO), .percent = -1};
	/* JOBVISOR_LOG_FORMAT / _LEVEL (or the config file) as for the agent; on a
	 * terminal the progress bar replaces the info lines. */
	jv_log_setup((enum jv_log_format)cfg.log_format,
	             out.tty && cfg.log_level < JV_LOG_WARN ? JV_LOG_WARN : (enum jv_log_level)cfg.log_level);

	int sfd = run_signalfd();
	if (sfd < 0) {
		code = JV_EXIT_USAGE;
		goto out;
	}

	bool by_type = !strstr(what, ".lua");
	struct jobrun_spec spec = {
		.job_id = job_id, .run_id = run_id, .instance_id = instance,
		.type = by_type ? what : NULL, .by_type = by_type, .attempt = 1, .params = params,
		.data_dir = abs_data, .script = script, .jobs_dir = jobs_dir, .timeout_s = a.timeout,
		.cancel_grace_s = a.grace, .mem_limit = mem_limit, .run_uid = run_uid, .run_gid = run_gid,
		.settings = settings, .fresh_job_id = !job_id_arg,
		/* this process is as clean as a fresh exec would be: spare the second one */
		.child_main = jv_jobrun_child_run,
	};
	static const struct jobrun_ops ops = {.event = on_event, .done = on_done};
	struct jobrun *run = NULL;
	int rc = jobrun_start(&spec, &ops, &out, &run);
	if (rc < 0) {
		fprintf(stderr, "jobvisor run: cannot start the job-run child: %s\n", strerror(-rc));
		code = JV_EXIT_FAILED;
	} else {
		/* A job id the caller named may be run again as a retry (and then
		 * reports this result again); a fresh one never is, so its child
		 * records no completion (fresh_job_id). */
		code = drive(run, &out, sfd);
	}
	jobrun_free(run);
	cJSON_Delete(out.result);
	close(sfd);
out:
	cJSON_Delete(params);
	cJSON_Delete(settings);
	config_free(&cfg);
	return code;
}
