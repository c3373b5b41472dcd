/* commands.h — the subcommands main.c dispatches to. Each returns the process
 * exit status (0 ok, 1 failure, 2 usage/configuration error, 3 cancelled for
 * `run`); none calls exit() itself. argv[0] is the subcommand name. */
#ifndef JOBVISOR_COMMANDS_H
#define JOBVISOR_COMMANDS_H

int cmd_agent(int argc, char **argv);   /* supervisor/agent/agent.c */
int cmd_run(int argc, char **argv);     /* supervisor/cli/cmd_run.c */
int cmd_status(int argc, char **argv);  /* supervisor/cli/cmd_status.c */
int cmd_monitor(int argc, char **argv); /* supervisor/monitor/monitor.c */
int cmd_health(int argc, char **argv);  /* supervisor/cli/cmd_health.c */

#endif
