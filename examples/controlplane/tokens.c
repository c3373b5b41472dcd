/* tokens.c — the admin token file, the agents file, constant-time comparison.
 *
 * Both files are secrets: they are refused when group or others have any
 * access to them, the way ssh refuses a readable private key. The agents file
 * holds one agent a line, "agentId token", with '#' starting a comment. Tokens
 * are 16..512 printable ASCII characters without spaces; a token identifies
 * exactly one principal, so duplicates (also with the admin token) are refused.
 * Loading happens once at start; nothing here is called concurrently with it. */
#include "cp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobvisor/durable.h"

#define TOKEN_MIN 16
#define TOKEN_FILE_MAX (1024 * 1024)

static int read_secret_file(const char *what, const char *path, char **out, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		snprintf(err, errlen, "cannot open %s '%s': %s", what, path, strerror(e));
		return -e;
	}
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s '%s' is not a regular file", what, path);
		close(fd);
		return -EINVAL;
	}
	if (st.st_mode & 077) {
		snprintf(err, errlen, "%s '%s' is accessible by group or others (mode %04o): chmod 600 it",
		         what, path, (unsigned)(st.st_mode & 07777));
		close(fd);
		return -EPERM;
	}
	close(fd);
	size_t len = 0;
	int rc = jv_read_file_at(AT_FDCWD, path, TOKEN_FILE_MAX, out, &len);
	if (rc < 0) {
		snprintf(err, errlen, "cannot read %s '%s': %s", what, path, strerror(-rc));
		return rc;
	}
	if (strlen(*out) != len) {
		snprintf(err, errlen, "%s '%s' contains a NUL byte", what, path);
		free(*out);
		*out = NULL;
		return -EINVAL;
	}
	return 0;
}

static bool token_char_ok(char c)
{
	return c > 0x20 && c < 0x7f;
}

static const char *token_problem(const char *t, size_t len)
{
	if (len < TOKEN_MIN)
		return "is too short (at least 16 characters)";
	if (len > CP_TOKEN_MAX)
		return "is too long (at most 512 characters)";
	for (size_t i = 0; i < len; i++)
		if (!token_char_ok(t[i]))
			return "contains a character that is not printable ASCII";
	return NULL;
}

int tokens_load_admin(const char *path, char **token, size_t *len, char *err, size_t errlen)
{
	char *text = NULL;
	int rc = read_secret_file("admin token file", path, &text, err, errlen);
	if (rc < 0)
		return rc;
	/* One token; surrounding whitespace (an editor's newline) is not part of it. */
	char *s = text;
	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
		n--;
	s[n] = '\0';
	const char *why = token_problem(s, n);
	if (why) {
		snprintf(err, errlen, "admin token in '%s' %s", path, why);
		free(text);
		return -EINVAL;
	}
	*token = strdup(s);
	free(text);
	if (!*token)
		return -ENOMEM;
	*len = n;
	return 0;
}

static void agent_init(struct cp_agent *a)
{
	memset(a, 0, sizeof(*a));
	pthread_condattr_t attr;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&a->cond, &attr);
	pthread_condattr_destroy(&attr);
	pthread_mutex_init(&a->inst_mu, NULL);
}

void tokens_free_agents(struct cp_agent *agents, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		pthread_cond_destroy(&agents[i].cond);
		pthread_mutex_destroy(&agents[i].inst_mu);
		if (agents[i].token)
			explicit_bzero(agents[i].token, agents[i].token_len);
		free(agents[i].token);
	}
	free(agents);
}

/* Parse one non-comment line "agentId token" into a (already initialised). */
static int parse_agent_line(char *line, struct cp_agent *a, const char *path, int lineno,
                            char *err, size_t errlen)
{
	char *save = NULL;
	char *id = strtok_r(line, " \t", &save);
	char *tok = strtok_r(NULL, " \t", &save);
	char *extra = strtok_r(NULL, " \t", &save);
	if (!id || !tok || extra) {
		snprintf(err, errlen, "%s:%d: expected 'agentId token'", path, lineno);
		return -EINVAL;
	}
	if (!jv_ident_valid(id)) {
		snprintf(err, errlen, "%s:%d: bad agent id '%.64s' (letters, digits, '.', '_', '-'; at most 64)",
		         path, lineno, id);
		return -EINVAL;
	}
	size_t tlen = strlen(tok);
	const char *why = token_problem(tok, tlen);
	if (why) {
		snprintf(err, errlen, "%s:%d: token of agent '%s' %s", path, lineno, id, why);
		return -EINVAL;
	}
	snprintf(a->id, sizeof(a->id), "%s", id);
	a->token = strdup(tok);
	if (!a->token)
		return -ENOMEM;
	a->token_len = tlen;
	return 0;
}

int tokens_load_agents(const char *path, struct cp_agent **agents, size_t *n, char *err, size_t errlen)
{
	char *text = NULL;
	int rc = read_secret_file("agents file", path, &text, err, errlen);
	if (rc < 0)
		return rc;
	size_t cap = 1;
	for (const char *p = text; *p; p++)
		cap += (*p == '\n');
	struct cp_agent *list = calloc(cap, sizeof(*list));
	size_t count = 0;
	if (!list) {
		rc = -ENOMEM;
		goto fail;
	}
	int lineno = 0;
	/* Split by hand (not strtok) so line numbers stay right across empty lines. */
	char *p = text;
	while (p && *p) {
		char *nl = strchr(p, '\n');
		if (nl)
			*nl = '\0';
		lineno++;
		char *hash = strchr(p, '#');
		if (hash)
			*hash = '\0';
		char *cr = strchr(p, '\r');
		if (cr)
			*cr = '\0';
		char *q = p;
		while (*q == ' ' || *q == '\t')
			q++;
		if (*q) {
			agent_init(&list[count]);
			rc = parse_agent_line(q, &list[count], path, lineno, err, errlen);
			count++;
			if (rc < 0)
				goto fail;
			for (size_t i = 0; i + 1 < count; i++) {
				if (strcmp(list[i].id, list[count - 1].id) == 0) {
					snprintf(err, errlen, "%s:%d: agent '%s' is listed twice", path, lineno, list[i].id);
					rc = -EINVAL;
					goto fail;
				}
				if (tokens_equal(list[i].token, list[i].token_len, list[count - 1].token,
				                 list[count - 1].token_len)) {
					snprintf(err, errlen, "%s:%d: agents '%s' and '%s' share a token", path, lineno,
					         list[i].id, list[count - 1].id);
					rc = -EINVAL;
					goto fail;
				}
			}
		}
		p = nl ? nl + 1 : NULL;
	}
	if (count == 0) {
		snprintf(err, errlen, "agents file '%s' lists no agent", path);
		rc = -EINVAL;
		goto fail;
	}
	explicit_bzero(text, strlen(text));
	free(text);
	*agents = list;
	*n = count;
	return 0;
fail:
	if (text)
		explicit_bzero(text, strlen(text));
	free(text);
	tokens_free_agents(list, count);
	return rc;
}

bool tokens_equal(const char *a, size_t alen, const char *b, size_t blen)
{
	/* Walk the longer length so the time depends on lengths only, never on
	 * where the first difference is. */
	size_t n = alen > blen ? alen : blen;
	volatile unsigned char diff = (unsigned char)(alen != blen);
	for (size_t i = 0; i < n; i++) {
		unsigned char x = i < alen ? (unsigned char)a[i] : 0;
		unsigned char y = i < blen ? (unsigned char)b[i] : 0;
		diff |= (unsigned char)(x ^ y);
	}
	return diff == 0;
}

struct cp_agent *tokens_agent_find(struct cp *cp, const char *id)
{
	for (size_t i = 0; i < cp->nagents; i++)
		if (strcmp(cp->agents[i].id, id) == 0)
			return &cp->agents[i];
	return NULL;
}

static int hash_cmp(const void *a, const void *b)
{
	const struct cp_agent *x = *(struct cp_agent *const *)a, *y = *(struct cp_agent *const *)b;
	return memcmp(x->token_hash, y->token_hash, sizeof(x->token_hash));
}

int tokens_index(struct cp *cp)
{
	cp->by_hash = calloc(cp->nagents ? cp->nagents : 1, sizeof(*cp->by_hash));
	if (!cp->by_hash)
		return -ENOMEM;
	for (size_t i = 0; i < cp->nagents; i++) {
		if (users_hash(cp->agents[i].token, cp->agents[i].token_len, cp->agents[i].token_hash) < 0)
			return -ENOMEM;
		cp->by_hash[i] = &cp->agents[i];
	}
	qsort(cp->by_hash, cp->nagents, sizeof(*cp->by_hash), hash_cmp);
	return 0;
}

struct cp_agent *tokens_agent_by_token(struct cp *cp, const char *tok, size_t len)
{
	struct cp_agent key;
	const struct cp_agent *kp = &key;
	if (!cp->by_hash || users_hash(tok, len, key.token_hash) < 0)
		return NULL;
	struct cp_agent **hit = bsearch(&kp, cp->by_hash, cp->nagents, sizeof(*cp->by_hash), hash_cmp);
	/* Equal hashes of different tokens are not expected; the compare makes sure. */
	return hit && tokens_equal(tok, len, (*hit)->token, (*hit)->token_len) ? *hit : NULL;
}
