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
/* The same child mode entered from a fork without the exec (jobvisor run): the
 * spec is the tree the parent built (borrowed; the child never frees it). */
struct cJSON;
int jv_jobrun_child_run(struct cJSON *spec);

/* Completion records: <instance>/.jobvisor/<JV_COMPLETED_DIR>/<jobId>.json holds
 * the output of a job that COMPLETED, kept until its result was delivered, so a
 * retry of the same job reports it again (lua/completed.c). */
#define JV_COMPLETED_DIR "completed"

/* `jobvisor check SCRIPT.lua...` (lua/check.c): compile each script in the
 * sandbox, validate the returned table (helpers in a lib/ directory are only
 * compiled) and look for unknown module fields; require() looks in the
 * script's own lib/ and then builtin_jobs_dir/lib. Every problem goes to
 * stderr as FILE:LINE: message, "ok: ..." lines to stdout. 0 all valid,
 * 1 problems. settings (config_child_settings, borrowed, may be NULL) say
 * which programs proc.run may start: a literal one they refuse is a problem. */
int jv_check_scripts(int n, char **paths, const char *builtin_jobs_dir, const struct cJSON *settings);

/* `jobvisor __jobtypes [JOBS_DIR]` (lua/jobtypes.c): every job type of
 * JOBS_DIR and builtin_jobs_dir (JOBS_DIR first) with its params schema,
 * description and cancellable flag, as one JSON object on stdout. The agent
 * runs it at start and when its jobs_dir changes. 0, or 1 on a write error. */
int jv_job_types_main(int argc, char **argv, const char *builtin_jobs_dir);

#endif
