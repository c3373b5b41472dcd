/* instance_spec.h — the instance spec (`instance.json`): parse, validate, expand, resolve.
 *
 * Shared by the monitor (which runs the spec), the `instance` Lua binding
 * (which refuses a bad spec before starting anything) and `jobvisor status`.
 * Every problem comes back as one clear message naming the field, e.g.
 * "instance.json: 'ready.logPattern' is not a valid extended regex: ...".
 *
 * Placeholders: "${build}" (the active build, `current` resolved), "${data}"
 * (the instance's data dir) and "${instance}" (the instance root) expand to
 * absolute paths in command, cwd and env values; any other "${...}" is an
 * error, "$$" is a literal "$". */
#ifndef JOBVISOR_INSTANCE_SPEC_H
#define JOBVISOR_INSTANCE_SPEC_H

#include <regex.h>
#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

#define JV_SPEC_MAX_BYTES (256 * 1024)

enum jv_restart_policy { JV_RESTART_NEVER = 0, JV_RESTART_ON_FAILURE, JV_RESTART_ALWAYS };

struct jv_spec_paths {
	const char *instance_dir; /* absolute, required */
	const char *build_dir;    /* absolute, resolved `current`; NULL: no active build */
	const char *data_dir;     /* absolute */
};

struct jv_instance_spec {
	char **argv; /* expanded command, NULL-terminated; argv[0] as written (expanded) */
	size_t argc;
	char **env; /* "K=V" from the spec only, NULL-terminated */
	size_t nenv;
	char *cwd; /* absolute after jv_instance_spec_resolve(); as expanded before */

	char *stop_command;          /* console line, NULL when none */
	int stop_signal;             /* default SIGTERM */
	double stop_timeout_s;       /* wait after the console command (default 30) */
	double stop_signal_timeout_s; /* wait after the signal (default 10) */

	char *ready_pattern; /* POSIX ERE, NULL when none (RUNNING at once) */
	regex_t ready_re;
	double ready_timeout_s; /* default 120 */

	enum jv_restart_policy policy; /* default on-failure */
	int max_restarts;              /* crash-loop breaker, default 5 */
	double window_s;               /* default 300 */
	double backoff_s;              /* first delay, default 1 */
	double backoff_max_s;          /* cap, default 60 */
	double stable_s;               /* uptime that resets the backoff, default 60 */
	int success_codes[16];         /* exit codes that count as a clean exit */
	size_t nsuccess;

	/* limits; -1 = not set */
	long long nofile, nproc, core, memory_mb, pids;
	double cpus; /* < 0 = not set */

	/* Filled by jv_instance_spec_resolve(). */
	char *exe;       /* absolute real path that will be executed */
	char *build_dir; /* absolute real path of the active build, may be NULL */
};

/* Parse and validate spec JSON (len bytes) and expand placeholders with paths.
 * On success *out is returned-owned (jv_instance_spec_free). On failure err
 * holds the message. Returns 0 or -EINVAL / -ENOMEM. */
int jv_instance_spec_parse(const char *json, size_t len, const struct jv_spec_paths *paths,
                           struct jv_instance_spec **out, char *err, size_t errlen);

/* Resolve cwd (must lie inside the instance dir) and the executable (must lie
 * inside the active build, or be listed in allowed, a JSON array of absolute
 * paths; NULL = none). PATH lookup for a bare name uses the spec's PATH or
 * /usr/local/bin:/usr/bin:/bin. Returns 0, or -EACCES (not allowed), -ENOENT,
 * -EINVAL with a message in err. */
int jv_instance_spec_resolve(struct jv_instance_spec *spec, const struct jv_spec_paths *paths,
                             const cJSON *allowed, char *err, size_t errlen);

/* Read <instance_dir>/instance.json, find the active build, parse and resolve.
 * A missing data/ dir is created when cwd is the data dir. */
int jv_instance_spec_load(const char *instance_dir, const cJSON *allowed,
                          struct jv_instance_spec **out, char *err, size_t errlen);

void jv_instance_spec_free(struct jv_instance_spec *spec); /* NULL ok */

const char *jv_restart_policy_name(enum jv_restart_policy p);

#endif
