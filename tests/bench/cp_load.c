/* cp_load.c — load generator for jobvisor-cp (docs/performance.md, "Control plane").
 *
 *   cp_load --cp PATH/jobvisor-cp [--agents 500[,1000,...]] [--interval 3] [--duration 30]
 *           [--jobs-per-sec 20] [--events-per-job 20] [--batch 5] [--threads 64] [--dir /tmp]
 *           [--db postgresql://...] [--replicas N] [--sources K]
 *
 * For each agent count it starts a fresh jobvisor-cp on 127.0.0.1 (OS-assigned
 * port, temp database and token files; --db: that database instead, which
 * must be empty, so give one agent count per run; --replicas N: N processes
 * on the one database, agent i talking to replica i mod N, jobs created
 * round-robin), then drives them from one thread with libcurl multi.
 *
 * Agent i connects from 127.0.0.(1 + i mod K) (curl binds before connect; all
 * of 127.0.0.0/8 is loopback on Linux), K = --sources or one address per 50
 * agents, like hosts of a fleet: the front's per-address limit
 * (FRONT_PENDING_PER_CLIENT) does not throttle it. The panel uses 127.0.0.1.
 *
 * Every agent polls every --interval seconds (start times spread, 10% jitter,
 * one poll at a time) listing its runs; a panel creates --jobs-per-sec jobs
 * (4 instances per agent); an agent with a run posts its events in batches
 * every 250 ms, then the result. Answers arriving between the end of the
 * first interval and the end of --duration count, whenever asked, so an
 * overloaded server still shows its rate. One Markdown row per agent count
 * (columns: docs/performance.md), failed requests by cause and the front's
 * reports of dropped clients on stderr. The soft RLIMIT_NOFILE is raised to
 * the hard limit (inherited by the replicas); too low a hard limit for the
 * agent count is refused. Bounded: --duration plus at most 5 s of drain. Not
 * run by ctest. */
#include <curl/curl.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "jobvisor/util.h"

#define RUNS_PER_AGENT 4
#define REPLICAS_MAX 8
#define EVENT_GAP_MS 250
#define AGENTS_PER_SOURCE 50 /* default agents per loopback source address */
#define SOURCES_MAX 254      /* 127.0.0.1 - 127.0.0.254 */

struct run {
	bool used;       /* slots never move: in-flight transfers point at them */
	char id[48];
	char job_id[48];
	char instance[32];
	int sent;        /* events acknowledged */
	int64_t next_ms; /* next events post */
	bool busy;       /* a request is in flight */
	bool cancel;     /* report CANCELLED */
};

struct agent {
	char id[16];
	char token[48];
	int64_t next_poll;
	bool polling;
	struct run runs[RUNS_PER_AGENT];
	int nruns;
};

struct samples {
	double *v;
	size_t n, cap;
};

struct opts {
	const char *cp;
	const char *dir; /* parent of the temp directory (database, token files) */
	const char *db;  /* NULL: a SQLite file in the temp directory */
	int replicas;
	int sources; /* loopback source addresses; 0: one per AGENTS_PER_SOURCE agents */
	int interval_s, duration_s, jobs_per_sec, events_per_job, batch, threads;
};

struct load {
	struct opts o;
	char url[REPLICAS_MAX][64];
	pid_t pid[REPLICAS_MAX];
	char admin[48];
	struct agent *agents;
	int nagents;
	CURLM *multi;
	int64_t start_ms, measure_from, end_ms;
	struct samples poll_lat, event_lat;
	long next_create; /* round-robin over the replicas */
	long events_acked, results, jobs_created, errors, polls, assigned;
	long err_transport, err_5xx, err_4xx; /* errors by cause (measured window) */
	long err_by_kind[4];                  /* transport errors by enum kind */
	CURLcode err_last;                    /* the last transport error */
	int nsources;
	int in_flight;
	int polls_in_flight, polls_waiting; /* now; at the end of the window (unanswered) */
};

enum kind { K_POLL, K_EVENTS, K_RESULT, K_CREATE };

struct xfer {
	enum kind kind;
	struct agent *agent;
	struct run *run;
	int nevents;
	int64_t started;
	struct curl_slist *hdrs;
	char *body;
	struct jv_buf resp;
};

static int64_t now_ms(void)
{
	return jv_now_mono_ms();
}

static void sample_add(struct samples *s, double v)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 4096;
		double *nv = realloc(s->v, cap * sizeof(double));
		if (!nv)
			return;
		s->v = nv;
		s->cap = cap;
	}
	s->v[s->n++] = v;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(struct samples *s, double p)
{
	if (s->n == 0)
		return 0;
	size_t i = (size_t)(p * (double)(s->n - 1) + 0.5);
	return s->v[i];
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
	struct xfer *x = ud;
	return jv_buf_append(&x->resp, ptr, size * nmemb) == 0 ? size * nmemb : 0;
}

/* The replica an agent talks to; NULL agent (the panel): round-robin. */
static const char *base_url(struct load *L, const struct agent *a)
{
	long i = a ? (long)(a - L->agents) : L->next_create++;
	return L->url[i % L->o.replicas];
}

static void start(struct load *L, struct xfer *x, const char *path, const char *token, char *body)
{
	CURL *h = curl_easy_init();
	char url[256], auth[96], src[32];
	snprintf(url, sizeof(url), "%s%s", base_url(L, x->agent), path);
	/* The agent's own source address; the panel's is 127.0.0.1. */
	long si = x->agent ? (long)(x->agent - L->agents) % L->nsources : 0;
	snprintf(src, sizeof(src), "host!127.0.0.%ld", si + 1);
	curl_easy_setopt(h, CURLOPT_INTERFACE, src);
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
	x->hdrs = curl_slist_append(NULL, auth);
	x->hdrs = curl_slist_append(x->hdrs, "Content-Type: application/json");
	x->body = body;
	x->started = now_ms();
	jv_buf_init(&x->resp, 1 << 20);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, x->hdrs);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(h, CURLOPT_PRIVATE, x);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_PROXY, "");
	curl_multi_add_handle(L->multi, h);
	L->in_flight++;
}

static void poll_agent(struct load *L, struct agent *a)
{
	struct jv_buf b;
	jv_buf_init(&b, 0);
	jv_buf_printf(&b, "{\"capacity\":%d,\"waitSeconds\":0,\"running\":[", RUNS_PER_AGENT);
	for (int i = 0, n = 0; i < RUNS_PER_AGENT; i++)
		if (a->runs[i].used)
			jv_buf_printf(&b, "%s{\"jobRunId\":\"%s\",\"lastSeq\":%d}", n++ ? "," : "", a->runs[i].id,
			              a->runs[i].sent);
	jv_buf_printf(&b, "]}");
	struct xfer *x = calloc(1, sizeof(*x));
	x->kind = K_POLL;
	x->agent = a;
	a->polling = true;
	L->polls_in_flight++;
	char path[64];
	snprintf(path, sizeof(path), "/v1/agents/%s/poll", a->id);
	start(L, x, path, a->token, b.data);
	L->polls++;
}

static void post_events(struct load *L, struct agent *a, struct run *r)
{
	struct jv_buf b;
	jv_buf_init(&b, 0);
	char ts[JV_ISO8601_LEN];
	jv_iso8601(jv_now_real_ms(), ts);
	int n = L->o.events_per_job - r->sent;
	if (n > L->o.batch)
		n = L->o.batch;
	jv_buf_printf(&b, "{\"events\":[");
	for (int i = 0; i < n; i++) {
		int seq = r->sent + i + 1;
		jv_buf_printf(&b,
		              "%s{\"seq\":%d,\"kind\":\"progress\",\"jobId\":\"%s\",\"jobRunId\":\"%s\","
		              "\"instanceId\":\"%s\",\"status\":\"RUNNING\",\"percent\":%d,"
		              "\"message\":\"step %d of %d\",\"timestamp\":\"%s\"}",
		              i ? "," : "", seq, r->job_id, r->id, r->instance, seq * 100 / L->o.events_per_job, seq,
		              L->o.events_per_job, ts);
	}
	jv_buf_printf(&b, "]}");
	struct xfer *x = calloc(1, sizeof(*x));
	x->kind = K_EVENTS;
	x->agent = a;
	x->run = r;
	x->nevents = n;
	r->busy = true;
	char path[96];
	snprintf(path, sizeof(path), "/v1/runs/%s/events", r->id);
	start(L, x, path, a->token, b.data);
}

static void post_result(struct load *L, struct agent *a, struct run *r)
{
	struct jv_buf b;
	jv_buf_init(&b, 0);
	jv_buf_printf(&b, "{\"status\":\"%s\",\"output\":{\"ok\":true},\"lastSeq\":%d}",
	              r->cancel ? "CANCELLED" : "COMPLETED", r->sent);
	struct xfer *x = calloc(1, sizeof(*x));
	x->kind = K_RESULT;
	x->agent = a;
	x->run = r;
	r->busy = true;
	char path[96];
	snprintf(path, sizeof(path), "/v1/runs/%s/result", r->id);
	start(L, x, path, a->token, b.data);
}

static void create_job(struct load *L)
{
	struct agent *a = &L->agents[jv_random_u64() % (uint64_t)L->nagents];
	struct jv_buf b;
	jv_buf_init(&b, 0);
	jv_buf_printf(&b, "{\"type\":\"BACKUP_INSTANCE\",\"agentId\":\"%s\",\"instanceId\":\"inst-%d\","
	                  "\"params\":{\"exclude\":[\"logs\"]},\"maxAttempts\":1}",
	              a->id, (int)(jv_random_u64() % RUNS_PER_AGENT));
	struct xfer *x = calloc(1, sizeof(*x));
	x->kind = K_CREATE;
	start(L, x, "/v1/jobs", L->admin, b.data);
}

static void remove_run(struct agent *a, struct run *r)
{
	r->used = false;
	a->nruns--;
}

static struct run *find_run(struct agent *a, const char *id)
{
	for (int i = 0; i < RUNS_PER_AGENT; i++)
		if (a->runs[i].used && strcmp(a->runs[i].id, id) == 0)
			return &a->runs[i];
	return NULL;
}

static struct run *free_slot(struct agent *a)
{
	for (int i = 0; i < RUNS_PER_AGENT; i++)
		if (!a->runs[i].used)
			return &a->runs[i];
	return NULL;
}

static void on_poll_answer(struct load *L, struct agent *a, cJSON *ans)
{
	const cJSON *it;
	cJSON_ArrayForEach(it, cJSON_GetObjectItem(ans, "jobs"))
	{
		const cJSON *id = cJSON_GetObjectItem(it, "jobRunId");
		struct run *r = cJSON_IsString(id) && !find_run(a, id->valuestring) ? free_slot(a) : NULL;
		if (!r)
			continue;
		memset(r, 0, sizeof(*r));
		r->used = true;
		a->nruns++;
		snprintf(r->id, sizeof(r->id), "%s", id->valuestring);
		const cJSON *jid = cJSON_GetObjectItem(it, "jobId"), *inst = cJSON_GetObjectItem(it, "instanceId");
		snprintf(r->job_id, sizeof(r->job_id), "%s", cJSON_IsString(jid) ? jid->valuestring : "");
		snprintf(r->instance, sizeof(r->instance), "%s", cJSON_IsString(inst) ? inst->valuestring : "");
		r->next_ms = now_ms();
		L->assigned++;
	}
	cJSON_ArrayForEach(it, cJSON_GetObjectItem(ans, "cancel"))
	{
		struct run *r = cJSON_IsString(it) ? find_run(a, it->valuestring) : NULL;
		if (r)
			r->cancel = true;
	}
}

static void finish(struct load *L, CURL *h, CURLcode cc)
{
	struct xfer *x = NULL;
	long status = 0;
	curl_off_t total_us = 0;
	curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&x);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(h, CURLINFO_TOTAL_TIME_T, &total_us);
	int64_t t = now_ms();
	bool ok = cc == CURLE_OK && status >= 200 && status < 300;
	/* Answers that arrive in the window count, whenever they were asked: an
	 * overloaded server still shows its rate and its (long) latency. */
	bool measuring = t >= L->measure_from && t <= L->end_ms;
	if (!ok && measuring) {
		L->errors++;
		if (cc != CURLE_OK) {
			L->err_transport++;
			L->err_by_kind[x->kind]++;
			L->err_last = cc;
		} else if (status >= 500) {
			L->err_5xx++;
		} else {
			L->err_4xx++;
		}
	}
	switch (x->kind) {
	case K_POLL:
		x->agent->polling = false;
		L->polls_in_flight--;
		if (measuring && ok)
			sample_add(&L->poll_lat, (double)total_us / 1000.0);
		if (ok) {
			cJSON *ans = cJSON_ParseWithLength(x->resp.data, x->resp.len);
			if (ans)
				on_poll_answer(L, x->agent, ans);
			cJSON_Delete(ans);
		}
		break;
	case K_EVENTS:
		x->run->busy = false;
		x->run->next_ms = t + EVENT_GAP_MS;
		if (ok) {
			x->run->sent += x->nevents;
			if (measuring) {
				L->events_acked += x->nevents;
				sample_add(&L->event_lat, (double)total_us / 1000.0);
			}
		} else if (status == 409) {
			remove_run(x->agent, x->run);
		}
		break;
	case K_RESULT:
		if (ok || status == 409) {
			if (ok && measuring)
				L->results++;
			remove_run(x->agent, x->run);
		} else {
			x->run->busy = false;
			x->run->next_ms = t + EVENT_GAP_MS;
		}
		break;
	case K_CREATE:
		if (ok && measuring)
			L->jobs_created++;
		break;
	}
	curl_multi_remove_handle(L->multi, h);
	curl_easy_cleanup(h);
	curl_slist_free_all(x->hdrs);
	free(x->body);
	jv_buf_free(&x->resp);
	free(x);
	L->in_flight--;
}

/* Write the admin token and the n agents' tokens into dir; 0 or -1. */
static int write_tokens(struct load *L, const char *dir, int n)
{
	char admin_path[512], agents_path[512];
	snprintf(admin_path, sizeof(admin_path), "%s/admin", dir);
	snprintf(agents_path, sizeof(agents_path), "%s/agents", dir);
	snprintf(L->admin, sizeof(L->admin), "bench-admin-token-%016llx", (unsigned long long)jv_random_u64());
	FILE *f = fopen(admin_path, "w");
	if (!f)
		return -1;
	fprintf(f, "%s\n", L->admin);
	fclose(f);
	chmod(admin_path, 0600);
	f = fopen(agents_path, "w");
	if (!f)
		return -1;
	for (int i = 0; i < n; i++)
		fprintf(f, "%s %s\n", L->agents[i].id, L->agents[i].token);
	fclose(f);
	chmod(agents_path, 0600);
	return 0;
}

/* Start jobvisor-cp replica k on the files of dir; fills url[k]; returns its pid or -1. */
static pid_t spawn_cp(struct load *L, const char *dir, int k)
{
	char admin_path[512], agents_path[512], db[512], threads[16], log_path[512];
	snprintf(admin_path, sizeof(admin_path), "%s/admin", dir);
	snprintf(agents_path, sizeof(agents_path), "%s/agents", dir);
	snprintf(log_path, sizeof(log_path), "%s/replica-%d.log", dir, k);
	snprintf(db, sizeof(db), "%s", L->o.db ? L->o.db : "");
	if (!L->o.db)
		snprintf(db, sizeof(db), "%s/cp.sqlite", dir);
	snprintf(threads, sizeof(threads), "%d", L->o.threads);
	int out[2];
	if (pipe(out) < 0)
		return -1;
	pid_t pid = fork();
	if (pid == 0) {
		dup2(out[1], 1);
		int log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600); /* warnings: see stop_replicas */
		if (log >= 0)
			dup2(log, 2);
		close(out[0]);
		execl(L->o.cp, L->o.cp, "--listen", "127.0.0.1:0", "--db", db, "--admin-token-file", admin_path,
		      "--agents-file", agents_path, "--threads", threads, "--log-level", "warn", (char *)NULL);
		_exit(127);
	}
	close(out[1]);
	char line[128] = "";
	size_t len = 0;
	while (len + 1 < sizeof(line)) {
		ssize_t r = read(out[0], line + len, 1);
		if (r <= 0 || line[len] == '\n')
			break;
		len++;
	}
	line[len] = '\0';
	close(out[0]);
	const char *p = strstr(line, "http://");
	if (!p) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return -1;
	}
	snprintf(L->url[k], sizeof(L->url[k]), "%s", p);
	return pid;
}

/* Machine-wide jiffies from /proc/stat: total and iowait (for the noise column). */
static void machine_jiffies(unsigned long long *total, unsigned long long *iowait)
{
	unsigned long long v[8] = {0};
	FILE *f = fopen("/proc/stat", "r");
	*total = *iowait = 0;
	if (!f)
		return;
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
	           &v[7]) == 8) {
		for (int i = 0; i < 8; i++)
			*total += v[i];
		*iowait = v[4];
	}
	fclose(f);
}

/* CPU seconds (user + system) used so far by pid, from /proc; -1 when unknown. */
static double cpu_seconds(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	const char *p = strrchr(buf, ')'); /* the command name may contain spaces */
	unsigned long long ut = 0, st = 0;
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* CPU seconds (user + system) this process has used so far. */
static double self_cpu_seconds(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) < 0)
		return 0;
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Copy the lines of replica k's log (its stderr) that contain what (NULL:
 * all) to our stderr, then remove the log. */
static void relay_log(const char *dir, int k, const char *what)
{
	char path[600], line[1024];
	snprintf(path, sizeof(path), "%s/replica-%d.log", dir, k);
	FILE *f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (!what || strstr(line, what))
			fprintf(stderr, "cp_load: replica %d: %s", k + 1, line);
	if (f)
		fclose(f);
	unlink(path);
}

/* Stop the replicas; relay the front's reports of dropped clients (an
 * eviction by the per-address limit names the address). */
static void stop_replicas(struct load *L, const char *dir)
{
	for (int k = 0; k < L->o.replicas; k++)
		kill(L->pid[k], SIGTERM);
	for (int k = 0; k < L->o.replicas; k++) {
		waitpid(L->pid[k], NULL, 0);
		relay_log(dir, k, "front: dropped");
	}
}

/* Start the replicas (after writing the token files); 0 or -1 with all stopped. */
static int start_replicas(struct load *L, const char *dir)
{
	if (write_tokens(L, dir, L->nagents) < 0)
		return -1;
	for (int k = 0; k < L->o.replicas; k++) {
		L->pid[k] = spawn_cp(L, dir, k);
		if (L->pid[k] < 0) {
			fprintf(stderr, "cp_load: cannot start %s (replica %d)\n", L->o.cp, k + 1);
			relay_log(dir, k, NULL); /* why */
			L->o.replicas = k;
			stop_replicas(L, dir);
			return -1;
		}
	}
	return 0;
}

/* One step of the simulated fleet at time t: polls, events, results, jobs. */
static void drive(struct load *L, int64_t t, int64_t interval, int64_t *next_job, int64_t job_gap)
{
	for (int i = 0; i < L->nagents; i++) {
		struct agent *a = &L->agents[i];
		if (!a->polling && t >= a->next_poll) {
			int64_t jitter = (int64_t)(jv_random_u64() % (uint64_t)(interval / 5 + 1)) - interval / 10;
			a->next_poll = t + interval + jitter;
			poll_agent(L, a);
		}
		for (int k = 0; k < RUNS_PER_AGENT; k++) {
			struct run *r = &a->runs[k];
			if (!r->used || r->busy || t < r->next_ms)
				continue;
			if (r->cancel || r->sent >= L->o.events_per_job)
				post_result(L, a, r);
			else
				post_events(L, a, r);
		}
	}
	while (job_gap > 0 && t >= *next_job) {
		create_job(L);
		*next_job += job_gap;
	}
}

struct cpu_marks {
	double cpu[REPLICAS_MAX]; /* CPU seconds at the start of the measurement, -1 = not yet */
	double self0, self1;      /* cp_load's own, at the start and the end of the measurement */
	unsigned long long tot0, io0, tot1, io1;
};

static void report(struct load *L, const struct cpu_marks *m)
{
	double secs = (double)(L->end_ms - L->measure_from) / 1000.0;
	char cpu[REPLICAS_MAX * 12] = "";
	for (int k = 0; k < L->o.replicas; k++) {
		/* Includes the few seconds of drain: an upper bound. */
		double used = m->cpu[k] < 0 ? -1.0 : 100.0 * (cpu_seconds(L->pid[k]) - m->cpu[k]) / secs;
		size_t len = strlen(cpu);
		snprintf(cpu + len, sizeof(cpu) - len, "%s%.0f%%", k ? " + " : "", used);
	}
	qsort(L->poll_lat.v, L->poll_lat.n, sizeof(double), cmp_double);
	qsort(L->event_lat.v, L->event_lat.n, sizeof(double), cmp_double);
	double iowait = m->tot1 > m->tot0 ? 100.0 * (double)(m->io1 - m->io0) / (double)(m->tot1 - m->tot0) : 0;
	double self = 100.0 * (m->self1 - m->self0) / secs;
	printf("| %s | %d | %d | %d | %.0f | %d s | %.0f | %.1f | %.1f | %.1f | %.1f | %.0f | %.0f | %s | %.0f%% | %.0f%% | %d | %ld |\n",
	       L->o.db ? "PostgreSQL" : "SQLite", L->o.replicas, L->nagents, L->o.jobs_per_sec,
	       (double)L->jobs_created / secs, L->o.interval_s, (double)L->poll_lat.n / secs, pct(&L->poll_lat, 0.5), pct(&L->poll_lat, 0.99),
	       L->poll_lat.n ? L->poll_lat.v[L->poll_lat.n - 1] : 0.0, pct(&L->event_lat, 0.99),
	       (double)L->events_acked / secs, (double)L->results / secs, cpu, self, iowait, L->polls_waiting, L->errors);
	fflush(stdout);
	fprintf(stderr, "cp_load: %d agents from %d source addresses (127.0.0.1 - 127.0.0.%d); errors: %ld transport "
	        "(polls %ld, events %ld, results %ld, job creations %ld; the last: %s), %ld 5xx, %ld 4xx\n", L->nagents,
	        L->nsources, L->nsources, L->err_transport, L->err_by_kind[K_POLL], L->err_by_kind[K_EVENTS],
	        L->err_by_kind[K_RESULT], L->err_by_kind[K_CREATE], L->err_transport ? curl_easy_strerror(L->err_last) : "-",
	        L->err_5xx, L->err_4xx);
}

static void measure_loop(struct load *L)
{
	int64_t interval = (int64_t)L->o.interval_s * 1000;
	L->start_ms = now_ms();
	L->measure_from = L->start_ms + interval;
	L->end_ms = L->start_ms + (int64_t)L->o.duration_s * 1000;
	for (int i = 0; i < L->nagents; i++)
		L->agents[i].next_poll = L->start_ms + interval * i / L->nagents;
	struct cpu_marks m = {.cpu = {-1}};
	bool marked = false;
	int64_t next_job = L->start_ms, job_gap = L->o.jobs_per_sec > 0 ? 1000 / L->o.jobs_per_sec : 0;
	for (;;) {
		int64_t t = now_ms();
		bool running = t < L->end_ms;
		if (!marked && t >= L->measure_from) {
			for (int k = 0; k < L->o.replicas; k++)
				m.cpu[k] = cpu_seconds(L->pid[k]);
			machine_jiffies(&m.tot0, &m.io0);
			m.self0 = self_cpu_seconds();
			marked = true;
		}
		if (m.tot1 == 0 && !running) {
			machine_jiffies(&m.tot1, &m.io1);
			m.self1 = self_cpu_seconds();
			L->polls_waiting = L->polls_in_flight;
		}
		if (!running && (L->in_flight == 0 || t > L->end_ms + 5000))
			break;
		if (running)
			drive(L, t, interval, &next_job, job_gap);
		int still = 0;
		curl_multi_perform(L->multi, &still);
		CURLMsg *msg;
		int left;
		while ((msg = curl_multi_info_read(L->multi, &left)) != NULL)
			if (msg->msg == CURLMSG_DONE)
				finish(L, msg->easy_handle, msg->data.result);
		curl_multi_poll(L->multi, NULL, 0, 5, NULL);
	}
	report(L, &m);
}

/* Raise the soft RLIMIT_NOFILE to the hard limit (the replicas inherit it);
 * -1 with a message when that leaves too few descriptors for nagents: each
 * agent holds about one connection at a time here and in the replica's front. */
static int raise_nofile(int nagents)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 0;
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	rlim_t need = (rlim_t)nagents + 1024;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
		fprintf(stderr, "cp_load: %d agents need at least %llu file descriptors, the hard RLIMIT_NOFILE is %llu "
		        "(raise it: LimitNOFILE=, /etc/security/limits.conf)\n", nagents, (unsigned long long)need,
		        (unsigned long long)rl.rlim_max);
		return -1;
	}
	return 0;
}

static int run_once(const struct opts *o, int nagents)
{
	if (raise_nofile(nagents) < 0)
		return 1;
	struct load L = {.o = *o, .nagents = nagents};
	L.nsources = o->sources ? o->sources : (nagents + AGENTS_PER_SOURCE - 1) / AGENTS_PER_SOURCE;
	if (L.nsources > SOURCES_MAX)
		L.nsources = SOURCES_MAX;
	if (L.nsources > nagents)
		L.nsources = nagents;
	L.agents = calloc((size_t)nagents, sizeof(*L.agents));
	for (int i = 0; i < nagents; i++) {
		snprintf(L.agents[i].id, sizeof(L.agents[i].id), "agent-%04d", i);
		snprintf(L.agents[i].token, sizeof(L.agents[i].token), "tok-%04d-%016llx", i,
		         (unsigned long long)jv_random_u64());
	}
	char dir[512];
	snprintf(dir, sizeof(dir), "%s/cp-load-XXXXXX", o->dir);
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	int rc = start_replicas(&L, dir);
	if (rc == 0) {
		L.multi = curl_multi_init();
		measure_loop(&L);
		curl_multi_cleanup(L.multi);
		stop_replicas(&L, dir);
	}
	char path[600];
	const char *names[] = {"admin", "agents", "cp.sqlite", "cp.sqlite-wal", "cp.sqlite-shm"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
	free(L.poll_lat.v);
	free(L.event_lat.v);
	free(L.agents);
	return rc == 0 ? 0 : 1;
}

static int int_arg(const char *s, int lo, int hi, int *out)
{
	char *end = NULL;
	long v = strtol(s, &end, 10);
	if (!*s || *end || v < lo || v > hi)
		return -1;
	*out = (int)v;
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = {.dir = "/tmp", .replicas = 1, .interval_s = 3, .duration_s = 30, .jobs_per_sec = 20, .events_per_job = 20,
	                 .batch = 5, .threads = 64};
	const char *agents = "500";
	for (int i = 1; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		int bad = 0;
		if (strcmp(k, "--cp") == 0)
			o.cp = v;
		else if (strcmp(k, "--dir") == 0)
			o.dir = v;
		else if (strcmp(k, "--db") == 0)
			o.db = v;
		else if (strcmp(k, "--replicas") == 0)
			bad = int_arg(v, 1, REPLICAS_MAX, &o.replicas);
		else if (strcmp(k, "--sources") == 0)
			bad = int_arg(v, 1, SOURCES_MAX, &o.sources);
		else if (strcmp(k, "--agents") == 0)
			agents = v;
		else if (strcmp(k, "--interval") == 0)
			bad = int_arg(v, 1, 60, &o.interval_s);
		else if (strcmp(k, "--duration") == 0)
			bad = int_arg(v, 5, 600, &o.duration_s);
		else if (strcmp(k, "--jobs-per-sec") == 0)
			bad = int_arg(v, 0, 1000, &o.jobs_per_sec);
		else if (strcmp(k, "--events-per-job") == 0)
			bad = int_arg(v, 1, 1000, &o.events_per_job);
		else if (strcmp(k, "--batch") == 0)
			bad = int_arg(v, 1, 1000, &o.batch);
		else if (strcmp(k, "--threads") == 0)
			bad = int_arg(v, 8, 1024, &o.threads);
		else
			bad = 1;
		if (bad) {
			fprintf(stderr, "cp_load: bad option %s %s\n", k, v);
			return 2;
		}
	}
	if (!o.cp || argc % 2 == 0) {
		fprintf(stderr, "usage: cp_load --cp PATH/jobvisor-cp [--agents 500[,1000]] [--interval 3] "
		                "[--duration 30] [--jobs-per-sec 20] [--events-per-job 20] [--batch 5] [--threads 64] [--dir /tmp] "
		                "[--db postgresql://...] [--replicas N] [--sources K]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	if (o.replicas > 1 && !o.db) {
		fprintf(stderr, "cp_load: --replicas needs --db (a database the replicas share)\n");
		return 2;
	}
	printf("| db | replicas | agents | jobs/s | jobs created/s | interval | polls/s | poll p50 ms | poll p99 ms | poll max ms |"
	       " events POST p99 ms | events/s | results/s | CPU per replica | load CPU | host iowait | polls unanswered at end | errors |\n");
	printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
	char *list = strdup(agents);
	char *save = NULL;
	int rc = 0;
	for (char *t = strtok_r(list, ",", &save); t && rc == 0; t = strtok_r(NULL, ",", &save)) {
		int n;
		if (int_arg(t, 1, 100000, &n) < 0) {
			fprintf(stderr, "cp_load: bad agent count '%s'\n", t);
			rc = 2;
			break;
		}
		rc = run_once(&o, n);
	}
	free(list);
	curl_global_cleanup();
	return rc;
}
