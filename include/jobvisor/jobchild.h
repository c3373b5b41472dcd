/* jobchild.h — the entry points of lua/ that supervisor/cli/main.c calls without
 * including lua.h: the job-run child mode and the script checker. */
#ifndef JOBVISOR_JOBCHILD_H
#define JOBVISOR_JOBCHILD_H

/* Child mode: `jobvisor __jobrun` after fork+exec. The spec (JSON) is read from
 * fd JV_CHILD_SPEC_FD, events are written as JSON lines to JV_CHILD_EVENT_FD.
 * Returns the exit status: 0 COMPLETED, 1 FAILED, 3 CANCELLED. */
#define JV_CHILD_SPEC_FD 3
#define JV_CHILD_EVENT_FD 4
#define JV_EXIT_COMPLETED 0
#define JV_EXIT_FAILED 1
#define JV_EXIT_USAGE 2
#define JV_EXIT_CANCELLED 3
int jv_jobrun_child_main(int argc, char **argv);

/* `jobvisor check SCRIPT.lua`: compile in the sandbox and validate the returned
 * table; require() looks in the script's own lib/ and then builtin_jobs_dir/lib.
 * Prints file:line errors to stderr. Returns 0 valid, 1 invalid, 2 usage. */
int jv_check_script(const char *path, const char *builtin_jobs_dir);

#endif
