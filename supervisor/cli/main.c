/* main.c — the composition root: dispatches subcommands and owns exit codes.
 *
 * `__jobrun` is the job-run child mode (after fork+exec by jobrun.c): it enters
 * lua/ through jobchild.h. Nothing else here knows about Lua. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "jobvisor/commands.h"
#include "jobvisor/jobrun.h"
#include "jobvisor/config.h"
#include "jobvisor/jobchild.h"
#include "help.h"

static bool is_help(const char *a)
{
	return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

static bool is_version(const char *a)
{
	return strcmp(a, "version") == 0 || strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0;
}

/* check SCRIPT.lua... [--config FILE]: the settings (file, then JOBVISOR_*)
 * say which programs proc.run may start. Scripts are gathered at the front
 * of argv. */
static int check(int argc, char **argv)
{
	const char *conf = NULL;
	int n = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0) {
			if (i + 1 >= argc)
				return help_usage_error("check", "--config needs a FILE");
			conf = argv[++i];
		} else if (argv[i][0] == '-') {
			return help_usage_error("check", "unknown option '%s'", argv[i]);
		} else {
			argv[1 + n++] = argv[i];
		}
	}
	if (n == 0)
		return help_usage_error("check", "missing the script to check");
	struct config cfg;
	char err[512];
	if (config_load_local(conf, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "jobvisor check: %s\n", err);
		return JV_EXIT_USAGE;
	}
	cJSON *settings = config_child_settings(&cfg);
	char builtin[PATH_MAX];
	int rc = jv_check_scripts(n, argv + 1, jobrun_builtin_jobs_dir(builtin), settings);
	cJSON_Delete(settings);
	config_free(&cfg);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		help_overview(stderr);
		return JV_EXIT_USAGE;
	}
	const char *cmd = argv[1];
	if (strcmp(cmd, "__jobrun") == 0)
		return jv_jobrun_child_main(argc - 1, argv + 1);
	if (strcmp(cmd, "__jobtypes") == 0) {
		char builtin[PATH_MAX];
		return jv_job_types_main(argc - 1, argv + 1, jobrun_builtin_jobs_dir(builtin));
	}
	if (is_version(cmd)) {
		if (argc > 2)
			return help_usage_error("version", "unexpected argument '%s'", argv[2]);
		printf("jobvisor %s\n", JV_VERSION);
		return 0;
	}
	if (is_help(cmd) || strcmp(cmd, "help") == 0) {
		if (argc == 2) {
			help_overview(stdout);
			return 0;
		}
		if (argc > 3)
			return help_usage_error("help", "unexpected argument '%s'", argv[3]);
		if (help_command(argv[2], stdout) < 0)
			return help_usage_error("help", "unknown command '%s'", argv[2]);
		return 0;
	}
	if (!help_known(cmd)) {
		if (cmd[0] == '-')
			return help_usage_error(NULL, "unknown option '%s'", cmd);
		return help_usage_error(NULL, "unknown command '%s'", cmd);
	}
	/* `jobvisor CMD --help` anywhere in CMD's options: the same text as `help CMD`. */
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			break;
		if (is_help(argv[i])) {
			help_command(cmd, stdout);
			return 0;
		}
	}
	if (strcmp(cmd, "run") == 0)
		return cmd_run(argc - 1, argv + 1);
	if (strcmp(cmd, "check") == 0)
		return check(argc - 1, argv + 1);
	if (strcmp(cmd, "agent") == 0)
		return cmd_agent(argc - 1, argv + 1);
	if (strcmp(cmd, "status") == 0)
		return cmd_status(argc - 1, argv + 1);
	if (strcmp(cmd, "monitor") == 0)
		return cmd_monitor(argc - 1, argv + 1);
	if (strcmp(cmd, "health") == 0)
		return cmd_health(argc - 1, argv + 1);
	return help_usage_error(NULL, "unknown command '%s'", cmd);
}
