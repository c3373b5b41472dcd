/* main.c — jobvisor-cp: command line, wiring, signals, the sweep timer.
 *
 *   jobvisor-cp --listen ADDR:PORT --db FILE.sqlite --admin-token-file F --agents-file F [options]
 *
 * The composition root of the reference control plane: it loads the token
 * files, opens the database (migrating it), starts the WebSocket hub and
 * civetweb and the accept front (TLS with --tls-cert/--tls-key), prints
 * "listening on http[s]://ADDR:PORT" on stdout (the real port when PORT is 0,
 * so tests can use OS-assigned ports), then waits for SIGINT or SIGTERM while
 * running the lease/ack sweep and a WAL checkpoint twice a second (SIGHUP
 * re-reads the named tokens and the TLS files). Signals are blocked in every
 * thread and taken with sigtimedwait here, so no work is done in a handler.
 * Exit status: 0 after a signal, 1 runtime failure, 2 usage
 * or configuration error. */
#include "cp.h"
#include "replicas.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define SWEEP_MS 500

static void usage(FILE *f)
{
	fputs("usage: jobvisor-cp --listen ADDR:PORT --db FILE.sqlite --admin-token-file F --agents-file F\n"
	      "                   [--job-types T1,T2] [--lease-seconds N] [--ack-seconds N]\n"
	      "                   [--poll-interval N] [--max-wait N] [--retry-backoff N] [--threads N]\n"
	      "                   [--ws-clients N]\n"
	      "                   [--sync normal|full] [--schedule-catch-up N]\n"
	      "                   [--retention-days N] [--retention-keep N] [--tokens-file F]\n"
	      "                   [--tls-cert FILE --tls-key FILE] [--log-level L] [--log-format logfmt|json]\n"
	      "\n"
	      "  --listen ADDR:PORT      IPv4 address and port; port 0 picks a free port, printed on stdout\n"
	      "  --tls-cert FILE         serve HTTPS: PEM certificate chain (server first, then intermediates)\n"
	      "  --tls-key FILE          its PEM private key, unencrypted, not readable by others; both\n"
	      "                          files are read again on SIGHUP (default: plain HTTP)\n"
	      "  --db FILE|URL           SQLite database file, or postgresql://user@host/dbname\n"
	      "                          (created/migrated as needed)\n"
	      "  --admin-token-file F    one token for UI and panel calls (mode 0600)\n"
	      "  --agents-file F         'agentId token' per line, '#' comments (mode 0600)\n"
	      "  --tokens-file F         named UI tokens: 'NAME admin|operator|viewer sha256:HEX' per line\n"
	      "                          (mode 0600; re-read on SIGHUP)\n"
	      "  --hash-token            print sha256:HEX of a token read on stdin, for --tokens-file\n"
	      "  --job-types LIST        custom job types accepted besides the 11 standard ones\n"
	      "  --lease-seconds N       a run not listed in its agent's polls for N s is lost (60)\n"
	      "  --ack-seconds N         an assignment without a first event for N s is lost (30)\n"
	      "  --poll-interval N       poll interval told to agents (3)\n"
	      "  --max-wait N            longest long poll in seconds (25)\n"
	      "  --retry-backoff N       automatic retry delay N * 2^(attempt-1) s, capped at 300 (5)\n"
	      "  --threads N             HTTP worker threads (64); long polls wait without one\n"
	      "  --ws-clients N          WebSocket clients at once, all served by one thread\n"
	      "                          (1024, at most 4096); see docs/scaling.md\n"
	      "  --sync normal|full      SQLite synchronous mode (normal)\n"
	      "  --schedule-catch-up N   a schedule firing missed by at most N s (downtime) runs once\n"
	      "                          at start-up; older ones are skipped (3600)\n"
	      "  --retention-days N      delete finished jobs (runs, events) older than N days; 0 = never (30)\n"
	      "  --retention-keep N      but keep the newest N jobs of every instance (100)\n",
	      f);
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
	char *end = NULL;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || !*s || *end || v < lo || v > hi)
		return -1;
	*out = (int)v;
	return 0;
}

/* "A.B.C.D:PORT" -> civetweb's listening_ports value (same text). */
static int check_listen(const char *s)
{
	const char *colon = strrchr(s, ':');
	if (!colon || colon == s || strchr(s, '[') || colon - s > 15)
		return -1;
	int port;
	if (parse_int(colon + 1, 0, 65535, &port) < 0)
		return -1;
	unsigned a, b, c, d;
	char tail;
	char host[16];
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	if (sscanf(host, "%u.%u.%u.%u%c", &a, &b, &c, &d, &tail) != 4 || a > 255 || b > 255 || c > 255 || d > 255)
		return -1;
	return 0;
}

static int parse_job_types(char *list, struct cp_config *cfg)
{
	size_t n = 1;
	for (const char *p = list; *p; p++)
		n += *p == ',';
	cfg->job_types = calloc(n, sizeof(char *));
	if (!cfg->job_types)
		return -1;
	char *save = NULL;
	for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (!jv_job_type_valid(t)) {
			fprintf(stderr, "jobvisor-cp: bad job type '%s' (must match ^[A-Z][A-Z0-9_]{0,63}$)\n", t);
			return -1;
		}
		cfg->job_types[cfg->njob_types++] = t;
	}
	return 0;
}

static int parse_args(int argc, char **argv, struct cp_config *cfg)
{
	static const struct option opts[] = {
		{"listen", required_argument, NULL, 'l'},
		{"db", required_argument, NULL, 'd'},
		{"admin-token-file", required_argument, NULL, 'a'},
		{"agents-file", required_argument, NULL, 'g'},
		{"tokens-file", required_argument, NULL, 'T'},
		{"hash-token", no_argument, NULL, 'H'},
		{"job-types", required_argument, NULL, 'j'},
		{"lease-seconds", required_argument, NULL, 'L'},
		{"ack-seconds", required_argument, NULL, 'A'},
		{"poll-interval", required_argument, NULL, 'p'},
		{"max-wait", required_argument, NULL, 'w'},
		{"retry-backoff", required_argument, NULL, 'b'},
		{"threads", required_argument, NULL, 't'},
		{"ws-clients", required_argument, NULL, 'W'},
		{"sync", required_argument, NULL, 's'},
		{"schedule-catch-up", required_argument, NULL, 'C'},
		{"retention-days", required_argument, NULL, 'R'},
		{"retention-keep", required_argument, NULL, 'K'},
		{"tls-cert", required_argument, NULL, 'c'},
		{"tls-key", required_argument, NULL, 'k'},
		{"log-level", required_argument, NULL, 'v'},
		{"log-format", required_argument, NULL, 'f'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	int level = JV_LOG_INFO, format = JV_LOG_LOGFMT, c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		int bad = 0;
		switch (c) {
		case 'l': cfg->listen = optarg; bad = check_listen(optarg); break;
		case 'd': cfg->db_path = optarg; break;
		case 'a': cfg->admin_token_file = optarg; break;
		case 'g': cfg->agents_file = optarg; break;
		case 'T': cfg->tokens_file = optarg; break;
		case 'c': cfg->tls_cert = optarg; break;
		case 'k': cfg->tls_key = optarg; break;
		case 'H': exit(users_hash_main());
		case 'j': bad = parse_job_types(optarg, cfg); break;
		case 'L': bad = parse_int(optarg, 1, 86400, &cfg->lease_s); break;
		case 'A': bad = parse_int(optarg, 1, 86400, &cfg->ack_s); break;
		case 'p': bad = parse_int(optarg, 1, 300, &cfg->poll_interval_s); break;
		case 'w': bad = parse_int(optarg, 0, 300, &cfg->max_wait_s); break;
		case 'b': bad = parse_int(optarg, 0, 3600, &cfg->retry_backoff_s); break;
		case 't': bad = parse_int(optarg, 8, 1024, &cfg->threads); break;
		case 'W': bad = parse_int(optarg, 1, 4096, &cfg->ws_clients); break;
		case 'C': bad = parse_int(optarg, 0, 30 * 86400, &cfg->catch_up_s); break;
		case 'R': bad = parse_int(optarg, 0, 36500, &cfg->retention_days); break;
		case 'K': bad = parse_int(optarg, 0, 1000000, &cfg->retention_keep); break;
		case 's':
			bad = strcmp(optarg, "full") != 0 && strcmp(optarg, "normal") != 0;
			cfg->sync_full = strcmp(optarg, "full") == 0;
			break;
		case 'v': bad = (level = jv_log_level_parse(optarg)) < 0; break;
		case 'f': bad = (format = jv_log_format_parse(optarg)) < 0; break;
		case 'h': usage(stdout); exit(0);
		case 'V': printf("jobvisor-cp %s\n", JV_VERSION); exit(0);
		default: usage(stderr); return -1;
		}
		if (bad) {
			const char *name = "?";
			for (const struct option *o = opts; o->name; o++)
				if (o->val == c)
					name = o->name;
			fprintf(stderr, "jobvisor-cp: bad value '%s' for --%s (see --help)\n", optarg, name);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "jobvisor-cp: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (!cfg->listen || !cfg->db_path || !cfg->admin_token_file || !cfg->agents_file) {
		fputs("jobvisor-cp: --listen, --db, --admin-token-file and --agents-file are required\n", stderr);
		usage(stderr);
		return -1;
	}
	if (!cfg->tls_cert != !cfg->tls_key) {
		fputs("jobvisor-cp: --tls-cert and --tls-key go together (a certificate and its key)\n", stderr);
		return -1;
	}
	jv_log_setup((enum jv_log_format)format, (enum jv_log_level)level);
	return 0;
}

static int log_from_civetweb(const struct mg_connection *conn, const char *message)
{
	(void)conn;
	jv_warn(NULL, NULL, "http: %s", message);
	return 1;
}

static int start_http(struct cp *cp, struct mg_context **out)
{
	char threads[16], queue[16];
	snprintf(threads, sizeof(threads), "%d", cp->cfg.threads);
	snprintf(queue, sizeof(queue), "%d", cp->cfg.threads * 16);
	const char *options[] = {
		/* Only the front (front.c) talks to civetweb; it listens publicly. */
		"listening_ports", "127.0.0.1:0",
		"num_threads", threads,
		"connection_queue", queue,
		"listen_backlog", "1024",
		"request_timeout_ms", "10000",
		"enable_keep_alive", "no",
		"max_request_size", "32768", /* the front refuses heads over 16 KiB first */
		NULL,
	};
	struct mg_callbacks cb;
	memset(&cb, 0, sizeof(cb));
	cb.log_message = log_from_civetweb;
	struct mg_init_data init = {.callbacks = &cb, .user_data = cp, .configuration_options = options};
	char errtxt[256] = "";
	struct mg_error_data errd = {.text = errtxt, .text_buffer_size = sizeof(errtxt)};
	struct mg_context *ctx = mg_start2(&init, &errd);
	if (!ctx) {
		jv_error(NULL, NULL, "cannot listen on '%s': %s", cp->cfg.listen, errtxt[0] ? errtxt : "unknown error");
		return -1;
	}
	mg_set_request_handler(ctx, "/v1", http_handle, cp);
	mg_set_request_handler(ctx, "/", http_handle_page, cp);
	mg_set_request_handler(ctx, "/metrics", metrics_handle, cp);
	mg_set_request_handler(ctx, "/healthz", metrics_handle_health, cp);
	mg_set_request_handler(ctx, "/readyz", metrics_handle_health, cp);
	*out = ctx;
	return 0;
}

static int backend_port(struct mg_context *ctx)
{
	struct mg_server_port ports[4];
	int n = mg_get_server_ports(ctx, 4, ports);
	return n > 0 ? ports[0].port : -1;
}

/* mg_stop returns once civetweb's master thread sees the stop flag, which it
 * checks only when its poll of the listening socket returns: up to 2 s later
 * on an idle server, and every stop of the control plane waited that long.
 * A connection to that socket ends the poll, so while mg_stop runs in a
 * thread of its own this one knocks every 10 ms (each connection is closed
 * unsent: a worker that still takes one reads EOF and closes it). */
struct http_stop {
	struct mg_context *ctx;
	atomic_bool done;
};

static void *http_stop_thread(void *arg)
{
	struct http_stop *hs = arg;
	mg_stop(hs->ctx);
	atomic_store(&hs->done, true);
	return NULL;
}

static void stop_http(struct mg_context *ctx)
{
	struct http_stop hs = {.ctx = ctx};
	int port = backend_port(ctx);
	pthread_t t;
	if (port <= 0 || pthread_create(&t, NULL, http_stop_thread, &hs) != 0) {
		mg_stop(ctx);
		return;
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
	                        .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct timespec step = {.tv_sec = 0, .tv_nsec = 10 * 1000000L};
	while (!atomic_load(&hs.done)) {
		nanosleep(&step, NULL);
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0) {
			(void)!connect(fd, (const struct sockaddr *)&a, sizeof(a));
			close(fd);
		}
	}
	pthread_join(t, NULL);
}

static void announce(const struct front *front, const char *listen, bool tls)
{
	const char *colon = strrchr(listen, ':');
	int host_len = (int)(colon - listen);
	printf("listening on %s://%.*s:%u\n", tls ? "https" : "http", host_len, listen, (unsigned)front_port(front));
	fflush(stdout);
}

/* Answer waiting long polls and let running handlers finish (at most 5 s):
 * once mg_stop starts, civetweb refuses to write answers. */
static void shutdown_drain(struct cp *cp, struct front *front)
{
	atomic_store(&cp->stopping, true);
	pthread_mutex_lock(&cp->mu);
	for (size_t i = 0; i < cp->nagents; i++)
		pthread_cond_broadcast(&cp->agents[i].cond);
	cp->front = NULL;
	pthread_mutex_unlock(&cp->mu);
	front_drain(front, 5000); /* parked polls answered */
	struct timespec step = {.tv_sec = 0, .tv_nsec = 20 * 1000000L};
	for (int i = 0; i < 250 && atomic_load(&cp->http_active) > 0; i++)
		nanosleep(&step, NULL);
}

/* SIGINT, SIGTERM and SIGHUP blocked (main waits for them), SIGPIPE ignored. */
static void block_signals(sigset_t *sigs)
{
	sigemptyset(sigs);
	sigaddset(sigs, SIGINT);
	sigaddset(sigs, SIGTERM);
	sigaddset(sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* The users, the admin token and the agents' tokens (no agent may use the
 * admin's), and the TLS certificate and key. -1 (logged) on failure. */
static int load_credentials(struct cp *cp)
{
	char err[512];
	if (users_load(cp, err, sizeof(err)) < 0) {
		jv_error(NULL, NULL, "%s", err);
		return -1;
	}
	if (tokens_load_admin(cp->cfg.admin_token_file, &cp->admin_token, &cp->admin_token_len, err,
	                      sizeof(err)) < 0 ||
	    tokens_load_agents(cp->cfg.agents_file, &cp->agents, &cp->nagents, err, sizeof(err)) < 0) {
		jv_error(NULL, NULL, "%s", err);
		return -1;
	}
	if (tokens_index(cp) < 0) {
		jv_error(NULL, NULL, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < cp->nagents; i++) {
		if (tokens_equal(cp->admin_token, cp->admin_token_len, cp->agents[i].token,
		                 cp->agents[i].token_len)) {
			jv_error(NULL, NULL, "agent '%s' uses the admin token; give it its own", cp->agents[i].id);
			return -1;
		}
	}
	if (cp->cfg.tls_cert && front_tls_open(cp->cfg.tls_cert, cp->cfg.tls_key, &cp->tls, err, sizeof(err)) < 0) {
		jv_error(NULL, NULL, "%s", err);
		return -1;
	}
	return 0;
}

/* SIGHUP: the named tokens, and the certificate and key again (a renewed
 * certificate) for new connections; on any error the current ones stay. */
static void on_sighup(struct cp *cp)
{
	char err[512];
	users_reload(cp);
	if (!cp->tls)
		return;
	if (front_tls_reload(cp->tls, err, sizeof(err)) < 0)
		jv_error(NULL, NULL, "SIGHUP: keeping the current TLS certificate: %s", err);
	else
		jv_info(NULL, NULL, "SIGHUP: TLS certificate reloaded from '%s'", cp->cfg.tls_cert);
}

/* The per-process random values and the thread budget. */
static void process_identity(struct cp *cp)
{
	snprintf(cp->epoch, sizeof(cp->epoch), "%016llx", (unsigned long long)jv_random_u64());
	snprintf(cp->front_secret, sizeof(cp->front_secret), "%016llx%016llx", (unsigned long long)jv_random_u64(),
	         (unsigned long long)jv_random_u64());
	cp->ws_max = cp->cfg.ws_clients ? cp->cfg.ws_clients : CP_WS_CLIENTS;
	/* Only polls that bypass the front wait in a thread. */
	int reserve = cp->cfg.threads / 4 > 4 ? cp->cfg.threads / 4 : 4;
	cp->long_polls_max = cp->cfg.threads - reserve;
}

/* The WebSocket server and, on PostgreSQL, the listener for other replicas. */
static int start_hub(struct cp *cp)
{
	char err[512];
	if (ws_hub_start(cp, &cp->hub) < 0) {
		jv_error(NULL, NULL, "cannot start the WebSocket server");
		return -1;
	}
	if (replicas_start(cp, err, sizeof(err)) < 0) {
		jv_error(NULL, NULL, "%s", err);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct cp cp;
	memset(&cp, 0, sizeof(cp));
	cp.cfg = (struct cp_config){.lease_s = 60, .ack_s = 30, .poll_interval_s = 3, .max_wait_s = 25,
	                            .retry_backoff_s = 5, .threads = 64,
	                            .catch_up_s = 3600, .retention_days = 30, .retention_keep = 100};
	jv_log_set_component("cp");
	if (parse_args(argc, argv, &cp.cfg) < 0) {
		free(cp.cfg.job_types);
		return 2;
	}
	int status = 2;
	struct mg_context *ctx = NULL;
	struct front *front = NULL;
	char err[512];
	pthread_mutex_init(&cp.mu, NULL);
	pthread_rwlock_init(&cp.users_lock, NULL);
	if (load_credentials(&cp) < 0)
		goto out;
	process_identity(&cp);

	/* Every thread started from here on inherits the blocked signals. */
	sigset_t sigs;
	block_signals(&sigs);

	/* PostgreSQL: a connection per two worker threads, so requests that
	 * no longer wait for cp->mu do not wait for a connection instead. */
	struct store_options so = {.sync_full = cp.cfg.sync_full, .connections = cp.cfg.threads / 2};
	if (store_open(cp.cfg.db_path, &so, &cp.store, err, sizeof(err)) < 0) {
		jv_error(NULL, NULL, "%s", err);
		goto out;
	}
	status = 1;
	if (console_start(&cp) < 0) {
		jv_error(NULL, NULL, "out of memory");
		goto out;
	}
	if (start_hub(&cp) < 0)
		goto out;
	if (dispatch_recover(&cp) < 0) {
		jv_error(NULL, NULL, "cannot recover the state in the %s database", store_backend_name(cp.store));
		goto out;
	}
	mg_init_library(0);
	if (start_http(&cp, &ctx) < 0)
		goto out;
	int bport = backend_port(ctx);
	if (bport <= 0 || front_start(&cp, cp.cfg.listen, (uint16_t)bport, &front, err, sizeof(err)) < 0) {
		jv_error(NULL, NULL, "%s", bport <= 0 ? "civetweb reports no listening port" : err);
		goto out;
	}
	pthread_mutex_lock(&cp.mu);
	cp.front = front; /* wake-ups reach parked polls from here on */
	pthread_mutex_unlock(&cp.mu);
	announce(front, cp.cfg.listen, cp.tls != NULL);
	jv_info(NULL, NULL, "jobvisor-cp %s: %zu agents, %d threads, up to %d WebSocket clients on one; long polls "
	        "park in the front", JV_VERSION, cp.nagents, cp.cfg.threads, cp.ws_max);

	struct timespec tick = {.tv_sec = SWEEP_MS / 1000, .tv_nsec = (SWEEP_MS % 1000) * 1000000L};
	for (;;) {
		int sig = sigtimedwait(&sigs, NULL, &tick);
		if (sig == SIGINT || sig == SIGTERM) {
			jv_info(NULL, NULL, "%s: stopping", jv_signal_name(sig));
			break;
		}
		if (sig == SIGHUP)
			on_sighup(&cp);
		dispatch_sweep(&cp);
		ws_tick(&cp);
		schedules_tick(&cp);
		retention_tick(&cp);
		console_sweep(&cp);
		store_maintain(cp.store, false);
	}
	status = 0;
out:
	shutdown_drain(&cp, front);
	front_stop(front);
	front_tls_free(cp.tls);
	replicas_stop(&cp);
	ws_hub_stop(cp.hub);
	if (ctx)
		stop_http(ctx);
	ws_hub_free(cp.hub);
	console_free(&cp);
	inst_stats_free(&cp);
	if (cp.store && status == 0)
		store_maintain(cp.store, true);
	store_close(cp.store);
	if (cp.admin_token)
		explicit_bzero(cp.admin_token, cp.admin_token_len);
	free(cp.admin_token);
	users_free(&cp);
	tokens_free_agents(cp.agents, cp.nagents);
	free(cp.by_hash);
	free(cp.cfg.job_types);
	pthread_mutex_destroy(&cp.mu);
	return status;
}
