/* agent.c — `jobvisor agent` (placeholder until its issue lands). */
#include <stdio.h>

#include "commands.h"

int cmd_agent(int argc, char **argv)
{
	fprintf(stderr, "jobvisor: 'agent' is not built yet\n");
	return 2;
}
