/* config.c — agent settings from a `key = value` file and JOBVISOR_* variables.
 *
 * One table lists every setting with its file key, its environment name, its
 * type, limits and default; loading walks the table three times (defaults,
 * file, environment) and then checks the settings against each other. Errors
 * name the setting and its source and are returned as text; this file never
 * logs and never exits. The token is read separately (config_read_token) and
 * never copied into an error message. */
#include "jobvisor/config.h"
#include "config_internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobvisor/ident.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "transport.h"

extern char **environ;

enum kind { K_STR, K_PATH, K_IDENT, K_DURATION, K_INT, K_BOOL, K_SIZE, K_LOGFMT, K_LOGLEVEL, K_PATHLIST };

struct setting {
	const char *key;
	const char *env;
	enum kind kind;
	size_t off;
	const char *def;  /* default as written in a file; NULL = unset */
	double min, max;  /* numbers: inclusive range (durations in seconds) */
	bool required;
	const char *help;
};

#define OFF(f) offsetof(struct config, f)

static const struct setting settings[] = {
	{"url", "JOBVISOR_URL", K_STR, OFF(url), NULL, 0, 0, true,
	 "control plane base URL (http:// or https://); several replicas: URLs separated by ','"},
	{"agent_id", "JOBVISOR_AGENT_ID", K_IDENT, OFF(agent_id), NULL, 0, 0, true,
	 "this agent's identifier at the control plane"},
	{"token_file", "JOBVISOR_TOKEN_FILE", K_PATH, OFF(token_file), NULL, 0, 0, true,
	 "file holding the agent token (mode 0600 or stricter)"},
	{"data_dir", "JOBVISOR_DATA_DIR", K_PATH, OFF(data_dir), "/var/lib/jobvisor", 0, 0, false,
	 "instances, run spool and caches"},
	{"jobs_dir", "JOBVISOR_JOBS_DIR", K_PATH, OFF(jobs_dir), NULL, 0, 0, false,
	 "admin job scripts, searched before the built-in ones"},
	{"poll_interval", "JOBVISOR_POLL_INTERVAL", K_DURATION, OFF(poll_interval_ms), "3", 0.05, 3600,
	 false, "time between polls"},
	{"poll_jitter", "JOBVISOR_POLL_JITTER", K_DURATION, OFF(poll_jitter_ms), "2", 0, 3600, false,
	 "random extra delay added to each poll interval (0 to this)"},
	{"stats_interval", "JOBVISOR_STATS_INTERVAL", K_DURATION, OFF(stats_interval_ms), "5", 0, 3600,
	 false, "how often instance resource stats go to the control plane; 0 = never"},
	{"poll_wait", "JOBVISOR_POLL_WAIT", K_INT, OFF(poll_wait_s), "25", 0, 300, false,
	 "long poll: seconds the control plane may hold a poll open (0 = off)"},
	{"capacity", "JOBVISOR_CAPACITY", K_INT, OFF(capacity), "2", 1, CONFIG_CAPACITY_MAX, false,
	 "job runs at the same time"},
	{"job_timeout", "JOBVISOR_JOB_TIMEOUT", K_INT, OFF(job_timeout_s), "3600", 1, 604800, false,
	 "seconds a run may take when its assignment gives no timeoutSeconds"},
	{"job_timeout_max", "JOBVISOR_JOB_TIMEOUT_MAX", K_INT, OFF(job_timeout_max_s), "86400", 1,
	 604800, false, "upper bound on any run's timeoutSeconds"},
	{"cancel_grace", "JOBVISOR_CANCEL_GRACE", K_INT, OFF(cancel_grace_s), "10", 1, 3600, false,
	 "seconds from SIGTERM to SIGKILL when a run is cancelled"},
	{"cancel_grace_max", "JOBVISOR_CANCEL_GRACE_MAX", K_INT, OFF(cancel_grace_max_s), "60", 1, 3600,
	 false, "upper bound on an assignment's cancelGraceSeconds"},
	{"drain_timeout", "JOBVISOR_DRAIN_TIMEOUT", K_INT, OFF(drain_timeout_s), "60", 0, 86400, false,
	 "on SIGTERM/SIGINT: seconds running runs may take to finish before they are cancelled (0 = cancel at once)"},
	{"shutdown_grace", "JOBVISOR_SHUTDOWN_GRACE", K_INT, OFF(shutdown_grace_s), "8", 1, 3600, false,
	 "seconds runs cancelled by a shutdown get to stop before SIGKILL"},
	{"job_memory", "JOBVISOR_JOB_MEMORY", K_SIZE, OFF(job_memory), "256M", 1 << 20,
	 (double)(64LL << 30), false, "memory cap of a job script's Lua state"},
	{"extract_max_bytes", "JOBVISOR_EXTRACT_MAX_BYTES", K_SIZE, OFF(extract_max_bytes), "16G", 0,
	 (double)(1LL << 50), false,
	 "archives unpack to at most this many bytes unless a job says otherwise (0 = no cap)"},
	{"extract_max_ratio", "JOBVISOR_EXTRACT_MAX_RATIO", K_INT, OFF(extract_max_ratio), "20", 0,
	 100000, false,
	 "archives unpack to at most this many times their own size, beyond 64 MiB (0 = off)"},
	{"request_timeout", "JOBVISOR_REQUEST_TIMEOUT", K_INT, OFF(request_timeout_s), "30", 1, 600,
	 false, "seconds a request to the control plane may take (long polls get poll_wait more)"},
	{"connect_timeout", "JOBVISOR_CONNECT_TIMEOUT", K_INT, OFF(connect_timeout_s), "10", 1, 600,
	 false, "seconds to establish a connection"},
	{"backoff_max", "JOBVISOR_BACKOFF_MAX", K_DURATION, OFF(backoff_max_ms), "60", 0.1, 3600, false,
	 "longest wait between retries while the control plane is unreachable"},
	{"max_response", "JOBVISOR_MAX_RESPONSE", K_SIZE, OFF(max_response), "4M", 4096,
	 (double)(1LL << 30), false, "largest control plane answer accepted"},
	{"log_format", "JOBVISOR_LOG_FORMAT", K_LOGFMT, OFF(log_format), "logfmt", 0, 0, false,
	 "logfmt or json"},
	{"log_level", "JOBVISOR_LOG_LEVEL", K_LOGLEVEL, OFF(log_level), "info", 0, 0, false,
	 "debug, info, warn or error"},
	{"allowed_executables", "JOBVISOR_ALLOWED_EXECUTABLES", K_PATHLIST, OFF(allowed_executables),
	 NULL, 0, 0, false, "':'-separated absolute paths game servers may run besides their build"},
	{"job_executables", "JOBVISOR_JOB_EXECUTABLES", K_PATHLIST, OFF(job_executables), NULL, 0, 0,
	 false, "':'-separated absolute paths job scripts may run with proc.run (empty: none)"},
	{"steamcmd", "JOBVISOR_STEAMCMD", K_PATH, OFF(steamcmd), NULL, 0, 0, false,
	 "SteamCMD executable for {\"steam\": ...} install sources (allowed for that use)"},
	{"steam_credentials_file", "JOBVISOR_STEAM_CREDENTIALS_FILE", K_PATH, OFF(steam_credentials_file),
	 NULL, 0, 0, false, "'account password' lines for non-anonymous SteamCMD logins (mode 0600)"},
	{"user", "JOBVISOR_USER", K_STR, OFF(user), NULL, 0, 0, false,
	 "account job runs and game servers run as (agent must be root)"},
	{"tls_ca_file", "JOBVISOR_TLS_CA_FILE", K_PATH, OFF(tls_ca_file), NULL, 0, 0, false,
	 "CA bundle for the control plane's certificate"},
	{"tls_insecure_loopback", "JOBVISOR_TLS_INSECURE_LOOPBACK", K_BOOL, OFF(tls_insecure_loopback),
	 "false", 0, 0, false, "skip TLS verification; only for a loopback URL (tests)"},
	{"proxy", "JOBVISOR_PROXY", K_STR, OFF(proxy), NULL, 0, 0, false,
	 "http://[user:password@]host:port for control plane requests, or direct (unset: http_proxy, https_proxy)"},
	{"no_proxy", "JOBVISOR_NO_PROXY", K_STR, OFF(no_proxy), NULL, 0, 0, false,
	 "hosts reached without the proxy, as curl's no_proxy (unset: no_proxy, NO_PROXY)"},
	{"console_log_max_bytes", "JOBVISOR_CONSOLE_LOG_MAX_BYTES", K_SIZE, OFF(console_log_max_bytes),
	 "10M", 4096, (double)(1LL << 40), false, "rotate a game server's console.log at this size"},
	{"console_log_keep", "JOBVISOR_CONSOLE_LOG_KEEP", K_INT, OFF(console_log_keep), "5", 1, 100,
	 false, "rotated console logs kept per instance"},
	{"cgroups", "JOBVISOR_CGROUPS", K_BOOL, OFF(cgroups), "true", 0, 0, false,
	 "put game servers in cgroups when cgroup v2 is delegated"},
	{"cgroup_parent", "JOBVISOR_CGROUP_PARENT", K_PATH, OFF(cgroup_parent), NULL, 0, 0, false,
	 "delegated cgroup v2 directory for instance cgroups"},
};

size_t config_setting_count(void)
{
	return JV_ARRAY_LEN(settings);
}

void config_setting_info(size_t i, const char **key, const char **env, const char **def,
                         const char **help)
{
	const struct setting *s = &settings[i < JV_ARRAY_LEN(settings) ? i : 0];
	*key = s->key;
	*env = s->env;
	*def = s->def;
	*help = s->help;
}

/* "3", "2.5", "500ms", "3s", "2m", "1h" -> milliseconds. */
static int parse_duration_ms(const char *v, int64_t *out)
{
	char *end = NULL;
	errno = 0;
	double d = strtod(v, &end);
	if (end == v || errno || !isfinite(d) || d < 0)
		return -EINVAL;
	double mult = 1000;
	if (strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "s") == 0 || *end == '\0')
		mult = 1000;
	else if (strcmp(end, "m") == 0)
		mult = 60000;
	else if (strcmp(end, "h") == 0)
		mult = 3600000;
	else
		return -EINVAL;
	if (d * mult > 9e15)
		return -ERANGE;
	*out = jv_round_nonneg(d * mult);
	return 0;
}

/* A text setting (string, path, identifier, path list): checked, copied. */
static int apply_string(struct config *cfg, const struct setting *s, const char *v,
                        const char *src, char *err, size_t errlen)
{
	char **slot = (char **)((char *)cfg + s->off);
	if (*v == '\0') {
		if (s->required) {
			config_seterr(err, errlen, "%s: '%s' must not be empty", src, s->key);
			return -EINVAL;
		}
		free(*slot);
		*slot = NULL;
		return 0;
	}
	if (strlen(v) >= PATH_MAX) {
		config_seterr(err, errlen, "%s: '%s' is too long", src, s->key);
		return -EINVAL;
	}
	if (s->kind == K_IDENT && !jv_ident_valid(v)) {
		config_seterr(err, errlen,
		       "%s: '%s' = '%s' is not an identifier ([A-Za-z0-9][A-Za-z0-9._-]{0,63})",
		       src, s->key, v);
		return -EINVAL;
	}
	if (s->kind == K_PATH && v[0] != '/' && strcmp(s->key, "token_file") != 0 &&
	    strcmp(s->key, "tls_ca_file") != 0) {
		config_seterr(err, errlen, "%s: '%s' = '%s' must be an absolute path", src, s->key, v);
		return -EINVAL;
	}
	if (s->kind == K_PATHLIST) {
		const char *p = v;
		while (*p) {
			size_t len = strcspn(p, ":");
			if (len == 0 || p[0] != '/') {
				config_seterr(err, errlen,
				       "%s: '%s' must list absolute paths separated by ':' (got '%.*s')",
				       src, s->key, (int)(len ? len : 1), p);
				return -EINVAL;
			}
			p += len;
			if (*p == ':')
				p++;
		}
	}
	char *copy = strdup(v);
	if (!copy)
		return -ENOMEM;
	free(*slot);
	*slot = copy;
	return 0;
}

/* A numeric or enumerated setting: parsed, range-checked, stored. */
static int apply_value(struct config *cfg, const struct setting *s, const char *v,
                       const char *src, char *err, size_t errlen)
{
	char *base = (char *)cfg;
	int64_t n64 = 0;
	switch (s->kind) {
	case K_DURATION: {
		int rc = parse_duration_ms(v, &n64);
		if (rc || n64 < (int64_t)(s->min * 1000) || n64 > (int64_t)(s->max * 1000)) {
			config_seterr(err, errlen,
			       "%s: '%s' = '%s' is not a duration between %gs and %gs (e.g. 3, 2.5, 500ms, 1m)",
			       src, s->key, v, s->min, s->max);
			return -EINVAL;
		}
		*(int64_t *)(base + s->off) = n64;
		return 0;
	}
	case K_INT: {
		char *end = NULL;
		errno = 0;
		long long n = strtoll(v, &end, 10);
		if (end == v || *end || errno || n < (long long)s->min || n > (long long)s->max) {
			config_seterr(err, errlen, "%s: '%s' = '%s' is not a whole number from %g to %g", src,
			       s->key, v, s->min, s->max);
			return -EINVAL;
		}
		*(int *)(base + s->off) = (int)n;
		return 0;
	}
	case K_SIZE: {
		int rc = config_parse_size(v, &n64);
		if (rc || n64 < (int64_t)s->min || n64 > (int64_t)s->max) {
			config_seterr(err, errlen,
			       "%s: '%s' = '%s' is not a size from %.0f to %.0f bytes (e.g. 4096, 64K, 256M)",
			       src, s->key, v, s->min, s->max);
			return -EINVAL;
		}
		*(int64_t *)(base + s->off) = n64;
		return 0;
	}
	case K_BOOL: {
		bool b;
		if (config_parse_bool(v, &b)) {
			config_seterr(err, errlen, "%s: '%s' = '%s' is not a boolean (true/false/yes/no/1/0)", src,
			       s->key, v);
			return -EINVAL;
		}
		*(bool *)(base + s->off) = b;
		return 0;
	}
	case K_LOGFMT: {
		int f = jv_log_format_parse(v);
		if (f < 0) {
			config_seterr(err, errlen, "%s: '%s' = '%s' must be logfmt or json", src, s->key, v);
			return -EINVAL;
		}
		*(int *)(base + s->off) = f;
		return 0;
	}
	case K_LOGLEVEL: {
		int l = jv_log_level_parse(v);
		if (l < 0) {
			config_seterr(err, errlen, "%s: '%s' = '%s' must be debug, info, warn or error", src,
			       s->key, v);
			return -EINVAL;
		}
		*(int *)(base + s->off) = l;
		return 0;
	}
	default:
		break;
	}
	return -EINVAL;
}

/* Apply one value to the setting; src names where it came from. */
static int apply(struct config *cfg, const struct setting *s, const char *v, const char *src,
                 char *err, size_t errlen)
{
	if (config_has_ctl(v)) {
		config_seterr(err, errlen, "%s: '%s' contains control characters", src, s->key);
		return -EINVAL;
	}
	if (s->kind == K_STR || s->kind == K_PATH || s->kind == K_IDENT || s->kind == K_PATHLIST)
		return apply_string(cfg, s, v, src, err, errlen);
	return apply_value(cfg, s, v, src, err, errlen);
}

static const struct setting *find_key(const char *key)
{
	for (size_t i = 0; i < JV_ARRAY_LEN(settings); i++)
		if (strcmp(settings[i].key, key) == 0)
			return &settings[i];
	return NULL;
}

/* Read a small regular file, following symlinks (Kubernetes mounts secrets and
 * config maps as symlinks); the checks apply to the file itself. Returned-owned
 * NUL-terminated text in *out; *st (optional) gets its status. */
static int read_small_file(const char *path, size_t max, char **out, size_t *outlen,
                           struct stat *st_out)
{
	*out = NULL;
	*outlen = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) != 0) {
		int rc = -errno;
		close(fd);
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
	}
	char *buf = malloc(max + 2);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	size_t len = 0;
	int rc = 0;
	while (len <= max) {
		ssize_t n = read(fd, buf + len, max + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			break;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	if (rc == 0 && len > max)
		rc = -EFBIG;
	if (rc) {
		explicit_bzero(buf, len);
		free(buf);
		return rc;
	}
	buf[len] = '\0';
	*out = buf;
	*outlen = len;
	if (st_out)
		*st_out = st;
	return 0;
}

/* The remote keys a file has set (to refuse a key given twice). */
struct remote_keys {
	char **keys;
	size_t n;
};

static bool remote_seen(struct config *cfg, const char *key, struct remote_keys *rk)
{
	(void)cfg;
	for (size_t i = 0; i < rk->n; i++)
		if (strcmp(rk->keys[i], key) == 0)
			return true;
	char **grown = realloc(rk->keys, (rk->n + 1) * sizeof(*grown));
	if (!grown)
		return false;
	rk->keys = grown;
	rk->keys[rk->n] = strdup(key);
	if (rk->keys[rk->n])
		rk->n++;
	return false;
}

static void remote_keys_free(struct remote_keys *rk)
{
	for (size_t i = 0; i < rk->n; i++)
		free(rk->keys[i]);
	free(rk->keys);
}

/* The file: `key = value` lines; '#' starts a comment line; blank lines are
 * ignored; a value may be wrapped in double quotes (kept literally inside).
 * Unknown or repeated keys are errors: a typo must not silently fall back to
 * a default. */
static int load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	int rc = read_small_file(path, 256 * 1024, &text, &len, NULL);
	if (rc) {
		config_seterr(err, errlen, "cannot read config file '%s': %s", path,
		       rc == -EFBIG ? "larger than 256 KiB" : strerror(-rc));
		return rc;
	}
	if (memchr(text, '\0', len)) {
		config_seterr(err, errlen, "config file '%s' is not a text file", path);
		free(text);
		return -EINVAL;
	}
	bool seen[JV_ARRAY_LEN(settings)] = {false};
	struct remote_keys rseen = {0};
	int lineno = 0;
	char *save = NULL;
	rc = 0;
	for (char *line = text; line; line = save) {
		char *nl = strchr(line, '\n');
		save = nl ? nl + 1 : NULL;
		if (nl)
			*nl = '\0';
		lineno++;
		char *l = config_trim(line);
		if (*l == '\0' || *l == '#')
			continue;
		char *eq = strchr(l, '=');
		if (!eq) {
			config_seterr(err, errlen, "%s:%d: expected 'key = value'", path, lineno);
			rc = -EINVAL;
			break;
		}
		*eq = '\0';
		char *key = config_trim(l);
		char *val = config_trim(eq + 1);
		size_t vl = strlen(val);
		if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
			val[vl - 1] = '\0';
			val++;
		}
		char src[PATH_MAX + 32];
		snprintf(src, sizeof(src), "%s:%d", path, lineno);
		if (config_remote_is_key(key)) {
			/* a remote key given twice: the second wins would hide a typo */
			if (remote_seen(cfg, key, &rseen)) {
				config_seterr(err, errlen, "%s:%d: '%.128s' is set twice", path, lineno, key);
				rc = -EINVAL;
				break;
			}
			rc = config_remote_apply(cfg, key, val, src, err, errlen);
			if (rc)
				break;
			continue;
		}
		const struct setting *s = find_key(key);
		if (!s) {
			config_seterr(err, errlen, "%s:%d: unknown setting '%.64s'", path, lineno, key);
			rc = -EINVAL;
			break;
		}
		size_t idx = (size_t)(s - settings);
		if (seen[idx]) {
			config_seterr(err, errlen, "%s:%d: '%s' is set twice", path, lineno, key);
			rc = -EINVAL;
			break;
		}
		seen[idx] = true;
		rc = apply(cfg, s, val, src, err, errlen);
		if (rc)
			break;
	}
	free(text);
	remote_keys_free(&rseen);
	return rc;
}

static const char *env_get(char *const *envp, const char *name)
{
	size_t n = strlen(name);
	for (char *const *e = envp; e && *e; e++)
		if (**e == *name && strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}

static bool all_tls(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->nurls; i++)
		if (strncasecmp(cfg->urls[i], "https://", 8) != 0)
			return false;
	return true;
}

/* The control-plane connection: required settings, URL, TLS, token file. */
static int validate_connection(struct config *cfg, char *err, size_t errlen)
{
	for (size_t i = 0; i < JV_ARRAY_LEN(settings); i++) {
		const struct setting *s = &settings[i];
		if (s->required && !*(char **)((char *)cfg + s->off)) {
			config_seterr(err, errlen, "'%s' is required (set it in the config file or %s)", s->key,
			       s->env);
			return -EINVAL;
		}
	}
	char uerr[512];
	bool loopback = false;
	int rc = config_parse_urls(cfg->url, cfg->urls, CONFIG_URLS_MAX, &cfg->nurls, &loopback, uerr,
	                           sizeof(uerr));
	if (rc) {
		config_seterr(err, errlen, "'url': %s", rc == -ENOMEM ? "out of memory" : uerr);
		return rc;
	}
	cfg->url_is_loopback = loopback;
	rc = config_join_urls(cfg);
	if (rc)
		return rc;
	if (cfg->tls_insecure_loopback && (!loopback || !all_tls(cfg))) {
		config_seterr(err, errlen,
		       "'tls_insecure_loopback' is only allowed with https:// URLs on a loopback "
		       "address (127.0.0.0/8, ::1, localhost)");
		return -EINVAL;
	}
	if (cfg->tls_ca_file && access(cfg->tls_ca_file, R_OK) != 0) {
		config_seterr(err, errlen, "cannot read 'tls_ca_file' '%s': %s", cfg->tls_ca_file,
		       strerror(errno));
		return -EINVAL;
	}
	if (cfg->proxy && transport_check_proxy(cfg->proxy, uerr, sizeof(uerr))) {
		config_seterr(err, errlen, "'proxy': %s", uerr);
		return -EINVAL;
	}
	struct stat st;
	if (stat(cfg->token_file, &st) != 0) {
		config_seterr(err, errlen, "cannot open 'token_file' '%s': %s", cfg->token_file, strerror(errno));
		return -EINVAL;
	}
	return 0;
}

/* Cross-setting checks, after every source has been applied. local: for
 * `jobvisor run`, which needs no control plane, so the connection is not checked. */
static int validate(struct config *cfg, bool local, char *err, size_t errlen)
{
	if (!local) {
		int rc = validate_connection(cfg, err, errlen);
		if (rc)
			return rc;
	}
	if (cfg->job_timeout_s > cfg->job_timeout_max_s) {
		config_seterr(err, errlen, "'job_timeout' (%d) is larger than 'job_timeout_max' (%d)",
		       cfg->job_timeout_s, cfg->job_timeout_max_s);
		return -EINVAL;
	}
	if (cfg->cancel_grace_s > cfg->cancel_grace_max_s) {
		config_seterr(err, errlen, "'cancel_grace' (%d) is larger than 'cancel_grace_max' (%d)",
		       cfg->cancel_grace_s, cfg->cancel_grace_max_s);
		return -EINVAL;
	}
	if (cfg->user) {
		struct passwd *pw = getpwnam(cfg->user);
		if (!pw) {
			config_seterr(err, errlen, "'user' = '%.64s': no such user", cfg->user);
			return -EINVAL;
		}
		if (geteuid() != 0 && pw->pw_uid != geteuid()) {
			config_seterr(err, errlen, "'user' = '%.64s' needs the agent to run as root", cfg->user);
			return -EINVAL;
		}
	}
	struct stat st;
	if (cfg->jobs_dir && (stat(cfg->jobs_dir, &st) != 0 || !S_ISDIR(st.st_mode))) {
		config_seterr(err, errlen, "'jobs_dir' '%s' is not a directory", cfg->jobs_dir);
		return -EINVAL;
	}
	return 0;
}

static int load(const char *path, char *const *envp, bool local, struct config *cfg, char *err,
                size_t errlen)
{
	memset(cfg, 0, sizeof(*cfg));
	if (!envp)
		envp = environ;
	int rc = 0;
	for (size_t i = 0; i < JV_ARRAY_LEN(settings) && rc == 0; i++)
		if (settings[i].def)
			rc = apply(cfg, &settings[i], settings[i].def, "default", err, errlen);
	if (rc == 0 && path)
		rc = load_file(cfg, path, err, errlen);
	for (size_t i = 0; i < JV_ARRAY_LEN(settings) && rc == 0; i++) {
		const char *v = env_get(envp, settings[i].env);
		if (v) {
			char src[80];
			snprintf(src, sizeof(src), "environment %s", settings[i].env);
			char copy[PATH_MAX];
			snprintf(copy, sizeof(copy), "%s", v);
			rc = apply(cfg, &settings[i], config_trim(copy), src, err, errlen);
		}
	}
	if (rc == 0)
		rc = config_remote_env(cfg, envp, err, errlen);
	if (rc == 0)
		rc = validate(cfg, local, err, errlen);
	if (rc == 0)
		rc = config_remote_validate(cfg, err, errlen);
	if (rc) {
		config_free(cfg);
		return rc == -ENOMEM ? rc : (rc < 0 ? rc : -EINVAL);
	}
	return 0;
}

int config_load(const char *path, char *const *envp, struct config *cfg, char *err, size_t errlen)
{
	return load(path, envp, false, cfg, err, errlen);
}

int config_load_local(const char *path, struct config *cfg, char *err, size_t errlen)
{
	return load(path, NULL, true, cfg, err, errlen);
}

void config_run_user(const struct config *cfg, int *uid, int *gid)
{
	*uid = *gid = -1;
	if (!cfg->user || geteuid() != 0)
		return;
	struct passwd *pw = getpwnam(cfg->user);
	if (pw) {
		*uid = (int)pw->pw_uid;
		*gid = (int)pw->pw_gid;
	}
}

void config_free(struct config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < JV_ARRAY_LEN(settings); i++) {
		enum kind k = settings[i].kind;
		if (k == K_STR || k == K_PATH || k == K_IDENT || k == K_PATHLIST) {
			char **slot = (char **)((char *)cfg + settings[i].off);
			free(*slot);
			*slot = NULL;
		}
	}
	for (size_t i = 0; i < cfg->nurls; i++)
		free(cfg->urls[i]);
	config_remote_free(cfg);
	memset(cfg, 0, sizeof(*cfg));
}

void config_free_token(char *token)
{
	if (!token)
		return;
	explicit_bzero(token, strlen(token));
	free(token);
}

int config_read_token(const struct config *cfg, char **token, char *err, size_t errlen)
{
	*token = NULL;
	const char *path = cfg->token_file;
	char *text = NULL;
	size_t len = 0;
	struct stat st;
	int rc = read_small_file(path, 4096, &text, &len, &st);
	if (rc) {
		config_seterr(err, errlen, "cannot read token file '%s': %s", path,
		       rc == -EFBIG ? "larger than 4 KiB" : strerror(-rc));
		return rc;
	}
	if (st.st_mode & (S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH)) {
		explicit_bzero(text, len);
		free(text);
		config_seterr(err, errlen,
		       "token file '%s' is accessible by group or others (mode %04o); run chmod 600 on it",
		       path, (unsigned)(st.st_mode & 07777));
		return -EPERM;
	}
	/* First line, surrounding whitespace trimmed. */
	char *p = text;
	while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
		p++;
	size_t n = strcspn(p, "\r\n");
	while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	bool ok = n > 0 && n <= 1024;
	for (size_t i = 0; ok && i < n; i++)
		if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f)
			ok = false;
	if (!ok) {
		explicit_bzero(text, len);
		free(text);
		config_seterr(err, errlen,
		       "token file '%s' must hold one token of 1 to 1024 visible ASCII characters",
		       path);
		return -EINVAL;
	}
	char *tok = strndup(p, n);
	explicit_bzero(text, len);
	free(text);
	if (!tok) {
		config_seterr(err, errlen, "cannot read token file '%s': out of memory", path);
		return -ENOMEM;
	}
	*token = tok;
	return 0;
}

cJSON *config_child_settings(const struct config *cfg)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *arr = cJSON_AddArrayToObject(o, "allowed_executables");
	if (!o || !arr)
		goto fail;
	for (const char *p = cfg->allowed_executables; p && *p;) {
		size_t len = strcspn(p, ":");
		char *one = strndup(p, len);
		if (!one)
			goto fail;
		cJSON *s = cJSON_CreateString(one);
		free(one);
		if (!s)
			goto fail;
		cJSON_AddItemToArray(arr, s);
		p += len;
		if (*p == ':')
			p++;
	}
	cJSON *jx = cJSON_AddArrayToObject(o, "job_executables");
	if (!jx)
		goto fail;
	for (const char *p = cfg->job_executables; p && *p;) {
		size_t len = strcspn(p, ":");
		char *one = strndup(p, len);
		cJSON *s = one ? cJSON_CreateString(one) : NULL;
		free(one);
		if (!s)
			goto fail;
		cJSON_AddItemToArray(jx, s);
		p += len;
		if (*p == ':')
			p++;
	}
	if (cfg->steamcmd && !cJSON_AddStringToObject(o, "steamcmd", cfg->steamcmd))
		goto fail;
	if (cfg->steam_credentials_file &&
	    !cJSON_AddStringToObject(o, "steam_credentials_file", cfg->steam_credentials_file))
		goto fail;
	if (cfg->user && !cJSON_AddStringToObject(o, "user", cfg->user))
		goto fail;
	if (!cJSON_AddNumberToObject(o, "console_log_max_bytes", (double)cfg->console_log_max_bytes) ||
	    !cJSON_AddNumberToObject(o, "console_log_keep", cfg->console_log_keep) ||
	    !cJSON_AddBoolToObject(o, "cgroups", cfg->cgroups))
		goto fail;
	if (cfg->cgroup_parent && !cJSON_AddStringToObject(o, "cgroup_parent", cfg->cgroup_parent))
		goto fail;
	if (!cJSON_AddStringToObject(o, "log_level", jv_log_level_name((enum jv_log_level)cfg->log_level)) ||
	    !cJSON_AddStringToObject(o, "log_format", cfg->log_format == JV_LOG_JSON ? "json" : "logfmt"))
		goto fail;
	if (!cJSON_AddStringToObject(o, "data_dir", cfg->data_dir))
		goto fail;
	if (!cJSON_AddNumberToObject(o, "extract_max_bytes", (double)cfg->extract_max_bytes) ||
	    !cJSON_AddNumberToObject(o, "extract_max_ratio", cfg->extract_max_ratio))
		goto fail;
	if (cfg->jobs_dir && !cJSON_AddStringToObject(o, "jobs_dir", cfg->jobs_dir))
		goto fail;
	if (config_remote_child(cfg, o))
		goto fail;
	return o;
fail:
	cJSON_Delete(o);
	return NULL;
}
