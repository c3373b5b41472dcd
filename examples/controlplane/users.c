/* users.c — named UI tokens with roles, stored as SHA-256 hashes.
 *
 * The tokens file (--tokens-file, mode 0600 like every secret here) holds one
 * token a line: `NAME ROLE sha256:HEX`, '#' starting a comment. Roles:
 * admin (everything), operator (create, cancel, retry jobs; console commands;
 * schedules), viewer (read and watch). The file holds no token itself, only
 * its hash (`jobvisor-cp --hash-token` prints one for a token read on stdin);
 * a presented token is hashed once and compared with every entry in constant
 * time, without stopping at a match. SIGHUP re-reads the file: a good file
 * replaces the set at once, a bad one is logged and the old set kept. The
 * admin token file stays valid as the principal "admin" with role admin. */
#include "cp.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/log.h"

#define USERS_MAX 1000
#define FILE_MAX (1024 * 1024)

struct cp_user {
	char name[JV_IDENT_MAX + 1];
	int role;
	unsigned char hash[32];
};

const char *users_role_name(int role)
{
	switch (role) {
	case CP_ROLE_ADMIN: return "admin";
	case CP_ROLE_OPERATOR: return "operator";
	case CP_ROLE_VIEWER: return "viewer";
	default: return "none";
	}
}

static int role_parse(const char *s)
{
	if (strcmp(s, "admin") == 0)
		return CP_ROLE_ADMIN;
	if (strcmp(s, "operator") == 0)
		return CP_ROLE_OPERATOR;
	if (strcmp(s, "viewer") == 0)
		return CP_ROLE_VIEWER;
	return 0;
}

int users_hash(const char *token, size_t len, unsigned char out[32])
{
	unsigned int n = 0;
	return EVP_Digest(token, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32 ? 0 : -EIO;
}

static int unhex(const char *s, unsigned char out[32])
{
	if (strlen(s) != 64)
		return -1;
	for (int i = 0; i < 32; i++) {
		int v = 0;
		for (int k = 0; k < 2; k++) {
			char c = (char)tolower((unsigned char)s[2 * i + k]);
			int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
			if (d < 0)
				return -1;
			v = v * 16 + d;
		}
		out[i] = (unsigned char)v;
	}
	return 0;
}

static int load(const char *path, struct cp_user **out, size_t *n, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "cannot read tokens file '%s': %s", path, fd < 0 ? strerror(errno) : "not a regular file");
		if (fd >= 0)
			close(fd);
		return -EINVAL;
	}
	close(fd);
	if (st.st_mode & 077) {
		snprintf(err, errlen, "tokens file '%s' is accessible by group or others (mode %04o): chmod 600 it", path,
		         (unsigned)(st.st_mode & 07777));
		return -EPERM;
	}
	char *text = NULL;
	size_t len = 0;
	int rc = jv_read_file_at(AT_FDCWD, path, FILE_MAX, &text, &len);
	if (rc < 0) {
		snprintf(err, errlen, "cannot read tokens file '%s': %s", path, strerror(-rc));
		return rc;
	}
	struct cp_user *users = calloc(USERS_MAX, sizeof(*users));
	size_t k = 0;
	int lineno = 0;
	rc = users ? 0 : -ENOMEM;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); rc == 0 && line; line = strtok_r(NULL, "\n", &save)) {
		lineno++;
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		char name[80] = "", role[32] = "", h[100] = "", extra[8] = "";
		int f = sscanf(line, "%79s %31s %99s %7s", name, role, h, extra);
		if (f <= 0)
			continue;
		if (f != 3 || !jv_ident_valid(name) || !role_parse(role) || strncmp(h, "sha256:", 7) != 0 ||
		    unhex(h + 7, users[k].hash) < 0) {
			snprintf(err, errlen, "tokens file '%s' line %d: expected 'NAME admin|operator|viewer sha256:HEX' "
			         "(64 hex digits; jobvisor-cp --hash-token makes one)", path, lineno);
			rc = -EINVAL;
			break;
		}
		for (size_t i = 0; i < k; i++) {
			if (strcmp(users[i].name, name) == 0 || memcmp(users[i].hash, users[k].hash, 32) == 0) {
				snprintf(err, errlen, "tokens file '%s' line %d: %s", path, lineno,
				         strcmp(users[i].name, name) == 0 ? "the name is used twice" : "the token is used twice");
				rc = -EINVAL;
			}
		}
		if (rc == 0 && k == USERS_MAX) {
			snprintf(err, errlen, "tokens file '%s': more than %d tokens", path, USERS_MAX);
			rc = -EINVAL;
		}
		if (rc == 0) {
			snprintf(users[k].name, sizeof(users[k].name), "%s", name);
			users[k].role = role_parse(role);
			k++;
		}
	}
	explicit_bzero(text, len);
	free(text);
	if (rc < 0) {
		free(users);
		return rc;
	}
	*out = users;
	*n = k;
	return 0;
}

int users_load(struct cp *cp, char *err, size_t errlen)
{
	if (!cp->cfg.tokens_file)
		return 0;
	struct cp_user *users = NULL;
	size_t n = 0;
	int rc = load(cp->cfg.tokens_file, &users, &n, err, errlen);
	if (rc < 0)
		return rc;
	pthread_rwlock_wrlock(&cp->users_lock);
	struct cp_user *old = cp->users;
	cp->users = users;
	cp->nusers = n;
	pthread_rwlock_unlock(&cp->users_lock);
	free(old);
	return (int)n;
}

void users_reload(struct cp *cp)
{
	char err[512];
	int rc = users_load(cp, err, sizeof(err));
	if (rc < 0)
		jv_error(NULL, NULL, "SIGHUP: keeping the current tokens: %s", err);
	else if (cp->cfg.tokens_file)
		jv_info(NULL, NULL, "SIGHUP: %d named tokens loaded from '%s'", rc, cp->cfg.tokens_file);
}

int users_find(struct cp *cp, const char *token, size_t len, struct cp_who *who)
{
	unsigned char h[32];
	if (users_hash(token, len, h) < 0)
		return 0;
	int found = -1;
	pthread_rwlock_rdlock(&cp->users_lock);
	for (size_t i = 0; i < cp->nusers; i++) {
		bool eq = tokens_equal((const char *)h, 32, (const char *)cp->users[i].hash, 32);
		if (eq && found < 0)
			found = (int)i;
	}
	if (found >= 0 && who) {
		snprintf(who->name, sizeof(who->name), "%s", cp->users[found].name);
		who->role = cp->users[found].role;
	}
	pthread_rwlock_unlock(&cp->users_lock);
	return found >= 0;
}

void users_free(struct cp *cp)
{
	free(cp->users);
	cp->users = NULL;
	cp->nusers = 0;
}

int users_hash_main(void)
{
	char buf[CP_TOKEN_MAX + 2];
	if (!fgets(buf, sizeof(buf), stdin)) {
		fprintf(stderr, "jobvisor-cp --hash-token: give the token on stdin\n");
		return 2;
	}
	size_t n = strcspn(buf, "\r\n");
	buf[n] = '\0';
	if (n < 16 || n > CP_TOKEN_MAX) {
		fprintf(stderr, "jobvisor-cp --hash-token: a token is 16-%d characters\n", CP_TOKEN_MAX);
		return 2;
	}
	unsigned char h[32];
	if (users_hash(buf, n, h) < 0)
		return 1;
	explicit_bzero(buf, sizeof(buf));
	printf("sha256:");
	for (int i = 0; i < 32; i++)
		printf("%02x", h[i]);
	printf("\n");
	return 0;
}
