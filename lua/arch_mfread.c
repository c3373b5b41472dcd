/* arch_mfread.c — read a manifest file entry by entry.
 *
 * A manifest lists every file of a world (about 200 bytes of JSON each): a
 * million-file world is a 200 MB document, which as one cJSON tree (or one
 * Lua table) costs several times that. This reader keeps only a window of
 * the text: it finds where each top-level member's value and each element of
 * "files" ends (strings, escapes and nesting tracked byte by byte), parses
 * that one value with cJSON, checks it with the same code as
 * arch_manifest_from_json() and frees it. What stays is the compact
 * struct arch_manifest, and the small top-level members (backupId,
 * createdAt, ...) as one cJSON object. */
#include "arch.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One value (an entry, a top-level member) may not be longer than this. */
#define MFREAD_MAX_VALUE (1u << 20)
#define MFREAD_CHUNK (256u << 10)

struct mfread {
	int fd;
	char *buf;
	size_t cap, len, pos;
	size_t mark; /* start of the value being scanned: kept when the buffer moves */
	bool eof;
	char *err;
	size_t errlen;
};

static int failf(struct mfread *r, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->err, r->errlen, fmt, ap);
	va_end(ap);
	return rc;
}

/* More bytes after len: moves what is before mark out, grows the buffer
 * when a value fills it. 0, 1 at the end of the file, or -errno. */
static int fill(struct mfread *r)
{
	if (r->eof)
		return 1;
	if (r->mark > 0) {
		memmove(r->buf, r->buf + r->mark, r->len - r->mark);
		r->len -= r->mark;
		r->pos -= r->mark;
		r->mark = 0;
	}
	if (r->len == r->cap) {
		if (r->cap >= MFREAD_MAX_VALUE + MFREAD_CHUNK)
			return failf(r, -EINVAL, "is not a manifest (a value longer than %u bytes)", MFREAD_MAX_VALUE);
		char *nb = realloc(r->buf, r->cap + MFREAD_CHUNK);
		if (!nb)
			return failf(r, -ENOMEM, "out of memory");
		r->buf = nb;
		r->cap += MFREAD_CHUNK;
	}
	ssize_t n;
	do
		n = read(r->fd, r->buf + r->len, r->cap - r->len);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return failf(r, -errno, "cannot read the manifest: %s", strerror(errno));
	if (n == 0) {
		r->eof = true;
		return 1;
	}
	r->len += (size_t)n;
	return 0;
}

/* The next byte that is not JSON white space (not consumed), or -1 at the
 * end, or a negative errno below -1 (err set). */
static int peek(struct mfread *r)
{
	for (;;) {
		while (r->pos < r->len) {
			char c = r->buf[r->pos];
			if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
				return (unsigned char)c;
			r->pos++;
		}
		r->mark = r->pos;
		int rc = fill(r);
		if (rc < 0)
			return rc < -1 ? rc : -EIO;
		if (rc > 0)
			return -1;
	}
}

static int expect(struct mfread *r, char want, const char *where)
{
	int c = peek(r);
	if (c < -1)
		return c;
	if (c != (unsigned char)want)
		return failf(r, -EINVAL, "is not JSON (expected '%c' %s)", want, where);
	r->pos++;
	return 0;
}

static bool scalar_end(char c)
{
	return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Find the end of the value starting at pos (after white space) and parse it
 * with cJSON. *out: the value (caller frees). 0 or -errno. */
static int next_value(struct mfread *r, cJSON **out)
{
	int c = peek(r);
	if (c < -1)
		return c;
	if (c == -1)
		return failf(r, -EINVAL, "is not JSON (ends too early)");
	r->mark = r->pos;
	int depth = 0;
	bool str = false, esc = false, scalar = c != '"' && c != '{' && c != '[';
	for (;;) {
		if (r->pos == r->len) {
			int rc = fill(r);
			if (rc < 0)
				return rc;
			if (rc > 0) {
				if (scalar && depth == 0)
					break;
				return failf(r, -EINVAL, "is not JSON (ends inside a value)");
			}
			continue;
		}
		char ch = r->buf[r->pos];
		if (scalar) {
			if (scalar_end(ch))
				break;
		} else if (str) {
			if (esc)
				esc = false;
			else if (ch == '\\')
				esc = true;
			else if (ch == '"') {
				str = false;
				if (depth == 0) {
					r->pos++;
					break;
				}
			}
		} else if (ch == '"') {
			str = true;
		} else if (ch == '{' || ch == '[') {
			depth++;
		} else if (ch == '}' || ch == ']') {
			if (--depth == 0) {
				r->pos++;
				break;
			}
		}
		r->pos++;
	}
	const char *end = NULL;
	size_t n = r->pos - r->mark;
	*out = cJSON_ParseWithLengthOpts(r->buf + r->mark, n, &end, false);
	if (!*out || end != r->buf + r->pos) {
		cJSON_Delete(*out);
		*out = NULL;
		return failf(r, -EINVAL, "is not JSON (near byte %zu of a value)",
		             end ? (size_t)(end - (r->buf + r->mark)) : (size_t)0);
	}
	r->mark = r->pos;
	return 0;
}

/* After a value: ',' (another follows: 1) or the closing bracket (0). */
static int after_value(struct mfread *r, char close)
{
	int c = peek(r);
	if (c < -1)
		return c;
	r->pos++;
	if (c == ',')
		return 1;
	if (c == (unsigned char)close)
		return 0;
	return failf(r, -EINVAL, "is not JSON (expected ',' or '%c')", close);
}

/* The elements of "files" (the '[' is next). */
static int read_files(struct mfread *r, struct arch_manifest *m)
{
	int rc = expect(r, '[', "for 'files'");
	if (rc < 0)
		return rc;
	if (peek(r) == ']') {
		r->pos++;
		return 0;
	}
	for (size_t i = 0;; i++) {
		cJSON *f;
		rc = next_value(r, &f);
		if (rc < 0)
			return rc;
		struct arch_entry e;
		rc = arch_entry_from_json(f, i, &e, r->err, r->errlen);
		if (rc == 0 && arch_manifest_add(m, &e) < 0)
			rc = failf(r, -ENOMEM, "out of memory");
		cJSON_Delete(f);
		if (rc < 0)
			return rc;
		rc = after_value(r, ']');
		if (rc <= 0)
			return rc;
	}
}

/* The top-level object: "files" into m, every other member into top. */
static int read_doc(struct mfread *r, struct arch_manifest *m, cJSON *top, bool *had_files)
{
	int rc = expect(r, '{', "at the start");
	if (rc < 0)
		return rc;
	if (peek(r) == '}') {
		r->pos++;
		return 0;
	}
	for (;;) {
		cJSON *key, *val = NULL;
		if (peek(r) != '"')
			return failf(r, -EINVAL, "is not JSON (expected a member name)");
		rc = next_value(r, &key);
		if (rc < 0)
			return rc;
		rc = expect(r, ':', "after a member name");
		if (rc == 0 && strcmp(key->valuestring, "files") == 0 && !*had_files) {
			*had_files = true;
			rc = read_files(r, m);
		} else if (rc == 0 && (strcmp(key->valuestring, "files") == 0 ||
		                       cJSON_GetObjectItemCaseSensitive(top, key->valuestring))) {
			rc = failf(r, -EINVAL, "is not a manifest (member '%.100s' twice)", key->valuestring);
		} else if (rc == 0 && (rc = next_value(r, &val)) == 0) {
			cJSON_AddItemToObject(top, key->valuestring, val);
		}
		cJSON_Delete(key);
		if (rc < 0)
			return rc;
		rc = after_value(r, '}');
		if (rc <= 0)
			break;
	}
	if (rc == 0 && peek(r) != -1)
		rc = failf(r, -EINVAL, "is not JSON (something follows the document)");
	return rc;
}

int arch_manifest_read_fd(int fd, struct arch_manifest *m, cJSON **top, char *err, size_t errlen)
{
	arch_manifest_init(m);
	struct mfread r = {.fd = fd, .err = err, .errlen = errlen};
	cJSON *t = cJSON_CreateObject();
	if (!t) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	bool had_files = false;
	int rc = read_doc(&r, m, t, &had_files);
	free(r.buf);
	const cJSON *done = cJSON_GetObjectItemCaseSensitive(t, "complete");
	if (rc == 0)
		rc = arch_manifest_top_from_json(t, m, err, errlen);
	if (rc == 0 && !had_files)
		rc = failf(&r, -EINVAL, "manifest: 'files' must be an array");
	if (rc == 0 && done && !cJSON_IsTrue(done))
		rc = failf(&r, -EINVAL, "is not marked complete");
	if (rc == 0)
		rc = arch_manifest_index(m, err, errlen);
	if (rc < 0) {
		arch_manifest_free(m);
		cJSON_Delete(t);
		t = NULL;
	}
	if (top)
		*top = t;
	else
		cJSON_Delete(t);
	return rc;
}
