/* config.h — the agent's settings: a `key = value` file plus JOBVISOR_* overrides.
 *
 * Every setting can be given both ways; the environment wins. Loading either
 * yields a fully validated configuration or an error message naming the
 * setting, where it came from and why it is wrong (the caller exits 2). The
 * token is not part of the configuration: only its file name is, and
 * config_read_token() reads it on demand so it never sits in a struct that
 * might be printed. */
#ifndef JOBVISOR_CONFIG_H
#define JOBVISOR_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#define CONFIG_CAPACITY_MAX 256
#define CONFIG_REMOTES_MAX 16
#define CONFIG_URLS_MAX 8

/* One named S3-compatible remote (`remote.NAME.KEY` settings). The secret is
 * not here: only the credentials file's name, read by the job run that uses
 * the remote (lua/s3.c), so no configuration dump can print it. */
struct config_remote {
	char *name;             /* [a-z][a-z0-9_]{0,31} */
	char *endpoint;         /* http:// or https:// URL, no trailing slash */
	char *bucket;
	char *region;           /* default us-east-1 */
	char *prefix;           /* key prefix without surrounding '/', "" = none */
	char *credentials_file; /* absolute path; first line key id, second line secret */
	bool path_style;        /* https://host/bucket/key instead of https://bucket.host/key */
	int64_t bandwidth_limit; /* upload bytes per second, 0 = unlimited */
	int64_t part_size;      /* multipart part size in bytes */
	int parallel;           /* parts in flight */
};

struct config {
	char *url;          /* the `url` setting: one or more base URLs, ',' between them */
	char *urls[CONFIG_URLS_MAX]; /* derived: each base URL, no trailing slash */
	size_t nurls;
	char *agent_id;     /* identifier */
	char *token_file;   /* path */
	char *data_dir;     /* absolute */
	char *jobs_dir;     /* absolute, NULL = built-in jobs only */
	char *user;         /* NULL = the agent's own user */
	char *tls_ca_file;  /* NULL = system store */
	char *proxy;        /* proxy URL or "direct", NULL = from the environment */
	char *no_proxy;     /* hosts reached directly, NULL = from the environment */
	char *allowed_executables; /* ':'-separated absolute paths, NULL = none */
	char *job_executables;     /* ':'-separated absolute paths proc.run may start, NULL = none */
	char *steamcmd;            /* SteamCMD path, NULL = no steam sources */
	char *steam_credentials_file; /* "account password" lines, NULL = anonymous logins only */
	bool tls_insecure_loopback;
	bool url_is_loopback; /* derived: every URL's host is a loopback address */

	/* For instance monitors (passed down through job runs). */
	int64_t console_log_max_bytes;
	int console_log_keep;
	bool cgroups;
	char *cgroup_parent; /* NULL = automatic */

	int64_t poll_interval_ms;
	int64_t poll_jitter_ms;
	int poll_wait_s; /* long poll; 0 = off */
	int64_t stats_interval_ms; /* instance resource stats; 0 = off */
	int capacity;

	int job_timeout_s;
	int job_timeout_max_s;
	int cancel_grace_s;
	int cancel_grace_max_s;
	int drain_timeout_s;  /* SIGTERM: let runs finish this long, then cancel them */
	int shutdown_grace_s; /* cancelled at shutdown -> SIGKILL */
	int64_t job_memory;  /* bytes, Lua allocator cap */
	int64_t extract_max_bytes; /* archive.extract's default total-size cap; 0 = none */
	int extract_max_ratio;     /* archive.extract's default expansion-ratio guard; 0 = none */

	int request_timeout_s;
	int connect_timeout_s;
	int64_t backoff_max_ms;
	int64_t max_response; /* bytes */

	int log_format; /* enum jv_log_format */
	int log_level;  /* enum jv_log_level */

	struct config_remote remotes[CONFIG_REMOTES_MAX];
	size_t nremotes;
};

/* Load defaults, then the file at path (NULL = none), then the environment
 * (envp: NULL-terminated "KEY=VALUE" strings; NULL = environ). On success
 * *cfg is filled (config_free it) and 0 returned. On failure returns -EINVAL
 * (or -errno reading the file), writes a one-line message to err and leaves
 * *cfg empty. */
int config_load(const char *path, char *const *envp, struct config *cfg, char *err, size_t errlen);
/* The same for `jobvisor run`: defaults, the optional file, JOBVISOR_* from the
 * environment; the control-plane settings are not required. */
int config_load_local(const char *path, struct config *cfg, char *err, size_t errlen);
/* uid/gid job runs switch to: only when running as root with `user` set; else -1. */
void config_run_user(const struct config *cfg, int *uid, int *gid);
void config_free(struct config *cfg);

/* Read the agent token from cfg->token_file: refused unless a regular file not
 * readable or writable by group or others, holding one line of 1..1024
 * visible ASCII characters. On success *token is returned-owned (free it with
 * config_free_token, which wipes it). The token never appears in err. */
int config_read_token(const struct config *cfg, char **token, char *err, size_t errlen);
void config_free_token(char *token);

/* The settings a job-run child and the monitors it starts need, keyed by the
 * setting names: {allowed_executables:[...], job_executables:[...], steamcmd, user, console_log_max_bytes,
 * console_log_keep, cgroups, cgroup_parent, log_level, log_format, data_dir,
 * jobs_dir, remotes:{NAME:{endpoint, bucket, region, prefix, path_style,
 * credentials_file, bandwidth_limit, part_size, parallel}}}. Returned-owned: cJSON_Delete. NULL on ENOMEM. */
cJSON *config_child_settings(const struct config *cfg);

/* Number of settings and the i-th (file key, env name, default as text,
 * description) — drives documentation tests so the docs match the code. */
size_t config_setting_count(void);
void config_setting_info(size_t i, const char **key, const char **env, const char **def,
                         const char **help);

#endif
