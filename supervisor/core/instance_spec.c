/* instance_spec.c — parse, validate and resolve `instance.json`.
 *
 * Parsing is strict: unknown keys inside stop/ready/restart/limits, wrong
 * types and out-of-range numbers are errors naming the field, so a typo does
 * not silently fall back to a default. Top-level keys beyond the documented
 * ones are refused too, except "name", "description" and keys starting with
 * "x-" (room for panels to annotate). Resolution touches the filesystem
 * (realpath) and enforces the executable rule; it never executes anything. */
#include "jobvisor/instance_spec.h"
#include "jobvisor/durable.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ARGS 256
#define MAX_ENV 256
#define MAX_STR 4096

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	if (err && errlen) {
		int n = snprintf(err, errlen, "instance.json: ");
		va_list ap;
		va_start(ap, fmt);
		if (n > 0 && (size_t)n < errlen)
			vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

const char *jv_restart_policy_name(enum jv_restart_policy p)
{
	switch (p) {
	case JV_RESTART_NEVER: return "never";
	case JV_RESTART_ALWAYS: return "always";
	default: return "on-failure";
	}
}

static int check_keys(const cJSON *obj, const char *const *keys, const char *where, char *err,
                      size_t errlen)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, obj) {
		bool known = false;
		for (const char *const *k = keys; *k && !known; k++)
			known = strcmp(*k, it->string) == 0;
		if (!known)
			return fail(err, errlen, "unknown key '%s%s%s'", where, *where ? "." : "",
			            it->string);
	}
	return 0;
}

/* An optional number member in [min, max]; def when absent. */
static int get_num(const cJSON *obj, const char *key, const char *where, double min, double max,
                   double def, double *out, char *err, size_t errlen)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	if (!v || cJSON_IsNull(v)) {
		*out = def;
		return 0;
	}
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
		return fail(err, errlen, "'%s.%s' must be a number", where, key);
	if (v->valuedouble < min || v->valuedouble > max)
		return fail(err, errlen, "'%s.%s' must be between %g and %g", where, key, min, max);
	*out = v->valuedouble;
	return 0;
}

static int get_int(const cJSON *obj, const char *key, const char *where, long long min,
                   long long max, long long def, long long *out, char *err, size_t errlen)
{
	double d = 0;
	int rc = get_num(obj, key, where, (double)min, (double)max, (double)def, &d, err, errlen);
	if (rc)
		return rc;
	if (!jv_whole_in_int64(d))
		return fail(err, errlen, "'%s.%s' must be a whole number", where, key);
	*out = (long long)d;
	return 0;
}

static int expand(const char *in, const struct jv_spec_paths *p, const char *field, char **out,
                  char *err, size_t errlen)
{
	struct jv_buf b;
	jv_buf_init(&b, 2 * PATH_MAX + MAX_STR);
	int rc = 0;
	for (const char *s = in; *s && rc == 0;) {
		if (s[0] == '$' && s[1] == '$') {
			rc = jv_buf_append(&b, "$", 1);
			s += 2;
		} else if (s[0] == '$' && s[1] == '{') {
			const char *end = strchr(s, '}');
			if (!end) {
				rc = fail(err, errlen, "'%s' has an unterminated '${'", field);
				break;
			}
			size_t n = (size_t)(end - s - 2);
			const char *val = NULL;
			if (n == 5 && strncmp(s + 2, "build", 5) == 0) {
				val = p->build_dir;
				if (!val) {
					rc = fail(err, errlen,
					          "'%s' uses ${build} but there is no active build ('current' is missing)",
					          field);
					break;
				}
			} else if (n == 4 && strncmp(s + 2, "data", 4) == 0) {
				val = p->data_dir;
			} else if (n == 8 && strncmp(s + 2, "instance", 8) == 0) {
				val = p->instance_dir;
			} else {
				rc = fail(err, errlen, "'%s' uses unknown placeholder '${%.*s}'", field,
				          (int)(n > 32 ? 32 : n), s + 2);
				break;
			}
			rc = jv_buf_append(&b, val, strlen(val));
			s = end + 1;
		} else {
			rc = jv_buf_append(&b, s, 1);
			s++;
		}
	}
	if (rc == -EFBIG)
		rc = fail(err, errlen, "'%s' is too long after expansion", field);
	else if (rc == -ENOMEM)
		snprintf(err, errlen, "out of memory");
	if (rc) {
		jv_buf_free(&b);
		return rc;
	}
	if (!b.data && jv_buf_append(&b, "", 0) < 0)
		return -ENOMEM;
	*out = b.data;
	return 0;
}

static int parse_command(struct jv_instance_spec *s, const cJSON *cmd,
                         const struct jv_spec_paths *p, char *err, size_t errlen)
{
	if (!cmd)
		return fail(err, errlen, "'command' is missing");
	if (!cJSON_IsArray(cmd))
		return fail(err, errlen, "'command' must be an array of strings");
	int n = cJSON_GetArraySize(cmd);
	if (n < 1)
		return fail(err, errlen, "'command' is empty");
	if (n > MAX_ARGS)
		return fail(err, errlen, "'command' has more than %d elements", MAX_ARGS);
	s->argv = calloc((size_t)n + 1, sizeof(char *));
	if (!s->argv)
		return -ENOMEM;
	const cJSON *it;
	size_t i = 0;
	cJSON_ArrayForEach(it, cmd) {
		char field[32];
		snprintf(field, sizeof(field), "command[%zu]", i);
		if (!cJSON_IsString(it))
			return fail(err, errlen, "'%s' must be a string", field);
		if (strlen(it->valuestring) > MAX_STR)
			return fail(err, errlen, "'%s' is longer than %d bytes", field, MAX_STR);
		int rc = expand(it->valuestring, p, field, &s->argv[i], err, errlen);
		if (rc)
			return rc;
		s->argc = ++i;
	}
	if (s->argv[0][0] == '\0')
		return fail(err, errlen, "'command[0]' (the executable) is empty");
	return 0;
}

static bool env_name_ok(const char *k)
{
	if (!((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || *k == '_'))
		return false;
	for (const char *c = k; *c; c++)
		if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
		      *c == '_'))
			return false;
	return strlen(k) <= 128;
}

static int parse_env(struct jv_instance_spec *s, const cJSON *env, const struct jv_spec_paths *p,
                     char *err, size_t errlen)
{
	if (!env || cJSON_IsNull(env))
		return 0;
	if (!cJSON_IsObject(env))
		return fail(err, errlen, "'env' must be an object of strings");
	int n = cJSON_GetArraySize(env);
	if (n > MAX_ENV)
		return fail(err, errlen, "'env' has more than %d entries", MAX_ENV);
	s->env = calloc((size_t)n + 1, sizeof(char *));
	if (!s->env)
		return -ENOMEM;
	const cJSON *it;
	cJSON_ArrayForEach(it, env) {
		if (!env_name_ok(it->string))
			return fail(err, errlen, "'env' has an invalid variable name '%.64s'", it->string);
		if (!cJSON_IsString(it))
			return fail(err, errlen, "'env.%s' must be a string", it->string);
		if (strlen(it->valuestring) > MAX_STR)
			return fail(err, errlen, "'env.%s' is longer than %d bytes", it->string, MAX_STR);
		char field[160], *val = NULL;
		snprintf(field, sizeof(field), "env.%s", it->string);
		int rc = expand(it->valuestring, p, field, &val, err, errlen);
		if (rc)
			return rc;
		size_t len = strlen(it->string) + 1 + strlen(val) + 1;
		char *kv = malloc(len);
		if (!kv) {
			free(val);
			return -ENOMEM;
		}
		snprintf(kv, len, "%s=%s", it->string, val);
		free(val);
		s->env[s->nenv++] = kv;
	}
	return 0;
}

static int parse_stop(struct jv_instance_spec *s, const cJSON *stop, char *err, size_t errlen)
{
	static const char *const keys[] = {"command", "signal", "timeoutSeconds",
	                                   "signalTimeoutSeconds", NULL};
	s->stop_signal = SIGTERM;
	s->stop_timeout_s = 30;
	s->stop_signal_timeout_s = 10;
	if (!stop || cJSON_IsNull(stop))
		return 0;
	if (!cJSON_IsObject(stop))
		return fail(err, errlen, "'stop' must be an object");
	int rc = check_keys(stop, keys, "stop", err, errlen);
	if (rc)
		return rc;
	const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(stop, "command");
	if (cmd && !cJSON_IsNull(cmd)) {
		if (!cJSON_IsString(cmd))
			return fail(err, errlen, "'stop.command' must be a string");
		if (strlen(cmd->valuestring) > MAX_STR || strpbrk(cmd->valuestring, "\r\n"))
			return fail(err, errlen, "'stop.command' must be one line of at most %d bytes",
			            MAX_STR);
		if (cmd->valuestring[0] && !(s->stop_command = strdup(cmd->valuestring)))
			return -ENOMEM;
	}
	const cJSON *sig = cJSON_GetObjectItemCaseSensitive(stop, "signal");
	if (sig && !cJSON_IsNull(sig)) {
		if (!cJSON_IsString(sig))
			return fail(err, errlen, "'stop.signal' must be a signal name such as \"SIGTERM\"");
		int n = jv_signal_parse(sig->valuestring);
		if (n < 0)
			return fail(err, errlen, "'stop.signal' names an unknown signal '%.32s'",
			            sig->valuestring);
		if (n == SIGSTOP || n == SIGCONT)
			return fail(err, errlen, "'stop.signal' cannot be %s", jv_signal_name(n));
		s->stop_signal = n;
	}
	if ((rc = get_num(stop, "timeoutSeconds", "stop", 0.1, 86400, 30, &s->stop_timeout_s, err,
	                  errlen)))
		return rc;
	return get_num(stop, "signalTimeoutSeconds", "stop", 0.1, 86400, 10,
	               &s->stop_signal_timeout_s, err, errlen);
}

static int parse_ready(struct jv_instance_spec *s, const cJSON *ready, char *err, size_t errlen)
{
	static const char *const keys[] = {"logPattern", "timeoutSeconds", NULL};
	s->ready_timeout_s = 120;
	if (!ready || cJSON_IsNull(ready))
		return 0;
	if (!cJSON_IsObject(ready))
		return fail(err, errlen, "'ready' must be an object");
	int rc = check_keys(ready, keys, "ready", err, errlen);
	if (rc)
		return rc;
	const cJSON *pat = cJSON_GetObjectItemCaseSensitive(ready, "logPattern");
	if (pat && !cJSON_IsNull(pat)) {
		if (!cJSON_IsString(pat) || !pat->valuestring[0])
			return fail(err, errlen, "'ready.logPattern' must be a non-empty string");
		if (strlen(pat->valuestring) > MAX_STR)
			return fail(err, errlen, "'ready.logPattern' is longer than %d bytes", MAX_STR);
		int r = regcomp(&s->ready_re, pat->valuestring, REG_EXTENDED | REG_NOSUB);
		if (r != 0) {
			char msg[128];
			regerror(r, &s->ready_re, msg, sizeof(msg));
			return fail(err, errlen, "'ready.logPattern' is not a valid extended regex: %s", msg);
		}
		if (!(s->ready_pattern = strdup(pat->valuestring))) {
			regfree(&s->ready_re);
			return -ENOMEM;
		}
	}
	return get_num(ready, "timeoutSeconds", "ready", 0.1, 86400, 120, &s->ready_timeout_s, err,
	               errlen);
}

static int parse_restart(struct jv_instance_spec *s, const cJSON *r, char *err, size_t errlen)
{
	static const char *const keys[] = {"policy", "maxRestarts", "windowSeconds",
	                                   "backoffSeconds", "backoffMaxSeconds", "stableSeconds",
	                                   "successExitCodes", NULL};
	s->policy = JV_RESTART_ON_FAILURE;
	if (r && !cJSON_IsNull(r) && !cJSON_IsObject(r))
		return fail(err, errlen, "'restart' must be an object");
	int rc = r ? check_keys(r, keys, "restart", err, errlen) : 0;
	if (rc)
		return rc;
	const cJSON *pol = cJSON_GetObjectItemCaseSensitive(r, "policy");
	if (pol && !cJSON_IsNull(pol)) {
		const char *v = cJSON_IsString(pol) ? pol->valuestring : "";
		if (strcmp(v, "never") == 0)
			s->policy = JV_RESTART_NEVER;
		else if (strcmp(v, "on-failure") == 0)
			s->policy = JV_RESTART_ON_FAILURE;
		else if (strcmp(v, "always") == 0)
			s->policy = JV_RESTART_ALWAYS;
		else
			return fail(err, errlen,
			            "'restart.policy' must be \"never\", \"on-failure\" or \"always\"");
	}
	long long max;
	if ((rc = get_int(r, "maxRestarts", "restart", 0, 10000, 5, &max, err, errlen)))
		return rc;
	s->max_restarts = (int)max;
	if ((rc = get_num(r, "windowSeconds", "restart", 1, 7 * 86400, 300, &s->window_s, err,
	                  errlen)) ||
	    (rc = get_num(r, "backoffSeconds", "restart", 0.01, 3600, 1, &s->backoff_s, err, errlen)) ||
	    (rc = get_num(r, "backoffMaxSeconds", "restart", 0.01, 86400, 60, &s->backoff_max_s, err,
	                  errlen)) ||
	    (rc = get_num(r, "stableSeconds", "restart", 0.1, 86400, 60, &s->stable_s, err, errlen)))
		return rc;
	if (s->backoff_max_s < s->backoff_s)
		return fail(err, errlen, "'restart.backoffMaxSeconds' is below 'restart.backoffSeconds'");
	const cJSON *codes = cJSON_GetObjectItemCaseSensitive(r, "successExitCodes");
	if (codes && !cJSON_IsNull(codes)) {
		if (!cJSON_IsArray(codes))
			return fail(err, errlen, "'restart.successExitCodes' must be an array of exit codes");
		const cJSON *it;
		cJSON_ArrayForEach(it, codes) {
			if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 255 ||
			    !jv_whole_in_int64(it->valuedouble))
				return fail(err, errlen, "'restart.successExitCodes' entries must be 0..255");
			if (s->nsuccess == JV_ARRAY_LEN(s->success_codes))
				return fail(err, errlen, "'restart.successExitCodes' has too many entries");
			s->success_codes[s->nsuccess++] = (int)it->valuedouble;
		}
	}
	return 0;
}

static int parse_limits(struct jv_instance_spec *s, const cJSON *l, char *err, size_t errlen)
{
	static const char *const keys[] = {"nofile", "nproc", "core", "memoryMB", "pids", "cpus", NULL};
	s->nofile = s->nproc = s->core = s->memory_mb = s->pids = -1;
	s->cpus = -1;
	if (!l || cJSON_IsNull(l))
		return 0;
	if (!cJSON_IsObject(l))
		return fail(err, errlen, "'limits' must be an object");
	int rc = check_keys(l, keys, "limits", err, errlen);
	if (rc == 0)
		rc = get_int(l, "nofile", "limits", 16, 1 << 20, -1, &s->nofile, err, errlen);
	if (rc == 0)
		rc = get_int(l, "nproc", "limits", 1, 1 << 22, -1, &s->nproc, err, errlen);
	if (rc == 0)
		rc = get_int(l, "core", "limits", 0, 1LL << 40, -1, &s->core, err, errlen);
	if (rc == 0)
		rc = get_int(l, "memoryMB", "limits", 16, 1LL << 24, -1, &s->memory_mb, err, errlen);
	if (rc == 0)
		rc = get_int(l, "pids", "limits", 1, 1 << 22, -1, &s->pids, err, errlen);
	if (rc == 0)
		rc = get_num(l, "cpus", "limits", 0.01, 1024, -1, &s->cpus, err, errlen);
	return rc;
}

int jv_instance_spec_parse(const char *json, size_t len, const struct jv_spec_paths *paths,
                           struct jv_instance_spec **out, char *err, size_t errlen)
{
	static const char *const top[] = {"command", "cwd", "env", "stop", "ready", "restart",
	                                  "limits", "name", "description", NULL};
	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	if (len > JV_SPEC_MAX_BYTES)
		return fail(err, errlen, "larger than %d bytes", JV_SPEC_MAX_BYTES);
	cJSON *root = jv_json_parse(json, len);
	if (!root)
		return fail(err, errlen, "not valid JSON");
	struct jv_instance_spec *s = calloc(1, sizeof(*s));
	int rc = -ENOMEM;
	if (!s)
		goto fail;
	if (!cJSON_IsObject(root)) {
		rc = fail(err, errlen, "the spec must be a JSON object");
		goto fail;
	}
	const cJSON *it;
	cJSON_ArrayForEach(it, root) {
		bool known = strncmp(it->string, "x-", 2) == 0;
		for (const char *const *k = top; *k && !known; k++)
			known = strcmp(*k, it->string) == 0;
		if (!known) {
			rc = fail(err, errlen, "unknown key '%.64s'", it->string);
			goto fail;
		}
	}
	if ((rc = parse_command(s, cJSON_GetObjectItemCaseSensitive(root, "command"), paths, err,
	                        errlen)) ||
	    (rc = parse_env(s, cJSON_GetObjectItemCaseSensitive(root, "env"), paths, err, errlen)) ||
	    (rc = parse_stop(s, cJSON_GetObjectItemCaseSensitive(root, "stop"), err, errlen)) ||
	    (rc = parse_ready(s, cJSON_GetObjectItemCaseSensitive(root, "ready"), err, errlen)) ||
	    (rc = parse_restart(s, cJSON_GetObjectItemCaseSensitive(root, "restart"), err, errlen)) ||
	    (rc = parse_limits(s, cJSON_GetObjectItemCaseSensitive(root, "limits"), err, errlen)))
		goto fail;
	const cJSON *cwd = cJSON_GetObjectItemCaseSensitive(root, "cwd");
	if (cwd && !cJSON_IsNull(cwd) && (!cJSON_IsString(cwd) || !cwd->valuestring[0])) {
		rc = fail(err, errlen, "'cwd' must be a non-empty string");
		goto fail;
	}
	rc = expand(cwd && cJSON_IsString(cwd) ? cwd->valuestring : "${data}", paths, "cwd", &s->cwd,
	            err, errlen);
	if (rc)
		goto fail;
	cJSON_Delete(root);
	*out = s;
	return 0;
fail:
	if (rc == -ENOMEM && err && errlen)
		snprintf(err, errlen, "out of memory");
	jv_instance_spec_free(s);
	cJSON_Delete(root);
	return rc;
}

static bool path_within(const char *path, const char *dir)
{
	size_t n = strlen(dir);
	return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static int find_in_path(const struct jv_instance_spec *s, const char *name, char *out)
{
	const char *path = "/usr/local/bin:/usr/bin:/bin";
	for (size_t i = 0; i < s->nenv; i++)
		if (strncmp(s->env[i], "PATH=", 5) == 0)
			path = s->env[i] + 5;
	for (const char *p = path; *p;) {
		const char *colon = strchr(p, ':');
		size_t n = colon ? (size_t)(colon - p) : strlen(p);
		char cand[PATH_MAX];
		if (n > 0 && p[0] == '/' &&
		    snprintf(cand, sizeof(cand), "%.*s/%s", (int)n, p, name) < (int)sizeof(cand) &&
		    access(cand, X_OK) == 0 && realpath(cand, out))
			return 0;
		p += n + (colon ? 1 : 0);
	}
	return -ENOENT;
}

int jv_instance_spec_resolve(struct jv_instance_spec *s, const struct jv_spec_paths *paths,
                             const cJSON *allowed, char *err, size_t errlen)
{
	char inst_real[PATH_MAX], buf[PATH_MAX], real[PATH_MAX];
	if (!realpath(paths->instance_dir, inst_real))
		return fail(err, errlen, "cannot resolve instance dir '%s': %s", paths->instance_dir,
		            strerror(errno));
	if (s->cwd[0] != '/') {
		if (snprintf(buf, sizeof(buf), "%s/%s", paths->instance_dir, s->cwd) >= (int)sizeof(buf))
			return fail(err, errlen, "'cwd' is too long");
	} else {
		snprintf(buf, sizeof(buf), "%s", s->cwd);
	}
	if (!realpath(buf, real))
		return fail(err, errlen, "cwd '%s' cannot be used: %s", s->cwd, strerror(errno));
	if (!path_within(real, inst_real))
		return fail(err, errlen, "cwd '%s' lies outside the instance directory", s->cwd);
	free(s->cwd);
	if (!(s->cwd = strdup(real)))
		return -ENOMEM;

	const char *exe = s->argv[0];
	int rc = 0;
	if (strchr(exe, '/')) {
		if (exe[0] != '/' &&
		    snprintf(buf, sizeof(buf), "%s/%s", s->cwd, exe) >= (int)sizeof(buf))
			return fail(err, errlen, "executable path '%s' is too long", exe);
		if (!realpath(exe[0] == '/' ? exe : buf, real))
			rc = -errno;
	} else {
		rc = find_in_path(s, exe, real);
	}
	if (rc)
		return fail(err, errlen, "executable '%s' not found: %s", exe, strerror(-rc)), -ENOENT;
	struct stat st;
	if (stat(real, &st) < 0 || !S_ISREG(st.st_mode) || !(st.st_mode & 0111))
		return fail(err, errlen, "executable '%s' is not an executable file", exe), -EACCES;

	free(s->build_dir);
	s->build_dir = NULL;
	char build_real[PATH_MAX];
	bool ok = false;
	if (paths->build_dir && realpath(paths->build_dir, build_real)) {
		if (!(s->build_dir = strdup(build_real)))
			return -ENOMEM;
		ok = path_within(real, build_real) && strcmp(real, build_real) != 0;
	}
	const cJSON *it;
	cJSON_ArrayForEach(it, allowed) {
		char a[PATH_MAX];
		if (!ok && cJSON_IsString(it) && it->valuestring[0] == '/' && realpath(it->valuestring, a))
			ok = strcmp(a, real) == 0;
	}
	if (!ok)
		return fail(err, errlen,
		            "executable '%s' (%s) is not inside the active build and not listed in "
		            "allowed_executables",
		            exe, real),
		       -EACCES;
	if (!(s->exe = strdup(real)))
		return -ENOMEM;
	return 0;
}

int jv_instance_spec_load(const char *instance_dir, const cJSON *allowed,
                          struct jv_instance_spec **out, char *err, size_t errlen)
{
	*out = NULL;
	char current[PATH_MAX], build[PATH_MAX], builds[PATH_MAX], data[PATH_MAX];
	if (snprintf(current, sizeof(current), "%s/current", instance_dir) >= (int)sizeof(current) ||
	    snprintf(builds, sizeof(builds), "%s/builds", instance_dir) >= (int)sizeof(builds) ||
	    snprintf(data, sizeof(data), "%s/data", instance_dir) >= (int)sizeof(data))
		return fail(err, errlen, "instance path too long");
	int dfd = open(instance_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		snprintf(err, errlen, "cannot open instance dir '%s': %s", instance_dir, strerror(errno));
		return -errno;
	}
	char *json = NULL;
	size_t len = 0;
	int rc = jv_read_file_at(dfd, "instance.json", JV_SPEC_MAX_BYTES, &json, &len);
	close(dfd);
	if (rc == -EFBIG)
		return fail(err, errlen, "larger than %d bytes", JV_SPEC_MAX_BYTES);
	if (rc) {
		snprintf(err, errlen, "cannot read '%s/instance.json': %s", instance_dir, jv_read_strerror(rc));
		return rc;
	}
	const char *build_dir = NULL;
	char builds_real[PATH_MAX];
	if (realpath(current, build)) {
		if (!realpath(builds, builds_real) || !path_within(build, builds_real) ||
		    strcmp(build, builds_real) == 0) {
			free(json);
			snprintf(err, errlen, "'current' must point to a build under builds/ (it resolves to '%s')",
			         build);
			return -EINVAL;
		}
		build_dir = build;
	}
	mkdir(data, 0750); /* a fresh instance may not have its data dir yet */
	struct jv_spec_paths paths = {.instance_dir = instance_dir, .build_dir = build_dir,
	                              .data_dir = data};
	struct jv_instance_spec *s = NULL;
	rc = jv_instance_spec_parse(json, len, &paths, &s, err, errlen);
	free(json);
	if (rc == 0)
		rc = jv_instance_spec_resolve(s, &paths, allowed, err, errlen);
	if (rc) {
		jv_instance_spec_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

void jv_instance_spec_free(struct jv_instance_spec *s)
{
	if (!s)
		return;
	for (size_t i = 0; s->argv && s->argv[i]; i++)
		free(s->argv[i]);
	free(s->argv);
	for (size_t i = 0; s->env && s->env[i]; i++)
		free(s->env[i]);
	free(s->env);
	free(s->cwd);
	free(s->stop_command);
	if (s->ready_pattern) {
		regfree(&s->ready_re);
		free(s->ready_pattern);
	}
	free(s->exe);
	free(s->build_dir);
	free(s);
}
