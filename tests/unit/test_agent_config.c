/* test_agent_config.c — the agent's settings: file, environment, validation, token. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobvisor/config.h"
#include "jobvisor/log.h"

static char dir[64];
static char token_path[128];

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");
	cr_assert(f, "cannot create %s", path);
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
}

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/jvcfg.XXXXXX");
	cr_assert(mkdtemp(dir));
	snprintf(token_path, sizeof(token_path), "%s/token", dir);
	write_file(token_path, "s3cret-token\n", 0600);
}

static void teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

TestSuite(config, .init = setup, .fini = teardown);

/* The minimum environment that makes a valid configuration. */
static char **base_env(char buf[][512], size_t *n)
{
	static char *envp[32];
	snprintf(buf[0], 512, "JOBVISOR_URL=http://127.0.0.1:9/");
	snprintf(buf[1], 512, "JOBVISOR_AGENT_ID=host-1");
	snprintf(buf[2], 512, "JOBVISOR_TOKEN_FILE=%s", token_path);
	snprintf(buf[3], 512, "JOBVISOR_DATA_DIR=%s", dir);
	for (int i = 0; i < 4; i++)
		envp[i] = buf[i];
	*n = 4;
	envp[4] = NULL;
	return envp;
}

/* Add or replace one KEY=VALUE. */
static char **add_env(char **envp, size_t *n, const char *kv)
{
	size_t klen = strcspn(kv, "=") + 1;
	for (size_t i = 0; i < *n; i++)
		if (strncmp(envp[i], kv, klen) == 0) {
			envp[i] = (char *)kv;
			return envp;
		}
	envp[(*n)++] = (char *)kv;
	envp[*n] = NULL;
	return envp;
}

Test(config, runs_with_only_environment_and_defaults)
{
	char buf[8][512];
	size_t n;
	char **envp = base_env(buf, &n);
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(config_load(NULL, envp, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(cfg.url, "http://127.0.0.1:9"); /* trailing slash dropped */
	cr_assert_str_eq(cfg.agent_id, "host-1");
	cr_assert_eq(cfg.poll_interval_ms, 3000);
	cr_assert_eq(cfg.poll_jitter_ms, 2000);
	cr_assert_eq(cfg.cancel_grace_s, 10);
	cr_assert_eq(cfg.log_format, JV_LOG_LOGFMT);
	cr_assert(cfg.url_is_loopback);
	cr_assert_null(cfg.jobs_dir);
	config_free(&cfg);
}

Test(config, environment_overrides_file)
{
	char path[160];
	snprintf(path, sizeof(path), "%s/agent.conf", dir);
	char text[1024];
	snprintf(text, sizeof(text),
	         "# comment\n\nurl = https://cp.example.com/base\nagent_id=from-file\n"
	         "token_file = \"%s\"\ndata_dir = %s\npoll_interval = 500ms\ncapacity = 4\n"
	         "log_format = json\n",
	         token_path, dir);
	write_file(path, text, 0644);
	char *envp[] = {"JOBVISOR_AGENT_ID=from-env", "JOBVISOR_POLL_INTERVAL=1.5", NULL};
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(config_load(path, envp, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(cfg.agent_id, "from-env");
	cr_assert_eq(cfg.poll_interval_ms, 1500);
	cr_assert_eq(cfg.capacity, 4);
	cr_assert_eq(cfg.log_format, JV_LOG_JSON);
	cr_assert_str_eq(cfg.url, "https://cp.example.com/base");
	cr_assert_not(cfg.url_is_loopback);
	config_free(&cfg);
}

Test(config, several_urls_from_the_file_and_from_the_environment)
{
	char path[160];
	snprintf(path, sizeof(path), "%s/agent.conf", dir);
	char text[1024];
	snprintf(text, sizeof(text), "url = https://cp1.example.com/ , https://cp2.example.com\n"
	         "agent_id = h\ntoken_file = %s\ndata_dir = %s\n", token_path, dir);
	write_file(path, text, 0644);
	struct config cfg;
	char err[256] = "";
	char *none[] = {NULL};
	cr_assert_eq(config_load(path, none, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.nurls, 2);
	cr_assert_str_eq(cfg.urls[0], "https://cp1.example.com");
	cr_assert_str_eq(cfg.urls[1], "https://cp2.example.com");
	cr_assert_str_eq(cfg.url, "https://cp1.example.com,https://cp2.example.com");
	config_free(&cfg);
	char *envp[] = {"JOBVISOR_URL=http://127.0.0.1:1,http://127.0.0.1:2/", NULL};
	cr_assert_eq(config_load(path, envp, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.nurls, 2);
	cr_assert_str_eq(cfg.urls[1], "http://127.0.0.1:2");
	cr_assert(cfg.url_is_loopback);
	config_free(&cfg);
}

Test(config, insecure_tls_needs_every_url_on_loopback_and_https)
{
	static const struct {
		const char *url;
		int rc;
	} cases[] = {
		{"JOBVISOR_URL=https://127.0.0.1:1,https://localhost:2", 0},
		{"JOBVISOR_URL=https://127.0.0.1:1,https://cp.example.com", -EINVAL},
		{"JOBVISOR_URL=https://127.0.0.1:1,http://127.0.0.1:2", -EINVAL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char buf[8][512], err[256] = "";
		size_t n;
		char **envp = add_env(base_env(buf, &n), &n, "JOBVISOR_TLS_INSECURE_LOOPBACK=true");
		add_env(envp, &n, cases[i].url);
		struct config cfg;
		int rc = config_load(NULL, envp, &cfg, err, sizeof(err));
		cr_assert_eq(rc, cases[i].rc, "%s: %s", cases[i].url, err);
		if (rc == 0)
			config_free(&cfg);
		else
			cr_assert(strstr(err, "tls_insecure_loopback"), "%s", err);
	}
}

Test(config, every_setting_has_a_file_key_and_an_environment_variable)
{
	/* Set every setting through the file, then each through the environment. */
	size_t count = config_setting_count();
	cr_assert_geq(count, 20);
	for (size_t i = 0; i < count; i++) {
		const char *key, *env, *def, *help;
		config_setting_info(i, &key, &env, &def, &help);
		cr_assert(strncmp(env, "JOBVISOR_", 9) == 0, "%s", env);
		cr_assert(help && *help, "%s has no description", key);
		/* The env name is the key upper-cased. */
		char want[64];
		snprintf(want, sizeof(want), "JOBVISOR_%s", key);
		for (char *p = want; *p; p++)
			if (*p >= 'a' && *p <= 'z')
				*p = (char)(*p - 'a' + 'A');
		cr_assert_str_eq(env, want);
	}
}

Test(config, missing_required_setting_names_the_variable)
{
	char *envp[] = {"JOBVISOR_AGENT_ID=a", NULL};
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(config_load(NULL, envp, &cfg, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "'url' is required") && strstr(err, "JOBVISOR_URL"), "%s", err);
}

static void expect_bad(const char *kv, const char *needle)
{
	char buf[8][512];
	size_t n;
	char **envp = base_env(buf, &n);
	add_env(envp, &n, kv);
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(config_load(NULL, envp, &cfg, err, sizeof(err)), -EINVAL, "%s accepted", kv);
	cr_assert(strstr(err, needle), "'%s' -> '%s' lacks '%s'", kv, err, needle);
}

Test(config, bad_values_are_refused_with_the_setting_and_source)
{
	expect_bad("JOBVISOR_POLL_INTERVAL=abc", "environment JOBVISOR_POLL_INTERVAL: 'poll_interval'");
	expect_bad("JOBVISOR_POLL_INTERVAL=-1", "poll_interval");
	expect_bad("JOBVISOR_CAPACITY=0", "capacity");
	expect_bad("JOBVISOR_CAPACITY=3x", "capacity");
	expect_bad("JOBVISOR_LOG_FORMAT=xml", "logfmt or json");
	expect_bad("JOBVISOR_LOG_LEVEL=loud", "log_level");
	expect_bad("JOBVISOR_AGENT_ID=../etc", "not an identifier");
	expect_bad("JOBVISOR_URL=ftp://127.0.0.1/", "http:// or https://");
	expect_bad("JOBVISOR_URL=not a url", "url");
	expect_bad("JOBVISOR_URL=http://user:pw@127.0.0.1/", "user name or password");
	expect_bad("JOBVISOR_DATA_DIR=relative/dir", "absolute path");
	expect_bad("JOBVISOR_JOB_TIMEOUT=100000", "larger than 'job_timeout_max'");
	expect_bad("JOBVISOR_CANCEL_GRACE=120", "larger than 'cancel_grace_max'");
	expect_bad("JOBVISOR_TLS_INSECURE_LOOPBACK=maybe", "boolean");
	expect_bad("JOBVISOR_ALLOWED_EXECUTABLES=/usr/bin/java:java", "absolute paths");
	expect_bad("JOBVISOR_JOBS_DIR=/nonexistent/jobs", "not a directory");
	expect_bad("JOBVISOR_USER=no-such-user-jv", "no such user");
	expect_bad("JOBVISOR_MAX_RESPONSE=12Q", "max_response");
}

Test(config, insecure_tls_only_for_https_loopback)
{
	expect_bad("JOBVISOR_TLS_INSECURE_LOOPBACK=true", "loopback"); /* http:// URL */
	char buf[8][512];
	size_t n;
	char **envp = base_env(buf, &n);
	snprintf(buf[0], 512, "JOBVISOR_URL=https://cp.example.com");
	add_env(envp, &n, "JOBVISOR_TLS_INSECURE_LOOPBACK=yes");
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(config_load(NULL, envp, &cfg, err, sizeof(err)), -EINVAL);
	snprintf(buf[0], 512, "JOBVISOR_URL=https://127.0.0.2:8443");
	cr_assert_eq(config_load(NULL, envp, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert(cfg.tls_insecure_loopback);
	config_free(&cfg);
}

Test(config, file_errors_name_the_line)
{
	char path[160];
	snprintf(path, sizeof(path), "%s/agent.conf", dir);
	char buf[8][512];
	size_t n;
	char **envp = base_env(buf, &n);
	struct config cfg;
	char err[256] = "";

	write_file(path, "capacity = 2\npoll_intervall = 3\n", 0644);
	cr_assert_eq(config_load(path, envp, &cfg, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, ":2: unknown setting 'poll_intervall'"), "%s", err);

	write_file(path, "capacity = 2\ncapacity = 3\n", 0644);
	cr_assert_eq(config_load(path, envp, &cfg, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "set twice"), "%s", err);

	write_file(path, "just words\n", 0644);
	cr_assert_eq(config_load(path, envp, &cfg, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, ":1: expected 'key = value'"), "%s", err);

	cr_assert_neq(config_load("/nonexistent/agent.conf", envp, &cfg, err, sizeof(err)), 0);
	cr_assert(strstr(err, "cannot read config file '/nonexistent/agent.conf'"), "%s", err);
}

Test(config, durations_and_sizes_accept_units)
{
	char buf[8][512];
	size_t n;
	char **envp = base_env(buf, &n);
	add_env(envp, &n, "JOBVISOR_POLL_INTERVAL=2m");
	add_env(envp, &n, "JOBVISOR_BACKOFF_MAX=250ms");
	add_env(envp, &n, "JOBVISOR_MAX_RESPONSE=64K");
	add_env(envp, &n, "JOBVISOR_JOB_MEMORY=1G");
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(config_load(NULL, envp, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.poll_interval_ms, 120000);
	cr_assert_eq(cfg.backoff_max_ms, 250);
	cr_assert_eq(cfg.max_response, 65536);
	cr_assert_eq(cfg.job_memory, 1LL << 30);
	config_free(&cfg);
}

Test(config, token_is_read_and_never_echoed)
{
	char buf[8][512];
	size_t n;
	char **envp = base_env(buf, &n);
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(config_load(NULL, envp, &cfg, err, sizeof(err)), 0, "%s", err);
	char *tok = NULL;
	cr_assert_eq(config_read_token(&cfg, &tok, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(tok, "s3cret-token");
	config_free_token(tok);

	chmod(token_path, 0640);
	cr_assert_eq(config_read_token(&cfg, &tok, err, sizeof(err)), -EPERM);
	cr_assert(strstr(err, "accessible by group or others"), "%s", err);
	cr_assert_null(strstr(err, "s3cret"));
	chmod(token_path, 0604);
	cr_assert_eq(config_read_token(&cfg, &tok, err, sizeof(err)), -EPERM);

	write_file(token_path, "two words\n", 0600);
	cr_assert_eq(config_read_token(&cfg, &tok, err, sizeof(err)), -EINVAL);
	cr_assert_null(strstr(err, "words"), "%s", err);
	write_file(token_path, "\n\n", 0600);
	cr_assert_eq(config_read_token(&cfg, &tok, err, sizeof(err)), -EINVAL);
	config_free(&cfg);
}

Test(config, child_settings_carry_allowed_executables_and_user)
{
	char buf[8][512];
	size_t n;
	char **envp = base_env(buf, &n);
	add_env(envp, &n, "JOBVISOR_ALLOWED_EXECUTABLES=/usr/bin/java:/opt/srv/run");
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(config_load(NULL, envp, &cfg, err, sizeof(err)), 0, "%s", err);
	cJSON *s = config_child_settings(&cfg);
	cr_assert(s);
	cJSON *arr = cJSON_GetObjectItem(s, "allowed_executables");
	cr_assert_eq(cJSON_GetArraySize(arr), 2);
	cr_assert_str_eq(cJSON_GetArrayItem(arr, 1)->valuestring, "/opt/srv/run");
	cr_assert_str_eq(cJSON_GetObjectItem(s, "data_dir")->valuestring, dir);
	/* What the instance monitors read (docs/operations.md, "Agent settings the monitor uses"). */
	cr_assert_eq(cJSON_GetObjectItem(s, "console_log_max_bytes")->valuedouble, 10 << 20);
	cr_assert_eq(cJSON_GetObjectItem(s, "console_log_keep")->valueint, 5);
	cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(s, "cgroups")));
	cr_assert_str_eq(cJSON_GetObjectItem(s, "log_format")->valuestring, "logfmt");
	cJSON_Delete(s);
	config_free(&cfg);
}

static char *read_source_file(const char *rel)
{
	const char *src = getenv("JV_SOURCE_DIR");
	cr_assert(src, "JV_SOURCE_DIR is not set (run through ctest)");
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", src, rel);
	FILE *f = fopen(path, "r");
	cr_assert(f, "cannot open %s", path);
	static char buf[1 << 20];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return strdup(buf);
}

Test(config, reference_table_in_docs_matches_the_code)
{
	char *doc = read_source_file("docs/operations.md");
	char *sec = strstr(doc, "## The agent");
	cr_assert(sec, "docs/operations.md has no '## The agent' section");
	size_t rows = 0;
	for (char *p = sec; (p = strstr(p, "| `JOBVISOR_")); p++)
		rows++;
	cr_assert_eq(rows, config_setting_count(), "table rows %zu, settings %zu", rows,
	             config_setting_count());
	for (size_t i = 0; i < config_setting_count(); i++) {
		const char *key, *env, *def, *help;
		config_setting_info(i, &key, &env, &def, &help);
		char row[256];
		snprintf(row, sizeof(row), "| `%s` | `%s` | ", key, env);
		char *r = strstr(sec, row);
		cr_assert(r, "docs table lacks the row for %s", key);
		if (def) {
			char want[128];
			snprintf(want, sizeof(want), "| `%s` |", def);
			char *eol = strchr(r, '\n');
			char *d = strstr(r + strlen(row) - 2, want);
			cr_assert(d && (!eol || d < eol), "docs give another default for %s (code: %s)", key, def);
		}
	}
	free(doc);
}

Test(config, example_file_lists_every_setting_and_loads)
{
	char *ex = read_source_file("examples/agent.conf.example");
	for (size_t i = 0; i < config_setting_count(); i++) {
		const char *key, *env, *def, *help;
		config_setting_info(i, &key, &env, &def, &help);
		char line[128];
		snprintf(line, sizeof(line), "\n%s = ", key);
		char commented[128];
		snprintf(commented, sizeof(commented), "\n# %s = ", key);
		cr_assert(strstr(ex, line) || strstr(ex, commented), "example lacks '%s'", key);
	}
	free(ex);
	char path[1024];
	snprintf(path, sizeof(path), "%s/examples/agent.conf.example", getenv("JV_SOURCE_DIR"));
	char tok[600], data[600];
	snprintf(tok, sizeof(tok), "JOBVISOR_TOKEN_FILE=%s", token_path);
	snprintf(data, sizeof(data), "JOBVISOR_DATA_DIR=%s", dir);
	char *envp[] = {tok, data, NULL};
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(config_load(path, envp, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(cfg.agent_id, "host-01");
	config_free(&cfg);
}

/* ---- remotes: remote.NAME.KEY and JOBVISOR_REMOTE_<NAME>_<KEY> ---- */

static void remote_file(char *path, size_t n, const char *extra)
{
	char cred[160], text[2048];
	snprintf(cred, sizeof(cred), "%s/cred", dir);
	write_file(cred, "AKIDEXAMPLE\nwJalrXUtnFEMI-secret\n", 0600);
	snprintf(path, n, "%s/remote.conf", dir);
	snprintf(text, sizeof(text),
	         "remote.offsite.endpoint = https://s3.eu-central-1.amazonaws.com/\n"
	         "remote.offsite.bucket = game-backups\nremote.offsite.prefix = /eu1/\n"
	         "remote.offsite.credentials_file = %s\n%s",
	         cred, extra);
	write_file(path, text, 0644);
}

Test(config, remote_settings_defaults_and_environment_override)
{
	char buf[8][512];
	size_t n;
	char **envp = base_env(buf, &n);
	add_env(envp, &n, "JOBVISOR_REMOTE_OFFSITE_PART_SIZE=64M");
	add_env(envp, &n, "JOBVISOR_REMOTE_OFFSITE_PATH_STYLE=yes");
	char path[160];
	remote_file(path, sizeof(path), "remote.offsite.parallel = 8\n");
	struct config cfg;
	char err[256] = "";
	cr_assert_eq(config_load(path, envp, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.nremotes, 1);
	struct config_remote *r = &cfg.remotes[0];
	cr_assert_str_eq(r->name, "offsite");
	cr_assert_str_eq(r->endpoint, "https://s3.eu-central-1.amazonaws.com"); /* slash dropped */
	cr_assert_str_eq(r->prefix, "eu1");
	cr_assert_str_eq(r->region, "us-east-1");
	cr_assert_eq(r->part_size, 64 << 20);
	cr_assert_eq(r->parallel, 8);
	cr_assert(r->path_style);
	cr_assert_eq(r->bandwidth_limit, 0);
	/* what job runs get: the file's path, never its content */
	cJSON *s = config_child_settings(&cfg);
	char *text = cJSON_PrintUnformatted(s);
	cr_assert(strstr(text, "\"remotes\":{\"offsite\":{"), "%s", text);
	cr_assert(strstr(text, "/cred\""), "%s", text);
	cr_assert_null(strstr(text, "wJalrXUtnFEMI-secret"));
	cr_assert_null(strstr(text, "AKIDEXAMPLE"));
	free(text);
	cJSON_Delete(s);
	config_free(&cfg);
}

Test(config, remote_key_twice_unknown_key_and_bad_name_are_refused)
{
	char buf[8][512];
	size_t n;
	char **envp = base_env(buf, &n);
	char path[160];
	struct config cfg;
	char err[256] = "";
	remote_file(path, sizeof(path), "remote.offsite.bucket = other\n");
	cr_assert_neq(config_load(path, envp, &cfg, err, sizeof(err)), 0);
	cr_assert(strstr(err, "'remote.offsite.bucket' is set twice"), "%s", err);
	remote_file(path, sizeof(path), "remote.offsite.secret = x\n");
	cr_assert_neq(config_load(path, envp, &cfg, err, sizeof(err)), 0);
	cr_assert(strstr(err, "unknown setting 'remote.offsite.secret'"), "%s", err);
	remote_file(path, sizeof(path), "remote.Off-Site.bucket = abc\n");
	cr_assert_neq(config_load(path, envp, &cfg, err, sizeof(err)), 0);
	cr_assert(strstr(err, "a remote name is 1-32 of a-z 0-9 _"), "%s", err);
	remote_file(path, sizeof(path), "remote.offsite.bandwidth_limit = fast\n");
	cr_assert_neq(config_load(path, envp, &cfg, err, sizeof(err)), 0);
	cr_assert(strstr(err, "'remote.offsite.bandwidth_limit' = 'fast' is not a rate"), "%s", err);
}

Test(config, remote_credentials_file_must_be_private)
{
	char buf[8][512];
	size_t n;
	char **envp = base_env(buf, &n);
	char path[160], cred[160];
	remote_file(path, sizeof(path), "");
	snprintf(cred, sizeof(cred), "%s/cred", dir);
	chmod(cred, 0604);
	struct config cfg;
	char err[512] = "";
	cr_assert_eq(config_load(path, envp, &cfg, err, sizeof(err)), -EPERM, "%s", err);
	cr_assert(strstr(err, "remote 'offsite': credentials file"), "%s", err);
	cr_assert(strstr(err, "(mode 0604); run chmod 600 on it"), "%s", err);
	cr_assert_null(strstr(err, "wJalrXUtnFEMI-secret"));
}

Test(config, bad_url_lists_name_the_setting_and_the_item)
{
	expect_bad("JOBVISOR_URL=http://127.0.0.1:1,,http://127.0.0.1:2",
	           "'url': URL 2 of the list: empty (a stray ',')");
	expect_bad("JOBVISOR_URL=http://127.0.0.1:1,http://127.0.0.1:1/",
	           "'url': URL 2 of the list ('http://127.0.0.1:1') repeats URL 1");
	expect_bad("JOBVISOR_URL=http://127.0.0.1:1,gopher://x", "'url': URL 2 of the list: 'gopher://x'");
}
