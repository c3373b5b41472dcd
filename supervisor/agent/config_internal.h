/* config_internal.h — the value parsers (config_value.c) that config.c and
 * config_remote.c share, and the remote family's entry points. Private to
 * supervisor/agent/. */
#ifndef JV_CONFIG_INTERNAL_H
#define JV_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jobvisor/config.h"

void config_seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* "4096", "64K", "256M", "1G" -> bytes; 0 or -EINVAL/-ERANGE. */
int config_parse_size(const char *v, int64_t *out);
int config_parse_bool(const char *v, bool *out);
bool config_has_ctl(const char *v);
char *config_trim(char *s);
/* `url`: one or more http(s) URLs separated by ',' (spaces around items
 * allowed). Each is checked (transport_check_url); empty items, more than max
 * URLs and one URL listed twice are errors. urls[0..*n) get owned copies
 * without trailing slashes (left empty on error); *all_loopback tells whether
 * every host is a loopback address. Returns 0, -EINVAL (message in err) or
 * -ENOMEM. */
int config_parse_urls(const char *v, char **urls, size_t max, size_t *n, bool *all_loopback,
                      char *err, size_t errlen);
/* Replace cfg->url with the parsed list as the agent uses it, "A,B". 0 or -ENOMEM. */
int config_join_urls(struct config *cfg);

/* Remotes (config_remote.c). is_key: the file key starts with "remote.".
 * apply: one `remote.NAME.FIELD = value`; env: every JOBVISOR_REMOTE_* of
 * envp; validate: required fields and the credentials file's mode; child:
 * adds settings.remotes (no secret: the file name only). */
bool config_remote_is_key(const char *key);
int config_remote_apply(struct config *cfg, const char *key, const char *val, const char *src,
                        char *err, size_t errlen);
int config_remote_env(struct config *cfg, char *const *envp, char *err, size_t errlen);
int config_remote_validate(struct config *cfg, char *err, size_t errlen);
void config_remote_free(struct config *cfg);
int config_remote_child(const struct config *cfg, cJSON *settings);

#endif
