/* main.c — the composition root: dispatches subcommands and owns exit codes. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "version") == 0) {
		printf("jobvisor %s\n", JV_VERSION);
		return 0;
	}
	fprintf(stderr, "usage: jobvisor agent|run|check|status|version\n");
	return 2;
}
