/* help.c — every usage text of the `jobvisor` command line, in one table, and the
 * one style of help and usage errors all subcommands share:
 *
 *   jobvisor --help | -h | help          the overview, on stdout, exit 0
 *   jobvisor help CMD | jobvisor CMD --help   CMD's usage and options, on stdout, exit 0
 *   a usage error                        "jobvisor CMD: <what is wrong>", CMD's synopsis and
 *                                        "Run 'jobvisor help CMD' for details." on stderr, exit 2
 *
 * main.c answers --help for every subcommand before dispatching, so the
 * subcommands themselves (agent, monitor) only report errors. */
#include "help.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "jobvisor/jobchild.h"

struct cmd_help {
	const char *name;
	const char *args;     /* after "jobvisor NAME "; lines joined by '\n', indented when printed */
	const char *summary;  /* one line for the overview */
	const char *details;  /* options, one a line */
};

static const struct cmd_help cmds[] = {
	{"agent", "[--config FILE] [--check-config]", "run the agent daemon",
	 "  --config FILE     settings file (key = value lines); JOBVISOR_* variables override it\n"
	 "  --check-config    load and check the settings, print them, exit (0 ok, 2 errors)\n"
	 "See docs/operations.md for every setting.\n"},
	{"run",
	 "TYPE|SCRIPT.lua --instance ID [--data-dir DIR] [--params JSON|@FILE]\n"
	 "[--jobs-dir DIR] [--timeout S] [--cancel-grace S] [--memory-limit MIB]\n"
	 "[--config FILE] [--job-id ID] [--json]",
	 "run one job locally, without a control plane",
	 "  --instance ID        the instance the job works on (required)\n"
	 "  --data-dir DIR       absolute path, as data_dir for the agent (default: the config's, or\n"
	 "                       /var/lib/jobvisor)\n"
	 "  --params JSON|@FILE  the job's parameters, a JSON object (inline or from FILE)\n"
	 "  --jobs-dir DIR       search DIR for TYPE's script before the built-in jobs\n"
	 "  --timeout S          wall-clock limit in seconds (default none)\n"
	 "  --cancel-grace S     SIGTERM to SIGKILL on cancel (default 10)\n"
	 "  --memory-limit MIB   the Lua memory cap (default 256)\n"
	 "  --config FILE        agent settings job runs use (allowed_executables, job_executables,\n"
	 "                       steamcmd, user, job_memory, data_dir, jobs_dir); JOBVISOR_*\n"
	 "                       variables as for the agent\n"
	 "  --job-id ID          run under this job id: a second run with the same id, type and\n"
	 "                       params reports the recorded output of a completed one again\n"
	 "  --json               one JSON event a line on stdout, the result object last\n"
	 "The result goes to stdout; logs and progress go to stderr. Ctrl-C (or SIGTERM) cancels\n"
	 "the job; again 2 s or more later kills it. Exit: 0 COMPLETED, 1 FAILED, 2 usage or\n"
	 "configuration, 3 CANCELLED.\n"},
	{"check", "SCRIPT.lua... [--config FILE]", "validate job scripts without running them",
	 "Compiles each script in the sandbox, validates the table it returns and looks for\n"
	 "unknown fields of the sandbox modules (fs.raed). Prints every problem as FILE:LINE:\n"
	 "message. Exit: 0 all valid, 1 problems found, 2 usage.\n"
	 "  --config FILE     the agent's settings (and JOBVISOR_* variables): a proc.run of a\n"
	 "                    literal program that job_executables does not allow is a problem\n"},
	{"status", "[--data-dir DIR] [--json]", "instances and runs in flight",
	 "  --data-dir DIR    the agent's data dir (default JOBVISOR_DATA_DIR or /var/lib/jobvisor)\n"
	 "  --json            one JSON object instead of a table\n"},
	{"health", "[--config FILE] [--data-dir DIR] [--max-beat-age S] [--max-poll-age S]\n[--json]",
	 "check that the agent on this data dir is alive and polling",
	 "  --data-dir DIR      the agent's data dir (default: --config FILE's, JOBVISOR_DATA_DIR,\n"
	 "                      or /var/lib/jobvisor)\n"
	 "  --config FILE       read data_dir from the agent's settings file\n"
	 "  --max-beat-age S    unhealthy when the agent's loop last went round more than S s ago\n"
	 "                      (default 30)\n"
	 "  --max-poll-age S    unhealthy when no poll was answered for S s (default 300; 0 = do not\n"
	 "                      check)\n"
	 "  --json              one JSON object: healthy, reason, agentId, pid, state, ages\n"
	 "Reads the agent's agent-state.json (rewritten every 5 s); the pid must still be the agent.\n"
	 "Exit: 0 healthy, 1 unhealthy (the reason on stdout), 2 usage. For container HEALTHCHECKs.\n"},
	{"monitor",
	 "--instance-dir DIR [--instance-id ID] [--settings JSON] [--status-fd N]\n"
	 "[--adopt-only] [--foreground]",
	 "the per-instance monitor (started by jobs, not by hand)",
	 "Started by START_INSTANCE (instance.start) as jobvisor-monitor, or as `jobvisor monitor`\n"
	 "when that binary is missing; see docs/operations.md.\n"},
	{"version", "", "print the version (also --version, -V)", ""},
	{"help", "[COMMAND]", "this overview, or a command's options", ""},
};

static const struct cmd_help *find(const char *name)
{
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmds[i].name, name) == 0)
			return &cmds[i];
	return NULL;
}

bool help_known(const char *cmd)
{
	return find(cmd) != NULL;
}

/* args with each continuation line indented by indent spaces. */
static void print_args(FILE *f, const char *args, int indent)
{
	for (const char *p = args; *p; p++) {
		fputc(*p, f);
		if (*p == '\n')
			fprintf(f, "%*s", indent, "");
	}
}

/* One line a command, "  NAME     ARGS", continuation and summary lines indented
 * further (docs/man/generate.cmake reads the command names from these lines). */
void help_overview(FILE *f)
{
	fprintf(f, "usage: jobvisor COMMAND [options]\n\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (*cmds[i].args) {
			fprintf(f, "  %-8s ", cmds[i].name);
			print_args(f, cmds[i].args, 11);
		} else {
			fprintf(f, "  %s", cmds[i].name);
		}
		fprintf(f, "\n           %s\n", cmds[i].summary);
	}
	fprintf(f, "\n'jobvisor help COMMAND' or 'jobvisor COMMAND --help' shows a command's options.\n");
}

static void print_synopsis(FILE *f, const struct cmd_help *h)
{
	int indent = fprintf(f, "usage: jobvisor %s%s", h->name, *h->args ? " " : "");
	print_args(f, h->args, indent);
	fputc('\n', f);
}

int help_command(const char *cmd, FILE *f)
{
	const struct cmd_help *h = find(cmd);
	if (!h)
		return -1;
	print_synopsis(f, h);
	fprintf(f, "%c%s.\n", toupper((unsigned char)h->summary[0]), h->summary + 1);
	if (*h->details)
		fprintf(f, "\n%s", h->details);
	return 0;
}

int help_usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "jobvisor%s%s: ", cmd ? " " : "", cmd ? cmd : "");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	const struct cmd_help *h = cmd ? find(cmd) : NULL;
	if (h) {
		fputc('\n', stderr);
		print_synopsis(stderr, h);
		fprintf(stderr, "Run 'jobvisor help %s' for details.\n", cmd);
	} else
		fprintf(stderr, "\nRun 'jobvisor --help' for the commands.\n");
	return JV_EXIT_USAGE;
}
