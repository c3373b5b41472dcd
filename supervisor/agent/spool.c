/* spool.c — durable per-run records: assignment, event spool, ack, result.
 *
 * See spool.h for the layout and the fsync policy. Everything is relative to
 * a directory descriptor of runs/ (and of each run's directory), so a run id
 * is only ever used as one path component, after jv_run_id_valid(). */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/utf8.h"
#include "jobvisor/util.h"

#define EVENTS_FILE "events.jsonl"
#define COMPACT_BYTES (64 * 1024)
#define MAX_RECORD_FILE (64u << 20)  /* events.jsonl read at replay */
#define MAX_JSON_FILE (16u << 20)    /* assignment.json, result.json */

struct spool {
	int runs_fd;
	int lock_fd;
	int streams_fd; /* runs/.instances, opened on first use; -1 before */
};

struct spool_event {
	uint64_t seq;
	char *line; /* JSON object text, no newline */
	size_t len;
};

struct spool_run {
	struct spool *sp;
	char id[132];
	int parent_fd; /* borrowed: runs/ or runs/.instances/ */
	int dirfd;
	int events_fd;
	cJSON *assignment;
	cJSON *result;
	struct spool_event *ev;
	size_t head, n, cap; /* pending = ev[head..n) */
	uint64_t acked, last_seq;
	size_t file_acked_bytes; /* bytes of acknowledged lines still in the file */
	size_t skipped;
	bool dirty;
};

int spool_open(const char *data_dir, struct spool **out)
{
	*out = NULL;
	char path[4096];
	int n = snprintf(path, sizeof(path), "%s/runs", data_dir);
	if (n < 0 || (size_t)n >= sizeof(path))
		return -ENAMETOOLONG;
	int rc = jv_mkdir_p(path, 0700);
	if (rc)
		return rc;
	struct spool *sp = calloc(1, sizeof(*sp));
	if (!sp)
		return -ENOMEM;
	sp->lock_fd = -1;
	sp->streams_fd = -1;
	sp->runs_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->runs_fd < 0) {
		rc = -errno;
		goto fail;
	}
	sp->lock_fd = openat(sp->runs_fd, ".agent.lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (sp->lock_fd < 0) {
		rc = -errno;
		goto fail;
	}
	if (flock(sp->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		goto fail;
	}
	*out = sp;
	return 0;
fail:
	if (sp->lock_fd >= 0)
		close(sp->lock_fd);
	if (sp->runs_fd >= 0)
		close(sp->runs_fd);
	free(sp);
	return rc;
}

void spool_close(struct spool *sp)
{
	if (!sp)
		return;
	close(sp->lock_fd); /* releases the lock */
	if (sp->streams_fd >= 0)
		close(sp->streams_fd);
	close(sp->runs_fd);
	free(sp);
}

static struct spool_run *run_new(struct spool *sp, const char *run_id)
{
	struct spool_run *sr = calloc(1, sizeof(*sr));
	if (!sr)
		return NULL;
	sr->sp = sp;
	sr->parent_fd = sp->runs_fd;
	snprintf(sr->id, sizeof(sr->id), "%s", run_id);
	sr->dirfd = -1;
	sr->events_fd = -1;
	return sr;
}

void spool_run_close(struct spool_run *sr)
{
	if (!sr)
		return;
	if (sr->events_fd >= 0)
		close(sr->events_fd);
	if (sr->dirfd >= 0)
		close(sr->dirfd);
	for (size_t i = sr->head; i < sr->n; i++)
		free(sr->ev[i].line);
	free(sr->ev);
	cJSON_Delete(sr->assignment);
	cJSON_Delete(sr->result);
	free(sr);
}

static int open_events(struct spool_run *sr)
{
	if (sr->events_fd >= 0)
		close(sr->events_fd);
	sr->events_fd = openat(sr->dirfd, EVENTS_FILE,
	                       O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	return sr->events_fd < 0 ? -errno : 0;
}

static int write_json_at(int dirfd, const char *name, const cJSON *obj)
{
	char *text = jv_json_print(obj);
	if (!text)
		return -ENOMEM;
	int rc = jv_durable_write_at(dirfd, name, text, strlen(text), 0600);
	free(text);
	return rc;
}

static int remove_in(int parent_fd, const char *name);

static int run_create(struct spool *sp, int parent_fd, const char *run_id, const cJSON *assignment,
                      struct spool_run **out)
{
	*out = NULL;
	if (!jv_run_id_valid(run_id))
		return -EINVAL;
	struct spool_run *sr = run_new(sp, run_id);
	if (!sr)
		return -ENOMEM;
	sr->parent_fd = parent_fd;
	int rc = 0;
	sr->assignment = cJSON_Duplicate(assignment, true);
	if (!sr->assignment) {
		rc = -ENOMEM;
		goto fail;
	}
	if (mkdirat(sr->parent_fd, run_id, 0700) < 0) {
		rc = -errno;
		goto fail;
	}
	sr->dirfd = openat(sr->parent_fd, run_id, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (sr->dirfd < 0) {
		rc = -errno;
		goto fail_rm;
	}
	rc = write_json_at(sr->dirfd, "assignment.json", sr->assignment);
	if (rc == 0)
		rc = open_events(sr);
	if (rc == 0)
		rc = jv_fsync_dirfd(sr->parent_fd);
	if (rc)
		goto fail_rm;
	*out = sr;
	return 0;
fail_rm:
	if (sr->dirfd >= 0) {
		close(sr->dirfd);
		sr->dirfd = -1;
	}
	if (sr->events_fd >= 0) {
		close(sr->events_fd);
		sr->events_fd = -1;
	}
	remove_in(parent_fd, run_id);
fail:
	spool_run_close(sr);
	return rc;
}

int spool_run_create(struct spool *sp, const char *run_id, const cJSON *assignment,
                     struct spool_run **out)
{
	return run_create(sp, sp->runs_fd, run_id, assignment, out);
}

static int queue_push(struct spool_run *sr, uint64_t seq, char *line, size_t len)
{
	if (sr->n == sr->cap) {
		if (sr->head > 0 && sr->head >= sr->n / 2) {
			/* Reuse the acknowledged prefix before growing. */
			memmove(sr->ev, sr->ev + sr->head, (sr->n - sr->head) * sizeof(*sr->ev));
			sr->n -= sr->head;
			sr->head = 0;
		} else {
			size_t cap = sr->cap ? sr->cap * 2 : 16;
			struct spool_event *ne = realloc(sr->ev, cap * sizeof(*ne));
			if (!ne)
				return -ENOMEM;
			sr->ev = ne;
			sr->cap = cap;
		}
	}
	sr->ev[sr->n].seq = seq;
	sr->ev[sr->n].line = line;
	sr->ev[sr->n].len = len;
	sr->n++;
	return 0;
}

int spool_run_append(struct spool_run *sr, const cJSON *event)
{
	int64_t seq = jv_json_int(event, "seq", -1);
	if (seq <= 0 || (uint64_t)seq <= sr->last_seq)
		return -EINVAL;
	char *line = jv_json_print(event);
	if (!line)
		return -ENOMEM;
	size_t len = strlen(line);
	int rc = queue_push(sr, (uint64_t)seq, line, len);
	if (rc) {
		free(line);
		return rc;
	}
	sr->last_seq = (uint64_t)seq;
	if (sr->events_fd < 0)
		return -EBADF;
	/* One write per line keeps a crash from interleaving partial lines. */
	char *buf = malloc(len + 1);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, line, len);
	buf[len] = '\n';
	rc = jv_write_all(sr->events_fd, buf, len + 1);
	free(buf);
	if (rc == 0)
		sr->dirty = true;
	return rc;
}

int spool_run_sync(struct spool_run *sr)
{
	if (!sr->dirty || sr->events_fd < 0)
		return 0;
	if (fdatasync(sr->events_fd) < 0)
		return -errno;
	sr->dirty = false;
	return 0;
}

size_t spool_run_pending(const struct spool_run *sr)
{
	return sr->n - sr->head;
}

cJSON *spool_run_pending_event(const struct spool_run *sr, size_t i)
{
	if (i >= spool_run_pending(sr))
		return NULL;
	const struct spool_event *e = &sr->ev[sr->head + i];
	return jv_json_parse(e->line, e->len);
}

char *spool_run_batch(const struct spool_run *sr, size_t max_events, size_t max_bytes,
                      uint64_t *last)
{
	*last = 0;
	if (sr->head >= sr->n)
		return NULL;
	struct jv_buf b;
	jv_buf_init(&b, 0);
	if (jv_buf_append(&b, "{\"events\":[", 11))
		goto fail;
	size_t count = 0;
	for (size_t i = sr->head; i < sr->n && count < max_events; i++) {
		if (count > 0 && b.len + sr->ev[i].len > max_bytes)
			break;
		if ((count > 0 && jv_buf_append(&b, ",", 1)) ||
		    jv_buf_append(&b, sr->ev[i].line, sr->ev[i].len))
			goto fail;
		*last = sr->ev[i].seq;
		count++;
	}
	if (jv_buf_append(&b, "]}", 2))
		goto fail;
	/* Lines are written valid UTF-8 (jv_json_print); a spool left by an older
	 * agent may hold raw bytes, which a control plane refuses. */
	if (!jv_utf8_valid(b.data, b.len)) {
		char *clean = jv_utf8_repair(b.data, b.len, NULL);
		jv_buf_free(&b);
		return clean;
	}
	return b.data;
fail:
	jv_buf_free(&b);
	*last = 0;
	return NULL;
}

/* Replace events.jsonl with the pending lines (after a large acknowledged prefix). */
static int rewrite_events(struct spool_run *sr)
{
	struct jv_buf b;
	jv_buf_init(&b, 0);
	for (size_t i = sr->head; i < sr->n; i++)
		if (jv_buf_append(&b, sr->ev[i].line, sr->ev[i].len) || jv_buf_append(&b, "\n", 1)) {
			jv_buf_free(&b);
			return -ENOMEM;
		}
	int rc = jv_durable_write_at(sr->dirfd, EVENTS_FILE, b.data ? b.data : "", b.len, 0600);
	jv_buf_free(&b);
	if (rc == 0)
		rc = open_events(sr);
	if (rc == 0) {
		sr->file_acked_bytes = 0;
		sr->dirty = false;
	}
	return rc;
}

int spool_run_ack(struct spool_run *sr, uint64_t ack)
{
	if (ack > sr->last_seq)
		ack = sr->last_seq;
	if (ack <= sr->acked)
		return 0;
	while (sr->head < sr->n && sr->ev[sr->head].seq <= ack) {
		sr->file_acked_bytes += sr->ev[sr->head].len + 1;
		free(sr->ev[sr->head].line);
		sr->ev[sr->head].line = NULL;
		sr->head++;
	}
	if (sr->head == sr->n)
		sr->head = sr->n = 0;
	sr->acked = ack;
	char text[32];
	int n = snprintf(text, sizeof(text), "%llu\n", (unsigned long long)ack);
	int rc = jv_durable_write_at(sr->dirfd, "ack", text, (size_t)n, 0600);
	if (rc)
		return rc;
	/* The ack file is durable, so the file may keep acknowledged lines;
	 * shrinking it is housekeeping. */
	if (sr->n == 0) {
		if (ftruncate(sr->events_fd, 0) == 0)
			sr->file_acked_bytes = 0;
	} else if (sr->file_acked_bytes > COMPACT_BYTES) {
		rc = rewrite_events(sr);
	}
	return rc;
}

int spool_run_set_result(struct spool_run *sr, const cJSON *result)
{
	cJSON *copy = cJSON_Duplicate(result, true);
	if (!copy)
		return -ENOMEM;
	cJSON_Delete(sr->result);
	sr->result = copy;
	return write_json_at(sr->dirfd, "result.json", copy);
}

const cJSON *spool_run_result(const struct spool_run *sr)
{
	return sr->result;
}

const cJSON *spool_run_assignment(const struct spool_run *sr)
{
	return sr->assignment;
}

const char *spool_run_id(const struct spool_run *sr)
{
	return sr->id;
}

uint64_t spool_run_last_seq(const struct spool_run *sr)
{
	return sr->last_seq;
}

uint64_t spool_run_acked(const struct spool_run *sr)
{
	return sr->acked;
}

size_t spool_run_skipped(const struct spool_run *sr)
{
	return sr->skipped;
}

/* Unlink every plain file in dirfd; the run directories hold nothing else. */
static int empty_dir(int dirfd)
{
	DIR *d;
	int rc = jv_opendir_at(dirfd, &d);
	if (rc)
		return rc;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (unlinkat(dirfd, e->d_name, 0) < 0 && errno != ENOENT && rc == 0)
			rc = -errno;
	}
	closedir(d);
	return rc;
}

static int remove_in(int parent_fd, const char *run_id)
{
	if (!jv_run_id_valid(run_id))
		return -EINVAL;
	int fd = openat(parent_fd, run_id, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		if (errno == ENOTDIR || errno == ELOOP)
			return unlinkat(parent_fd, run_id, 0) < 0 ? -errno : 0;
		return -errno;
	}
	int rc = empty_dir(fd);
	close(fd);
	if (unlinkat(parent_fd, run_id, AT_REMOVEDIR) < 0 && errno != ENOENT && rc == 0)
		rc = -errno;
	if (rc == 0)
		rc = jv_fsync_dirfd(parent_fd);
	return rc;
}

int spool_remove_name(struct spool *sp, const char *run_id)
{
	return remove_in(sp->runs_fd, run_id);
}

int spool_run_remove(struct spool_run *sr)
{
	int parent = sr->parent_fd;
	char id[sizeof(sr->id)];
	memcpy(id, sr->id, sizeof(id));
	spool_run_close(sr);
	return remove_in(parent, id);
}

int spool_reject_name(struct spool *sp, const char *run_id)
{
	if (!jv_run_id_valid(run_id))
		return -EINVAL;
	if (mkdirat(sp->runs_fd, ".rejected", 0700) < 0 && errno != EEXIST)
		return -errno;
	int rej = openat(sp->runs_fd, ".rejected", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (rej < 0)
		return -errno;
	/* A record rejected before under the same id is replaced. */
	int old = openat(rej, run_id, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (old >= 0) {
		empty_dir(old);
		close(old);
		unlinkat(rej, run_id, AT_REMOVEDIR);
	}
	int rc = jv_durable_rename_at(sp->runs_fd, run_id, rej, run_id);
	close(rej);
	return rc;
}

int spool_run_reject(struct spool_run *sr)
{
	struct spool *sp = sr->sp;
	char id[sizeof(sr->id)];
	memcpy(id, sr->id, sizeof(id));
	spool_run_close(sr);
	return spool_reject_name(sp, id);
}

/* Parse events.jsonl: keep lines above the ack in seq order; count the rest. */
static int load_events(struct spool_run *sr)
{
	char *text = NULL;
	size_t len = 0;
	int rc = jv_read_file_at(sr->dirfd, EVENTS_FILE, MAX_RECORD_FILE, &text, &len);
	if (rc == -ENOENT)
		return 0;
	if (rc)
		return rc;
	char *p = text, *end = text + len;
	size_t good = 0; /* bytes up to the last complete line */
	while (p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
		if (ll > 0) {
			cJSON *ev = jv_json_parse(p, ll);
			int64_t seq = ev && cJSON_IsObject(ev) ? jv_json_int(ev, "seq", -1) : -1;
			if (seq <= 0 || !nl) {
				/* Torn tail (no newline: the write never completed) or junk. */
				sr->skipped++;
			} else if ((uint64_t)seq <= sr->acked) {
				sr->file_acked_bytes += ll + 1; /* delivered before the restart */
			} else if ((uint64_t)seq > sr->last_seq) {
				char *line = strndup(p, ll);
				if (!line || queue_push(sr, (uint64_t)seq, line, ll)) {
					free(line);
					cJSON_Delete(ev);
					free(text);
					return -ENOMEM;
				}
				sr->last_seq = (uint64_t)seq;
			} else {
				sr->skipped++; /* duplicate or out of order */
			}
			cJSON_Delete(ev);
		}
		p += ll + (nl ? 1 : 0);
		if (nl)
			good = (size_t)(p - text);
	}
	free(text);
	if (good < len) {
		/* Cut a torn tail so the next append starts on a line of its own. */
		int fd = openat(sr->dirfd, EVENTS_FILE, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0)
			return -errno;
		rc = ftruncate(fd, (off_t)good) < 0 ? -errno : 0;
		close(fd);
	}
	return rc;
}

static int load_json(int dirfd, const char *name, cJSON **out)
{
	*out = NULL;
	char *text = NULL;
	size_t len = 0;
	int rc = jv_read_file_at(dirfd, name, MAX_JSON_FILE, &text, &len);
	if (rc)
		return rc;
	cJSON *v = jv_json_parse(text, len);
	free(text);
	if (!v || !cJSON_IsObject(v)) {
		cJSON_Delete(v);
		return -EBADMSG;
	}
	*out = v;
	return 0;
}

static int run_load(struct spool *sp, int parent_fd, const char *run_id, struct spool_run **out)
{
	*out = NULL;
	struct spool_run *sr = run_new(sp, run_id);
	if (!sr)
		return -ENOMEM;
	sr->parent_fd = parent_fd;
	int rc = 0;
	sr->dirfd = openat(parent_fd, run_id, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (sr->dirfd < 0) {
		rc = -errno;
		goto fail;
	}
	rc = load_json(sr->dirfd, "assignment.json", &sr->assignment);
	if (rc)
		goto fail;
	char *ack = NULL;
	if (jv_read_file_at(sr->dirfd, "ack", 64, &ack, NULL) == 0) {
		char *e = NULL;
		unsigned long long v = strtoull(ack, &e, 10);
		if (e != ack)
			sr->acked = v;
		free(ack);
	}
	sr->last_seq = sr->acked;
	rc = load_events(sr);
	if (rc)
		goto fail;
	rc = load_json(sr->dirfd, "result.json", &sr->result);
	if (rc == -ENOENT || parent_fd != sp->runs_fd)
		rc = 0;
	if (rc)
		goto fail;
	rc = open_events(sr);
	if (rc)
		goto fail;
	*out = sr;
	return 0;
fail:
	spool_run_close(sr);
	return rc;
}

/* The names in dirfd that keep() accepts, into *names (returned-owned, also
 * on failure: free each of *n, then the array). 0 or -errno. */
static int list_names(int dirfd, bool (*keep)(const char *name), char ***names, size_t *n)
{
	*names = NULL;
	*n = 0;
	DIR *d;
	int rc = jv_opendir_at(dirfd, &d);
	if (rc)
		return rc;
	size_t cap = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!keep(e->d_name))
			continue;
		if (*n == cap) {
			size_t nc = cap ? cap * 2 : 16;
			char **nn = realloc(*names, nc * sizeof(*nn));
			if (!nn) {
				rc = -ENOMEM;
				break;
			}
			*names = nn;
			cap = nc;
		}
		if (!((*names)[*n] = strdup(e->d_name))) {
			rc = -ENOMEM;
			break;
		}
		(*n)++;
	}
	closedir(d);
	return rc;
}

/* ., .., .agent.lock, .rejected, .instances and temp files are not runs. */
static bool undotted(const char *name)
{
	return name[0] != '.';
}

int spool_replay(struct spool *sp, spool_replay_cb cb, void *ud)
{
	/* Collect names first: callbacks remove entries. */
	char **names = NULL;
	size_t n = 0;
	int rc = list_names(sp->runs_fd, undotted, &names, &n);
	for (size_t i = 0; i < n; i++) {
		if (rc == 0) {
			struct spool_run *sr = NULL;
			int err = jv_run_id_valid(names[i]) ? run_load(sp, sp->runs_fd, names[i], &sr) : -EINVAL;
			cb(ud, names[i], sr, err);
		}
		free(names[i]);
	}
	free(names);
	return rc;
}

/* ---- instance streams ------------------------------------------------------
 * runs/.instances/<instanceId>/ has the layout of a run record (meta.json in
 * place of assignment.json, no result), so events, ack, sync and batches work
 * the same. A stream is never removed: its ack file keeps the seq counter
 * going when every event was delivered and events.jsonl is empty. The job
 * replay skips it (dotted name). */

static int streams_dir(struct spool *sp)
{
	if (sp->streams_fd >= 0)
		return 0;
	if (mkdirat(sp->runs_fd, ".instances", 0700) < 0 && errno != EEXIST)
		return -errno;
	sp->streams_fd = openat(sp->runs_fd, ".instances", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	return sp->streams_fd < 0 ? -errno : 0;
}

int spool_stream_open(struct spool *sp, const char *name, struct spool_run **out)
{
	*out = NULL;
	if (!jv_ident_valid(name))
		return -EINVAL;
	int rc = streams_dir(sp);
	if (rc)
		return rc;
	struct stat st;
	if (fstatat(sp->streams_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		/* assignment.json holds the stream's meta object */
		rc = run_load(sp, sp->streams_fd, name, out);
		if (rc != -ENOENT && rc != -EBADMSG)
			return rc;
		/* a stream torn at creation: start it again */
		remove_in(sp->streams_fd, name);
	}
	cJSON *meta = cJSON_CreateObject();
	if (!meta || !cJSON_AddStringToObject(meta, "instanceId", name)) {
		cJSON_Delete(meta);
		return -ENOMEM;
	}
	rc = run_create(sp, sp->streams_fd, name, meta, out);
	cJSON_Delete(meta);
	return rc;
}

int spool_stream_names(struct spool *sp, char ***names, size_t *n)
{
	*names = NULL;
	*n = 0;
	int rc = streams_dir(sp);
	if (rc)
		return rc;
	return list_names(sp->streams_fd, jv_ident_valid, names, n);
}

int spool_run_put(struct spool_run *sr, const char *name, const cJSON *obj)
{
	return write_json_at(sr->dirfd, name, obj);
}

cJSON *spool_run_get(struct spool_run *sr, const char *name)
{
	cJSON *v = NULL;
	return load_json(sr->dirfd, name, &v) == 0 ? v : NULL;
}
