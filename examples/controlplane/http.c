/* http.c — the HTTP edge: routing, authentication, bodies in and JSON out.
 *
 * Every request goes through http_handle(): it splits the path, checks the
 * token (401 without detail when missing or wrong), checks the role (an agent
 * token on a UI call or an admin token on an agent call is 403), checks the
 * identifiers in the path (400), and hands over to api_agent.c or api_ui.c.
 * Bodies are read with a hard cap and must be one JSON object. Answers are
 * always JSON, with Content-Length and `Connection: close`: civetweb serves
 * one request per connection (a kept connection would pin a worker thread).
 * Clients still keep theirs: the accept front holds the client's
 * connection between requests, rewrites this header to keep-alive and opens
 * a new loopback connection to civetweb per request (front_keep.c), so the
 * Content-Length here is what lets the front know where an answer ends. */
#include "cp.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <civetweb.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define SEGMENTS_MAX 5

static const char *extract_bearer(const struct mg_connection *conn)
{
	const char *h = mg_get_header(conn, "Authorization");
	if (!h || strncasecmp(h, "Bearer ", 7) != 0)
		return NULL;
	h += 7;
	while (*h == ' ')
		h++;
	return *h ? h : NULL;
}

enum http_auth http_authenticate(struct cp *cp, const struct mg_connection *conn, const char *query_token,
                                 struct cp_agent **agent, struct cp_who *who)
{
	const char *tok = extract_bearer(conn);
	if (!tok)
		tok = query_token;
	*agent = NULL;
	if (!tok || !*tok)
		return AUTH_NONE;
	return http_token_auth(cp, tok, strnlen(tok, CP_TOKEN_MAX + 1), agent, who);
}

enum http_auth http_token_auth(struct cp *cp, const char *tok, size_t len, struct cp_agent **agent,
                               struct cp_who *who)
{
	*agent = NULL;
	if (len == 0 || len > CP_TOKEN_MAX)
		return AUTH_NONE;
	/* The admin and named tokens are compared without stopping early. */
	bool admin = tokens_equal(tok, len, cp->admin_token, cp->admin_token_len);
	/* Agents by the token's SHA-256: timing says nothing about how close a
	 * wrong token came to a real one, and 10,000 agents cost one lookup. */
	struct cp_agent *found = tokens_agent_by_token(cp, tok, len);
	struct cp_who named = {0};
	bool user = users_find(cp, tok, len, &named) == 1;
	if (admin) {
		if (who)
			*who = (struct cp_who){.name = "admin", .role = CP_ROLE_ADMIN};
		return AUTH_ADMIN;
	}
	if (user) {
		if (who)
			*who = named;
		return AUTH_ADMIN;
	}
	if (found) {
		*agent = found;
		return AUTH_AGENT;
	}
	return AUTH_NONE;
}

/* The status of the answer this thread sent last (for the audit log). */
static _Thread_local int last_status;

static void send_raw(struct mg_connection *conn, int status, const char *extra_headers, const char *body,
                     size_t len)
{
	last_status = status;
	mg_printf(conn,
	          "HTTP/1.1 %d %s\r\n"
	          "Content-Type: application/json\r\n"
	          "Content-Length: %zu\r\n"
	          "Cache-Control: no-store\r\n"
	          "X-Content-Type-Options: nosniff\r\n"
	          "%s"
	          "Connection: close\r\n\r\n",
	          status, mg_get_response_code_text(conn, status), len, extra_headers ? extra_headers : "");
	if (len)
		mg_write(conn, body, len);
}

void http_send_json(struct mg_connection *conn, int status, const cJSON *body)
{
	char *text = jv_json_print(body);
	if (!text) {
		static const char oom[] = "{\"error\":\"out of memory\"}";
		send_raw(conn, 500, NULL, oom, sizeof(oom) - 1);
		return;
	}
	send_raw(conn, status, NULL, text, strlen(text));
	free(text);
}

static void vanswer_error(struct http_answer *a, int status, const char *fmt, va_list ap)
{
	char msg[512];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	cJSON *o = cJSON_CreateObject();
	if (o && !cJSON_AddStringToObject(o, "error", msg)) {
		cJSON_Delete(o);
		o = NULL;
	}
	http_answer_json(a, status, o);
}

void http_send_error(struct mg_connection *conn, int status, const char *fmt, ...)
{
	struct http_answer a = {0};
	va_list ap;
	va_start(ap, fmt);
	vanswer_error(&a, status, fmt, ap);
	va_end(ap);
	http_send_answer(conn, &a);
}

void http_answer_json(struct http_answer *a, int status, cJSON *body)
{
	if (a->status) {
		cJSON_Delete(body);
		return;
	}
	a->status = status;
	a->body = body;
}

void http_answer_error(struct http_answer *a, int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vanswer_error(a, status, fmt, ap);
	va_end(ap);
}

void http_send_answer(struct mg_connection *conn, struct http_answer *a)
{
	if (a->status && a->body) {
		http_send_json(conn, a->status, a->body);
	} else {
		static const char oom[] = "{\"error\":\"out of memory\"}";
		send_raw(conn, 500, NULL, oom, sizeof(oom) - 1);
	}
	cJSON_Delete(a->body);
	*a = (struct http_answer){0};
}

void http_send_list(struct mg_connection *conn, const char *key, cJSON *arr)
{
	if (!arr) {
		http_send_error(conn, 500, "database error");
		return;
	}
	cJSON *ans = cJSON_CreateObject();
	cJSON_AddItemToObject(ans, key, arr);
	http_send_json(conn, 200, ans);
	cJSON_Delete(ans);
}

void http_send_page(struct mg_connection *conn, const char *key, cJSON *arr, int64_t next)
{
	cJSON *ans = cJSON_CreateObject();
	cJSON_AddItemToObject(ans, key, arr);
	if (next > 0) {
		char buf[24];
		snprintf(buf, sizeof(buf), "%lld", (long long)next);
		cJSON_AddStringToObject(ans, "nextCursor", buf);
	} else {
		cJSON_AddNullToObject(ans, "nextCursor");
	}
	http_send_json(conn, 200, ans);
	cJSON_Delete(ans);
}

void http_send_unauthorized(struct mg_connection *conn)
{
	static const char body[] = "{\"error\":\"unauthorized\"}";
	send_raw(conn, 401, "WWW-Authenticate: Bearer\r\n", body, sizeof(body) - 1);
}

int http_read_agent_json(struct mg_connection *conn, const struct cp_agent *agent,
                         const char *agent_id, cJSON **out)
{
	if (strcmp(agent->id, agent_id) != 0) {
		http_send_error(conn, 403, "this token belongs to another agent");
		return -1;
	}
	return http_read_body(conn, out);
}

int http_read_body(struct mg_connection *conn, cJSON **out)
{
	struct cp_err err;
	if (http_read_json(conn, out, &err) < 0) {
		http_send_error(conn, err.status, "%s", err.msg);
		return -1;
	}
	return 0;
}

int http_read_json(struct mg_connection *conn, cJSON **out, struct cp_err *err)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	if (ri->content_length > CP_BODY_MAX) {
		cp_err_set(err, 400, "request body larger than %d bytes", CP_BODY_MAX);
		return -EFBIG;
	}
	struct jv_buf b;
	jv_buf_init(&b, CP_BODY_MAX);
	char chunk[16384];
	int n;
	while ((n = mg_read(conn, chunk, sizeof(chunk))) > 0) {
		int rc = jv_buf_append(&b, chunk, (size_t)n);
		if (rc < 0) {
			jv_buf_free(&b);
			if (rc == -EFBIG)
				cp_err_set(err, 400, "request body larger than %d bytes", CP_BODY_MAX);
			else
				cp_err_set(err, 500, "out of memory");
			return rc;
		}
	}
	if (n < 0 || b.len == 0) {
		jv_buf_free(&b);
		cp_err_set(err, 400, n < 0 ? "cannot read the request body" : "request body is empty; expected a JSON object");
		return -EINVAL;
	}
	if (!jv_json_depth_ok(b.data, b.len, CP_JSON_DEPTH_MAX)) {
		jv_buf_free(&b);
		cp_err_set(err, 400, "request body is nested more than %d levels deep", CP_JSON_DEPTH_MAX);
		return -EINVAL;
	}
	cJSON *v = jv_json_parse(b.data, b.len);
	jv_buf_free(&b);
	if (!v) {
		cp_err_set(err, 400, "request body is not valid JSON");
		return -EINVAL;
	}
	if (!cJSON_IsObject(v)) {
		cJSON_Delete(v);
		cp_err_set(err, 400, "request body must be a JSON object");
		return -EINVAL;
	}
	/* cJSON strings end at a NUL: a "\u0000" would silently cut an id (jsonutil.c). */
	char where[128];
	const char *what;
	if (!jv_json_text_ok(v, where, sizeof(where), &what)) {
		cJSON_Delete(v);
		cp_err_set(err, 400, "request body: '%s' %s", where, what);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

int http_query(const struct mg_connection *conn, const char *name, char *buf, size_t len)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	if (!ri->query_string)
		return 0;
	int n = mg_get_var(ri->query_string, strlen(ri->query_string), name, buf, len);
	if (n == -1)
		return 0;
	return n < 0 ? -1 : 1;
}

/* Split "/v1/a/b/c" into segments after "v1"; 0 on success. */
static int split_path(const char *uri, char seg[SEGMENTS_MAX][CP_ID_MAX], int *nseg)
{
	if (strncmp(uri, "/v1/", 4) != 0)
		return -1;
	const char *p = uri + 4;
	*nseg = 0;
	while (*p) {
		const char *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);
		if (n == 0 || n >= CP_ID_MAX || *nseg >= SEGMENTS_MAX)
			return -1;
		memcpy(seg[*nseg], p, n);
		seg[*nseg][n] = '\0';
		(*nseg)++;
		p += n;
		if (*p == '/') {
			p++;
			if (!*p)
				return -1; /* trailing slash */
		}
	}
	return *nseg > 0 ? 0 : -1;
}

/* The endpoint table: which path shapes exist, their method and role. */
enum role { ROLE_ADMIN, ROLE_AGENT };
struct route {
	const char *method;
	int nseg;
	const char *s0, *s2;
	enum role role;
	int id_kind; /* 0 none, 1 agent id, 2 job/run id, 3 agent id + instance id */
	const char *s4;
};
static const struct route routes[] = {
	{"POST", 3, "agents", "poll", ROLE_AGENT, 1, NULL},
	{"POST", 3, "runs", "events", ROLE_AGENT, 2, NULL},
	{"POST", 3, "runs", "result", ROLE_AGENT, 2, NULL},
	{"GET", 3, "runs", "events", ROLE_ADMIN, 2, NULL},
	{"GET", 2, "runs", NULL, ROLE_ADMIN, 2, NULL},
	{"POST", 1, "jobs", NULL, ROLE_ADMIN, 0, NULL},
	{"GET", 1, "jobs", NULL, ROLE_ADMIN, 0, NULL},
	{"GET", 2, "jobs", NULL, ROLE_ADMIN, 2, NULL},
	{"POST", 3, "jobs", "cancel", ROLE_ADMIN, 2, NULL},
	{"POST", 3, "jobs", "retry", ROLE_ADMIN, 2, NULL},
	{"GET", 1, "agents", NULL, ROLE_ADMIN, 0, NULL},
	{"POST", 3, "agents", "instances", ROLE_AGENT, 1, NULL},
	{"POST", 5, "agents", "instances", ROLE_AGENT, 3, "events"},
	{"GET", 4, "agents", "instances", ROLE_ADMIN, 3, NULL},
	{"GET", 1, "instances", NULL, ROLE_ADMIN, 0, NULL},
	{"POST", 3, "agents", "console", ROLE_AGENT, 1, NULL},
	{"POST", 3, "agents", "stats", ROLE_AGENT, 1, NULL},
	{"POST", 3, "agents", "job-types", ROLE_AGENT, 1, NULL},
	{"GET", 3, "agents", "job-types", ROLE_ADMIN, 1, NULL},
	{"POST", 1, "schedules", NULL, ROLE_ADMIN, 0, NULL},
	{"GET", 1, "schedules", NULL, ROLE_ADMIN, 0, NULL},
	{"GET", 2, "schedules", NULL, ROLE_ADMIN, 2, NULL},
	{"PATCH", 2, "schedules", NULL, ROLE_ADMIN, 2, NULL},
	{"DELETE", 2, "schedules", NULL, ROLE_ADMIN, 2, NULL},
	{"GET", 1, "cron-preview", NULL, ROLE_ADMIN, 0, NULL},
	{"GET", 1, "audit", NULL, ROLE_ADMIN, 0, NULL},
	{"POST", 5, "agents", "instances", ROLE_ADMIN, 3, "console"},
};

static bool path_matches(const struct route *r, int nseg, char seg[SEGMENTS_MAX][CP_ID_MAX])
{
	return nseg == r->nseg && strcmp(seg[0], r->s0) == 0 && (!r->s2 || strcmp(seg[2], r->s2) == 0) &&
	       (!r->s4 || strcmp(seg[4], r->s4) == 0);
}

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void dispatch_route(struct cp *cp, struct mg_connection *conn, const struct route *r,
                           char seg[SEGMENTS_MAX][CP_ID_MAX], struct cp_agent *agent)
{
	const char *id = r->nseg >= 2 ? seg[1] : NULL;
	int64_t t0 = now_us();
	if (strcmp(r->s0, "agents") == 0 && r->s2 && strcmp(r->s2, "poll") == 0) {
		if (api_agent_poll(cp, conn, agent, id)) /* a park is not an answer */
			metrics_observe(&cp->metrics.poll, now_us() - t0);
	} else if (strcmp(r->s0, "runs") == 0 && r->role == ROLE_AGENT && strcmp(r->s2, "events") == 0) {
		api_agent_events(cp, conn, agent, id);
		metrics_observe(&cp->metrics.events, now_us() - t0);
	} else if (strcmp(r->s0, "instances") == 0)
		api_inst_list(cp, conn);
	else if (strcmp(r->s0, "agents") == 0 && r->s2 && strcmp(r->s2, "instances") == 0 && r->nseg == 3)
		api_inst_snapshot(cp, conn, agent, id);
	else if (strcmp(r->s0, "agents") == 0 && r->s2 && strcmp(r->s2, "stats") == 0)
		api_inst_stats(cp, conn, agent, id);
	else if (strcmp(r->s0, "agents") == 0 && r->s2 && strcmp(r->s2, "job-types") == 0)
		r->role == ROLE_AGENT ? api_jobtypes_report(cp, conn, agent, id) : api_jobtypes_get(cp, conn, id);
	else if (strcmp(r->s0, "agents") == 0 && r->s2 && strcmp(r->s2, "console") == 0)
		api_console_post(cp, conn, agent, id);
	else if (strcmp(r->s0, "agents") == 0 && r->s4 && strcmp(r->s4, "console") == 0)
		api_console_command(cp, conn, id, seg[3]);
	else if (strcmp(r->s0, "agents") == 0 && r->s4 && strcmp(r->s4, "events") == 0)
		api_inst_events(cp, conn, agent, id, seg[3]);
	else if (strcmp(r->s0, "agents") == 0 && r->nseg == 4)
		api_inst_get(cp, conn, id, seg[3]);
	else if (strcmp(r->s0, "runs") == 0 && r->role == ROLE_AGENT)
		api_agent_result(cp, conn, agent, id);
	else if (strcmp(r->s0, "runs") == 0 && r->nseg == 3)
		api_ui_run_events(cp, conn, id);
	else if (strcmp(r->s0, "runs") == 0)
		api_ui_get_run(cp, conn, id);
	else if (strcmp(r->s0, "schedules") == 0 && r->nseg == 1)
		strcmp(r->method, "POST") == 0 ? api_sched_create(cp, conn) : api_sched_list(cp, conn);
	else if (strcmp(r->s0, "schedules") == 0 && strcmp(r->method, "GET") == 0)
		api_sched_get(cp, conn, id);
	else if (strcmp(r->s0, "schedules") == 0 && strcmp(r->method, "PATCH") == 0)
		api_sched_patch(cp, conn, id);
	else if (strcmp(r->s0, "schedules") == 0)
		api_sched_delete(cp, conn, id);
	else if (strcmp(r->s0, "audit") == 0)
		api_audit_list(cp, conn);
	else if (strcmp(r->s0, "cron-preview") == 0)
		api_cron_preview(cp, conn);
	else if (strcmp(r->s0, "jobs") == 0 && r->nseg == 1)
		strcmp(r->method, "POST") == 0 ? api_ui_create_job(cp, conn) : api_ui_list_jobs(cp, conn);
	else if (strcmp(r->s0, "jobs") == 0 && r->nseg == 2)
		api_ui_get_job(cp, conn, id);
	else if (strcmp(r->s0, "jobs") == 0 && strcmp(r->s2, "cancel") == 0)
		api_ui_cancel_job(cp, conn, id);
	else if (strcmp(r->s0, "jobs") == 0)
		api_ui_retry_job(cp, conn, id);
	else
		api_ui_agents(cp, conn);
}

static void handle(struct cp *cp, struct mg_connection *conn);

/* One row of the audit log: who did what, when, and the answer (mutating UI
 * calls, refused ones included). The row is inserted before the answer leaves,
 * so the log's order is the order calls arrived in (a client's next call can
 * never be logged before this one); the status is filled in once known.
 * remote is what civetweb saw: behind the accept front (front.c) that is
 * 127.0.0.1, so it is stored but not shown. Returns the row's seq, 0 if none. */
static long long audit_begin(struct cp *cp, const struct cp_who *who,
                             const struct mg_request_info *ri, int status)
{
	struct store_audit a = {
		.at = jv_now_real_ms(),
		.who = who->name,
		.role = users_role_name(who->role),
		.method = ri->request_method,
		.path = ri->local_uri ? ri->local_uri : "",
		.status = status,
		.remote = ri->remote_addr,
	};
	int64_t seq = 0;
	return store_audit_append(cp->store, &a, &seq) == 0 ? (long long)seq : 0;
}

static void audit_finish(struct cp *cp, long long seq, int status)
{
	if (seq <= 0)
		return;
	store_audit_set_status(cp->store, seq, status);
}

void api_audit_list(struct cp *cp, struct mg_connection *conn)
{
	char buf[32];
	long long limit = 100, cursor = 0;
	int q = http_query(conn, "limit", buf, sizeof(buf));
	char *end = NULL;
	if (q != 0 && (q < 0 || (limit = strtoll(buf, &end, 10)) < 1 || limit > CP_LIST_MAX || *end)) {
		http_send_error(conn, 400, "'limit' must be 1..%d", CP_LIST_MAX);
		return;
	}
	q = http_query(conn, "cursor", buf, sizeof(buf));
	if (q != 0 && (q < 0 || (cursor = strtoll(buf, &end, 10)) < 1 || *end)) {
		http_send_error(conn, 400, "'cursor' must be a value of nextCursor");
		return;
	}
	cJSON *arr = NULL;
	int64_t last = 0;
	if (store_audit_list(cp->store, cursor, (int)limit, &arr, &last) < 0) {
		http_send_error(conn, 500, "database error");
		return;
	}
	long long n = cJSON_GetArraySize(arr);
	http_send_page(conn, "entries", arr, n == limit && last > 1 ? last : 0);
}

int http_handle(struct mg_connection *conn, void *cbdata)
{
	struct cp *cp = cbdata;
	/* Counted so that a stop can let answers (long polls woken by it) go out
	 * before civetweb refuses further writes. */
	atomic_fetch_add(&cp->http_active, 1);
	handle(cp, conn);
	atomic_fetch_sub(&cp->http_active, 1);
	return 1;
}

static void handle(struct cp *cp, struct mg_connection *conn)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	char seg[SEGMENTS_MAX][CP_ID_MAX];
	int nseg = 0;
	if (!ri->local_uri || split_path(ri->local_uri, seg, &nseg) < 0) {
		http_send_error(conn, 404, "no such endpoint");
		return;
	}
	const struct route *match = NULL;
	bool path_known = false;
	for (size_t i = 0; i < JV_ARRAY_LEN(routes); i++) {
		const struct route *r = &routes[i];
		if (!path_matches(r, nseg, seg))
			continue;
		path_known = true;
		if (strcmp(ri->request_method, r->method) == 0)
			match = r;
	}
	if (!path_known) {
		http_send_error(conn, 404, "no such endpoint");
		return;
	}
	struct cp_agent *agent = NULL;
	struct cp_who who = {0};
	enum http_auth auth = http_authenticate(cp, conn, NULL, &agent, &who);
	if (auth == AUTH_NONE) {
		http_send_unauthorized(conn);
		return;
	}
	if (!match) {
		http_send_error(conn, 405, "method %s not allowed here", ri->request_method);
		return;
	}
	if (match->role == ROLE_ADMIN && auth != AUTH_ADMIN) {
		http_send_error(conn, 403, "this call needs the admin token");
		return;
	}
	bool mutating = strcmp(match->method, "GET") != 0;
	if (match->role == ROLE_ADMIN) {
		/* Reading and watching: viewer; anything that changes something: operator. */
		int need = mutating ? CP_ROLE_OPERATOR : CP_ROLE_VIEWER;
		if (who.role < need) {
			audit_begin(cp, &who, ri, 403);
			http_send_error(conn, 403, "token '%s' has the %s role; this call needs %s", who.name,
			                users_role_name(who.role), users_role_name(need));
			return;
		}
	}
	if (match->role == ROLE_AGENT && auth != AUTH_AGENT) {
		http_send_error(conn, 403, "this call needs an agent token");
		return;
	}
	if ((match->id_kind == 1 || match->id_kind == 3) && !jv_ident_valid(seg[1])) {
		http_send_error(conn, 400, "bad agent id in the path");
		return;
	}
	if (match->id_kind == 3 && !jv_ident_valid(seg[3])) {
		http_send_error(conn, 400, "bad instance id in the path");
		return;
	}
	if (match->id_kind == 2 && !jv_run_id_valid(seg[1])) {
		http_send_error(conn, 400, "bad id in the path");
		return;
	}
	long long audit = match->role == ROLE_ADMIN && mutating ? audit_begin(cp, &who, ri, 0) : 0;
	last_status = 0;
	dispatch_route(cp, conn, match, seg, agent);
	audit_finish(cp, audit, last_status);
}

int http_handle_page(struct mg_connection *conn, void *cbdata)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	if (!ri->local_uri || strcmp(ri->local_uri, "/") != 0) {
		http_send_error(conn, 404, "not found");
		return 1;
	}
	if (strcmp(ri->request_method, "GET") != 0 && strcmp(ri->request_method, "HEAD") != 0) {
		http_send_error(conn, 405, "method %s not allowed here", ri->request_method);
		return 1;
	}
	/* The page is inline HTML/JS/CSS; it may talk only to this origin. */
	mg_printf(conn,
	          "HTTP/1.1 200 OK\r\n"
	          "Content-Type: text/html; charset=utf-8\r\n"
	          "Content-Length: %zu\r\n"
	          "Cache-Control: no-store\r\n"
	          "X-Content-Type-Options: nosniff\r\n"
	          "X-Frame-Options: DENY\r\n"
	          "Referrer-Policy: no-referrer\r\n"
	          "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
	          "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; "
	          "form-action 'none'; frame-ancestors 'none'\r\n"
	          "Connection: close\r\n\r\n",
	          cp_ui_page_len);
	if (strcmp(ri->request_method, "GET") == 0)
		mg_write(conn, cp_ui_page, cp_ui_page_len);
	(void)cbdata;
	return 1;
}
