/* monitor.c — `jobvisor monitor` (placeholder until its issue lands). */
#include <stdio.h>

#include "commands.h"

int cmd_monitor(int argc, char **argv)
{
	fprintf(stderr, "jobvisor: 'monitor' is not built yet\n");
	return 2;
}
