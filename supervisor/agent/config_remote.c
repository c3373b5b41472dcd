/* config_remote.c — the `remote.NAME.KEY` settings (S3-compatible remotes).
 *
 * Remotes are a family of settings, not fixed keys, so they are parsed here
 * rather than in config.c's table: a file line `remote.offsite.bucket = b`
 * or the variable JOBVISOR_REMOTE_OFFSITE_BUCKET=b (the name upper-cased)
 * sets one field of remote "offsite". After every source is applied each
 * remote is checked as a whole (endpoint, bucket and credentials file
 * required; the credentials file must not be readable by group or others).
 * The secret itself is never read here: the job run that uses a remote reads
 * the file (lua/s3.c). Errors are text for the caller; nothing is logged. */
#include "config_internal.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "jobvisor/util.h"

enum field { F_ENDPOINT, F_BUCKET, F_REGION, F_PREFIX, F_PATH_STYLE, F_CREDENTIALS_FILE,
             F_BANDWIDTH_LIMIT, F_PART_SIZE, F_PARALLEL, F_COUNT };

static const char *const field_key[F_COUNT] = {
	"endpoint", "bucket", "region", "prefix", "path_style", "credentials_file",
	"bandwidth_limit", "part_size", "parallel",
};

/* S3 allows parts of 5 MiB to 5 GiB (the last may be smaller). */
#define PART_MIN (5LL << 20)
#define PART_MAX (5LL << 30)
#define PART_DEFAULT (16LL << 20)
#define PARALLEL_MAX 32
#define PARALLEL_DEFAULT 4

static bool name_ok(const char *n, size_t len)
{
	if (len == 0 || len > 32 || !islower((unsigned char)n[0]))
		return false;
	for (size_t i = 0; i < len; i++)
		if (!islower((unsigned char)n[i]) && !isdigit((unsigned char)n[i]) && n[i] != '_')
			return false;
	return true;
}

static struct config_remote *find_or_add(struct config *cfg, const char *name, size_t len,
                                         const char *src, char *err, size_t errlen)
{
	for (size_t i = 0; i < cfg->nremotes; i++)
		if (strlen(cfg->remotes[i].name) == len && memcmp(cfg->remotes[i].name, name, len) == 0)
			return &cfg->remotes[i];
	if (cfg->nremotes == CONFIG_REMOTES_MAX) {
		config_seterr(err, errlen, "%s: more than %d remotes", src, CONFIG_REMOTES_MAX);
		return NULL;
	}
	struct config_remote *r = &cfg->remotes[cfg->nremotes];
	memset(r, 0, sizeof(*r));
	r->name = strndup(name, len);
	if (!r->name) {
		config_seterr(err, errlen, "%s: out of memory", src);
		return NULL;
	}
	r->part_size = PART_DEFAULT;
	r->parallel = PARALLEL_DEFAULT;
	cfg->nremotes++;
	return r;
}

static int set_str(char **slot, const char *v)
{
	char *copy = strdup(v);
	if (!copy)
		return -ENOMEM;
	free(*slot);
	*slot = copy;
	return 0;
}

/* Where the objects are: endpoint, bucket, region, prefix, credentials file. */
static int apply_text(struct config_remote *r, enum field f, const char *v, const char *src,
                      char *err, size_t errlen)
{
	switch (f) {
	case F_ENDPOINT: {
		if (strncasecmp(v, "http://", 7) != 0 && strncasecmp(v, "https://", 8) != 0) {
			config_seterr(err, errlen,
			              "%s: 'remote.%s.endpoint' = '%.200s' must be an http:// or https:// URL",
			              src, r->name, v);
			return -EINVAL;
		}
		int rc = set_str(&r->endpoint, v);
		size_t l = r->endpoint ? strlen(r->endpoint) : 0;
		while (l > 0 && r->endpoint[l - 1] == '/')
			r->endpoint[--l] = '\0';
		return rc;
	}
	case F_BUCKET:
		/* S3 bucket names: 3-63 of a-z 0-9 . - (AWS's rules; other stores are laxer). */
		if (strlen(v) < 3 || strlen(v) > 63 || strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789.-") != strlen(v)) {
			config_seterr(err, errlen,
			              "%s: 'remote.%s.bucket' = '%.200s' is not a bucket name (3-63 of a-z 0-9 . -)",
			              src, r->name, v);
			return -EINVAL;
		}
		return set_str(&r->bucket, v);
	case F_REGION:
		if (!*v || strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(v)) {
			config_seterr(err, errlen, "%s: 'remote.%s.region' = '%.200s' is not a region name "
			              "(e.g. us-east-1, auto)", src, r->name, v);
			return -EINVAL;
		}
		return set_str(&r->region, v);
	case F_PREFIX: {
		while (*v == '/')
			v++;
		for (const char *p = v; *p; p++)
			if (*p == '\\' || (p[0] == '.' && p[1] == '.')) {
				config_seterr(err, errlen, "%s: 'remote.%s.prefix' must not contain '\\' or '..'",
				              src, r->name);
				return -EINVAL;
			}
		int rc = set_str(&r->prefix, v);
		size_t l = r->prefix ? strlen(r->prefix) : 0;
		while (l > 0 && r->prefix[l - 1] == '/')
			r->prefix[--l] = '\0';
		return rc;
	}
	case F_CREDENTIALS_FILE:
		if (v[0] != '/') {
			config_seterr(err, errlen,
			              "%s: 'remote.%s.credentials_file' = '%.200s' must be an absolute path",
			              src, r->name, v);
			return -EINVAL;
		}
		return set_str(&r->credentials_file, v);
	default:
		break;
	}
	return -EINVAL;
}

/* How transfers run: path style, bandwidth limit, part size, parallel parts. */
static int apply_number(struct config_remote *r, enum field f, const char *v, const char *src,
                        char *err, size_t errlen)
{
	int64_t n = 0;
	bool b = false;
	switch (f) {
	case F_PATH_STYLE:
		if (config_parse_bool(v, &b)) {
			config_seterr(err, errlen, "%s: 'remote.%s.path_style' = '%.200s' is not a boolean",
			              src, r->name, v);
			return -EINVAL;
		}
		r->path_style = b;
		return 0;
	case F_BANDWIDTH_LIMIT:
		if (config_parse_size(v, &n) || n < 0) {
			config_seterr(err, errlen, "%s: 'remote.%s.bandwidth_limit' = '%.200s' is not a rate in "
			              "bytes per second (e.g. 0 = unlimited, 512K, 10M)", src, r->name, v);
			return -EINVAL;
		}
		r->bandwidth_limit = n;
		return 0;
	case F_PART_SIZE:
		if (config_parse_size(v, &n) || n < PART_MIN || n > PART_MAX) {
			config_seterr(err, errlen, "%s: 'remote.%s.part_size' = '%.200s' is not a size from 5M "
			              "to 5G (S3's multipart limits)", src, r->name, v);
			return -EINVAL;
		}
		r->part_size = n;
		return 0;
	case F_PARALLEL: {
		char *end = NULL;
		errno = 0;
		long k = strtol(v, &end, 10);
		if (end == v || *end || errno || k < 1 || k > PARALLEL_MAX) {
			config_seterr(err, errlen, "%s: 'remote.%s.parallel' = '%.200s' is not a whole number "
			              "from 1 to %d", src, r->name, v, PARALLEL_MAX);
			return -EINVAL;
		}
		r->parallel = (int)k;
		return 0;
	}
	default:
		break;
	}
	return -EINVAL;
}

static int apply_field(struct config_remote *r, enum field f, const char *v, const char *src,
                       char *err, size_t errlen)
{
	if (strlen(v) >= PATH_MAX || config_has_ctl(v)) {
		config_seterr(err, errlen, "%s: 'remote.%s.%s' is too long or contains control characters",
		              src, r->name, field_key[f]);
		return -EINVAL;
	}
	if (f == F_ENDPOINT || f == F_BUCKET || f == F_REGION || f == F_PREFIX || f == F_CREDENTIALS_FILE)
		return apply_text(r, f, v, src, err, errlen);
	return apply_number(r, f, v, src, err, errlen);
}

bool config_remote_is_key(const char *key)
{
	return strncmp(key, "remote.", 7) == 0;
}

int config_remote_apply(struct config *cfg, const char *key, const char *val, const char *src,
                        char *err, size_t errlen)
{
	const char *name = key + 7;
	const char *dot = strrchr(name, '.');
	enum field f = F_COUNT;
	for (int i = 0; dot && i < F_COUNT; i++)
		if (strcmp(dot + 1, field_key[i]) == 0)
			f = (enum field)i;
	if (!dot || f == F_COUNT) {
		config_seterr(err, errlen, "%s: unknown setting '%.64s' (remote settings are "
		              "remote.NAME.{endpoint,bucket,region,prefix,path_style,credentials_file,"
		              "bandwidth_limit,part_size,parallel})", src, key);
		return -EINVAL;
	}
	if (!name_ok(name, (size_t)(dot - name))) {
		config_seterr(err, errlen, "%s: '%.64s': a remote name is 1-32 of a-z 0-9 _ starting "
		              "with a letter", src, key);
		return -EINVAL;
	}
	struct config_remote *r = find_or_add(cfg, name, (size_t)(dot - name), src, err, errlen);
	if (!r)
		return -EINVAL;
	return apply_field(r, f, val, src, err, errlen);
}

int config_remote_env(struct config *cfg, char *const *envp, char *err, size_t errlen)
{
	static const char pfx[] = "JOBVISOR_REMOTE_";
	for (char *const *e = envp; e && *e; e++) {
		if (strncmp(*e, pfx, sizeof(pfx) - 1) != 0)
			continue;
		const char *eq = strchr(*e, '=');
		if (!eq)
			continue;
		const char *rest = *e + sizeof(pfx) - 1;
		size_t restlen = (size_t)(eq - rest);
		char src[128];
		snprintf(src, sizeof(src), "environment %.*s", (int)(eq - *e), *e);
		/* NAME_FIELD: the field is the longest known suffix. */
		int f = -1;
		size_t namelen = 0;
		for (int i = 0; i < F_COUNT; i++) {
			size_t fl = strlen(field_key[i]);
			if (restlen > fl + 1 && rest[restlen - fl - 1] == '_' &&
			    strncasecmp(rest + restlen - fl, field_key[i], fl) == 0) {
				bool upper = true;
				for (size_t k = 0; k < fl; k++)
					if (islower((unsigned char)rest[restlen - fl + k]))
						upper = false;
				if (upper && (f < 0 || fl > strlen(field_key[f]))) {
					f = i;
					namelen = restlen - fl - 1;
				}
			}
		}
		char key[128];
		if (f < 0 || namelen > 32) {
			config_seterr(err, errlen, "%s: unknown remote setting (expected JOBVISOR_REMOTE_<NAME>_"
			              "{ENDPOINT,BUCKET,REGION,PREFIX,PATH_STYLE,CREDENTIALS_FILE,"
			              "BANDWIDTH_LIMIT,PART_SIZE,PARALLEL})", src);
			return -EINVAL;
		}
		size_t k = (size_t)snprintf(key, sizeof(key), "remote.");
		for (size_t i = 0; i < namelen; i++) {
			char ch = rest[i];
			if (islower((unsigned char)ch)) {
				config_seterr(err, errlen, "%s: the remote name must be upper-case in a variable",
				              src);
				return -EINVAL;
			}
			key[k++] = (char)tolower((unsigned char)ch);
		}
		snprintf(key + k, sizeof(key) - k, ".%s", field_key[f]);
		char val[PATH_MAX];
		snprintf(val, sizeof(val), "%s", eq + 1);
		int rc = config_remote_apply(cfg, key, config_trim(val), src, err, errlen);
		if (rc)
			return rc;
	}
	return 0;
}

int config_remote_validate(struct config *cfg, char *err, size_t errlen)
{
	for (size_t i = 0; i < cfg->nremotes; i++) {
		struct config_remote *r = &cfg->remotes[i];
		const char *missing = !r->endpoint ? "endpoint" : !r->bucket ? "bucket"
		                    : !r->credentials_file ? "credentials_file" : NULL;
		if (missing) {
			config_seterr(err, errlen, "remote '%s': 'remote.%s.%s' is required", r->name, r->name,
			              missing);
			return -EINVAL;
		}
		if ((!r->region && set_str(&r->region, "us-east-1")) || (!r->prefix && set_str(&r->prefix, "")))
			return -ENOMEM;
		struct stat st;
		if (stat(r->credentials_file, &st) != 0) {
			config_seterr(err, errlen, "remote '%s': cannot open 'credentials_file' '%s': %s",
			              r->name, r->credentials_file, strerror(errno));
			return -EINVAL;
		}
		if (!S_ISREG(st.st_mode)) {
			config_seterr(err, errlen, "remote '%s': 'credentials_file' '%s' is not a regular file",
			              r->name, r->credentials_file);
			return -EINVAL;
		}
		if (st.st_mode & (S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH)) {
			config_seterr(err, errlen,
			              "remote '%s': credentials file '%s' is accessible by group or others "
			              "(mode %04o); run chmod 600 on it", r->name, r->credentials_file,
			              (unsigned)(st.st_mode & 07777));
			return -EPERM;
		}
	}
	return 0;
}

void config_remote_free(struct config *cfg)
{
	for (size_t i = 0; i < cfg->nremotes; i++) {
		struct config_remote *r = &cfg->remotes[i];
		free(r->name);
		free(r->endpoint);
		free(r->bucket);
		free(r->region);
		free(r->prefix);
		free(r->credentials_file);
		memset(r, 0, sizeof(*r));
	}
	cfg->nremotes = 0;
}

int config_remote_child(const struct config *cfg, cJSON *settings)
{
	cJSON *all = cJSON_AddObjectToObject(settings, "remotes");
	if (!all)
		return -ENOMEM;
	for (size_t i = 0; i < cfg->nremotes; i++) {
		const struct config_remote *r = &cfg->remotes[i];
		cJSON *o = cJSON_AddObjectToObject(all, r->name);
		if (!o || !cJSON_AddStringToObject(o, "endpoint", r->endpoint) ||
		    !cJSON_AddStringToObject(o, "bucket", r->bucket) ||
		    !cJSON_AddStringToObject(o, "region", r->region) ||
		    !cJSON_AddStringToObject(o, "prefix", r->prefix) ||
		    !cJSON_AddBoolToObject(o, "path_style", r->path_style) ||
		    !cJSON_AddStringToObject(o, "credentials_file", r->credentials_file) ||
		    !cJSON_AddNumberToObject(o, "bandwidth_limit", (double)r->bandwidth_limit) ||
		    !cJSON_AddNumberToObject(o, "part_size", (double)r->part_size) ||
		    !cJSON_AddNumberToObject(o, "parallel", r->parallel))
			return -ENOMEM;
	}
	return 0;
}
