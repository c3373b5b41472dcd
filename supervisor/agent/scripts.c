/* scripts.c — finding the script of a job type: the admin's jobs_dir first,
 * then the built-in jobs directory (the source tree for a binary run from its
 * build directory, else the installed copy). */
#include "jobvisor/jobrun.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobvisor/ident.h"

const char *jobrun_builtin_jobs_dir(char dir[PATH_MAX])
{
	const char *env = getenv("JOBVISOR_BUILTIN_JOBS_DIR");
	if (env && *env) {
		snprintf(dir, PATH_MAX, "%s", env);
		return dir;
	}
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		char *slash = strrchr(exe, '/');
		if (slash)
			*slash = '\0';
		char build[PATH_MAX];
		if (realpath(JV_BUILD_DIR, build) && strcmp(build, exe) == 0 &&
		    access(JV_SOURCE_JOBS_DIR, R_OK) == 0) {
			snprintf(dir, PATH_MAX, "%s", JV_SOURCE_JOBS_DIR);
			return dir;
		}
		/* Installed under any prefix: <prefix>/bin/jobvisor -> <prefix>/share/jobvisor/jobs. */
		char rel[PATH_MAX + 32];
		snprintf(rel, sizeof(rel), "%s/../share/jobvisor/jobs", exe);
		if (realpath(rel, dir) && access(dir, R_OK) == 0)
			return dir;
		dir[0] = '\0';
	}
	snprintf(dir, PATH_MAX, "%s", JV_INSTALL_JOBS_DIR);
	return dir;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcmp(s + a - b, suffix) == 0;
}

int jobrun_resolve_script(const char *type_or_path, const char *jobs_dir, char *out, size_t outlen)
{
	if (ends_with(type_or_path, ".lua")) {
		char abs[PATH_MAX];
		if (!realpath(type_or_path, abs))
			return -errno;
		if ((size_t)snprintf(out, outlen, "%s", abs) >= outlen)
			return -ENAMETOOLONG;
		return 0;
	}
	if (!jv_job_type_valid(type_or_path))
		return -EINVAL;
	char file[80];
	size_t i = 0;
	for (const char *p = type_or_path; *p && i < sizeof(file) - 5; p++)
		file[i++] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
	snprintf(file + i, sizeof(file) - i, ".lua");
	char builtin[PATH_MAX];
	const char *dirs[] = {jobs_dir, jobrun_builtin_jobs_dir(builtin)};
	for (size_t d = 0; d < 2; d++) {
		if (!dirs[d] || !*dirs[d])
			continue;
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", dirs[d], file);
		char abs[PATH_MAX];
		if (access(path, R_OK) == 0 && realpath(path, abs)) {
			if ((size_t)snprintf(out, outlen, "%s", abs) >= outlen)
				return -ENAMETOOLONG;
			return 0;
		}
	}
	return -ENOENT;
}
