/* help.h — usage texts and the one style of help and usage errors of the
 * `jobvisor` command line (supervisor/cli/help.c). */
#ifndef JOBVISOR_CLI_HELP_H
#define JOBVISOR_CLI_HELP_H

#include <stdbool.h>
#include <stdio.h>

bool help_known(const char *cmd);
/* Every command with its synopsis. */
void help_overview(FILE *f);
/* One command's usage and options; -1 when cmd is unknown. */
int help_command(const char *cmd, FILE *f);
/* Print "jobvisor CMD: <message>", CMD's synopsis and where to read more on stderr;
 * returns JV_EXIT_USAGE (2). cmd NULL: an error of the top level. */
int help_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
