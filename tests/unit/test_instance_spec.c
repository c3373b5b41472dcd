/* test_instance_spec.c — instance.json parsing, validation, expansion, resolution. */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jobvisor/instance_spec.h"

static const struct jv_spec_paths paths = {
	.instance_dir = "/srv/i/x", .build_dir = "/srv/i/x/builds/b1", .data_dir = "/srv/i/x/data"};

static struct jv_instance_spec *parse_ok(const char *json)
{
	struct jv_instance_spec *s = NULL;
	char err[512];
	int rc = jv_instance_spec_parse(json, strlen(json), &paths, &s, err, sizeof(err));
	cr_assert_eq(rc, 0, "parse failed: %s", err);
	return s;
}

static void parse_fails(const char *json, const char *want)
{
	struct jv_instance_spec *s = NULL;
	char err[512] = "";
	int rc = jv_instance_spec_parse(json, strlen(json), &paths, &s, err, sizeof(err));
	cr_assert_neq(rc, 0, "expected a failure for %s", json);
	cr_assert_null(s);
	cr_assert(strstr(err, want) != NULL, "message '%s' lacks '%s'", err, want);
	cr_assert(strncmp(err, "instance.json: ", 15) == 0, "message '%s' does not name the file", err);
}

Test(instance_spec, parses_the_design_example)
{
	struct jv_instance_spec *s = parse_ok(
		"{ \"command\": [\"${build}/server\", \"--port\", \"30000\"], \"cwd\": \"data\","
		"  \"env\": {\"K\": \"V\", \"WORLD\": \"${data}/world\"},"
		"  \"stop\": {\"command\": \"stop\", \"signal\": \"SIGTERM\", \"timeoutSeconds\": 30},"
		"  \"ready\": {\"logPattern\": \"Done \\\\(\", \"timeoutSeconds\": 120},"
		"  \"restart\": {\"policy\": \"on-failure\", \"maxRestarts\": 5, \"windowSeconds\": 300},"
		"  \"limits\": {\"nofile\": 4096} }");
	cr_assert_eq(s->argc, 3);
	cr_assert_str_eq(s->argv[0], "/srv/i/x/builds/b1/server");
	cr_assert_str_eq(s->argv[2], "30000");
	cr_assert_null(s->argv[3]);
	cr_assert_eq(s->nenv, 2);
	cr_assert_str_eq(s->env[0], "K=V");
	cr_assert_str_eq(s->env[1], "WORLD=/srv/i/x/data/world");
	cr_assert_str_eq(s->cwd, "data");
	cr_assert_str_eq(s->stop_command, "stop");
	cr_assert_eq(s->stop_signal, SIGTERM);
	cr_assert_float_eq(s->stop_timeout_s, 30, 1e-9);
	cr_assert_str_eq(s->ready_pattern, "Done \\(");
	cr_assert_eq(regexec(&s->ready_re, "[12:00 INFO]: Done (1.2s)! For help", 0, NULL, 0), 0);
	cr_assert_neq(regexec(&s->ready_re, "Done loading", 0, NULL, 0), 0);
	cr_assert_eq(s->policy, JV_RESTART_ON_FAILURE);
	cr_assert_eq(s->max_restarts, 5);
	cr_assert_eq(s->nofile, 4096);
	cr_assert_eq(s->memory_mb, -1);
	jv_instance_spec_free(s);
}

Test(instance_spec, applies_defaults)
{
	struct jv_instance_spec *s = parse_ok("{\"command\": [\"${build}/srv\"]}");
	cr_assert_str_eq(s->cwd, "/srv/i/x/data");
	cr_assert_null(s->stop_command);
	cr_assert_eq(s->stop_signal, SIGTERM);
	cr_assert_float_eq(s->stop_timeout_s, 30, 1e-9);
	cr_assert_float_eq(s->stop_signal_timeout_s, 10, 1e-9);
	cr_assert_null(s->ready_pattern);
	cr_assert_float_eq(s->ready_timeout_s, 120, 1e-9);
	cr_assert_eq(s->policy, JV_RESTART_ON_FAILURE);
	cr_assert_eq(s->max_restarts, 5);
	cr_assert_float_eq(s->window_s, 300, 1e-9);
	cr_assert_float_eq(s->backoff_s, 1, 1e-9);
	cr_assert_float_eq(s->backoff_max_s, 60, 1e-9);
	cr_assert_eq(s->nsuccess, 0);
	jv_instance_spec_free(s);
}

Test(instance_spec, refuses_a_missing_or_malformed_command)
{
	parse_fails("{\"cwd\": \"data\"}", "'command' is missing");
	parse_fails("{\"command\": \"./server\"}", "'command' must be an array of strings");
	parse_fails("{\"command\": []}", "'command' is empty");
	parse_fails("{\"command\": [\"a\", 3]}", "'command[1]' must be a string");
	parse_fails("{\"command\": [\"\"]}", "'command[0]' (the executable) is empty");
}

Test(instance_spec, refuses_a_bad_regex)
{
	parse_fails("{\"command\": [\"x\"], \"ready\": {\"logPattern\": \"Done (\"}}",
	            "'ready.logPattern' is not a valid extended regex");
	parse_fails("{\"command\": [\"x\"], \"ready\": {\"logPattern\": \"\"}}",
	            "'ready.logPattern' must be a non-empty string");
}

Test(instance_spec, refuses_unknown_signal_names)
{
	parse_fails("{\"command\": [\"x\"], \"stop\": {\"signal\": \"SIGFOO\"}}",
	            "'stop.signal' names an unknown signal 'SIGFOO'");
	parse_fails("{\"command\": [\"x\"], \"stop\": {\"signal\": 15}}", "'stop.signal' must be a signal name");
	parse_fails("{\"command\": [\"x\"], \"stop\": {\"signal\": \"SIGSTOP\"}}",
	            "'stop.signal' cannot be SIGSTOP");
	struct jv_instance_spec *s = parse_ok("{\"command\": [\"x\"], \"stop\": {\"signal\": \"INT\"}}");
	cr_assert_eq(s->stop_signal, SIGINT);
	jv_instance_spec_free(s);
}

Test(instance_spec, refuses_unknown_keys_but_allows_annotations)
{
	parse_fails("{\"command\": [\"x\"], \"comand\": 1}", "unknown key 'comand'");
	parse_fails("{\"command\": [\"x\"], \"stop\": {\"timeout\": 3}}", "unknown key 'stop.timeout'");
	parse_fails("{\"command\": [\"x\"], \"limits\": {\"memory\": 3}}", "unknown key 'limits.memory'");
	struct jv_instance_spec *s =
		parse_ok("{\"command\": [\"x\"], \"name\": \"n\", \"description\": \"d\", \"x-panel\": {}}");
	jv_instance_spec_free(s);
}

Test(instance_spec, checks_numbers_and_policies)
{
	parse_fails("{\"command\": [\"x\"], \"stop\": {\"timeoutSeconds\": 0}}",
	            "'stop.timeoutSeconds' must be between");
	parse_fails("{\"command\": [\"x\"], \"restart\": {\"maxRestarts\": 2.5}}",
	            "'restart.maxRestarts' must be a whole number");
	parse_fails("{\"command\": [\"x\"], \"restart\": {\"policy\": \"sometimes\"}}",
	            "'restart.policy' must be");
	parse_fails("{\"command\": [\"x\"], \"restart\": {\"backoffSeconds\": 10, \"backoffMaxSeconds\": 5}}",
	            "'restart.backoffMaxSeconds' is below");
	parse_fails("{\"command\": [\"x\"], \"restart\": {\"successExitCodes\": [256]}}",
	            "'restart.successExitCodes' entries must be 0..255");
	parse_fails("{\"command\": [\"x\"], \"limits\": {\"nofile\": \"lots\"}}",
	            "'limits.nofile' must be a number");
	parse_fails("{\"command\": [\"x\"], \"limits\": {\"memoryMB\": 1}}",
	            "'limits.memoryMB' must be between");
	struct jv_instance_spec *s = parse_ok(
		"{\"command\": [\"x\"], \"restart\": {\"policy\": \"always\", \"successExitCodes\": [0, 3]},"
		" \"limits\": {\"memoryMB\": 2048, \"cpus\": 1.5, \"pids\": 256, \"core\": 0}}");
	cr_assert_eq(s->policy, JV_RESTART_ALWAYS);
	cr_assert_eq(s->nsuccess, 2);
	cr_assert_eq(s->success_codes[1], 3);
	cr_assert_eq(s->memory_mb, 2048);
	cr_assert_float_eq(s->cpus, 1.5, 1e-9);
	cr_assert_eq(s->pids, 256);
	cr_assert_eq(s->core, 0);
	jv_instance_spec_free(s);
}

Test(instance_spec, expands_placeholders_strictly)
{
	struct jv_instance_spec *s =
		parse_ok("{\"command\": [\"${build}/s\", \"--save=${data}/w\", \"cost $$5\", \"${instance}\"]}");
	cr_assert_str_eq(s->argv[1], "--save=/srv/i/x/data/w");
	cr_assert_str_eq(s->argv[2], "cost $5");
	cr_assert_str_eq(s->argv[3], "/srv/i/x");
	jv_instance_spec_free(s);
	parse_fails("{\"command\": [\"${home}/s\"]}", "unknown placeholder '${home}'");
	parse_fails("{\"command\": [\"${build/s\"]}", "unterminated");
	parse_fails("{\"command\": [\"x\"], \"env\": {\"A\": \"${nope}\"}}", "'env.A' uses unknown placeholder");

	struct jv_spec_paths nobuild = paths;
	nobuild.build_dir = NULL;
	char err[256];
	const char *j = "{\"command\": [\"${build}/s\"]}";
	cr_assert_neq(jv_instance_spec_parse(j, strlen(j), &nobuild, &s, err, sizeof(err)), 0);
	cr_assert(strstr(err, "no active build") != NULL, "%s", err);
}

Test(instance_spec, refuses_bad_env_and_bad_json)
{
	parse_fails("{\"command\": [\"x\"], \"env\": {\"1BAD\": \"v\"}}", "invalid variable name");
	parse_fails("{\"command\": [\"x\"], \"env\": {\"A\": 1}}", "'env.A' must be a string");
	parse_fails("{\"command\": [\"x\"], \"env\": [\"A=1\"]}", "'env' must be an object");
	parse_fails("{\"command\": [\"x\"]", "not valid JSON");
	parse_fails("[1, 2]", "must be a JSON object");
	char *big = malloc(JV_SPEC_MAX_BYTES + 10);
	memset(big, ' ', JV_SPEC_MAX_BYTES + 9);
	big[JV_SPEC_MAX_BYTES + 9] = '\0';
	parse_fails(big, "larger than");
	free(big);
}

/* A real instance dir for resolution: builds/b1/server, current -> builds/b1, data/. */
static char root[PATH_MAX];

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f, "cannot write %s", path);
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
}

static void make_instance(void)
{
	snprintf(root, sizeof(root), "/tmp/jv-spec-XXXXXX");
	cr_assert_not_null(mkdtemp(root));
	char p[PATH_MAX + 64];
	snprintf(p, sizeof(p), "%s/builds", root);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/builds/b1", root);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/builds/b1/server", root);
	write_file(p, "#!/bin/sh\nexit 0\n", 0755);
	snprintf(p, sizeof(p), "%s/current", root);
	cr_assert_eq(symlink("builds/b1", p), 0);
}

static void remove_instance(void)
{
	char *argv[] = {"rm", "-rf", root, NULL};
	pid_t pid = fork();
	if (pid == 0) {
		execvp("rm", argv);
		_exit(127);
	}
	int st;
	waitpid(pid, &st, 0);
}

static int load(const char *spec, const char *allowed_json, struct jv_instance_spec **s, char *err,
                size_t errlen)
{
	char p[PATH_MAX + 64];
	snprintf(p, sizeof(p), "%s/instance.json", root);
	write_file(p, spec, 0644);
	cJSON *allowed = allowed_json ? cJSON_Parse(allowed_json) : NULL;
	int rc = jv_instance_spec_load(root, allowed, s, err, errlen);
	cJSON_Delete(allowed);
	return rc;
}

TestSuite(instance_spec_resolve, .init = make_instance, .fini = remove_instance);

Test(instance_spec_resolve, accepts_an_executable_inside_the_active_build)
{
	struct jv_instance_spec *s = NULL;
	char err[512], want[PATH_MAX + 64], real[PATH_MAX];
	cr_assert_eq(load("{\"command\": [\"${build}/server\"]}", NULL, &s, err, sizeof(err)), 0, "%s", err);
	cr_assert_not_null(realpath(root, real));
	snprintf(want, sizeof(want), "%s/builds/b1/server", real);
	cr_assert_str_eq(s->exe, want);
	snprintf(want, sizeof(want), "%s/data", real);
	cr_assert_str_eq(s->cwd, want); /* created on the way */
	jv_instance_spec_free(s);
}

Test(instance_spec_resolve, refuses_an_executable_elsewhere_unless_allowed)
{
	struct jv_instance_spec *s = NULL;
	char err[512];
	int rc = load("{\"command\": [\"/bin/sh\", \"-c\", \"true\"]}", NULL, &s, err, sizeof(err));
	cr_assert_eq(rc, -EACCES);
	cr_assert(strstr(err, "not inside the active build and not listed in allowed_executables"), "%s", err);
	char allowed[PATH_MAX + 8], real[PATH_MAX];
	cr_assert_not_null(realpath("/bin/sh", real));
	snprintf(allowed, sizeof(allowed), "[\"%s\"]", real);
	cr_assert_eq(load("{\"command\": [\"sh\", \"-c\", \"true\"]}", allowed, &s, err, sizeof(err)), 0,
	             "%s", err);
	cr_assert_str_eq(s->exe, real); /* found on PATH, then resolved */
	jv_instance_spec_free(s);
}

Test(instance_spec_resolve, refuses_symlink_and_cwd_escapes)
{
	struct jv_instance_spec *s = NULL;
	char err[512], p[PATH_MAX + 64];
	snprintf(p, sizeof(p), "%s/builds/b1/escape", root);
	cr_assert_eq(symlink("/bin/sh", p), 0);
	cr_assert_eq(load("{\"command\": [\"${build}/escape\"]}", NULL, &s, err, sizeof(err)), -EACCES);
	cr_assert(strstr(err, "not inside the active build"), "%s", err);
	cr_assert_neq(load("{\"command\": [\"${build}/server\"], \"cwd\": \"../..\"}", NULL, &s, err,
	                   sizeof(err)), 0);
	cr_assert(strstr(err, "lies outside the instance directory"), "%s", err);
	cr_assert_neq(load("{\"command\": [\"${build}/nope\"]}", NULL, &s, err, sizeof(err)), 0);
	cr_assert(strstr(err, "not found"), "%s", err);
}

Test(instance_spec_resolve, refuses_current_outside_builds)
{
	struct jv_instance_spec *s = NULL;
	char err[512], p[PATH_MAX + 64];
	snprintf(p, sizeof(p), "%s/current", root);
	unlink(p);
	cr_assert_eq(symlink("/usr", p), 0);
	cr_assert_neq(load("{\"command\": [\"${build}/bin/env\"]}", NULL, &s, err, sizeof(err)), 0);
	cr_assert(strstr(err, "'current' must point to a build under builds/"), "%s", err);
}

Test(instance_spec_resolve, reports_a_missing_spec_file)
{
	struct jv_instance_spec *s = NULL;
	char err[512];
	cr_assert_eq(jv_instance_spec_load(root, NULL, &s, err, sizeof(err)), -ENOENT);
	cr_assert(strstr(err, "cannot read") && strstr(err, "instance.json"), "%s", err);
}
