/* test_agent_assign.c — checking assignments from the control plane before anything runs. */
#include <criterion/criterion.h>

#include <errno.h>
#include <string.h>

#include "jobvisor/config.h"
#include "scheduler.h"

static struct config cfg = {
	.job_timeout_s = 3600, .job_timeout_max_s = 7200, .cancel_grace_s = 10, .cancel_grace_max_s = 60,
};

static int parse(const char *json, struct assignment *as, char *err)
{
	static cJSON *keep;
	cJSON_Delete(keep);
	keep = cJSON_Parse(json);
	return scheduler_parse_assignment(keep, &cfg, as, err, 256);
}

#define GOOD "\"jobId\":\"j-1\",\"jobRunId\":\"r-1\",\"type\":\"BACKUP_INSTANCE\",\"instanceId\":\"mc1\""

Test(assign, accepts_a_complete_assignment)
{
	struct assignment as;
	char err[256] = "";
	cr_assert_eq(parse("{" GOOD ",\"attempt\":2,\"params\":{\"a\":1},\"timeoutSeconds\":60,"
	                   "\"cancelGraceSeconds\":5,\"createdAt\":\"2026-01-01T00:00:00.000Z\"}", &as, err), 0,
	             "%s", err);
	cr_assert_str_eq(as.run_id, "r-1");
	cr_assert_str_eq(as.job_id, "j-1");
	cr_assert_str_eq(as.type, "BACKUP_INSTANCE");
	cr_assert_str_eq(as.instance_id, "mc1");
	cr_assert_eq(as.attempt, 2);
	cr_assert_eq(as.timeout_s, 60);
	cr_assert_eq(as.cancel_grace_s, 5);
	cr_assert(cJSON_IsObject(as.params));
	cr_assert_str_eq(as.created_at, "2026-01-01T00:00:00.000Z");
}

Test(assign, defaults_and_caps_limits)
{
	struct assignment as;
	char err[256] = "";
	cr_assert_eq(parse("{" GOOD "}", &as, err), 0, "%s", err);
	cr_assert_eq(as.attempt, 1);
	cr_assert_eq(as.timeout_s, 3600);
	cr_assert_eq(as.cancel_grace_s, 10);
	cr_assert_null(as.params);
	cr_assert_eq(parse("{" GOOD ",\"timeoutSeconds\":999999,\"cancelGraceSeconds\":9999,\"params\":null}",
	                   &as, err), 0, "%s", err);
	cr_assert_eq(as.timeout_s, 7200);
	cr_assert_eq(as.cancel_grace_s, 60);
	cr_assert_eq(parse("{" GOOD ",\"timeoutSeconds\":0}", &as, err), 0);
	cr_assert_eq(as.timeout_s, 3600, "0 means the default, never 'no limit'");
}

static void refused(const char *json, const char *needle, bool has_run_id)
{
	struct assignment as;
	char err[256] = "";
	cr_assert_eq(parse(json, &as, err), -EINVAL, "accepted: %s", json);
	cr_assert(strstr(err, needle), "%s -> '%s' lacks '%s'", json, err, needle);
	if (has_run_id)
		cr_assert_str_eq(as.run_id, "r-1", "the run can still be reported");
	else
		cr_assert_null(as.run_id);
}

Test(assign, refuses_what_does_not_fit_the_protocol)
{
	refused("42", "not a JSON object", false);
	refused("[]", "not a JSON object", false);
	refused("{\"jobRunId\":\"../x\"}", "jobRunId", false);
	refused("{\"jobRunId\":7}", "jobRunId", false);
	refused("{\"jobRunId\":\".hidden\"}", "jobRunId", false);
	refused("{\"jobRunId\":\"r-1\",\"type\":\"X\",\"instanceId\":\"i\"}", "jobId", true);
	refused("{\"jobRunId\":\"r-1\",\"jobId\":\"j\",\"type\":\"lower\",\"instanceId\":\"i\"}", "job type", true);
	refused("{\"jobRunId\":\"r-1\",\"jobId\":\"j\",\"type\":\"X\",\"instanceId\":\"../etc\"}", "instanceId", true);
	refused("{\"jobRunId\":\"r-1\",\"jobId\":\"j\",\"type\":\"X\"}", "instanceId", true);
	refused("{" GOOD ",\"params\":[1]}", "params must be a JSON object", true);
	refused("{" GOOD ",\"params\":\"{}\"}", "params must be a JSON object", true);
	refused("{" GOOD ",\"attempt\":0}", "attempt", true);
	refused("{" GOOD ",\"attempt\":\"1\"}", "attempt", true);
	refused("{" GOOD ",\"timeoutSeconds\":-1}", "timeoutSeconds", true);
	refused("{" GOOD ",\"timeoutSeconds\":1.5}", "timeoutSeconds", true);
	refused("{" GOOD ",\"cancelGraceSeconds\":true}", "cancelGraceSeconds", true);
}
