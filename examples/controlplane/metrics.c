/* metrics.c — GET /metrics (Prometheus text format 0.0.4), /healthz, /readyz.
 *
 * /healthz answers 200 while the process serves HTTP; /readyz runs a query
 * on the database (503 when it fails); neither needs a token. /metrics needs
 * the admin token (401 without, 403 with an agent token): job counts by type
 * and state, runs started and finished, events stored, request latency
 * histograms of polls and event posts, agents online, and per instance its
 * state and latest CPU and memory. The run counters are kept in the database
 * (run_counters, moved by triggers in the transaction that changes the run):
 * every replica reports the same values, and neither a restart, retention nor
 * a run given back lowers them. The other counters and the histograms live in
 * memory (atomics, reset when the process restarts, as Prometheus expects);
 * everything else is read from the database or memory under cp->mu when
 * scraped. */
#include "cp.h"

#include <civetweb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"

static const double bucket_s[CP_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                  0.5,   1,    2.5,   5,    10,  30};

void metrics_observe(struct cp_hist *h, int64_t elapsed_us)
{
	double s = (double)elapsed_us / 1e6;
	for (int i = 0; i < CP_HIST_BUCKETS; i++)
		if (s <= bucket_s[i])
			atomic_fetch_add(&h->bucket[i], 1);
	atomic_fetch_add(&h->count, 1);
	atomic_fetch_add(&h->sum_us, (uint64_t)(elapsed_us > 0 ? elapsed_us : 0));
}

static void send_text(struct mg_connection *conn, int status, const char *type, const char *body, size_t len)
{
	mg_printf(conn,
	          "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-store\r\n"
	          "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
	          status, mg_get_response_code_text(conn, status), type, len);
	mg_write(conn, body, len);
}

static bool get_or_head(struct mg_connection *conn)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	if (strcmp(ri->request_method, "GET") == 0 || strcmp(ri->request_method, "HEAD") == 0)
		return true;
	http_send_error(conn, 405, "method %s not allowed here", ri->request_method);
	return false;
}

int metrics_handle_health(struct mg_connection *conn, void *cbdata)
{
	struct cp *cp = cbdata;
	const struct mg_request_info *ri = mg_get_request_info(conn);
	if (!get_or_head(conn))
		return 1;
	if (strcmp(ri->local_uri, "/healthz") == 0) {
		static const char ok[] = "{\"status\":\"ok\"}";
		send_text(conn, 200, "application/json", ok, sizeof(ok) - 1);
		return 1;
	}
	if (strcmp(ri->local_uri, "/readyz") != 0) {
		http_send_error(conn, 404, "not found");
		return 1;
	}
	char why[200] = "";
	bool ready = store_ping(cp->store, why, sizeof(why)) == 0;
	if (ready && !atomic_load(&cp->stopping)) {
		static const char ok[] = "{\"status\":\"ready\"}";
		send_text(conn, 200, "application/json", ok, sizeof(ok) - 1);
	} else {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "status", "unavailable");
		cJSON_AddStringToObject(o, "error", ready ? "stopping" : why);
		http_send_json(conn, 503, o);
		cJSON_Delete(o);
	}
	return 1;
}

/* A label value, escaped as the text format wants (\\, \", \n). */
static void label(struct jv_buf *b, const char *v)
{
	for (const char *p = v; *p; p++) {
		if (*p == '\\' || *p == '"')
			jv_buf_printf(b, "\\%c", *p);
		else if (*p == '\n')
			jv_buf_append(b, "\\n", 2);
		else
			jv_buf_append(b, p, 1);
	}
}

static void hist(struct jv_buf *b, const char *name, const char *help, struct cp_hist *h)
{
	jv_buf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (int i = 0; i < CP_HIST_BUCKETS; i++)
		jv_buf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, bucket_s[i],
		              (unsigned long long)atomic_load(&h->bucket[i]));
	unsigned long long count = (unsigned long long)atomic_load(&h->count);
	jv_buf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, count);
	jv_buf_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, (double)atomic_load(&h->sum_us) / 1e6, name, count);
}

static void job_line(void *ud, const char *type, const char *status, int64_t n)
{
	struct jv_buf *b = ud;
	jv_buf_printf(b, "jobvisor_jobs{type=\"");
	label(b, type);
	jv_buf_printf(b, "\",state=\"");
	label(b, status);
	jv_buf_printf(b, "\"} %lld\n", (long long)n);
}

static void run_lines(struct cp *cp, struct jv_buf *b)
{
	int64_t started = 0, fin[3] = {0};
	bool ok = store_metrics_runs(cp->store, &started, &fin[0], &fin[1], &fin[2]) == 0;
	jv_buf_printf(b, "# HELP jobvisor_runs_started_total Times a job run was given to an agent (all replicas).\n"
	                 "# TYPE jobvisor_runs_started_total counter\n");
	if (ok)
		jv_buf_printf(b, "jobvisor_runs_started_total %lld\n", (long long)started);
	jv_buf_printf(b, "# HELP jobvisor_runs_finished_total Job runs that ended, by final state (all replicas).\n"
	                 "# TYPE jobvisor_runs_finished_total counter\n");
	static const char *const states[] = {"COMPLETED", "FAILED", "CANCELLED"};
	for (int i = 0; ok && i < 3; i++)
		jv_buf_printf(b, "jobvisor_runs_finished_total{state=\"%s\"} %lld\n", states[i], (long long)fin[i]);
}

int metrics_handle(struct mg_connection *conn, void *cbdata)
{
	struct cp *cp = cbdata;
	const struct mg_request_info *ri = mg_get_request_info(conn);
	if (strcmp(ri->local_uri, "/metrics") != 0) {
		http_send_error(conn, 404, "not found");
		return 1;
	}
	struct cp_agent *agent = NULL;
	struct cp_who who = {0};
	enum http_auth auth = http_authenticate(cp, conn, NULL, &agent, &who);
	if (auth == AUTH_NONE) {
		http_send_unauthorized(conn);
		return 1;
	}
	if (auth != AUTH_ADMIN || who.role != CP_ROLE_ADMIN) {
		http_send_error(conn, 403, "metrics need the admin token");
		return 1;
	}
	if (!get_or_head(conn))
		return 1;
	struct jv_buf b;
	jv_buf_init(&b, 64u * 1024 * 1024);
	/* Store calls without cp->mu (each a round trip on PostgreSQL, and every
	 * poll takes cp->mu); the mutex only for the agents' in-memory lastSeen. */
	jv_buf_printf(&b, "# HELP jobvisor_jobs Jobs by type and state.\n# TYPE jobvisor_jobs gauge\n");
	store_metrics_jobs(cp->store, job_line, &b);
	run_lines(cp, &b);
	jv_buf_printf(&b, "# HELP jobvisor_events_stored_total Run events stored since the start (duplicates not counted).\n"
	                  "# TYPE jobvisor_events_stored_total counter\njobvisor_events_stored_total %llu\n",
	              (unsigned long long)atomic_load(&cp->metrics.events_stored));
	jv_buf_printf(&b, "# HELP jobvisor_instance_events_stored_total Instance events stored since the start.\n"
	                  "# TYPE jobvisor_instance_events_stored_total counter\n"
	                  "jobvisor_instance_events_stored_total %llu\n",
	              (unsigned long long)atomic_load(&cp->metrics.instance_events_stored));
	int64_t window = (int64_t)(3 * cp->cfg.poll_interval_s + cp->cfg.max_wait_s) * 1000, now = jv_now_real_ms();
	int online = 0;
	pthread_mutex_lock(&cp->mu);
	for (size_t i = 0; i < cp->nagents; i++)
		online += cp->agents[i].last_seen_ms > 0 && now - cp->agents[i].last_seen_ms <= window;
	pthread_mutex_unlock(&cp->mu);
	jv_buf_printf(&b, "# HELP jobvisor_agents Agents in the agents file.\n# TYPE jobvisor_agents gauge\n"
	                  "jobvisor_agents %zu\n"
	                  "# HELP jobvisor_agents_online Agents seen within three poll intervals plus a long poll.\n"
	                  "# TYPE jobvisor_agents_online gauge\njobvisor_agents_online %d\n",
	              cp->nagents, online);
	jv_buf_printf(&b, "# HELP jobvisor_front_connections_accepted_total Client connections accepted since the start "
	                  "(kept-alive connections carry many requests each).\n"
	                  "# TYPE jobvisor_front_connections_accepted_total counter\n"
	                  "jobvisor_front_connections_accepted_total %llu\n",
	              (unsigned long long)atomic_load(&cp->metrics.front_accepted));
	jv_buf_printf(&b, "# HELP jobvisor_long_polls_parked Long polls held in the accept front, waiting for work.\n"
	                  "# TYPE jobvisor_long_polls_parked gauge\njobvisor_long_polls_parked %d\n",
	              atomic_load(&cp->parked_polls));
	jv_buf_printf(&b, "# HELP jobvisor_instance_state 1 for the state each instance is in.\n"
	                  "# TYPE jobvisor_instance_state gauge\n");
	cJSON *insts = inst_list_json(cp, NULL, NULL);
	const cJSON *in;
	cJSON_ArrayForEach(in, insts)
	{
		jv_buf_printf(&b, "jobvisor_instance_state{agent=\"");
		label(&b, jv_json_str(in, "agentId", ""));
		jv_buf_printf(&b, "\",instance=\"");
		label(&b, jv_json_str(in, "instanceId", ""));
		jv_buf_printf(&b, "\",state=\"%s\"} 1\n", jv_json_str(in, "state", ""));
	}
	static const char *const gauges[][3] = {
		{"cpuCores", "jobvisor_instance_cpu_cores", "CPU cores an instance used in its last sample."},
		{"memoryBytes", "jobvisor_instance_memory_bytes", "Memory of an instance in its last sample."},
	};
	for (size_t g = 0; g < JV_ARRAY_LEN(gauges); g++) {
		jv_buf_printf(&b, "# HELP %s %s\n# TYPE %s gauge\n", gauges[g][1], gauges[g][2], gauges[g][1]);
		cJSON_ArrayForEach(in, insts)
		{
			const cJSON *stats = cJSON_GetObjectItemCaseSensitive(in, "stats");
			if (!jv_json_has_num(stats, gauges[g][0]))
				continue;
			jv_buf_printf(&b, "%s{agent=\"", gauges[g][1]);
			label(&b, jv_json_str(in, "agentId", ""));
			jv_buf_printf(&b, "\",instance=\"");
			label(&b, jv_json_str(in, "instanceId", ""));
			jv_buf_printf(&b, "\"} %.17g\n", jv_json_num(stats, gauges[g][0], 0));
		}
	}
	cJSON_Delete(insts);
	hist(&b, "jobvisor_poll_request_seconds", "Time to answer agent polls (time parked in the front not included).",
	     &cp->metrics.poll);
	hist(&b, "jobvisor_events_request_seconds", "Time to answer agent event posts.", &cp->metrics.events);
	if (strcmp(ri->request_method, "HEAD") == 0)
		b.len = 0;
	send_text(conn, 200, "text/plain; version=0.0.4; charset=utf-8", b.data ? b.data : "", b.len);
	jv_buf_free(&b);
	return 1;
}
