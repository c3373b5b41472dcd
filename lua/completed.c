/* completed.c — completion records: what a finished job returned, kept until
 * the result has reached whoever asked for it.
 *
 * A job can finish its work and still lose its result: the agent is stopped
 * or killed between the child's exit and the delivery of the result, the
 * control plane marks the run lost and retries the same job. That retry
 * must not redo the work (a second backup, a second restart) nor refuse it
 * ("backup 'nightly' already exists"): it completes with the output the
 * finished run produced. So the child writes
 * <instance>/.jobvisor/completed/<jobId>.json = {jobId, runId, attempt, type,
 * params, output, finishedAt} durably before it reports COMPLETED, and a
 * later run of the same job id, type and params reports that output again
 * without calling the script. The agent removes the record once the control
 * plane acknowledged the result (supervisor/jobrun.c), `jobvisor run` once it
 * printed it (unless the caller named the job id). Runs with another job id
 * never look at it: they are other jobs, and the scripts' own rules apply. */
#include "jvlua.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/jobchild.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"
#include "scriptdef.h"

#define MAX_RECORD_BYTES (4u << 20)

static int open_completed_dir(struct jv_run_ctx *ctx)
{
	int jfd = openat(ctx->instance_fd, ".jobvisor", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (jfd < 0)
		return -errno;
	if (mkdirat(jfd, JV_COMPLETED_DIR, 0750) < 0 && errno != EEXIST) {
		int rc = -errno;
		close(jfd);
		return rc;
	}
	int fd = openat(jfd, JV_COMPLETED_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int rc = fd < 0 ? -errno : fd;
	close(jfd);
	return rc;
}

static bool record_name(const struct jv_run_ctx *ctx, char *out, size_t outlen)
{
	if (!jv_ident_valid(ctx->job_id))
		return false; /* "-" or garbage: no job a retry could name */
	snprintf(out, outlen, "%s.json", ctx->job_id);
	return true;
}

static bool same_params(const cJSON *a, const cJSON *b)
{
	bool a_empty = !a || cJSON_IsNull(a) || (cJSON_IsObject(a) && !a->child);
	bool b_empty = !b || cJSON_IsNull(b) || (cJSON_IsObject(b) && !b->child);
	if (a_empty || b_empty)
		return a_empty && b_empty;
	return cJSON_Compare(a, b, true);
}

int jv_completed_find(struct jv_run_ctx *ctx, const cJSON *params, cJSON **record)
{
	*record = NULL;
	char name[96];
	if (!record_name(ctx, name, sizeof(name)))
		return 0;
	int dfd = open_completed_dir(ctx);
	if (dfd < 0)
		return dfd == -ENOENT ? 0 : dfd;
	char *text = NULL;
	size_t len = 0;
	int rc = jv_read_file_at(dfd, name, MAX_RECORD_BYTES, &text, &len);
	close(dfd);
	if (rc == -ENOENT)
		return 0;
	if (rc < 0)
		return rc;
	cJSON *r = jv_json_parse(text, len);
	free(text);
	if (!cJSON_IsObject(r) || !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(r, "output"))) {
		cJSON_Delete(r);
		return -EBADMSG;
	}
	if (strcmp(jv_json_str(r, "jobId", ""), ctx->job_id) != 0 ||
	    strcmp(jv_json_str(r, "type", ""), ctx->type) != 0 ||
	    !same_params(cJSON_GetObjectItemCaseSensitive(r, "params"), params)) {
		*record = r;
		return 2; /* the id names another job: not ours to report */
	}
	*record = r;
	return 1;
}

int jv_completed_write(struct jv_run_ctx *ctx, const cJSON *params, const cJSON *output)
{
	char name[96];
	if (!record_name(ctx, name, sizeof(name)))
		return 0;
	cJSON *r = jv_ctx_ident_json(ctx, "finishedAt");
	cJSON_AddItemToObject(r, "params",
	                      params ? cJSON_Duplicate(params, true) : cJSON_CreateObject());
	cJSON_AddItemToObject(r, "output", cJSON_Duplicate(output, true));
	char *s = cJSON_PrintUnformatted(r);
	cJSON_Delete(r);
	if (!s)
		return -ENOMEM;
	int dfd = open_completed_dir(ctx);
	int rc = dfd;
	if (dfd >= 0) {
		rc = jv_durable_write_at(dfd, name, s, strlen(s), 0640);
		close(dfd);
	}
	free(s);
	return rc;
}
