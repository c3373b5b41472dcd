/* fsapi_util.h — helpers shared by the fs/archive/download unit suites:
 * a scratch tree with an "outside" directory next to the confined root, and a
 * snapshot of a tree (names, types, sizes, modes, contents' hash) so a test can
 * prove nothing outside the root changed. Header-only; test code only. */
#ifndef JV_TEST_FSAPI_UTIL_H
#define JV_TEST_FSAPI_UTIL_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jobvisor/durable.h"
#include "jobvisor/util.h"
#include "fsx.h"

struct scratch {
	char top[PATH_MAX];     /* /tmp/jvt-XXXXXX */
	char root[PATH_MAX];    /* top/inst: the confined root */
	char outside[PATH_MAX]; /* top/outside: must never change */
	int root_fd;
};

static inline void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
	cr_assert(jv_write_all(fd, data, len) == 0);
	close(fd);
}

/* snprintf into a PATH_MAX buffer; a test path never gets near the limit. */
#define PFMT(buf, ...) cr_assert(snprintf((buf), PATH_MAX, __VA_ARGS__) < PATH_MAX)

/* Read a whole small file into a static-free malloc'd string (NULL if missing). */
static inline char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	struct jv_buf b;
	jv_buf_init(&b, 0);
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		jv_buf_append(&b, chunk, n);
	fclose(f);
	if (!b.data)
		b.data = calloc(1, 1);
	if (len)
		*len = b.len;
	return b.data;
}

static void snapshot_rec(const char *path, const char *rel, struct jv_buf *out)
{
	DIR *d = opendir(path);
	if (!d)
		return;
	/* Collect and sort names for a stable snapshot. */
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			names = realloc(names, cap * sizeof(*names));
		}
		names[n++] = strdup(de->d_name);
	}
	closedir(d);
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			if (strcmp(names[i], names[j]) > 0) {
				char *t = names[i];
				names[i] = names[j];
				names[j] = t;
			}
	for (size_t i = 0; i < n; i++) {
		char full[PATH_MAX], r[PATH_MAX];
		PFMT(full, "%s/%s", path, names[i]);
		PFMT(r, "%s%s%s", rel, rel[0] ? "/" : "", names[i]);
		struct stat st;
		if (lstat(full, &st) == 0) {
			jv_buf_printf(out, "%s %o %lld", r, (unsigned)st.st_mode, (long long)st.st_size);
			if (S_ISREG(st.st_mode)) {
				size_t len;
				char *data = slurp(full, &len);
				unsigned long h = 5381;
				for (size_t k = 0; data && k < len; k++)
					h = h * 33 + (unsigned char)data[k];
				free(data);
				jv_buf_printf(out, " %lx", h);
			} else if (S_ISLNK(st.st_mode)) {
				char t[PATH_MAX];
				ssize_t tl = readlink(full, t, sizeof(t) - 1);
				t[tl < 0 ? 0 : tl] = '\0';
				jv_buf_printf(out, " -> %s", t);
			}
			jv_buf_printf(out, "\n");
			if (S_ISDIR(st.st_mode))
				snapshot_rec(full, r, out);
		}
		free(names[i]);
	}
	free(names);
}

/* Malloc'd description of everything under path. */
static inline char *snapshot(const char *path)
{
	struct jv_buf b;
	jv_buf_init(&b, 0);
	jv_buf_printf(&b, "snapshot of %s\n", path);
	snapshot_rec(path, "", &b);
	return b.data;
}

static inline void scratch_setup(struct scratch *s)
{
	PFMT(s->top, "/tmp/jvt-XXXXXX");
	cr_assert(mkdtemp(s->top) != NULL);
	PFMT(s->root, "%s/inst", s->top);
	PFMT(s->outside, "%s/outside", s->top);
	cr_assert(mkdir(s->root, 0755) == 0);
	cr_assert(mkdir(s->outside, 0755) == 0);
	char p[PATH_MAX];
	PFMT(p, "%s/secret.txt", s->outside);
	write_file(p, "do not touch\n", 13);
	s->root_fd = open(s->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert(s->root_fd >= 0);
}

static inline void scratch_teardown(struct scratch *s)
{
	if (s->root_fd >= 0)
		close(s->root_fd);
	/* Make read-only test directories removable, then remove the scratch tree. */
	pid_t pid = fork();
	if (pid == 0) {
		execlp("chmod", "chmod", "-R", "u+rwx", s->top, (char *)NULL);
		_exit(127);
	}
	int st;
	waitpid(pid, &st, 0);
	pid = fork();
	if (pid == 0) {
		execlp("rm", "rm", "-rf", s->top, (char *)NULL);
		_exit(127);
	}
	waitpid(pid, &st, 0);
}

/* Path helpers: in(s, "a/b") -> <root>/a/b; out(s, "x") -> <outside>/x. */
static inline const char *inpath(const struct scratch *s, const char *rel, char *buf)
{
	PFMT(buf, "%s/%s", s->root, rel);
	return buf;
}
static inline const char *outpath(const struct scratch *s, const char *rel, char *buf)
{
	PFMT(buf, "%s/%s", s->outside, rel);
	return buf;
}

#endif
