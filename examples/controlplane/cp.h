/* cp.h — the reference control plane's internal interfaces.
 *
 * jobvisor-cp is a small multi-threaded program: the accept front's thread
 * (front.c) reads each request whole and relays it, civetweb worker threads run
 * the HTTP handlers, one libwebsockets thread serves every WebSocket client
 * (the front tunnels them to it), and the
 * main thread waits for signals and runs the lease/ack/backoff sweep. All
 * durable state lives behind the storage interface (store.h: SQLite or
 * PostgreSQL; no SQL outside store_*.c); `struct cp.mu` serialises the small
 * in-memory state (agent wake-ups, the WebSocket ring, long-poll accounting)
 * and is never held across a store call on the hot paths (polls, job
 * creation, events): the store is thread-safe and the database orders
 * concurrent requests; the colder handlers still hold it around their store
 * calls. Functions documented as
 * "mu held" must be called with cp->mu locked; the others take it themselves.
 *
 * The wire protocol is docs/protocol.md; this header only wires modules. */
#ifndef JV_CP_H
#define JV_CP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "jobvisor/ident.h"
#include "store.h"

struct mg_connection;
struct ws_hub;
struct console_hub;
struct inst_stats;

#define CP_BODY_MAX (1024 * 1024)     /* any request body */
#define CP_EVENTS_PER_POST 1000       /* events in one POST .../events */
#define CP_MESSAGE_MAX 4096           /* event/step message, error message */
#define CP_STACK_MAX 65536            /* error stack */
#define CP_PARAMS_MAX 65536          /* a job's params, as JSON */
#define CP_OUTPUT_MAX 262144         /* a result's output, as JSON; larger is replaced by a note */
#define CP_TOKEN_MAX 512
#define CP_JSON_DEPTH_MAX 64          /* nesting of any JSON we parse from a client */
#define CP_SNAPSHOT_JOBS 200          /* jobs in a WebSocket snapshot */
#define CP_WS_CLIENTS 1024            /* WebSocket clients at once, by default (--ws-clients) */
#define CP_LIST_DEFAULT 50
#define CP_LIST_MAX 500
/* The accept front marks every request it relays with this header:
 * "X-JV-Front: SECRET WAIT" (SECRET: CP_FRONT_SECRET_LEN hex digits, random
 * per process; WAIT: 9 digits, the most a long poll may still wait in ms,
 * 999999999 = no cap). Clients may not send it (the front answers 400). A
 * poll so marked that would wait is answered "HTTP/1.1 299 Park" with
 * "X-JV-Park: AGENT_INDEX WAKE_GEN WAIT_MS" instead and parked in the front. */
#define CP_FRONT_HEADER "X-JV-Front"
#define CP_FRONT_SECRET_LEN 32
#define CP_FRONT_WAIT_ANY 999999999
#define CP_PARK_PREFIX "HTTP/1.1 299 "

/* One agent from the agents file. Only id and token are fixed after start;
 * the rest is guarded by cp->mu. */
struct cp_agent {
	char id[JV_IDENT_MAX + 1];
	char *token;
	size_t token_len;
	unsigned char token_hash[32]; /* SHA-256 of token: the by_hash index */
	pthread_cond_t cond;    /* long polls of this agent wait here (CLOCK_MONOTONIC) */
	uint64_t gen;           /* bumped when work or a cancel for this agent appears */
	int64_t last_seen_ms;   /* wall clock, 0 = never */
	int64_t pushed_seen_ms; /* last lastSeen pushed to WebSocket clients (agents.seen) */
	bool online_told;       /* this replica last told WebSocket clients it is online */
	int64_t stored_seen_ms; /* last lastSeen written to the database */
	int capacity;           /* from its last poll */
	bool instances_synced;  /* a snapshot of its instances came since this process started */
	uint64_t console_gen;   /* bumped when its console watch list or commands change */
	uint64_t console_told;  /* console_gen when a poll answer last carried the watch list */
	pthread_mutex_t inst_mu; /* its instance events, snapshots and stats one at a time (instances.c);
	                            held across their store calls, never with cp->mu */
};

struct cp_config {
	const char *listen;
	const char *db_path;  /* --db: a SQLite file path or a postgresql:// URL */
	const char *admin_token_file;
	const char *agents_file;
	const char *tokens_file; /* named tokens with roles (users.c); NULL = none */
	int lease_s;          /* a run not listed in polls for this long is lost */
	int ack_s;            /* an assignment without a first event for this long is lost */
	int poll_interval_s;  /* told to agents */
	int max_wait_s;       /* cap on a long poll's waitSeconds */
	int retry_backoff_s;  /* automatic retry delay: base * 2^(attempt-1), capped */
	int threads;          /* civetweb worker threads for requests */
	int ws_clients;       /* WebSocket clients at once (one thread serves all); 0 = CP_WS_CLIENTS */
	int catch_up_s;       /* a schedule firing missed by up to this long still runs (once) */
	int retention_days;   /* finished jobs older than this are deleted; 0 = keep forever */
	int retention_keep;   /* but never the newest this many jobs of an instance */
	bool sync_full;       /* PRAGMA synchronous=FULL instead of NORMAL */
	const char *tls_cert; /* --tls-cert / --tls-key: the front speaks TLS; NULL = plain HTTP */
	const char *tls_key;
	char **job_types;     /* extra accepted job types (--job-types), owned */
	size_t njob_types;
};

#define CP_HIST_BUCKETS 12
struct cp_hist {
	atomic_uint_fast64_t bucket[CP_HIST_BUCKETS]; /* cumulative: observations <= bound */
	atomic_uint_fast64_t count;
	atomic_uint_fast64_t sum_us;
};

struct cp_metrics {
	struct cp_hist poll, events;
	atomic_uint_fast64_t events_stored;
	atomic_uint_fast64_t instance_events_stored;
	atomic_uint_fast64_t front_accepted; /* client connections the accept front took */
};

/* Roles of UI tokens, each allowing what the ones below it allow. */
enum { CP_ROLE_VIEWER = 1, CP_ROLE_OPERATOR = 2, CP_ROLE_ADMIN = 3 };
/* Who made a UI call. */
struct cp_who {
	char name[JV_IDENT_MAX + 1];
	int role;
};
struct cp_user;

/* The retention sweep's progress, kept across sweeps (main thread only). */
struct cp_retention {
	int64_t next_check;       /* monotonic ms of the next look when idle */
	char current[CP_ID_MAX];  /* the job being deleted, "" when none */
	uint64_t events_total, jobs_total;
	int batch; /* events per delete, adapted to the store's speed */
};

struct cp {
	struct cp_config cfg;
	struct cp_metrics metrics;
	pthread_mutex_t mu;
	struct store *store;
	char *admin_token;
	size_t admin_token_len;
	struct cp_agent *agents;
	size_t nagents;
	struct cp_agent **by_hash; /* agents sorted by token_hash (fixed after start) */
	pthread_rwlock_t users_lock; /* guards users (replaced on SIGHUP) */
	struct cp_user *users;
	size_t nusers;
	int long_polls;     /* polls currently waiting (mu held) */
	int long_polls_max; /* beyond this a poll is answered at once */
	int ws_max;         /* WebSocket clients at once (--ws-clients) */
	uint16_t ws_port;   /* the WebSocket server on 127.0.0.1 (front.c tunnels /v1/ws there) */
	char front_secret[CP_FRONT_SECRET_LEN + 1]; /* fixed after start */
	struct front *front; /* parked long polls are woken through it (mu); NULL before/after */
	struct front_tls *tls; /* the front's TLS (front_tls.c); NULL = plain HTTP; set before front_start */
	atomic_int parked_polls; /* long polls parked in the front now */
	int64_t last_sweep_ms; /* wall clock of the previous sweep (main thread only) */
	struct cp_retention retention; /* retention.c (main thread only) */
	struct ws_hub *hub;
	struct console_hub *con;
	struct inst_stats *stats; /* latest resource stats per instance (instances.c; mu) */
	atomic_bool stopping;
	atomic_int http_active; /* HTTP handlers running now (drained before mg_stop) */
	char epoch[17];     /* random per process: WebSocket sequence numbers restart with it */
};

/* An error for the HTTP layer: status (400, 403, 404, 409, 500) and a message. */
struct cp_err {
	int status;
	char msg[1024];
};
void cp_err_set(struct cp_err *e, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- tokens.c ---- */
/* Read the admin token file / agents file; both refused when group/other can access them. */
int tokens_load_admin(const char *path, char **token, size_t *len, char *err, size_t errlen);
int tokens_load_agents(const char *path, struct cp_agent **agents, size_t *n, char *err, size_t errlen);
/* Constant-time equality (time depends only on the lengths). */
bool tokens_equal(const char *a, size_t alen, const char *b, size_t blen);
/* Index the agents by their tokens' hashes (after loading them); -ENOMEM. */
int tokens_index(struct cp *cp);
/* The agent whose token this is (borrowed), NULL when none: one hash and a
 * binary search, not a comparison with every agent's token. */
struct cp_agent *tokens_agent_by_token(struct cp *cp, const char *tok, size_t len);
/* Agent by id (borrowed), NULL when unknown. */
struct cp_agent *tokens_agent_find(struct cp *cp, const char *id);
void tokens_free_agents(struct cp_agent *agents, size_t n);

/* ---- retention.c ---- */
/* Delete expired jobs a batch at a time (main thread, every sweep). */
void retention_tick(struct cp *cp);

/* ---- users.c ---- */
int users_load(struct cp *cp, char *err, size_t errlen); /* count, or -errno with err */
void users_reload(struct cp *cp);                         /* SIGHUP */
int users_find(struct cp *cp, const char *token, size_t len, struct cp_who *who); /* 1 found */
void users_free(struct cp *cp);
const char *users_role_name(int role);
int users_hash(const char *token, size_t len, unsigned char out[32]);
int users_hash_main(void); /* --hash-token */
/* ---- audit (http.c) ---- */
void api_audit_list(struct cp *cp, struct mg_connection *conn);

/* ---- agents ---- */
/* Every agent as GET /v1/agents lists it (ws.c): the agents' memory copied
 * under cp->mu, the RUNNING counts from one store query without it. Do not
 * hold cp->mu. Returned-owned; NULL when out of memory. */
cJSON *agents_list_json(struct cp *cp);

/* ---- lifecycle.c: every state change, one transaction each (mu held) ---- */
struct lc_new_job {
	const char *job_id; /* NULL = generate */
	const char *type;
	const char *agent_id;
	const char *instance_id;
	const cJSON *params;
	int max_attempts;
	int timeout_s;       /* 0 = agent default */
	int cancel_grace_s;  /* 0 = agent default */
	const char *schedule_id; /* the schedule that fired it, NULL = none */
	/* A schedule firing claimed in the creating transaction (NULL = none):
	 * when another replica claimed it first, lc_job_create returns -EAGAIN. */
	const struct store_sched_claim *claim;
};
/* Create (CREATED) then enqueue (QUEUED): store_job_submit. *job is the new
 * job (returned-owned); *created is false when job_id already named an
 * identical job. Do NOT hold cp->mu (it takes it for the wake-up only). */
int lc_job_create(struct cp *cp, const struct lc_new_job *nj, cJSON **job, bool *created, struct cp_err *err);
/* A CREATED job to QUEUED with its first run; 0 also when it was not
 * CREATED (queued meanwhile). Do NOT hold cp->mu. */
int lc_job_enqueue(struct cp *cp, const char *job_id);
/* Cancel, or retry a FAILED or CANCELLED job: 0, or <0 with err set.
 * Do NOT hold cp->mu (it takes it for the publication and wake-up only). */
int lc_job_cancel(struct cp *cp, const char *job_id, struct cp_err *err);
int lc_job_retry(struct cp *cp, const char *job_id, struct cp_err *err);
/* End a QUEUED or RUNNING run: status COMPLETED/FAILED/CANCELLED, by
 * "agent" or "server". output and error are borrowed (may be NULL).
 * lost_before: a lost run (sweep) is ended only if still lost at that
 * time; 0 = always. Decides the job's next state (terminal, or RETRIED with
 * a new run) and wakes the agent. 0, 1 when the run was finished before
 * (nothing changed), <0 on error. Do NOT hold cp->mu. */
int lc_run_finish(struct cp *cp, const char *run_id, const char *status, const cJSON *output,
                  const cJSON *error, const char *finished_by, int64_t lost_before);
/* {"type": "job", "job": job} for ws_publish (job consumed); NULL for NULL. */
cJSON *lc_job_msg(cJSON *job);
/* Publish the current state of a job to WebSocket clients and wake the
 * long polls of agent_id (NULL: none) on every replica (ws_publish_wake).
 * Do NOT hold cp->mu. */
void lc_publish_job_wake(struct cp *cp, const char *job_id, const char *agent_id);
/* Bump the agent's wake generation and wake its long polls. */
void lc_wake_agent(struct cp *cp, const char *agent_id);
/* Its long polls parked in the front look again (after a->gen or a->console_gen moved). */
void lc_wake_parked(struct cp *cp, struct cp_agent *a);
bool lc_job_type_allowed(const struct cp *cp, const char *type);
bool lc_status_valid(const char *status);
bool lc_status_terminal(const char *status);

/* ---- dispatch.c ---- */
struct poll_running {
	const char *run_id; /* borrowed from the request JSON */
	int64_t last_seq;
};
struct poll_req {
	int capacity;
	int wait_s;
	bool can_park;       /* came through the front: park instead of waiting */
	int64_t wait_cap_ms; /* the front's cap on the wait (what is left of a parked poll's) */
	struct poll_running *running;
	size_t nrunning;
};
/* A poll to park (req->can_park): where, which wake generation it saw, how long it may wait. */
struct poll_park {
	size_t agent_index;
	uint64_t gen;
	int64_t wait_ms;
};
/* Renew leases, assign work, collect cancels, maybe wait. Takes mu. 0 with
 * *answer returned-owned; 1 with *park filled instead when the poll would
 * wait and may park; <0 on error. */
int dispatch_poll(struct cp *cp, struct cp_agent *agent, const struct poll_req *req, cJSON **answer,
                  struct poll_park *park);
/* Lost runs (ack deadline, lease), retries whose backoff ended. Main thread; do not hold mu. */
void dispatch_sweep(struct cp *cp);
/* After a restart: give every active run a fresh lease and ack window, queue CREATED jobs. */
int dispatch_recover(struct cp *cp);

/* ---- events.c (mu NOT held: takes it itself for in-memory publishing) ---- */
/* Store validated events of a run (each (run, seq) once), update the run's
 * progress and ack, publish new ones. *ack_seq = highest contiguous seq. */
int events_store(struct cp *cp, const char *run_id, const struct store_run_state *rs,
                 const cJSON *events, int64_t *ack_seq);
/* Validate one event object against its run; NULL when fine, else a static message. */
const char *events_validate(const cJSON *ev, const char *run_id, const struct store_run_state *rs);

/* ---- http.c ---- */
enum http_auth { AUTH_NONE = 0, AUTH_ADMIN, AUTH_AGENT };
/* AUTH_ADMIN = any UI token (the admin token file, or a named token of any
 * role: who says which); AUTH_AGENT = an agent's token. who may be NULL. */
enum http_auth http_authenticate(struct cp *cp, const struct mg_connection *conn, const char *query_token,
                                 struct cp_agent **agent, struct cp_who *who);
/* Which principal a token (len bytes, not necessarily NUL-terminated at len) is; who may be NULL. */
enum http_auth http_token_auth(struct cp *cp, const char *tok, size_t len, struct cp_agent **agent,
                               struct cp_who *who);
int http_read_json(struct mg_connection *conn, cJSON **out, struct cp_err *err);
/* The request body as JSON into *out; -1 after answering the error, else 0. */
int http_read_body(struct mg_connection *conn, cJSON **out);
/* An agent's request about itself: 403 when the token is another agent's,
 * the error when the body is not JSON; -1 after answering so, else 0 with *out. */
int http_read_agent_json(struct mg_connection *conn, const struct cp_agent *agent,
                         const char *agent_id, cJSON **out);
void http_send_json(struct mg_connection *conn, int status, const cJSON *body);
void http_send_error(struct mg_connection *conn, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void http_send_unauthorized(struct mg_connection *conn);
/* {key: arr} with 200, arr consumed; 500 "database error" when arr is NULL. */
void http_send_list(struct mg_connection *conn, const char *key, cJSON *arr);
/* {key: arr, nextCursor: "N" or null (next <= 0)} with 200; arr consumed. */
void http_send_page(struct mg_connection *conn, const char *key, cJSON *arr, int64_t next);
/* An answer built while holding cp->mu and sent after unlocking it: no
 * network write ever waits on a slow client with the lock held. */
struct http_answer {
	int status;  /* 0 = not set yet */
	cJSON *body; /* owned */
};
/* Set the answer (once: the first one stands). body is consumed. */
void http_answer_json(struct http_answer *a, int status, cJSON *body);
void http_answer_error(struct http_answer *a, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Send it (500 when never set or out of memory) and free it. Never under cp->mu. */
void http_send_answer(struct mg_connection *conn, struct http_answer *a);
/* The request router registered with civetweb for "/v1" and "/". */
int http_handle(struct mg_connection *conn, void *cbdata);
int http_handle_page(struct mg_connection *conn, void *cbdata);
/* Query parameter into buf; 1 found, 0 absent, -1 too long. */
int http_query(const struct mg_connection *conn, const char *name, char *buf, size_t len);

/* ---- api_agent.c / api_ui.c: handlers; path segments after /v1 ---- */
/* false when the poll was parked in the front (no answer to the client yet). */
bool api_agent_poll(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id);
void api_agent_events(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *run_id);
void api_agent_result(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *run_id);
void api_ui_create_job(struct cp *cp, struct mg_connection *conn);
void api_ui_list_jobs(struct cp *cp, struct mg_connection *conn);
void api_ui_get_job(struct cp *cp, struct mg_connection *conn, const char *job_id);
void api_ui_cancel_job(struct cp *cp, struct mg_connection *conn, const char *job_id);
void api_ui_retry_job(struct cp *cp, struct mg_connection *conn, const char *job_id);
void api_ui_get_run(struct cp *cp, struct mg_connection *conn, const char *run_id);
void api_ui_run_events(struct cp *cp, struct mg_connection *conn, const char *run_id);
void api_ui_agents(struct cp *cp, struct mg_connection *conn);

/* ---- jobtypes.c ---- */
void api_jobtypes_report(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id);
void api_jobtypes_get(struct cp *cp, struct mg_connection *conn, const char *agent_id);
/* May a job of this type with these params go to this agent? Against the
 * types it reported, or the known type names when it never reported. 0, or
 * <0 with err (400 naming the parameter, 500). A store read: no cp->mu needed. */
int jobtypes_check(struct cp *cp, const char *agent_id, const char *type, const cJSON *params,
                   struct cp_err *err);

/* ---- api_ui.c ---- */
/* Check a job body {type, agentId, instanceId, params, maxAttempts, ...}
 * (without the job types check, a store read: jobtypes_check). NULL when
 * fine, else why (may be buf). nj borrows from body. */
const char *api_ui_validate_job(struct cp *cp, const cJSON *body, struct lc_new_job *nj, char *buf, size_t len);

/* ---- schedules.c ---- */
void api_sched_create(struct cp *cp, struct mg_connection *conn);
void api_sched_list(struct cp *cp, struct mg_connection *conn);
void api_sched_get(struct cp *cp, struct mg_connection *conn, const char *id);
void api_sched_patch(struct cp *cp, struct mg_connection *conn, const char *id);
void api_sched_delete(struct cp *cp, struct mg_connection *conn, const char *id);
void api_cron_preview(struct cp *cp, struct mg_connection *conn);
/* Fire what is due (main thread, every sweep). Takes mu per schedule. */
void schedules_tick(struct cp *cp);

/* ---- front.c: the public listener; civetweb only sees complete requests ---- */
struct front;
/* Listen on `listen` ("A.B.C.D:PORT") and relay complete requests to civetweb
 * on 127.0.0.1:backend_port. *out returned-owned: front_stop. */
int front_start(struct cp *cp, const char *listen, uint16_t backend_port, struct front **out, char *err,
                size_t errlen);
/* The port really listened on (for PORT 0). */
uint16_t front_port(const struct front *f);
/* Stop the thread, close every connection, free. NULL is a no-op. */
void front_stop(struct front *f);
/* A wake-up for the agent (index in cp->agents) at generation gen; any thread. */
void front_wake(struct front *f, size_t agent_index, uint64_t gen);
/* Stopping: send every parked poll on (handlers answer at once), then wait
 * up to ms for the relayed requests to finish. */
void front_drain(struct front *f, int ms);
/* ---- front_tls.c: TLS on the front (--tls-cert, --tls-key) ---- */
struct front_tls;
/* Load the certificate chain and key; a clear message in err when a file is
 * missing, unreadable, open to others (the key), not PEM, or the two do not
 * match. *out returned-owned: front_tls_free. Main thread. */
int front_tls_open(const char *cert, const char *key, struct front_tls **out, char *err, size_t errlen);
/* Read the same files again (SIGHUP): new connections use them, open ones
 * keep theirs; on failure nothing changes. Main thread. */
int front_tls_reload(struct front_tls *t, char *err, size_t errlen);
/* After front_stop. NULL is a no-op. */
void front_tls_free(struct front_tls *t);
/* ---- instances.c ---- */
void api_inst_snapshot(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id);
void api_inst_events(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id,
                     const char *instance_id);
void api_inst_list(struct cp *cp, struct mg_connection *conn);
void api_inst_get(struct cp *cp, struct mg_connection *conn, const char *agent_id, const char *instance_id);
void api_inst_stats(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id);
void inst_stats_free(struct cp *cp);
/* Every instance not removed, as in GET /v1/instances; returned-owned. One
 * store call, then cp->mu for the stats: do not hold cp->mu. */
cJSON *inst_list_json(struct cp *cp, const char *agent_id, const char *state);

/* ---- console.c (its lock is a leaf: callers may hold cp->mu or the hub's list lock) ---- */
int console_start(struct cp *cp);
void console_free(struct cp *cp);
/* Watch (on) or unwatch an instance's console for a WebSocket client. Returns
 * the kept tail after since (returned-owned array of {seq, line}) when
 * watching, NULL otherwise or with *why set. Wakes the agent when its watch
 * list changed. Do not hold cp->mu. */
cJSON *console_watch(struct cp *cp, const void *client, const char *agent, const char *inst, bool on,
                     uint64_t since, const char **why);
void console_client_gone(struct cp *cp, const void *client); /* do not hold cp->mu */
/* True when client watches agent/inst and lacks lines up to last_seq (0: any batch). */
bool console_watching(struct cp *cp, const void *client, const char *agent, const char *inst,
                      uint64_t last_seq);
/* [{instanceId, since}] watched on this agent; returned-owned. */
cJSON *console_watch_list(struct cp *cp, const char *agent_id);
/* Commands waiting for this agent, removed from the queue; returned-owned array. */
cJSON *console_take_commands(struct cp *cp, const char *agent_id);
bool console_has_commands(struct cp *cp, const char *agent_id);
/* Expire overdue commands (pushing `expired`), wake agents whose commands are due again. */
void console_sweep(struct cp *cp); /* do not hold cp->mu */
void api_console_command(struct cp *cp, struct mg_connection *conn, const char *agent_id, const char *inst);
void api_console_post(struct cp *cp, struct mg_connection *conn, struct cp_agent *agent, const char *agent_id);

/* ---- ws.c ---- */
int ws_hub_start(struct cp *cp, struct ws_hub **out);
/* The libwebsockets server on 127.0.0.1:cp->ws_port (ws_lws.c) and its one
 * service thread. Stop the thread before mg_stop; free the hub (closing the
 * clients) after mg_stop. */
void ws_hub_stop(struct ws_hub *hub);
void ws_hub_free(struct ws_hub *hub);
/* Stamp msg with the next sequence number and queue it for every client. Consumes msg. mu held. */
void ws_publish(struct cp *cp, cJSON *msg);
/* ws_publish of n messages (all consumed, NULLs skipped): on PostgreSQL one
 * round trip for all of them. mu held. */
void ws_publish_many(struct cp *cp, cJSON **msgs, size_t n);
/* ws_publish_many, then wake the long polls of agent wake on every replica
 * (NULL = none). Do not hold cp->mu: it takes it only for the in-memory
 * ring (SQLite) and the local wake-up; on PostgreSQL the messages and the
 * wake-up notification are one statement, one round trip. */
void ws_publish_wake(struct cp *cp, cJSON **msgs, size_t n, const char *wake);
/* Queue a console message (text consumed) for the clients watching agent/inst;
 * unnumbered, not kept in the ring. Do not hold cp->mu. */
void ws_console_send(struct cp *cp, const char *agent, const char *inst, char *text, uint64_t last_seq);
/* Agent liveness for WebSocket clients: at most once a second (WS_SEEN_MS)
 * one `agents.seen` message naming the agents seen since the last, and an
 * `agent` message for each that went quiet. Main thread; takes mu. */
void ws_tick(struct cp *cp);

/* ---- metrics.c ---- */
void metrics_observe(struct cp_hist *h, int64_t elapsed_us);
int metrics_handle(struct mg_connection *conn, void *cbdata);        /* GET /metrics */
int metrics_handle_health(struct mg_connection *conn, void *cbdata); /* GET /healthz, /readyz */

/* ---- ui_page (generated from ui_page.html at build time) ---- */
extern const char cp_ui_page[];
extern const size_t cp_ui_page_len;

#endif
