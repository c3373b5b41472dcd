#include "jobvisor/jobchild.h"
int jv_jobrun_child_main(int argc, char **argv) { return 2; }
int jv_check_script(const char *path) { return 2; }
