/* arch_mfwrite.c — write a manifest to a file as JSON, streaming and durably.
 *
 * The archive writer already holds every entry and digest in a struct
 * arch_manifest; this prints it entry by entry through a buffered stream
 * instead of building a cJSON tree (or a Lua table) of the whole file list.
 * The output is what arch_manifest_to_json() + cJSON_PrintUnformatted() would
 * give for the same manifest (same members, order and string escapes), so
 * arch_manifest_from_json() and json.decode read it back unchanged. */
#include "arch.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobvisor/durable.h"

static void errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* A JSON string with cJSON's escapes: '"', '\\' and the control characters;
 * every other byte is written as it is. */
static void put_str(FILE *f, const char *s)
{
	putc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"':
			fputs("\\\"", f);
			break;
		case '\\':
			fputs("\\\\", f);
			break;
		case '\b':
			fputs("\\b", f);
			break;
		case '\f':
			fputs("\\f", f);
			break;
		case '\n':
			fputs("\\n", f);
			break;
		case '\r':
			fputs("\\r", f);
			break;
		case '\t':
			fputs("\\t", f);
			break;
		default:
			if (*p < 32)
				fprintf(f, "\\u%04x", *p);
			else
				putc(*p, f);
		}
	}
	putc('"', f);
}

static void put_entry(FILE *f, const struct arch_entry *e)
{
	fputs("{\"path\":", f);
	put_str(f, e->path);
	fprintf(f, ",\"type\":\"%s\"", arch_type_name(e->type));
	if (e->type == ARCH_FILE) {
		fprintf(f, ",\"size\":%" PRIu64 ",\"sha256\":", e->size);
		put_str(f, e->sha256);
		if (e->fid.set) {
			char id[96];
			arch_fileid_format(&e->fid, id, sizeof(id));
			fprintf(f, ",\"stat\":\"%s\"", id);
		}
	}
	fprintf(f, ",\"mode\":%u", e->mode);
	if (e->type == ARCH_SYMLINK && e->target) {
		fputs(",\"target\":", f);
		put_str(f, e->target);
	}
	putc('}', f);
}

/* The members of extra (a JSON object), each printed by cJSON. */
static int put_extra(FILE *f, const cJSON *extra)
{
	const cJSON *c;
	cJSON_ArrayForEach(c, extra) {
		char *v = cJSON_PrintUnformatted(c);
		if (!v)
			return -ENOMEM;
		putc(',', f);
		put_str(f, c->string);
		putc(':', f);
		fputs(v, f);
		cJSON_free(v);
	}
	return 0;
}

static int put_manifest(FILE *f, const struct arch_manifest *m, const cJSON *extra)
{
	fputs("{\"format\":1", f);
	if (extra && put_extra(f, extra) < 0)
		return -ENOMEM;
	if (m->sha256[0])
		fprintf(f, ",\"sha256\":\"%s\"", m->sha256);
	if (m->has_bytes)
		fprintf(f, ",\"bytes\":%" PRIu64, m->bytes);
	fputs(",\"files\":[", f);
	for (size_t i = 0; i < m->n; i++) {
		if (i)
			putc(',', f);
		put_entry(f, &m->v[i]);
	}
	fputs("]}\n", f);
	return 0;
}

bool arch_manifest_reserved(const char *key)
{
	static const char *const keys[] = {"format", "sha256", "bytes", "files"};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (strcmp(key, keys[i]) == 0)
			return true;
	return false;
}

int arch_manifest_write_at(int dirfd, const char *name, const struct arch_manifest *m,
                           const cJSON *extra, char *err, size_t errlen)
{
	char tmp[512];
	int n = snprintf(tmp, sizeof(tmp), ".%s.tmp.%ld", name, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp) || strchr(name, '/')) {
		errf(err, errlen, "bad manifest name '%s'", name);
		return -EINVAL;
	}
	unlinkat(dirfd, tmp, 0);
	int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	FILE *f = fd < 0 ? NULL : fdopen(fd, "w");
	if (!f) {
		int rc = -errno;
		if (fd >= 0)
			close(fd);
		errf(err, errlen, "cannot create '%s': %s", tmp, strerror(-rc));
		return rc;
	}
	setvbuf(f, NULL, _IOFBF, 256 * 1024);
	int rc = put_manifest(f, m, extra);
	if (rc == 0 && (fflush(f) != 0 || ferror(f) || fsync(fd) < 0))
		rc = errno ? -errno : -EIO;
	if (fclose(f) != 0 && rc == 0)
		rc = -errno;
	if (rc == 0)
		rc = jv_durable_rename_at(dirfd, tmp, dirfd, name);
	if (rc < 0) {
		unlinkat(dirfd, tmp, 0);
		errf(err, errlen, "cannot write manifest '%s': %s", name, strerror(-rc));
	}
	return rc;
}
