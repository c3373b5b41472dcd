/* main.c — the composition root: dispatches subcommands and owns exit codes.
 *
 * `__jobrun` is the job-run child mode (after fork+exec by jobrun.c): it enters
 * lua/ through jobchild.h. Nothing else here knows about Lua. */
#include <stdio.h>
#include <string.h>

#include "jobvisor/commands.h"
#include "jobvisor/jobrun.h"
#include "jobvisor/jobchild.h"

static int usage(void)
{
	fprintf(stderr,
	        "usage: jobvisor <command> [options]\n"
	        "  agent   [--config FILE]             run the agent daemon\n"
	        "  run     TYPE|SCRIPT.lua --instance ID [--data-dir DIR] [--params JSON|@FILE]\n"
	        "          [--jobs-dir DIR] [--timeout S] [--cancel-grace S] [--json]\n"
	        "  check   SCRIPT.lua                  validate a job script\n"
	        "  status  [--data-dir DIR] [--json]   instances and runs in flight\n"
	        "  version\n");
	return 2;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage();
	const char *cmd = argv[1];
	if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
		printf("jobvisor %s\n", JV_VERSION);
		return 0;
	}
	if (strcmp(cmd, "__jobrun") == 0)
		return jv_jobrun_child_main(argc - 1, argv + 1);
	if (strcmp(cmd, "run") == 0)
		return cmd_run(argc - 1, argv + 1);
	if (strcmp(cmd, "check") == 0) {
		if (argc != 3 || argv[2][0] == '-') {
			fprintf(stderr, "usage: jobvisor check SCRIPT.lua\n");
			return JV_EXIT_USAGE;
		}
		return jv_check_script(argv[2], jobrun_builtin_jobs_dir());
	}
	if (strcmp(cmd, "agent") == 0)
		return cmd_agent(argc - 1, argv + 1);
	if (strcmp(cmd, "status") == 0)
		return cmd_status(argc - 1, argv + 1);
	if (strcmp(cmd, "monitor") == 0)
		return cmd_monitor(argc - 1, argv + 1);
	if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
		usage();
		return 0;
	}
	fprintf(stderr, "jobvisor: unknown command '%s'\n", cmd);
	return usage();
}
