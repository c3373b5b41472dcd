/* cmd_status.c — `jobvisor status` (placeholder until its issue lands). */
#include <stdio.h>

#include "commands.h"

int cmd_status(int argc, char **argv)
{
	fprintf(stderr, "jobvisor: 'status' is not built yet\n");
	return 2;
}
