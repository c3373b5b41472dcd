/* store_pg_events.c — a run's events on PostgreSQL, a batch per request.
 *
 * One transaction, a fixed number of round trips whatever the batch size:
 * lock the run row (two replicas storing parts of one run's events agree on
 * its last_seq), one multi-row INSERT of the batch (unnest of a seq array
 * and a body array, ON CONFLICT DO NOTHING RETURNING the seqs that were
 * new), one query for the highest contiguous seq, one UPDATE of the run. */
#include "store_pg_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "jobvisor/util.h"

static int insert_batch(PGconn *c, const char *run_id, struct store_event *ev, size_t n, int64_t now)
{
	struct pgs_batch batch;
	pgs_batch_init(&batch);
	for (size_t i = 0; i < n; i++)
		pgs_batch_add(&batch, ev[i].seq, ev[i].body);
	int rc = pgs_batch_end(&batch);
	PGresult *r = NULL;
	if (rc == 0) {
		struct pg_params p = {0};
		pg_p_str(&p, run_id);
		pg_p_i64(&p, now);
		pg_p_str(&p, batch.seqs.data);
		pg_p_str(&p, batch.bodies.data);
		r = pg_exec(c,
		            "INSERT INTO events (run_id, seq, body, received_at)"
		            " SELECT $1, u.s, u.b, $2 FROM unnest($3::bigint[], $4::text[]) AS u(s, b)"
		            " ON CONFLICT DO NOTHING RETURNING seq",
		            &p);
		rc = r ? 0 : -EIO;
	}
	for (size_t i = 0; i < n; i++)
		ev[i].inserted = false;
	for (int k = 0; r && k < PQntuples(r); k++)
		for (size_t i = 0; i < n; i++)
			if (ev[i].seq == pg_i64(r, k, 0))
				ev[i].inserted = true;
	PQclear(r);
	pgs_batch_free(&batch);
	return rc;
}

/* The highest seq s such that every seq in (from, s] is stored. */
static int contiguous(PGconn *c, const char *run_id, int64_t from, int64_t *top)
{
	struct pg_params p = {0};
	pg_p_str(&p, run_id);
	pg_p_i64(&p, from);
	/* Seqs are unique and ascending, so seq - row_number never falls: the
	 * rows where it still equals from are exactly the gap-free prefix. */
	PGresult *r = pg_exec(c,
	                      "SELECT coalesce(max(seq), $2) FROM (SELECT seq, row_number() OVER (ORDER BY seq) AS rn"
	                      " FROM events WHERE run_id = $1 AND seq > $2) t WHERE seq = $2 + rn",
	                      &p);
	if (!r)
		return -EIO;
	*top = pg_i64(r, 0, 0);
	PQclear(r);
	return 0;
}

static int update_run(PGconn *c, const char *run_id, int64_t top, const struct store_event *prog)
{
	struct pg_params p = {0};
	char pct[64];
	pg_p_str(&p, run_id);
	pg_p_i64(&p, top);
	pg_p_i64(&p, prog ? prog->seq : 0);
	if (prog && prog->has_percent) {
		snprintf(pct, sizeof(pct), "%.17g", prog->percent);
		pg_p_str(&p, pct);
	} else {
		pg_p_str(&p, NULL);
	}
	pg_p_str(&p, prog ? prog->message : NULL);
	return pg_cmd(c,
	              "UPDATE job_runs SET last_seq = $2, acked = 1,"
	              " percent = CASE WHEN $3 > progress_seq THEN coalesce($4::double precision, percent)"
	              "           ELSE percent END,"
	              " message = CASE WHEN $3 > progress_seq THEN coalesce($5::text, message) ELSE message END,"
	              " progress_seq = greatest(progress_seq, $3) WHERE run_id = $1",
	              &p) == 1
	               ? 0
	               : -EIO;
}

int pgs_events_append(struct store *s, const char *run_id, struct store_event *ev, size_t n, int64_t now,
                      int64_t *ack_seq, bool *was_acked)
{
	PGconn *c = pgs_conn(s);
	if (!c)
		return -EIO;
	struct pg_params p = {0};
	pg_p_str(&p, run_id);
	int rc = pg_begin(c);
	PGresult *r = rc == 0 ? pg_exec(c, "SELECT last_seq, acked FROM job_runs WHERE run_id = $1 FOR NO KEY UPDATE", &p)
	                      : NULL;
	if (!r)
		return pgs_fail(s, c, -EIO);
	if (PQntuples(r) != 1) {
		PQclear(r);
		return pgs_fail(s, c, -ENOENT);
	}
	int64_t last = pg_i64(r, 0, 0), top = last;
	*was_acked = pg_i64(r, 0, 1) != 0;
	PQclear(r);
	rc = n ? insert_batch(c, run_id, ev, n, now) : 0;
	if (rc == 0)
		rc = contiguous(c, run_id, last, &top);
	const struct store_event *prog = NULL;
	for (size_t i = 0; i < n; i++)
		if (ev[i].inserted && ev[i].progress && (!prog || ev[i].seq > prog->seq))
			prog = &ev[i];
	if (rc == 0)
		rc = update_run(c, run_id, top, prog);
	if (rc == 0 && (rc = pg_commit(c)) == 0)
		*ack_seq = top;
	return pgs_fail(s, c, rc);
}
