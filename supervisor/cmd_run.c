#include "commands.h"
int cmd_run(int argc, char **argv) { return 2; }
int cmd_check(int argc, char **argv) { return 2; }
