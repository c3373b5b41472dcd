/* arch_manifest.c — the archive manifest (in memory and as JSON), the lexical
 * check of entry paths read from archives, and exclude patterns.
 *
 * The manifest JSON is shared with the built-in jobs (backup files are
 * <backupId>.json beside <backupId>.tar.zst): {"format":1, "sha256", "bytes",
 * "files":[{path, type, size, sha256, mode, target, stat}]}. Parsing is strict: an
 * unknown type, a bad digest, an unsafe or duplicate path is refused, because
 * a manifest is the reference a restore is checked against. */
#include "arch.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsx.h"

static void errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

const char *arch_type_name(enum arch_type t)
{
	switch (t) {
	case ARCH_FILE:
		return "file";
	case ARCH_DIR:
		return "dir";
	case ARCH_SYMLINK:
		return "symlink";
	case ARCH_HARDLINK:
		return "hardlink";
	default:
		return "other";
	}
}

void arch_manifest_init(struct arch_manifest *m)
{
	memset(m, 0, sizeof(*m));
}

void arch_manifest_free(struct arch_manifest *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n; i++) {
		free(m->v[i].path);
		free(m->v[i].target);
	}
	free(m->v);
	free(m->index);
	arch_manifest_init(m);
}

int arch_manifest_add(struct arch_manifest *m, const struct arch_entry *e)
{
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 64;
		struct arch_entry *v = realloc(m->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		m->v = v;
		m->cap = cap;
	}
	struct arch_entry *d = &m->v[m->n];
	*d = *e;
	d->path = strdup(e->path);
	d->target = e->target ? strdup(e->target) : NULL;
	if (!d->path || (e->target && !d->target)) {
		free(d->path);
		free(d->target);
		return -ENOMEM;
	}
	m->n++;
	return 0;
}

static int entry_ptr_cmp(const void *a, const void *b)
{
	const struct arch_entry *x = *(const struct arch_entry *const *)a;
	const struct arch_entry *y = *(const struct arch_entry *const *)b;
	return strcmp(x->path, y->path);
}

int arch_manifest_index(struct arch_manifest *m, char *err, size_t errlen)
{
	free(m->index);
	m->index = NULL;
	if (m->n == 0)
		return 0;
	m->index = malloc(m->n * sizeof(*m->index));
	if (!m->index)
		return -ENOMEM;
	for (size_t i = 0; i < m->n; i++)
		m->index[i] = &m->v[i];
	qsort(m->index, m->n, sizeof(*m->index), entry_ptr_cmp);
	for (size_t i = 1; i < m->n; i++) {
		if (strcmp(m->index[i - 1]->path, m->index[i]->path) == 0) {
			errf(err, errlen, "manifest lists '%s' twice", m->index[i]->path);
			return -EINVAL;
		}
	}
	return 0;
}

struct arch_entry *arch_manifest_find(const struct arch_manifest *m, const char *path)
{
	if (!m->index)
		return NULL;
	struct arch_entry key = {.path = (char *)path};
	struct arch_entry *kp = &key;
	struct arch_entry **hit = bsearch(&kp, m->index, m->n, sizeof(*m->index), entry_ptr_cmp);
	return hit ? *hit : NULL;
}

static bool json_uint(const cJSON *v, uint64_t *out)
{
	if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9007199254740992.0 ||
	    v->valuedouble != (double)(uint64_t)v->valuedouble)
		return false;
	*out = (uint64_t)v->valuedouble;
	return true;
}

/* "stat": "<ino>:<mtime s>.<9-digit ns>:<ctime s>.<9-digit ns>", written
 * and read back exactly (a string: nanosecond times do not fit a JSON number). */
void arch_fileid_format(const struct arch_fileid *id, char *out, size_t len)
{
	snprintf(out, len, "%llu:%lld.%09ld:%lld.%09ld", (unsigned long long)id->ino,
	         (long long)id->mtime_s, id->mtime_ns, (long long)id->ctime_s, id->ctime_ns);
}

static int arch_fileid_parse(const cJSON *v, struct arch_fileid *id)
{
	if (!cJSON_IsString(v) || strlen(v->valuestring) > 80)
		return -EINVAL;
	unsigned long long ino;
	long long ms, cs;
	long mn, cn;
	if (sscanf(v->valuestring, "%llu:%lld.%ld:%lld.%ld", &ino, &ms, &mn, &cs, &cn) != 5 ||
	    mn < 0 || mn > 999999999 || cn < 0 || cn > 999999999)
		return -EINVAL;
	*id = (struct arch_fileid){.set = true, .ino = ino, .mtime_s = ms, .mtime_ns = mn,
	                           .ctime_s = cs, .ctime_ns = cn};
	char back[96];
	arch_fileid_format(id, back, sizeof(back));
	if (strcmp(back, v->valuestring) != 0) { /* only the canonical form */
		id->set = false;
		return -EINVAL;
	}
	return 0;
}

int arch_entry_from_json(const cJSON *f, size_t i, struct arch_entry *e, char *err, size_t errlen)
{
	char norm[FSX_PATH_MAX];
	memset(e, 0, sizeof(*e));
	const cJSON *path = cJSON_GetObjectItemCaseSensitive(f, "path");
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(f, "type");
	if (!cJSON_IsObject(f) || !cJSON_IsString(path) || !cJSON_IsString(type)) {
		errf(err, errlen, "manifest entry %zu: needs string fields 'path' and 'type'", i + 1);
		return -EINVAL;
	}
	int rc = fsx_norm(path->valuestring, strlen(path->valuestring), norm);
	if (rc < 0 || strcmp(norm, path->valuestring) != 0 || strcmp(norm, ".") == 0) {
		errf(err, errlen, "manifest entry '%s': not a clean relative path", path->valuestring);
		return -EINVAL;
	}
	e->path = path->valuestring;
	if (strcmp(type->valuestring, "file") == 0)
		e->type = ARCH_FILE;
	else if (strcmp(type->valuestring, "dir") == 0)
		e->type = ARCH_DIR;
	else if (strcmp(type->valuestring, "symlink") == 0)
		e->type = ARCH_SYMLINK;
	else {
		errf(err, errlen, "manifest entry '%s': unknown type '%s'", e->path, type->valuestring);
		return -EINVAL;
	}
	const cJSON *mode = cJSON_GetObjectItemCaseSensitive(f, "mode");
	uint64_t u;
	if (mode) {
		if (!json_uint(mode, &u) || u > 07777) {
			errf(err, errlen, "manifest entry '%s': bad 'mode'", e->path);
			return -EINVAL;
		}
		e->mode = (unsigned)u;
	}
	if (e->type == ARCH_FILE) {
		const cJSON *size = cJSON_GetObjectItemCaseSensitive(f, "size");
		const cJSON *sha = cJSON_GetObjectItemCaseSensitive(f, "sha256");
		if (!json_uint(size, &e->size) || !cJSON_IsString(sha) ||
		    !jv_sha256_hex_valid(sha->valuestring)) {
			errf(err, errlen, "manifest entry '%s': a file needs 'size' and a 64-digit 'sha256'",
			     e->path);
			return -EINVAL;
		}
		for (int k = 0; k < 64; k++) {
			char c = sha->valuestring[k];
			e->sha256[k] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c;
		}
		e->sha256[64] = '\0';
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(f, "stat");
		if (st && !cJSON_IsNull(st) && arch_fileid_parse(st, &e->fid) < 0) {
			errf(err, errlen, "manifest entry '%s': bad 'stat' (want \"ino:mtime.ns:ctime.ns\")",
			     e->path);
			return -EINVAL;
		}
	} else if (e->type == ARCH_SYMLINK) {
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(f, "target");
		if (!cJSON_IsString(t) || t->valuestring[0] == '\0') {
			errf(err, errlen, "manifest entry '%s': a symlink needs a 'target'", e->path);
			return -EINVAL;
		}
		e->target = t->valuestring;
	}
	return 0;
}

int arch_manifest_top_from_json(const cJSON *j, struct arch_manifest *m, char *err, size_t errlen)
{
	const cJSON *format = cJSON_GetObjectItemCaseSensitive(j, "format");
	if (!cJSON_IsObject(j) || !cJSON_IsNumber(format) || format->valuedouble != 1) {
		errf(err, errlen, "manifest: not a format 1 manifest (need \"format\": 1)");
		return -EINVAL;
	}
	const cJSON *sha = cJSON_GetObjectItemCaseSensitive(j, "sha256");
	if (sha && !cJSON_IsNull(sha)) {
		if (!cJSON_IsString(sha) || !jv_sha256_hex_valid(sha->valuestring)) {
			errf(err, errlen, "manifest: 'sha256' must be 64 hex digits");
			return -EINVAL;
		}
		for (int k = 0; k <= 64; k++) {
			char c = sha->valuestring[k];
			m->sha256[k] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c;
		}
	}
	const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(j, "bytes");
	if (bytes && !cJSON_IsNull(bytes)) {
		if (!json_uint(bytes, &m->bytes)) {
			errf(err, errlen, "manifest: 'bytes' must be a non-negative integer");
			return -EINVAL;
		}
		m->has_bytes = true;
	}
	return 0;
}

int arch_manifest_from_json(const cJSON *j, struct arch_manifest *m, char *err, size_t errlen)
{
	arch_manifest_init(m);
	int trc = arch_manifest_top_from_json(j, m, err, errlen);
	if (trc < 0)
		return trc;
	const cJSON *files = cJSON_GetObjectItemCaseSensitive(j, "files");
	if (!cJSON_IsArray(files)) {
		errf(err, errlen, "manifest: 'files' must be an array");
		return -EINVAL;
	}
	size_t i = 0;
	const cJSON *f;
	int rc = 0;
	cJSON_ArrayForEach(f, files) {
		struct arch_entry e;
		rc = arch_entry_from_json(f, i++, &e, err, errlen);
		if (rc == 0)
			rc = arch_manifest_add(m, &e);
		if (rc < 0)
			break;
	}
	if (rc == 0)
		rc = arch_manifest_index(m, err, errlen);
	if (rc < 0)
		arch_manifest_free(m);
	return rc;
}

cJSON *arch_manifest_to_json(const struct arch_manifest *m)
{
	cJSON *j = cJSON_CreateObject();
	cJSON *files = cJSON_CreateArray();
	if (!j || !files) {
		cJSON_Delete(j);
		cJSON_Delete(files);
		return NULL;
	}
	cJSON_AddNumberToObject(j, "format", 1);
	if (m->sha256[0])
		cJSON_AddStringToObject(j, "sha256", m->sha256);
	if (m->has_bytes)
		cJSON_AddNumberToObject(j, "bytes", (double)m->bytes);
	cJSON_AddItemToObject(j, "files", files);
	for (size_t i = 0; i < m->n; i++) {
		const struct arch_entry *e = &m->v[i];
		cJSON *f = cJSON_CreateObject();
		if (!f) {
			cJSON_Delete(j);
			return NULL;
		}
		cJSON_AddStringToObject(f, "path", e->path);
		cJSON_AddStringToObject(f, "type", arch_type_name(e->type));
		if (e->type == ARCH_FILE) {
			cJSON_AddNumberToObject(f, "size", (double)e->size);
			cJSON_AddStringToObject(f, "sha256", e->sha256);
			if (e->fid.set) {
				char id[96];
				arch_fileid_format(&e->fid, id, sizeof(id));
				cJSON_AddStringToObject(f, "stat", id);
			}
		}
		cJSON_AddNumberToObject(f, "mode", e->mode);
		if (e->type == ARCH_SYMLINK && e->target)
			cJSON_AddStringToObject(f, "target", e->target);
		cJSON_AddItemToArray(files, f);
	}
	return j;
}

int arch_entry_path(const char *in, int strip, char *out, bool *skip, char *err, size_t errlen)
{
	*skip = false;
	if (!in || !*in) {
		errf(err, errlen, "archive has an entry without a name");
		return -EINVAL;
	}
	int rc = fsx_norm(in, strlen(in), out);
	if (rc == FSX_EABSOLUTE) {
		errf(err, errlen, "entry '%s' has an absolute path", in);
		return -EINVAL;
	}
	if (rc == FSX_EDOTDOT) {
		errf(err, errlen, "entry '%s' contains '..'", in);
		return -EINVAL;
	}
	if (rc < 0) {
		errf(err, errlen, "entry '%.200s': %s", in, fsx_strerror(rc));
		return -EINVAL;
	}
	if (strcmp(out, ".") == 0) {
		*skip = true;
		return 0;
	}
	const char *p = out;
	for (int k = 0; k < strip; k++) {
		const char *s = strchr(p, '/');
		if (!s) {
			*skip = true;
			return 0;
		}
		p = s + 1;
	}
	if (p != out)
		memmove(out, p, strlen(p) + 1);
	return 0;
}

bool arch_excluded(const char *rel, const char *const *pats, size_t n)
{
	const char *base = strrchr(rel, '/');
	base = base ? base + 1 : rel;
	for (size_t i = 0; i < n; i++) {
		const char *p = pats[i];
		if (strchr(p, '/')) {
			while (*p == '/')
				p++;
			size_t pl = strlen(p);
			/* "logs/" means the directory logs and what is inside. */
			if (pl > 0 && p[pl - 1] == '/') {
				char tmp[FSX_PATH_MAX];
				if (pl >= sizeof(tmp))
					continue;
				memcpy(tmp, p, pl - 1);
				tmp[pl - 1] = '\0';
				if (fnmatch(tmp, rel, FNM_PATHNAME) == 0)
					return true;
				continue;
			}
			if (fnmatch(p, rel, FNM_PATHNAME) == 0)
				return true;
		} else if (fnmatch(p, base, 0) == 0) {
			return true;
		}
	}
	return false;
}
