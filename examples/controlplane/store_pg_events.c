/* store_pg_events.c — a run's events on PostgreSQL, a batch per request.
 *
 * One transaction sent as one libpq pipeline, so one round trip whatever
 * the batch size: lock the run row (two replicas storing parts of one run's
 * events agree on its last_seq), one multi-row INSERT of the batch (unnest
 * of a seq array and a body array, ON CONFLICT DO NOTHING RETURNING the
 * seqs that were new), one UPDATE of the run that computes the highest
 * contiguous seq itself. Each statement sees the ones before it (READ
 * COMMITTED takes a snapshot per statement, after the run's lock). */
#include "store_pg_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "jobvisor/util.h"

#define SQL_LOCK_RUN "SELECT last_seq, acked FROM job_runs WHERE run_id = $1 FOR NO KEY UPDATE"
/* Duplicates are resends: ignored. Nothing is inserted for an unknown run. */
#define SQL_INSERT                                                                                  \
	"INSERT INTO events (run_id, seq, body, received_at)"                                       \
	" SELECT $1, u.s, u.b, $2 FROM unnest($3::bigint[], $4::text[]) AS u(s, b)"                \
	" WHERE EXISTS (SELECT 1 FROM job_runs WHERE run_id = $1)"                                  \
	" ON CONFLICT DO NOTHING RETURNING seq"
/* last_seq moves to the highest seq s such that every seq up to s is stored.
 * Seqs are unique and ascending, so seq - row_number never falls: the rows
 * where it still equals last_seq are exactly the gap-free prefix. The
 * progress line follows the batch's highest progress event if it is newer
 * than the one shown; a resent one is never newer (storing it first moved
 * progress_seq to it), so whether it was inserted now does not matter. */
#define SQL_UPDATE                                                                                  \
	"UPDATE job_runs SET last_seq = (SELECT coalesce(max(t.seq), job_runs.last_seq) FROM"      \
	"   (SELECT seq, row_number() OVER (ORDER BY seq) AS rn FROM events"                         \
	"    WHERE run_id = $1 AND seq > job_runs.last_seq) t WHERE t.seq = job_runs.last_seq + t.rn),"  \
	" acked = 1,"                                                                                \
	" percent = CASE WHEN $2 > progress_seq THEN coalesce($3::double precision, percent)"       \
	"           ELSE percent END,"                                                               \
	" message = CASE WHEN $2 > progress_seq THEN coalesce($4::text, message) ELSE message END,"  \
	" progress_seq = greatest(progress_seq, $2) WHERE run_id = $1 RETURNING last_seq"

/* The batch's highest-seq event that changes the progress line, NULL = none. */
static const struct store_event *newest_progress(const struct store_event *ev, size_t n)
{
	const struct store_event *prog = NULL;
	for (size_t i = 0; i < n; i++)
		if (ev[i].progress && (!prog || ev[i].seq > prog->seq))
			prog = &ev[i];
	return prog;
}

static void mark_inserted(struct store_event *ev, size_t n, const PGresult *r)
{
	for (size_t i = 0; i < n; i++)
		ev[i].inserted = false;
	for (int k = 0; r && k < PQntuples(r); k++)
		for (size_t i = 0; i < n; i++)
			if (ev[i].seq == pg_i64(r, k, 0))
				ev[i].inserted = true;
}

/* BEGIN; lock the run; insert the batch; move the run; COMMIT: one pipeline. */
static int append_pipeline(PGconn *c, const char *run_id, struct store_event *ev, size_t n, int64_t now,
                           const struct pgs_batch *batch, int64_t *ack_seq, bool *was_acked)
{
	const struct store_event *prog = newest_progress(ev, n);
	char pct[64];
	struct pg_params lock = {0}, ins = {0}, upd = {0};
	pg_p_str(&lock, run_id);
	pg_p_str(&ins, run_id);
	pg_p_i64(&ins, now);
	pg_p_str(&ins, batch->seqs.data);
	pg_p_str(&ins, batch->bodies.data);
	pg_p_str(&upd, run_id);
	pg_p_i64(&upd, prog ? prog->seq : 0);
	if (prog && prog->has_percent)
		snprintf(pct, sizeof(pct), "%.17g", prog->percent);
	pg_p_str(&upd, prog && prog->has_percent ? pct : NULL);
	pg_p_str(&upd, prog ? prog->message : NULL);
	const struct pg_stmt st[] = {
		{"BEGIN", NULL}, {SQL_LOCK_RUN, &lock}, {SQL_INSERT, &ins}, {SQL_UPDATE, &upd}, {"COMMIT", NULL},
	};
	PGresult *out[JV_ARRAY_LEN(st)];
	int rc = pg_pipeline(c, st, JV_ARRAY_LEN(st), out);
	if (rc == 0 && (PQntuples(out[1]) != 1 || PQntuples(out[3]) != 1))
		rc = -ENOENT; /* nothing was written */
	if (rc == 0) {
		*was_acked = pg_i64(out[1], 0, 1) != 0;
		*ack_seq = pg_i64(out[3], 0, 0);
		mark_inserted(ev, n, out[2]);
	}
	for (size_t i = 0; i < JV_ARRAY_LEN(st); i++)
		PQclear(out[i]);
	return rc;
}

int pgs_events_append(struct store *s, const char *run_id, struct store_event *ev, size_t n, int64_t now,
                      int64_t *ack_seq, bool *was_acked)
{
	struct pgs_batch batch;
	pgs_batch_init(&batch);
	for (size_t i = 0; i < n; i++)
		pgs_batch_add(&batch, ev[i].seq, ev[i].body);
	int rc = pgs_batch_end(&batch);
	PGconn *c = rc == 0 ? pgs_conn(s) : NULL;
	if (rc == 0 && !c)
		rc = -EIO;
	if (rc == 0)
		rc = append_pipeline(c, run_id, ev, n, now, &batch, ack_seq, was_acked);
	pgs_batch_free(&batch);
	return pgs_fail(s, c, rc);
}
