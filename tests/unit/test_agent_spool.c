/* test_agent_spool.c — the per-run spool: append, batch, ack, result, replay. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/utf8.h"
#include "spool.h"

static char dir[64];

static void setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/jvspool.XXXXXX");
	cr_assert(mkdtemp(dir));
}

static void teardown(void)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

TestSuite(spool, .init = setup, .fini = teardown);

static cJSON *assignment(const char *run_id)
{
	cJSON *a = cJSON_CreateObject();
	cJSON_AddStringToObject(a, "jobId", "job-1");
	cJSON_AddStringToObject(a, "jobRunId", run_id);
	cJSON_AddStringToObject(a, "type", "SLEEPY");
	cJSON_AddStringToObject(a, "instanceId", "inst-1");
	cJSON_AddObjectToObject(a, "params");
	return a;
}

static void append(struct spool_run *sr, int seq, const char *msg)
{
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddNumberToObject(ev, "seq", seq);
	cJSON_AddStringToObject(ev, "kind", "progress");
	cJSON_AddStringToObject(ev, "message", msg);
	cr_assert_eq(spool_run_append(sr, ev), 0);
	cJSON_Delete(ev);
}

/* The seqs in a batch body, as "1,2,3". */
static void batch_seqs(const char *body, char *out, size_t outlen)
{
	cJSON *b = jv_json_parse(body, strlen(body));
	cr_assert(b, "batch is not JSON: %s", body);
	out[0] = '\0';
	cJSON *ev;
	cJSON_ArrayForEach(ev, cJSON_GetObjectItem(b, "events"))
	{
		char one[24];
		snprintf(one, sizeof(one), "%s%lld", out[0] ? "," : "", (long long)jv_json_int(ev, "seq", -1));
		strncat(out, one, outlen - strlen(out) - 1);
	}
	cJSON_Delete(b);
}

struct collected {
	struct spool_run *runs[8];
	char ids[8][64];
	int errs[8];
	int n;
};

static void collect(void *ud, const char *run_id, struct spool_run *sr, int err)
{
	struct collected *c = ud;
	cr_assert_lt(c->n, 8);
	c->runs[c->n] = sr;
	snprintf(c->ids[c->n], 64, "%s", run_id);
	c->errs[c->n] = err;
	c->n++;
}

Test(spool, batches_in_order_and_drops_acked_events)
{
	struct spool *sp;
	cr_assert_eq(spool_open(dir, &sp), 0);
	cJSON *a = assignment("run-1");
	struct spool_run *sr;
	cr_assert_eq(spool_run_create(sp, "run-1", a, &sr), 0);
	for (int i = 1; i <= 5; i++)
		append(sr, i, "step");
	cr_assert_eq(spool_run_sync(sr), 0);
	cr_assert_eq(spool_run_pending(sr), 5);

	uint64_t last;
	char *body = spool_run_batch(sr, 3, 1 << 20, &last);
	char seqs[128];
	batch_seqs(body, seqs, sizeof(seqs));
	cr_assert_str_eq(seqs, "1,2,3");
	cr_assert_eq(last, 3);
	free(body);

	cr_assert_eq(spool_run_ack(sr, 3), 0);
	cr_assert_eq(spool_run_pending(sr), 2);
	body = spool_run_batch(sr, 100, 1 << 20, &last);
	batch_seqs(body, seqs, sizeof(seqs));
	cr_assert_str_eq(seqs, "4,5");
	free(body);

	/* An ack beyond what exists clamps; an old ack changes nothing. */
	cr_assert_eq(spool_run_ack(sr, 99), 0);
	cr_assert_eq(spool_run_acked(sr), 5);
	cr_assert_eq(spool_run_ack(sr, 2), 0);
	cr_assert_eq(spool_run_acked(sr), 5);
	cr_assert_null(spool_run_batch(sr, 100, 1 << 20, &last));
	cJSON_Delete(a);
	spool_run_close(sr);
	spool_close(sp);
}

Test(spool, refuses_out_of_order_seq)
{
	struct spool *sp;
	cr_assert_eq(spool_open(dir, &sp), 0);
	cJSON *a = assignment("run-2");
	struct spool_run *sr;
	cr_assert_eq(spool_run_create(sp, "run-2", a, &sr), 0);
	append(sr, 1, "a");
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddNumberToObject(ev, "seq", 1);
	cr_assert_eq(spool_run_append(sr, ev), -EINVAL);
	cJSON_Delete(ev);
	cr_assert_eq(spool_run_pending(sr), 1);
	cJSON_Delete(a);
	spool_run_close(sr);
	spool_close(sp);
}

Test(spool, resends_unacked_events_after_restart)
{
	struct spool *sp;
	cr_assert_eq(spool_open(dir, &sp), 0);
	cJSON *a = assignment("run-3");
	struct spool_run *sr;
	cr_assert_eq(spool_run_create(sp, "run-3", a, &sr), 0);
	for (int i = 1; i <= 4; i++)
		append(sr, i, "work");
	cr_assert_eq(spool_run_ack(sr, 2), 0);
	append(sr, 5, "more");
	spool_run_sync(sr);
	spool_run_close(sr); /* the agent dies here */
	spool_close(sp);

	cr_assert_eq(spool_open(dir, &sp), 0);
	struct collected c = {0};
	cr_assert_eq(spool_replay(sp, collect, &c), 0);
	cr_assert_eq(c.n, 1);
	cr_assert_eq(c.errs[0], 0);
	sr = c.runs[0];
	cr_assert_str_eq(spool_run_id(sr), "run-3");
	cr_assert_eq(spool_run_acked(sr), 2);
	cr_assert_eq(spool_run_last_seq(sr), 5);
	cr_assert_null(spool_run_result(sr));
	cr_assert_str_eq(jv_json_str(spool_run_assignment(sr), "jobId", ""), "job-1");
	uint64_t last;
	char *body = spool_run_batch(sr, 100, 1 << 20, &last);
	char seqs[128];
	batch_seqs(body, seqs, sizeof(seqs));
	cr_assert_str_eq(seqs, "3,4,5");
	free(body);
	/* New events continue after the replayed ones. */
	append(sr, 6, "after restart");
	cr_assert_eq(spool_run_pending(sr), 4);
	cJSON_Delete(a);
	spool_run_close(sr);
	spool_close(sp);
}

Test(spool, fully_acked_events_leave_the_file)
{
	struct spool *sp;
	cr_assert_eq(spool_open(dir, &sp), 0);
	cJSON *a = assignment("run-4");
	struct spool_run *sr;
	cr_assert_eq(spool_run_create(sp, "run-4", a, &sr), 0);
	append(sr, 1, "x");
	append(sr, 2, "y");
	cr_assert_eq(spool_run_ack(sr, 2), 0);
	char path[160];
	snprintf(path, sizeof(path), "%s/runs/run-4/events.jsonl", dir);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_size, 0);
	cJSON *res = cJSON_CreateObject();
	cJSON_AddStringToObject(res, "status", "COMPLETED");
	cJSON_AddNumberToObject(res, "lastSeq", 2);
	cr_assert_eq(spool_run_set_result(sr, res), 0);
	spool_run_close(sr);
	spool_close(sp);

	cr_assert_eq(spool_open(dir, &sp), 0);
	struct collected c = {0};
	spool_replay(sp, collect, &c);
	cr_assert_eq(c.n, 1);
	sr = c.runs[0];
	cr_assert_eq(spool_run_pending(sr), 0);
	cr_assert_eq(spool_run_last_seq(sr), 2, "last seq survives through the ack file");
	cr_assert_str_eq(jv_json_str(spool_run_result(sr), "status", ""), "COMPLETED");
	cr_assert_eq(spool_run_remove(sr), 0);
	snprintf(path, sizeof(path), "%s/runs/run-4", dir);
	cr_assert_neq(stat(path, &st), 0, "record removed");
	cJSON_Delete(res);
	cJSON_Delete(a);
	spool_close(sp);
}

Test(spool, torn_tail_is_skipped_and_cut)
{
	struct spool *sp;
	cr_assert_eq(spool_open(dir, &sp), 0);
	cJSON *a = assignment("run-5");
	struct spool_run *sr;
	cr_assert_eq(spool_run_create(sp, "run-5", a, &sr), 0);
	append(sr, 1, "whole");
	spool_run_close(sr);
	char path[160];
	snprintf(path, sizeof(path), "%s/runs/run-5/events.jsonl", dir);
	FILE *f = fopen(path, "a");
	fputs("garbage line\n{\"seq\":2,\"kind\":\"progr", f); /* junk, then a torn write */
	fclose(f);
	spool_close(sp);

	cr_assert_eq(spool_open(dir, &sp), 0);
	struct collected c = {0};
	spool_replay(sp, collect, &c);
	sr = c.runs[0];
	cr_assert_eq(spool_run_pending(sr), 1);
	cr_assert_eq(spool_run_skipped(sr), 2);
	append(sr, 2, "fresh");
	spool_run_close(sr);
	spool_close(sp);

	cr_assert_eq(spool_open(dir, &sp), 0);
	struct collected c2 = {0};
	spool_replay(sp, collect, &c2);
	cr_assert_eq(spool_run_pending(c2.runs[0]), 2, "the event after the torn tail survives");
	spool_run_close(c2.runs[0]);
	cJSON_Delete(a);
	spool_close(sp);
}

Test(spool, unreadable_records_are_reported_not_fatal)
{
	struct spool *sp;
	cr_assert_eq(spool_open(dir, &sp), 0);
	char path[160];
	snprintf(path, sizeof(path), "%s/runs/broken", dir);
	mkdir(path, 0700); /* crash between mkdir and assignment.json */
	snprintf(path, sizeof(path), "%s/runs/bad id", dir);
	mkdir(path, 0700);
	struct collected c = {0};
	cr_assert_eq(spool_replay(sp, collect, &c), 0);
	cr_assert_eq(c.n, 2);
	for (int i = 0; i < 2; i++) {
		cr_assert_null(c.runs[i]);
		cr_assert_lt(c.errs[i], 0);
	}
	cr_assert_eq(spool_reject_name(sp, "broken"), 0);
	snprintf(path, sizeof(path), "%s/runs/.rejected/broken", dir);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	spool_close(sp);
}

Test(spool, one_agent_per_data_dir)
{
	struct spool *a, *b;
	cr_assert_eq(spool_open(dir, &a), 0);
	cr_assert_eq(spool_open(dir, &b), -EBUSY);
	spool_close(a);
	cr_assert_eq(spool_open(dir, &b), 0);
	spool_close(b);
}

Test(spool, duplicate_run_is_refused)
{
	struct spool *sp;
	cr_assert_eq(spool_open(dir, &sp), 0);
	cJSON *a = assignment("run-6");
	struct spool_run *sr, *sr2;
	cr_assert_eq(spool_run_create(sp, "run-6", a, &sr), 0);
	cr_assert_eq(spool_run_create(sp, "run-6", a, &sr2), -EEXIST);
	cr_assert_eq(spool_run_create(sp, "../evil", a, &sr2), -EINVAL);
	cJSON_Delete(a);
	spool_run_close(sr);
	spool_close(sp);
}

Test(spool, large_acked_prefix_is_compacted)
{
	struct spool *sp;
	cr_assert_eq(spool_open(dir, &sp), 0);
	cJSON *a = assignment("run-7");
	struct spool_run *sr;
	cr_assert_eq(spool_run_create(sp, "run-7", a, &sr), 0);
	char msg[1000];
	memset(msg, 'm', sizeof(msg) - 1);
	msg[sizeof(msg) - 1] = '\0';
	for (int i = 1; i <= 200; i++)
		append(sr, i, msg);
	cr_assert_eq(spool_run_ack(sr, 150), 0);
	char path[160];
	snprintf(path, sizeof(path), "%s/runs/run-7/events.jsonl", dir);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_lt(st.st_size, 60 * 1100, "file holds only the 50 pending events");
	append(sr, 201, "tail");
	spool_run_close(sr);
	spool_close(sp);
	cr_assert_eq(spool_open(dir, &sp), 0);
	struct collected c = {0};
	spool_replay(sp, collect, &c);
	cr_assert_eq(spool_run_pending(c.runs[0]), 51);
	cr_assert_eq(spool_run_last_seq(c.runs[0]), 201);
	spool_run_close(c.runs[0]);
	cJSON_Delete(a);
	spool_close(sp);
}

static void count_replayed(void *ud, const char *run_id, struct spool_run *sr, int err)
{
	(void)run_id;
	(void)err;
	(*(int *)ud)++;
	spool_run_close(sr);
}

Test(spool, instance_stream_keeps_its_seq_and_pending_events_across_reopen)
{
	struct spool *sp;
	cr_assert_eq(spool_open(dir, &sp), 0);
	struct spool_run *st;
	cr_assert_eq(spool_stream_open(sp, "mc-1", &st), 0);
	append(st, 1, "RUNNING");
	append(st, 2, "CRASHED");
	cr_assert_eq(spool_run_ack(st, 2), 0); /* all delivered: the file empties */
	append(st, 3, "BACKOFF");
	cJSON *last = cJSON_CreateObject();
	cJSON_AddStringToObject(last, "state", "BACKOFF");
	cr_assert_eq(spool_run_put(st, "last.json", last), 0);
	cJSON_Delete(last);
	spool_run_close(st);
	/* The job replay does not see streams. */
	int replayed = 0;
	cr_assert_eq(spool_replay(sp, count_replayed, &replayed), 0);
	cr_assert_eq(replayed, 0);
	char **names;
	size_t n;
	cr_assert_eq(spool_stream_names(sp, &names, &n), 0);
	cr_assert_eq(n, 1);
	cr_assert_str_eq(names[0], "mc-1");
	free(names[0]);
	free(names);
	spool_close(sp);

	cr_assert_eq(spool_open(dir, &sp), 0);
	cr_assert_eq(spool_stream_open(sp, "mc-1", &st), 0);
	cr_assert_eq(spool_run_last_seq(st), 3);
	cr_assert_eq(spool_run_pending(st), 1);
	uint64_t top;
	char *body = spool_run_batch(st, 10, 1 << 20, &top);
	char seqs[64];
	batch_seqs(body, seqs, sizeof(seqs));
	cr_assert_str_eq(seqs, "3");
	free(body);
	cJSON *got = spool_run_get(st, "last.json");
	cr_assert_str_eq(jv_json_str(got, "state", ""), "BACKOFF");
	cJSON_Delete(got);
	cr_assert_eq(spool_run_ack(st, 3), 0);
	append(st, 4, "STARTING"); /* numbering goes on after everything was delivered */
	cr_assert_eq(spool_run_last_seq(st), 4);
	cr_assert_eq(spool_stream_open(sp, "../x", &(struct spool_run *){NULL}), -EINVAL);
	spool_run_close(st);
	spool_close(sp);
}

Test(spool, batches_are_valid_utf8_even_from_an_old_raw_spool)
{
	struct spool *sp;
	cr_assert_eq(spool_open(dir, &sp), 0);
	cJSON *a = assignment("run-8");
	struct spool_run *sr;
	cr_assert_eq(spool_run_create(sp, "run-8", a, &sr), 0);
	append(sr, 1, "found world\xff.dat");
	spool_run_sync(sr);
	spool_run_close(sr);
	spool_close(sp);
	/* A line as an agent before the fix wrote it: raw bytes, not UTF-8. */
	char path[256];
	snprintf(path, sizeof(path), "%s/runs/run-8/events.jsonl", dir);
	FILE *f = fopen(path, "a");
	cr_assert_not_null(f, "no %s", path);
	fputs("{\"seq\":2,\"kind\":\"log\",\"message\":\"old \xfe\xff bytes\"}\n", f);
	fclose(f);

	cr_assert_eq(spool_open(dir, &sp), 0);
	struct collected c = {0};
	cr_assert_eq(spool_replay(sp, collect, &c), 0);
	cr_assert_eq(c.n, 1);
	sr = c.runs[0];
	uint64_t last;
	char *body = spool_run_batch(sr, 100, 1 << 20, &last);
	cr_assert_not_null(body);
	cr_assert_eq(last, 2);
	cr_assert(jv_utf8_valid(body, strlen(body)), "batch is not UTF-8: %s", body);
	cr_assert(strstr(body, "found world\xEF\xBF\xBD.dat"), "%s", body);
	cr_assert(strstr(body, "old \xEF\xBF\xBD\xEF\xBF\xBD bytes"), "%s", body);
	free(body);
	cJSON_Delete(a);
	spool_run_close(sr);
	spool_close(sp);
}
