/* inststats.c — resource stats of running instances, every stats_interval.
 *
 * Per live server: CPU in cores used since the previous sample (the cgroup's
 * cpu.stat usage_usec when the server has a cgroup with the memory
 * controller, else utime + stime summed over its process group from one pass
 * over /proc per sample), memory (the cgroup's memory.current, else summed RSS), the number of processes, the
 * uptime, and the size of data/ (see below). Stats are best effort: latest
 * wins, nothing is spooled, a failed POST is not repeated.
 *
 * Data size: a walk of each instance's data/ that resumes where it stopped,
 * at most WALK_BUDGET entries per sample across all instances, and starts
 * again at most every WALK_EVERY_MS; the last complete total is reported
 * (null until the first walk ends). So a 50 GB world costs a few thousand
 * stat calls per sample, never a full walk every 5 s. */
#include "inststats.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "instwatch.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "transport.h"

#define WALK_BUDGET 2000
#define WALK_EVERY_MS (10 * 60 * 1000)
#define WALK_STACK_MAX 4096

struct walk {
	char **stack; /* directories still to read (absolute) */
	size_t n;
	uint64_t bytes;
	bool running;
	int64_t next_start_ms;
};

struct istat {
	char id[JV_IDENT_MAX + 1];
	int64_t pid;
	uint64_t cpu_usec;
	int64_t at_ms;
	bool have_cpu;
	int64_t data_bytes; /* -1 unknown */
	struct walk walk;
	bool seen;
	struct istat *next;
};

struct inststats {
	struct agent *ag;
	struct istat *list;
	int64_t next_ms;
	struct transport_req *req;
	bool enabled;
	struct instwatch_live live[INSTWATCH_MAX];
};

static void walk_clear(struct walk *w)
{
	for (size_t i = 0; i < w->n; i++)
		free(w->stack[i]);
	free(w->stack);
	w->stack = NULL;
	w->n = 0;
	w->running = false;
}

int inststats_start(struct agent *ag)
{
	struct inststats *is = calloc(1, sizeof(*is));
	if (!is)
		return -ENOMEM;
	is->ag = ag;
	is->enabled = true;
	is->next_ms = jv_now_mono_ms() + ag->cfg.stats_interval_ms;
	ag->is = is;
	return 0;
}

void inststats_free(struct agent *ag)
{
	struct inststats *is = ag->is;
	if (!is)
		return;
	if (is->req)
		transport_abort(ag->tp, is->req);
	while (is->list) {
		struct istat *s = is->list;
		is->list = s->next;
		walk_clear(&s->walk);
		free(s);
	}
	free(is);
	ag->is = NULL;
}

static struct istat *get(struct inststats *is, const char *id)
{
	for (struct istat *s = is->list; s; s = s->next)
		if (strcmp(s->id, id) == 0)
			return s;
	struct istat *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	snprintf(s->id, sizeof(s->id), "%s", id);
	s->data_bytes = -1;
	s->next = is->list;
	is->list = s;
	return s;
}

static int read_small(const char *dir, const char *name, char *buf, size_t len)
{
	char path[PATH_MAX + 64];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

/* Whether the cgroup has the memory controller (memory.current). */
static bool cg_has_memory(const char *cg)
{
	char path[PATH_MAX + 32];
	snprintf(path, sizeof(path), "%s/memory.current", cg);
	return cg[0] && access(path, R_OK) == 0;
}

/* cgroup v2 with the memory controller: usage_usec, memory.current, pids.current. */
static bool from_cgroup(const char *cg, uint64_t *usec, uint64_t *mem, int64_t *procs)
{
	char buf[1024];
	if (!cg_has_memory(cg) || read_small(cg, "cpu.stat", buf, sizeof(buf)) < 0)
		return false;
	const char *u = strstr(buf, "usage_usec ");
	if (!u)
		return false;
	*usec = strtoull(u + 11, NULL, 10);
	*mem = read_small(cg, "memory.current", buf, sizeof(buf)) == 0 ? strtoull(buf, NULL, 10) : 0;
	if (read_small(cg, "pids.current", buf, sizeof(buf)) == 0) {
		*procs = strtoll(buf, NULL, 10);
	} else if (read_small(cg, "cgroup.procs", buf, sizeof(buf)) == 0) {
		*procs = 0;
		for (char *p = buf; *p; p++)
			*procs += *p == '\n';
	}
	return true;
}

struct group_sum {
	int64_t pgid;
	uint64_t ticks, rss_pages;
	int64_t procs;
};

/* One pass over /proc: CPU ticks, RSS and count per process group of interest. */
static void scan_proc(struct group_sum *g, size_t n)
{
	if (n == 0)
		return;
	DIR *d = opendir("/proc");
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		char path[300], buf[1024];
		snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t r = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (r <= 0)
			continue;
		buf[r] = '\0';
		char *p = strrchr(buf, ')');
		if (!p)
			continue;
		/* fields after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt
		 * cmajflt utime stime cutime cstime priority nice threads itreal starttime vsize rss */
		char st;
		long long ppid, pgrp, rss;
		unsigned long long utime, stime;
		if (sscanf(p + 2, "%c %lld %lld %*s %*s %*s %*s %*s %*s %*s %*s %llu %llu %*s %*s %*s %*s %*s "
		           "%*s %*s %*s %lld", &st, &ppid, &pgrp, &utime, &stime, &rss) != 6)
			continue;
		for (size_t i = 0; i < n; i++)
			if (g[i].pgid == pgrp) {
				g[i].ticks += utime + stime;
				g[i].rss_pages += rss > 0 ? (uint64_t)rss : 0;
				g[i].procs++;
				break;
			}
	}
	closedir(d);
}

static int push_dir(struct walk *w, const char *path)
{
	if (w->n >= WALK_STACK_MAX)
		return -ENOSPC; /* absurdly deep or wide: count what we saw */
	char **ns = realloc(w->stack, (w->n + 1) * sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	w->stack = ns;
	if (!(w->stack[w->n] = strdup(path)))
		return -ENOMEM;
	w->n++;
	return 0;
}

/* Read one directory; returns the entries looked at. */
static int walk_step(struct walk *w)
{
	char *dir = w->stack[--w->n];
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	int count = 1;
	if (!d) {
		if (fd >= 0)
			close(fd);
		free(dir);
		return count;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		count++;
		struct stat st;
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		w->bytes += (uint64_t)st.st_blocks * 512;
		if (S_ISDIR(st.st_mode)) {
			char sub[PATH_MAX];
			if (snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name) < (int)sizeof(sub))
				push_dir(w, sub);
		}
	}
	closedir(d);
	free(dir);
	return count;
}

static void walk_some(struct inststats *is, const struct instwatch_live *live, size_t nlive, int64_t now)
{
	int budget = WALK_BUDGET;
	for (size_t i = 0; i < nlive && budget > 0; i++) {
		struct istat *s = get(is, live[i].id);
		if (!s)
			continue;
		struct walk *w = &s->walk;
		if (!w->running) {
			if (now < w->next_start_ms)
				continue;
			char data[PATH_MAX + 8];
			snprintf(data, sizeof(data), "%s/data", live[i].dir);
			walk_clear(w);
			w->bytes = 0;
			w->running = push_dir(w, data) == 0;
			w->next_start_ms = now + WALK_EVERY_MS;
		}
		while (w->running && w->n > 0 && budget > 0)
			budget -= walk_step(w);
		if (w->running && w->n == 0) {
			s->data_bytes = (int64_t)w->bytes;
			walk_clear(w);
		}
	}
}

static void on_answer(void *ud, const struct transport_response *resp)
{
	struct inststats *is = ud;
	is->req = NULL;
	if (resp->status == 404) {
		is->enabled = false;
		jv_warn(NULL, NULL, "the control plane does not take instance stats (HTTP 404); stats are off "
		        "until the agent restarts");
	}
}

static void sample(struct inststats *is, int64_t now)
{
	struct agent *ag = is->ag;
	size_t n = instwatch_live(ag, is->live, INSTWATCH_MAX);
	struct group_sum groups[INSTWATCH_MAX];
	size_t ng = 0;
	for (size_t i = 0; i < n; i++)
		if (is->live[i].pid > 0 && !cg_has_memory(is->live[i].cgroup))
			groups[ng++] = (struct group_sum){.pgid = is->live[i].pid};
	scan_proc(groups, ng);
	walk_some(is, is->live, n, now);
	long hz = sysconf(_SC_CLK_TCK);
	long page = sysconf(_SC_PAGESIZE);
	cJSON *body = cJSON_CreateObject();
	cJSON *arr = cJSON_AddArrayToObject(body, "instances");
	char ts[JV_ISO8601_LEN];
	jv_iso8601(jv_now_real_ms(), ts);
	for (struct istat *s = is->list; s; s = s->next)
		s->seen = false;
	for (size_t i = 0; arr && i < n; i++) {
		const struct instwatch_live *l = &is->live[i];
		struct istat *s = get(is, l->id);
		if (!s || l->pid <= 0)
			continue;
		s->seen = true;
		uint64_t usec = 0, mem = 0;
		int64_t procs = 0;
		bool ok = l->cgroup[0] && from_cgroup(l->cgroup, &usec, &mem, &procs);
		bool cg = ok;
		if (!ok) {
			for (size_t k = 0; k < ng; k++)
				if (groups[k].pgid == l->pid) {
					usec = hz > 0 ? groups[k].ticks * 1000000ull / (uint64_t)hz : 0;
					mem = groups[k].rss_pages * (uint64_t)(page > 0 ? page : 4096);
					procs = groups[k].procs;
					ok = procs > 0;
				}
		}
		if (!ok)
			continue;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "instanceId", l->id);
		cJSON_AddStringToObject(o, "at", ts);
		if (s->have_cpu && s->pid == l->pid && usec >= s->cpu_usec && now > s->at_ms)
			cJSON_AddNumberToObject(o, "cpuCores",
			                        (double)(usec - s->cpu_usec) / ((double)(now - s->at_ms) * 1000.0));
		else
			cJSON_AddNullToObject(o, "cpuCores");
		s->cpu_usec = usec;
		s->at_ms = now;
		s->pid = l->pid;
		s->have_cpu = true;
		cJSON_AddNumberToObject(o, "memoryBytes", (double)mem);
		cJSON_AddNumberToObject(o, "processes", (double)procs);
		if (s->data_bytes >= 0)
			cJSON_AddNumberToObject(o, "dataBytes", (double)s->data_bytes);
		else
			cJSON_AddNullToObject(o, "dataBytes");
		if (l->started_ms > 0)
			cJSON_AddNumberToObject(o, "uptimeSeconds", (double)(jv_now_real_ms() - l->started_ms) / 1000.0);
		else
			cJSON_AddNullToObject(o, "uptimeSeconds");
		cJSON_AddStringToObject(o, "source", cg ? "cgroup" : "proc");
		cJSON_AddItemToArray(arr, o);
	}
	for (struct istat *s = is->list; s; s = s->next)
		if (!s->seen)
			s->have_cpu = false; /* stopped: the next run starts its CPU count afresh */
	bool any = cJSON_GetArraySize(arr) > 0;
	char *text = any ? jv_json_print(body) : NULL;
	cJSON_Delete(body);
	if (!text || is->req || !is->enabled || !instwatch_reporting(ag)) {
		free(text);
		return;
	}
	char path[200];
	snprintf(path, sizeof(path), "/v1/agents/%s/stats", ag->cfg.agent_id);
	if (transport_post(ag->tp, path, text, (long)ag->cfg.request_timeout_s * 1000, on_answer, is, &is->req))
		is->req = NULL;
}

int64_t inststats_next_deadline(const struct agent *ag)
{
	const struct inststats *is = ag->is;
	if (!is || !is->enabled || ag->cfg.stats_interval_ms <= 0 || ag->stopping)
		return INT64_MAX;
	return is->next_ms;
}

void inststats_tick(struct agent *ag, int64_t now)
{
	struct inststats *is = ag->is;
	if (!is || !is->enabled || ag->cfg.stats_interval_ms <= 0 || ag->stopping || now < is->next_ms)
		return;
	is->next_ms = now + ag->cfg.stats_interval_ms;
	sample(is, now);
}
