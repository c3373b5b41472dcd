/* log.h — the one logging module: leveled lines on stderr in logfmt or JSON.
 *
 * Every line carries job_id= and run_id= ("-" for agent-wide lines). The
 * process sets its format, level and (for a job-run child) its ids once at
 * start; nothing here allocates on the hot path beyond a stack buffer, and it
 * is safe to call after fork() in a single-threaded child. */
#ifndef JOBVISOR_LOG_H
#define JOBVISOR_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum jv_log_level { JV_LOG_DEBUG = 0, JV_LOG_INFO, JV_LOG_WARN, JV_LOG_ERROR };
enum jv_log_format { JV_LOG_LOGFMT = 0, JV_LOG_JSON };

/* Parse "debug|info|warn|error" / "logfmt|json"; return -1 on unknown. */
int jv_log_level_parse(const char *s);
int jv_log_format_parse(const char *s);
const char *jv_log_level_name(enum jv_log_level level);

void jv_log_setup(enum jv_log_format format, enum jv_log_level level);
/* The component name stamped on each line (e.g. "agent", "run", "monitor"). Borrowed; must outlive logging. */
void jv_log_set_component(const char *component);
bool jv_log_enabled(enum jv_log_level level);

/* job_id and run_id may be NULL (printed as "-"). Extra key/values may be given
 * as a NULL-terminated list of (key, value) string pairs through jv_logkv(). */
void jv_log(enum jv_log_level level, const char *job_id, const char *run_id,
            const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void jv_vlog(enum jv_log_level level, const char *job_id, const char *run_id,
             const char *fmt, va_list ap);

#define jv_debug(j, r, ...) jv_log(JV_LOG_DEBUG, (j), (r), __VA_ARGS__)
#define jv_info(j, r, ...)  jv_log(JV_LOG_INFO, (j), (r), __VA_ARGS__)
#define jv_warn(j, r, ...)  jv_log(JV_LOG_WARN, (j), (r), __VA_ARGS__)
#define jv_error(j, r, ...) jv_log(JV_LOG_ERROR, (j), (r), __VA_ARGS__)

#endif
