/* store_pg_events.c — a group of events requests on PostgreSQL, one commit.
 *
 * The requests of a group (store_pg_evgroup.c) are of distinct runs. One
 * transaction sent as one libpq pipeline, so one round trip whatever the
 * group's size: lock the runs' rows in run_id order (so two groups, of this
 * replica or another, storing parts of one run's events agree on its
 * last_seq and never wait in a circle); one statement that inserts every
 * event of the group (unnest of run, seq and body arrays, ON CONFLICT DO
 * NOTHING: a duplicate is a resend) and appends the new ones, in request
 * order, to ws_log as the WebSocket messages {"type":"event","event":BODY,
 * "seq":N} (ws_head numbers them, as store_pg_ws_append_many does); one
 * UPDATE of the runs that computes each run's highest contiguous seq
 * itself; pg_notify of the new ws_log head; COMMIT. Each statement sees the
 * ones before it (READ COMMITTED takes a snapshot per statement, after the
 * runs' locks). */
#include "store_pg_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/util.h"

#define SQL_LOCK_RUNS                                                                               \
	"SELECT run_id, acked FROM job_runs WHERE run_id = ANY($1::text[]) ORDER BY run_id"         \
	" FOR NO KEY UPDATE"
/* Nothing is inserted for an unknown run. Returns the ordinal (1-based, in
 * the arrays sent) of every event that was new. The run ids and bodies come
 * as texts separated by the control character RS (0x1e), which JSON text
 * never holds raw: split without the quoting and escaping of an array
 * literal, whose parsing was the largest cost of a big group. */
#define SQL_INSERT_PUBLISH                                                                          \
	"WITH src AS (SELECT * FROM unnest(string_to_array($1, chr(30)), $2::bigint[],"            \
	"                                  string_to_array($3, chr(30))) WITH ORDINALITY AS u(r, s, b, o)),"   \
	" ins AS (INSERT INTO events (run_id, seq, body, received_at)"                               \
	"         SELECT r, s, b, $4 FROM src WHERE EXISTS (SELECT 1 FROM job_runs j WHERE j.run_id = src.r)" \
	"         ON CONFLICT DO NOTHING RETURNING run_id, seq, body),"                                \
	" pub AS (SELECT src.o, ins.body FROM ins JOIN src ON src.r = ins.run_id AND src.s = ins.seq)," \
	" h AS (UPDATE ws_head SET seq = seq + (SELECT count(*) FROM pub) WHERE id = 1"              \
	"       RETURNING seq - (SELECT count(*) FROM pub) AS base),"                                \
	" w AS (INSERT INTO ws_log (seq, body, at)"                                                  \
	"       SELECT h.base + p.n, '{\"type\":\"event\",\"event\":' || p.body || ',\"seq\":' || (h.base + p.n) || '}', $4" \
	"       FROM h, (SELECT body, row_number() OVER (ORDER BY o) AS n FROM pub) p)"              \
	" SELECT o FROM pub"
/* last_seq moves to the highest seq s such that every seq up to s is stored.
 * Seqs are unique and ascending, so seq - row_number never falls: the rows
 * where it still equals last_seq are exactly the gap-free prefix. The
 * progress line follows the request's highest progress event if it is newer
 * than the one shown; a resent one is never newer (storing it first moved
 * progress_seq to it), so whether it was inserted now does not matter. */
#define SQL_UPDATE_RUNS                                                                             \
	"UPDATE job_runs SET last_seq = (SELECT coalesce(max(t.seq), job_runs.last_seq) FROM"      \
	"   (SELECT seq, row_number() OVER (ORDER BY seq) AS rn FROM events"                         \
	"    WHERE run_id = job_runs.run_id AND seq > job_runs.last_seq) t"                          \
	"   WHERE t.seq = job_runs.last_seq + t.rn),"                                                \
	" acked = 1,"                                                                                \
	" percent = CASE WHEN u.ps > progress_seq THEN coalesce(u.pct, percent) ELSE percent END,"  \
	" message = CASE WHEN u.ps > progress_seq THEN coalesce(u.msg, message) ELSE message END,"  \
	" progress_seq = greatest(progress_seq, u.ps)"                                               \
	" FROM unnest($1::text[], $2::bigint[], $3::double precision[], $4::text[]) AS u(r, ps, pct, msg)" \
	" WHERE job_runs.run_id = u.r RETURNING job_runs.run_id, job_runs.last_seq"
#define SQL_NOTIFY "SELECT pg_notify('" PG_CHANNEL_WS "', seq::text) FROM ws_head WHERE id = 1"

/* A group's parameters: per run, array literals; per event, RS-separated texts. */
enum { A_RUNS, A_U_RUNS, A_U_PS, A_U_PCT, A_U_MSG, A_COUNT };
#define SEP '\x1e' /* between the elements of ev_runs and bodies */
struct group_arrays {
	struct jv_buf a[A_COUNT];            /* the runs (lock); per run its progress line */
	struct jv_buf ev_runs, seqs, bodies; /* per event sent: its run, seq, body */
	struct sent {
		uint32_t req, idx;
	} *sent; /* ordinal - 1 -> (request, event) */
	size_t nsent;
	int rc;
};

/* Append an element (NULL = SQL NULL) to array literal k. */
static void arr_add(struct group_arrays *g, int k, const char *s)
{
	struct jv_buf *b = &g->a[k];
	bool first = b->len == 1;
	if (g->rc == 0 && !s)
		g->rc = jv_buf_append(b, first ? "NULL" : ",NULL", first ? 4 : 5);
	else if (g->rc == 0)
		g->rc = pgs_array_add(b, s, first);
}

static int arrays_init(struct group_arrays *g, size_t rows)
{
	memset(g, 0, sizeof(*g));
	for (int k = 0; k < A_COUNT; k++) {
		jv_buf_init(&g->a[k], 64u * 1024 * 1024);
		g->rc |= jv_buf_append(&g->a[k], "{", 1);
	}
	jv_buf_init(&g->ev_runs, 64u * 1024 * 1024);
	jv_buf_init(&g->seqs, 64u * 1024 * 1024);
	jv_buf_init(&g->bodies, 256u * 1024 * 1024);
	g->rc |= jv_buf_append(&g->seqs, "{", 1);
	g->sent = calloc(rows + 1, sizeof(*g->sent));
	return g->rc || !g->sent ? -ENOMEM : 0;
}

static int arrays_end(struct group_arrays *g)
{
	for (int k = 0; k < A_COUNT; k++)
		if (g->rc == 0)
			g->rc = jv_buf_append(&g->a[k], "}", 1);
	if (g->rc == 0)
		g->rc = jv_buf_append(&g->seqs, "}", 1) | jv_buf_append(&g->ev_runs, "", 0) |
		        jv_buf_append(&g->bodies, "", 0);
	return g->rc == -EINVAL ? -EINVAL : g->rc ? -ENOMEM : 0;
}

static void arrays_free(struct group_arrays *g)
{
	for (int k = 0; k < A_COUNT; k++)
		jv_buf_free(&g->a[k]);
	jv_buf_free(&g->ev_runs);
	jv_buf_free(&g->seqs);
	jv_buf_free(&g->bodies);
	free(g->sent);
}

/* An event whose seq came earlier in the same request is a resend of it. */
static bool seq_repeated(const struct store_event *ev, size_t i)
{
	if (i == 0 || ev[i].seq > ev[i - 1].seq)
		return false; /* ascending, the usual case */
	for (size_t j = 0; j < i; j++)
		if (ev[j].seq == ev[i].seq)
			return true;
	return false;
}

/* The request's highest-seq event that changes the progress line, NULL = none. */
static const struct store_event *newest_progress(const struct store_event *ev, size_t n)
{
	const struct store_event *prog = NULL;
	for (size_t i = 0; i < n; i++)
		if (ev[i].progress && (!prog || ev[i].seq > prog->seq))
			prog = &ev[i];
	return prog;
}

static void add_event(struct group_arrays *g, const char *run_id, const struct store_event *e)
{
	char sep[1] = {SEP};
	bool first = g->nsent == 0;
	if (g->rc == 0 && strchr(e->body, SEP))
		g->rc = -EINVAL; /* never: JSON text escapes control characters */
	if (g->rc == 0)
		g->rc = jv_buf_append(&g->ev_runs, sep, first ? 0 : 1) | jv_buf_append(&g->ev_runs, run_id, strlen(run_id)) |
		        jv_buf_printf(&g->seqs, "%s%lld", first ? "" : ",", (long long)e->seq) |
		        jv_buf_append(&g->bodies, sep, first ? 0 : 1) | jv_buf_append(&g->bodies, e->body, strlen(e->body));
}

static void add_request(struct group_arrays *g, const struct pgs_evreq *r, uint32_t ri)
{
	arr_add(g, A_RUNS, r->run_id);
	for (size_t i = 0; i < r->n; i++) {
		r->ev[i].inserted = false;
		if (seq_repeated(r->ev, i))
			continue;
		add_event(g, r->run_id, &r->ev[i]);
		g->sent[g->nsent++] = (struct sent){.req = ri, .idx = (uint32_t)i};
	}
	const struct store_event *prog = newest_progress(r->ev, r->n);
	char num[64];
	arr_add(g, A_U_RUNS, r->run_id);
	snprintf(num, sizeof(num), "%lld", prog ? (long long)prog->seq : 0LL);
	arr_add(g, A_U_PS, num);
	if (prog && prog->has_percent)
		snprintf(num, sizeof(num), "%.17g", prog->percent);
	arr_add(g, A_U_PCT, prog && prog->has_percent ? num : NULL);
	arr_add(g, A_U_MSG, prog ? prog->message : NULL);
}

static struct pgs_evreq *find_run(struct pgs_evreq *const *r, size_t k, const char *run_id)
{
	for (size_t i = 0; i < k; i++)
		if (strcmp(r[i]->run_id, run_id) == 0)
			return r[i];
	return NULL;
}

/* Hand the results back: a run not locked does not exist (-ENOENT). */
static void read_results(struct pgs_evreq *const *r, size_t k, const struct group_arrays *g, PGresult *const *out)
{
	for (size_t i = 0; i < k; i++)
		r[i]->rc = -ENOENT;
	for (int row = 0; row < PQntuples(out[1]); row++) {
		struct pgs_evreq *q = find_run(r, k, pg_str(out[1], row, 0));
		if (q)
			q->was_acked = pg_i64(out[1], row, 1) != 0;
	}
	for (int row = 0; row < PQntuples(out[3]); row++) {
		struct pgs_evreq *q = find_run(r, k, pg_str(out[3], row, 0));
		if (q) {
			q->ack_seq = pg_i64(out[3], row, 1);
			q->rc = 0;
		}
	}
	for (int row = 0; row < PQntuples(out[2]); row++) {
		int64_t o = pg_i64(out[2], row, 0);
		if (o >= 1 && (size_t)o <= g->nsent)
			r[g->sent[o - 1].req]->ev[g->sent[o - 1].idx].inserted = true;
	}
}

/* BEGIN; lock the runs; insert and publish; move the runs; notify; COMMIT. */
static int group_pipeline(PGconn *c, struct pgs_evreq *const *r, size_t k, const struct group_arrays *g)
{
	struct pg_params lock = {0}, ins = {0}, upd = {0};
	pg_p_str(&lock, g->a[A_RUNS].data);
	pg_p_str(&ins, g->ev_runs.data);
	pg_p_str(&ins, g->seqs.data);
	pg_p_str(&ins, g->bodies.data);
	pg_p_i64(&ins, r[0]->now);
	for (int a = A_U_RUNS; a <= A_U_MSG; a++)
		pg_p_str(&upd, g->a[a].data);
	const struct pg_stmt st[] = {
		{"BEGIN", NULL},       {SQL_LOCK_RUNS, &lock}, {SQL_INSERT_PUBLISH, &ins},
		{SQL_UPDATE_RUNS, &upd}, {SQL_NOTIFY, NULL},   {"COMMIT", NULL},
	};
	PGresult *out[JV_ARRAY_LEN(st)];
	int rc = pg_pipeline(c, st, JV_ARRAY_LEN(st), out);
	if (rc == 0)
		read_results(r, k, g, out);
	for (size_t i = 0; i < JV_ARRAY_LEN(st); i++)
		PQclear(out[i]);
	return rc;
}

int pgs_events_group(struct store *s, struct pgs_evreq *const *r, size_t k)
{
	size_t rows = 0;
	for (size_t i = 0; i < k; i++)
		rows += r[i]->n;
	struct group_arrays g;
	int rc = arrays_init(&g, rows);
	for (size_t i = 0; rc == 0 && i < k; i++)
		add_request(&g, r[i], (uint32_t)i);
	if (rc == 0)
		rc = arrays_end(&g);
	PGconn *c = rc == 0 ? pgs_conn(s) : NULL;
	if (rc == 0 && !c)
		rc = -EIO;
	if (rc == 0)
		rc = group_pipeline(c, r, k, &g);
	arrays_free(&g);
	for (size_t i = 0; rc < 0 && i < k; i++)
		r[i]->rc = rc;
	return pgs_fail(s, c, rc);
}
