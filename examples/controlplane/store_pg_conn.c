/* store_pg_conn.c — libpq connections: the pool, statement helpers, the LISTEN thread.
 *
 * The pool hands each caller a connection of its own (libpq connections are
 * not shared between threads). A connection that broke (server restart,
 * network) is reset on its next acquire; when that fails the caller gets
 * NULL and the log says why, so one outage shows as clear errors rather than
 * a hang, and the control plane recovers by itself when the server is back.
 *
 * The listener runs on its own connection: LISTEN on the given channels,
 * then poll() on the connection's socket and a stop pipe. When the
 * connection drops it reconnects with a growing delay (0.2 s .. 2 s) and
 * tells the callback (channel NULL) that it may have missed notifications. */
#include "store_pg_conn.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobvisor/log.h"

/* Attempts of a pipeline the server rolled back as a deadlock victim or a
 * serialization failure. */
#define PIPELINE_TRIES 3

bool pg_is_url(const char *db)
{
	return db && (strncmp(db, "postgresql://", 13) == 0 || strncmp(db, "postgres://", 11) == 0);
}

void pg_p_str(struct pg_params *p, const char *s)
{
	if (p->n < PG_PARAMS_MAX)
		p->v[p->n++] = s;
}

void pg_p_i64(struct pg_params *p, int64_t v)
{
	if (p->n >= PG_PARAMS_MAX)
		return;
	snprintf(p->num[p->n], sizeof(p->num[p->n]), "%" PRId64, v);
	p->v[p->n] = p->num[p->n];
	p->n++;
}

PGresult *pg_exec(PGconn *c, const char *sql, const struct pg_params *p)
{
	/* Without parameters the simple protocol: it takes several statements (migrations). */
	PGresult *res = p ? PQexecParams(c, sql, p->n, NULL, p->v, NULL, NULL, 0) : PQexec(c, sql);
	ExecStatusType st = PQresultStatus(res);
	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
		return res;
	const char *msg = res ? PQresultErrorMessage(res) : "";
	jv_error(NULL, NULL, "postgresql: %s", *msg ? msg : PQerrorMessage(c));
	PQclear(res);
	return NULL;
}

int pg_cmd(PGconn *c, const char *sql, const struct pg_params *p)
{
	PGresult *res = pg_exec(c, sql, p);
	if (!res)
		return -EIO;
	int n = atoi(PQcmdTuples(res));
	PQclear(res);
	return n;
}

/* A failure the server asks the client to retry: the transaction lost a
 * deadlock or a serialization conflict and was rolled back whole. */
static bool retryable(const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	return state && (strcmp(state, "40P01") == 0 || strcmp(state, "40001") == 0);
}

/* Statement i's result into *out, consuming the NULL that ends it: 0, or
 * -EAGAIN for a retryable failure, -EIO for another (logged). */
static int pipeline_result(PGconn *c, PGresult **out, bool last_try)
{
	PGresult *res = PQgetResult(c), *extra;
	while (res && (extra = PQgetResult(c)) != NULL)
		PQclear(extra); /* a statement has one result; never seen, but keep the stream aligned */
	ExecStatusType st = PQresultStatus(res);
	if (res && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)) {
		*out = res;
		return 0;
	}
	int rc = st != PGRES_PIPELINE_ABORTED && retryable(res) ? -EAGAIN : -EIO;
	if (st != PGRES_PIPELINE_ABORTED) {
		pg_prep_check(c, res);
		const char *msg = res ? PQresultErrorMessage(res) : "";
		jv_log(rc == -EAGAIN && !last_try ? JV_LOG_WARN : JV_LOG_ERROR, NULL, NULL, "postgresql: %s%s",
		       *msg ? msg : PQerrorMessage(c), rc == -EAGAIN && !last_try ? " (sending the transaction again)" : "");
	}
	PQclear(res);
	return rc;
}

/* One attempt of pg_pipeline. */
static int pipeline_once(PGconn *c, const struct pg_stmt *st, size_t n, PGresult **out, bool last_try)
{
	for (size_t i = 0; i < n; i++)
		out[i] = NULL;
	if (PQenterPipelineMode(c) != 1) {
		jv_error(NULL, NULL, "postgresql: cannot enter pipeline mode: %s", PQerrorMessage(c));
		return -EIO;
	}
	int rc = 0;
	size_t sent = 0;
	uint64_t parsed = 0; /* bit i: statement i's Parse was sent before it (store_pg_prep.c) */
	for (; sent < n; sent++) {
		int r = pg_prep_send(c, st[sent].sql, st[sent].p, sent < 64);
		if (r < 0)
			break;
		if (r > 0)
			parsed |= 1ULL << sent;
	}
	if (sent < n || PQpipelineSync(c) != 1) {
		jv_error(NULL, NULL, "postgresql: cannot send a pipeline: %s", PQerrorMessage(c));
		rc = -EIO;
	}
	bool sent_all = rc == 0, committed = false;
	for (size_t i = 0; sent_all && i < n; i++) {
		if (i < 64 && (parsed >> i & 1) && pg_prep_result(c, st[i].sql) < 0 && rc == 0)
			rc = -EIO; /* then the statement itself comes back PGRES_PIPELINE_ABORTED */
		int r = pipeline_result(c, &out[i], last_try || committed);
		if (r < 0 && rc == 0)
			rc = r == -EAGAIN && committed ? -EIO : r; /* the later ones come back PGRES_PIPELINE_ABORTED */
		committed |= rc == 0 && strcmp(st[i].sql, "COMMIT") == 0;
	}
	PGresult *sync = sent_all ? PQgetResult(c) : NULL;
	bool synced = PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
	PQclear(sync);
	if (!synced || PQexitPipelineMode(c) != 1) {
		/* Out of step with the server (a broken connection): start over. */
		jv_error(NULL, NULL, "postgresql: pipeline out of step, resetting the connection: %s", PQerrorMessage(c));
		PQreset(c);
		rc = -EIO;
	}
	if (rc < 0)
		for (size_t i = 0; i < n; i++) {
			PQclear(out[i]);
			out[i] = NULL;
		}
	return rc;
}

int pg_pipeline(PGconn *c, const struct pg_stmt *st, size_t n, PGresult **out)
{
	/* A deadlock or serialization failure rolled the transaction back: send
	 * the pipeline again, a few times, unless an earlier transaction of it
	 * committed (pipeline_once then fails with -EIO). */
	for (int attempt = 1;; attempt++) {
		int rc = pipeline_once(c, st, n, out, attempt == PIPELINE_TRIES);
		if (rc != -EAGAIN)
			return rc;
		pg_rollback(c);
		if (attempt == PIPELINE_TRIES)
			return -EIO;
	}
}

int pg_begin(PGconn *c)
{
	return pg_cmd(c, "BEGIN", NULL) < 0 ? -EIO : 0;
}

int pg_commit(PGconn *c)
{
	return pg_cmd(c, "COMMIT", NULL) < 0 ? -EIO : 0;
}

void pg_rollback(PGconn *c)
{
	if (PQtransactionStatus(c) != PQTRANS_IDLE)
		pg_cmd(c, "ROLLBACK", NULL);
}

int64_t pg_i64(const PGresult *res, int r, int col)
{
	return PQgetisnull(res, r, col) ? 0 : strtoll(PQgetvalue(res, r, col), NULL, 10);
}

const char *pg_str(const PGresult *res, int r, int col)
{
	return PQgetisnull(res, r, col) ? "" : PQgetvalue(res, r, col);
}

/* ---- the pool ---- */

struct pg_pool {
	char *url;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	PGconn **conns;
	bool *busy;
	int size;
};

/* The session setup of every connection: sent in the startup packet (the
 * options parameter, after any the URL gives, so it wins), so PQreset, which
 * connects again with the same parameters after an outage or a server
 * restart, applies it too. Times are stored as wall-clock milliseconds and no
 * statement depends on the session time zone, but diagnostics stay stable;
 * store_pg.c's ping checks it is in effect. */
#define PG_SESSION_OPTIONS "-c TimeZone=UTC"

/* PQconnectdbParams with the URL's parameters and PG_SESSION_OPTIONS added
 * to its options; NULL when out of memory. */
static PGconn *connect_with_setup(const char *url)
{
	PQconninfoOption *opts = PQconninfoParse(url, NULL), *o;
	size_t n = 0;
	for (o = opts; o && o->keyword; o++)
		n++;
	const char **kw = calloc(n + 2, sizeof(*kw)), **val = calloc(n + 2, sizeof(*val));
	char *options = NULL;
	size_t k = 0;
	for (o = opts; kw && val && o && o->keyword; o++) {
		if (strcmp(o->keyword, "options") == 0 && o->val) {
			size_t len = strlen(o->val) + sizeof(" " PG_SESSION_OPTIONS);
			if ((options = malloc(len)) != NULL)
				snprintf(options, len, "%s " PG_SESSION_OPTIONS, o->val);
		} else if (o->val) {
			kw[k] = o->keyword;
			val[k++] = o->val;
		}
	}
	if (!options)
		options = strdup(PG_SESSION_OPTIONS);
	PGconn *c = NULL;
	if (opts && kw && val && options) {
		kw[k] = "options";
		val[k] = options;
		c = PQconnectdbParams(kw, val, 0);
	}
	free(options);
	free(kw);
	free(val);
	PQconninfoFree(opts);
	return c;
}

/* Connect and check; NULL with err filled. */
static PGconn *connect_checked(const char *url, char *err, size_t errlen)
{
	PGconn *c = connect_with_setup(url);
	if (!c) {
		snprintf(err, errlen, "cannot connect to PostgreSQL: out of memory");
		return NULL;
	}
	if (PQstatus(c) != CONNECTION_OK) {
		snprintf(err, errlen, "cannot connect to PostgreSQL: %s", PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	return c;
}

static int check_url(const char *url, char *err, size_t errlen)
{
	char *msg = NULL;
	PQconninfoOption *opts = PQconninfoParse(url, &msg);
	if (!opts) {
		snprintf(err, errlen, "invalid PostgreSQL URL: %s", msg ? msg : "out of memory");
		PQfreemem(msg);
		return -EINVAL;
	}
	PQconninfoFree(opts);
	return 0;
}

int pg_pool_open(const char *url, int size, struct pg_pool **out, char *err, size_t errlen)
{
	if (check_url(url, err, errlen) < 0)
		return -EINVAL;
	struct pg_pool *p = calloc(1, sizeof(*p));
	if (!p || !(p->url = strdup(url)) || !(p->conns = calloc((size_t)size, sizeof(*p->conns))) ||
	    !(p->busy = calloc((size_t)size, sizeof(*p->busy)))) {
		snprintf(err, errlen, "out of memory");
		if (p) {
			free(p->url);
			free(p->conns);
		}
		free(p);
		return -ENOMEM;
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cond, NULL);
	p->size = size;
	for (int i = 0; i < size; i++) {
		if (!(p->conns[i] = connect_checked(url, err, errlen)) || pg_prep_attach(p->conns[i]) < 0) {
			if (p->conns[i])
				snprintf(err, errlen, "out of memory");
			pg_pool_close(p);
			return -EIO;
		}
	}
	if (pg_migrate(p->conns[0], err, errlen) < 0) {
		pg_pool_close(p);
		return -EIO;
	}
	*out = p;
	return 0;
}

void pg_pool_close(struct pg_pool *p)
{
	if (!p)
		return;
	for (int i = 0; i < p->size; i++)
		if (p->conns[i])
			PQfinish(p->conns[i]);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cond);
	free(p->conns);
	free(p->busy);
	free(p->url);
	free(p);
}

/* An idle pooled connection has nothing to read: input means the server
 * ended the session (a restart, a terminated backend: its FATAL message and
 * the end of the stream wait in the socket), so reset it before use rather
 * than fail the caller's request on it. */
static bool input_pending(PGconn *c)
{
	struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
	return pfd.fd >= 0 && poll(&pfd, 1, 0) > 0;
}

PGconn *pg_acquire(struct pg_pool *p)
{
	pthread_mutex_lock(&p->mu);
	int i;
	for (;;) {
		for (i = 0; i < p->size && p->busy[i]; i++)
			;
		if (i < p->size)
			break;
		pthread_cond_wait(&p->cond, &p->mu);
	}
	p->busy[i] = true;
	pthread_mutex_unlock(&p->mu);
	PGconn *c = p->conns[i];
	if (PQstatus(c) != CONNECTION_OK || input_pending(c)) {
		if (PQstatus(c) == CONNECTION_OK)
			PQconsumeInput(c); /* for the server's message in the log */
		jv_warn(NULL, NULL, "PostgreSQL connection lost (%s); reconnecting", PQerrorMessage(c));
		PQreset(c);
		if (PQstatus(c) != CONNECTION_OK) {
			jv_error(NULL, NULL, "cannot reconnect to PostgreSQL: %s", PQerrorMessage(c));
			pg_release(p, c);
			return NULL;
		}
		jv_info(NULL, NULL, "reconnected to PostgreSQL");
	}
	return c;
}

void pg_release(struct pg_pool *p, PGconn *c)
{
	if (!c)
		return;
	pg_rollback(c); /* a caller that bailed out mid-transaction leaves none behind */
	pthread_mutex_lock(&p->mu);
	for (int i = 0; i < p->size; i++)
		if (p->conns[i] == c)
			p->busy[i] = false;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->mu);
}

/* ---- the listener ---- */

struct pg_listener {
	char *url;
	char **channels;
	size_t nchannels;
	pg_notify_fn fn;
	void *ud;
	PGconn *conn;
	int stop_pipe[2];
	pthread_t thread;
};

static PGconn *listen_connect(struct pg_listener *l, char *err, size_t errlen)
{
	PGconn *c = connect_checked(l->url, err, errlen);
	for (size_t i = 0; c && i < l->nchannels; i++) {
		char sql[128];
		snprintf(sql, sizeof(sql), "LISTEN %s", l->channels[i]);
		PGresult *r = PQexec(c, sql);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			snprintf(err, errlen, "cannot LISTEN on %s: %s", l->channels[i], PQerrorMessage(c));
			PQfinish(c);
			c = NULL;
		}
		PQclear(r);
	}
	if (c && PQsetnonblocking(c, 1) != 0) {
		snprintf(err, errlen, "cannot make the listen connection non-blocking");
		PQfinish(c);
		c = NULL;
	}
	return c;
}

/* Wait for the connection to have input or the stop pipe; false = stop. */
static bool wait_input(struct pg_listener *l, int timeout_ms)
{
	struct pollfd fds[2] = {{.fd = l->stop_pipe[0], .events = POLLIN},
	                        {.fd = l->conn ? PQsocket(l->conn) : -1, .events = POLLIN}};
	int n = poll(fds, l->conn ? 2 : 1, timeout_ms);
	return !(n > 0 && (fds[0].revents & POLLIN));
}

static void drain(struct pg_listener *l)
{
	PGnotify *n;
	while ((n = PQnotifies(l->conn)) != NULL) {
		l->fn(l->ud, n->relname, n->extra);
		PQfreemem(n);
	}
}

static void *listen_main(void *arg)
{
	struct pg_listener *l = arg;
	int delay_ms = 200;
	for (;;) {
		if (!l->conn) {
			if (!wait_input(l, delay_ms))
				break;
			char err[512];
			l->conn = listen_connect(l, err, sizeof(err));
			if (!l->conn) {
				jv_error(NULL, NULL, "PostgreSQL listener: %s; retrying", err);
				delay_ms = delay_ms * 2 > 2000 ? 2000 : delay_ms * 2;
				continue;
			}
			jv_info(NULL, NULL, "PostgreSQL listener reconnected");
			delay_ms = 200;
			l->fn(l->ud, NULL, NULL);
		}
		if (!wait_input(l, 1000))
			break;
		if (PQconsumeInput(l->conn) == 0 || PQstatus(l->conn) != CONNECTION_OK) {
			jv_error(NULL, NULL, "PostgreSQL listener connection lost: %s", PQerrorMessage(l->conn));
			PQfinish(l->conn);
			l->conn = NULL;
			continue;
		}
		drain(l);
	}
	return NULL;
}

static void listener_free(struct pg_listener *l)
{
	for (size_t i = 0; i < l->nchannels; i++)
		free(l->channels[i]);
	free(l->channels);
	free(l->url);
	if (l->conn)
		PQfinish(l->conn);
	if (l->stop_pipe[0] >= 0) {
		close(l->stop_pipe[0]);
		close(l->stop_pipe[1]);
	}
	free(l);
}

int pg_listen_start(const char *url, const char *const *channels, size_t nchannels, pg_notify_fn fn, void *ud,
                    struct pg_listener **out, char *err, size_t errlen)
{
	struct pg_listener *l = calloc(1, sizeof(*l));
	if (!l) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	l->stop_pipe[0] = l->stop_pipe[1] = -1;
	l->fn = fn;
	l->ud = ud;
	l->url = strdup(url);
	l->channels = calloc(nchannels, sizeof(*l->channels));
	bool ok = l->url && l->channels && pipe2(l->stop_pipe, O_CLOEXEC) == 0;
	for (size_t i = 0; ok && i < nchannels; i++, l->nchannels++)
		ok = (l->channels[i] = strdup(channels[i])) != NULL;
	if (!ok) {
		snprintf(err, errlen, "out of memory");
		listener_free(l);
		return -ENOMEM;
	}
	if (!(l->conn = listen_connect(l, err, errlen))) {
		listener_free(l);
		return -EIO;
	}
	if (pthread_create(&l->thread, NULL, listen_main, l) != 0) {
		snprintf(err, errlen, "cannot start the PostgreSQL listener thread");
		listener_free(l);
		return -EAGAIN;
	}
	*out = l;
	return 0;
}

void pg_listen_stop(struct pg_listener *l)
{
	if (!l)
		return;
	ssize_t w = write(l->stop_pipe[1], "x", 1);
	(void)w;
	pthread_join(l->thread, NULL);
	listener_free(l);
}
