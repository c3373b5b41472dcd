/* api_proc.c — the `proc` module: proc.run(argv, opts) starts one program the
 * agent allows (setting job_executables, or the steamcmd setting), never
 * through a shell, and returns when it and everything it started are gone.
 *
 * This file checks the script's arguments and builds argv/envp; lua/procx.c
 * spawns, watches and ends the processes (shepherd, record file, sweep). What
 * is refused raises (a program not allowed, an unknown option, a cwd outside
 * the instance, a loader variable in env); what can go wrong at run time
 * returns nil, message (cannot execute, timed out, too many processes). A
 * cancel of the job ends the program (SIGTERM, grace, SIGKILL) and then
 * raises the cancellation error. */
#include "apiutil.h"
#include "box.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobvisor/durable.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/util.h"
#include "procx.h"

#define MAX_ARGS 4096
#define MAX_ARG_BYTES (1u << 20)
#define MAX_ENV 256
#define CAPTURE_DEFAULT (1u << 20)
#define CAPTURE_MAX (64u << 20)
#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"

/* Variables that change what an allowed executable does before its own code
 * runs (the dynamic loader and glibc): refused, or allowing /usr/bin/foo
 * would allow any code. */
static bool loader_variable(const char *name)
{
	return strncmp(name, "LD_", 3) == 0 || strcmp(name, "GCONV_PATH") == 0 ||
	       strcmp(name, "GLIBC_TUNABLES") == 0 || strcmp(name, "MALLOC_CONF") == 0;
}

static bool env_name_ok(const char *s)
{
	if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		      *p == '_'))
			return false;
	return strlen(s) <= 128;
}

bool jv_proc_allowed(const cJSON *settings, const char *path)
{
	const cJSON *list = cJSON_GetObjectItemCaseSensitive(settings, "job_executables");
	const cJSON *e;
	cJSON_ArrayForEach(e, list)
	{
		if (cJSON_IsString(e) && strcmp(e->valuestring, path) == 0)
			return true;
	}
	const char *steam = jv_json_str(settings, "steamcmd", NULL);
	return steam && strcmp(steam, path) == 0;
}

/* Everything the callbacks need, on the C stack of l_proc_run. */
struct run {
	lua_State *L;
	struct jv_run_ctx *ctx;
	int on_line;    /* stack index of the callback, 0 = none */
	int pattern;    /* stack index of the progress pattern, 0 = none */
	int match;      /* stack index of string.match */
	struct jv_progress prog;
	int err_slot;   /* stack index of a 1-slot table holding the callback's error */
	bool failed;
	double last_fraction;
};

static int call_on_line(lua_State *L)
{
	struct run *r = lua_touserdata(L, 1);
	const char *line = lua_touserdata(L, 2);
	size_t len = (size_t)lua_tointeger(L, 3);
	int stream = (int)lua_tointeger(L, 4);
	/* 5: string.match, 6: the pattern or nil, 7: on_line or nil */
	if (!lua_isnil(L, 6)) {
		lua_pushvalue(L, 5);
		lua_pushlstring(L, line, len);
		lua_pushvalue(L, 6);
		lua_call(L, 2, 2);
		double frac = -1;
		if (lua_type(L, -2) != LUA_TNIL) {
			int isnum1 = 0, isnum2 = 0;
			double a = lua_tonumberx(L, -2, &isnum1), b = lua_tonumberx(L, -1, &isnum2);
			if (isnum1 && isnum2 && b > 0)
				frac = a / b;
			else if (isnum1 && lua_isnil(L, -1))
				frac = a / 100.0;
		}
		lua_pop(L, 2);
		if (frac >= 0 && frac <= 1 && frac >= r->last_fraction) {
			r->last_fraction = frac;
			char detail[128];
			snprintf(detail, sizeof(detail), "%.1f%%", frac * 100);
			jv_progress_report(r->ctx, &r->prog, frac, detail);
		}
	}
	if (!lua_isnil(L, 7)) {
		lua_pushvalue(L, 7);
		lua_pushstring(L, stream == PROCX_STDOUT ? "stdout" : "stderr");
		lua_pushlstring(L, line, len);
		lua_call(L, 2, 0);
	}
	return 0;
}

static bool on_line(void *arg, int stream, const char *line, size_t len)
{
	struct run *r = arg;
	lua_State *L = r->L;
	/* A protected call: a raising callback must not longjmp over procx_run,
	 * which still has the program to end. */
	lua_pushcfunction(L, call_on_line);
	lua_pushlightuserdata(L, r);
	lua_pushlightuserdata(L, (void *)line);
	lua_pushinteger(L, (lua_Integer)len);
	lua_pushinteger(L, stream);
	/* Stack indices of l_proc_run's frame are valid here (we run inside it),
	 * not inside call_on_line's own frame: pass the values along. */
	lua_pushvalue(L, r->match);
	if (r->pattern)
		lua_pushvalue(L, r->pattern);
	else
		lua_pushnil(L);
	if (r->on_line)
		lua_pushvalue(L, r->on_line);
	else
		lua_pushnil(L);
	if (lua_pcall(L, 7, 0, 0) != LUA_OK) {
		/* The slot exists already: storing allocates nothing, so even a
		 * memory error cannot escape past procx_run. */
		lua_rawseti(L, r->err_slot, 1);
		r->failed = true;
		return false;
	}
	return true;
}

static bool cancelled(void *arg)
{
	struct run *r = arg;
	return jv_cancelled(r->ctx);
}

/* argv from the list at idx: strings only, no NUL, bounded. Pushes a
 * userdata holding the pointer array (strings stay owned by the table). */
static char **check_argv(lua_State *L, int idx)
{
	luaL_checktype(L, idx, LUA_TTABLE);
	lua_Integer n = luaL_len(L, idx);
	luaL_argcheck(L, n >= 1, idx, "argv must be a non-empty list of strings");
	luaL_argcheck(L, n <= MAX_ARGS, idx, "argv has more than 4096 entries");
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		luaL_argcheck(L, lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 &&
		                     lua_tointeger(L, -1) <= n,
		              idx, "argv must be a list (keys 1..n only)");
	}
	char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
	size_t total = 0;
	for (lua_Integer i = 1; i <= n; i++) {
		if (lua_geti(L, idx, i) != LUA_TSTRING)
			luaL_error(L, "proc.run: argv[%d] must be a string, got %s", (int)i,
			           luaL_typename(L, -1));
		size_t len;
		const char *s = lua_tolstring(L, -1, &len);
		if (strlen(s) != len)
			luaL_error(L, "proc.run: argv[%d] contains a NUL byte", (int)i);
		total += len + 1;
		argv[i - 1] = (char *)s; /* the string lives on in the argv table */
		lua_pop(L, 1);
	}
	argv[n] = NULL;
	if (total > MAX_ARG_BYTES)
		luaL_error(L, "proc.run: argv is larger than 1 MiB");
	return argv;
}

/* Set NAME=value in envp (n entries), replacing an earlier NAME. The string
 * is kept alive by the table at `strings` (on the stack for the whole call). */
static void env_set(lua_State *L, int strings, char **envp, int *n, const char *k, const char *v)
{
	lua_pushfstring(L, "%s=%s", k, v);
	char *kv = (char *)lua_tostring(L, -1);
	lua_rawseti(L, strings, (lua_Integer)lua_rawlen(L, strings) + 1);
	size_t kl = strlen(k);
	for (int i = 0; i < *n; i++) {
		if (strncmp(envp[i], k, kl) == 0 && envp[i][kl] == '=') {
			envp[i] = kv;
			return;
		}
	}
	envp[(*n)++] = kv;
}

/* The program's whole environment: PATH, HOME (the instance), LANG, then
 * opts.env. Nothing of the agent's own environment is inherited. Leaves the
 * pointer array and the table of strings on the stack. */
static char **build_env(lua_State *L, int opts, struct jv_run_ctx *ctx)
{
	char **envp = lua_newuserdatauv(L, sizeof(char *) * (MAX_ENV + 4), 0);
	lua_newtable(L);
	int strings = lua_gettop(L);
	int n = 0;
	env_set(L, strings, envp, &n, "PATH", DEFAULT_PATH);
	env_set(L, strings, envp, &n, "HOME", ctx->instance_dir ? ctx->instance_dir : "/");
	env_set(L, strings, envp, &n, "LANG", "C.UTF-8");
	if (!lua_isnoneornil(L, opts) && lua_getfield(L, opts, "env") != LUA_TNIL) {
		if (!lua_istable(L, -1))
			luaL_error(L, "option 'env' must be a table of NAME = \"value\"");
		int t = lua_gettop(L);
		lua_pushnil(L);
		while (lua_next(L, t)) {
			if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
				luaL_error(L, "option 'env' must map names to strings");
			const char *k = lua_tostring(L, -2);
			size_t vl;
			const char *v = lua_tolstring(L, -1, &vl);
			if (!env_name_ok(k))
				luaL_error(L, "proc.run: bad environment variable name '%s'", k);
			if (loader_variable(k))
				luaL_error(L, "proc.run: environment variable '%s' is not allowed (it changes "
				              "what the program runs before its own code)", k);
			if (strlen(v) != vl)
				luaL_error(L, "proc.run: environment variable '%s' contains a NUL byte", k);
			if (n >= MAX_ENV)
				luaL_error(L, "proc.run: more than %d environment variables", MAX_ENV);
			env_set(L, strings, envp, &n, k, v);
			lua_pop(L, 1);
		}
		lua_pop(L, 1);
	} else if (!lua_isnoneornil(L, opts)) {
		lua_pop(L, 1);
	}
	envp[n] = NULL;
	return envp;
}

/* .jobvisor/procs/<run>.<n>: where the shepherd records what it must end. */
static int open_record(struct jv_run_ctx *ctx, char *name, size_t namelen)
{
	int jfd = openat(ctx->instance_fd, ".jobvisor", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (jfd < 0)
		return -1;
	if (mkdirat(jfd, "procs", 0700) < 0 && errno != EEXIST) {
		close(jfd);
		return -1;
	}
	int dfd = openat(jfd, "procs", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	close(jfd);
	if (dfd < 0)
		return -1;
	snprintf(name, namelen, "%s.%u", ctx->run_id, ++ctx->proc_records);
	int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_NOFOLLOW | O_CLOEXEC,
	                0600);
	if (fd >= 0)
		fsync(dfd);
	close(dfd);
	return fd;
}

static void remove_record(struct jv_run_ctx *ctx, const char *name)
{
	char path[512];
	snprintf(path, sizeof(path), ".jobvisor/procs/%s", name);
	unlinkat(ctx->instance_fd, path, 0);
}

/* opts.steam_login = "account": a SteamCMD runscript "login <account>
 * <password>" in a memfd that the program gets as descriptor 4 (it reads it
 * as /proc/self/fd/4 through +runscript), the password taken from the
 * agent's steam_credentials_file. The password never enters the Lua state,
 * a file a script could read, or a command line (visible in /proc). Returns
 * the memfd, or -1 with a message in err. */
static int steam_login_fd(struct jv_run_ctx *ctx, const char *account, char *err, size_t errlen)
{
	size_t alen = strlen(account);
	const char *file = jv_json_str(ctx->settings, "steam_credentials_file", NULL);
	if (!file) {
		snprintf(err, errlen, "no Steam credentials: set the agent setting steam_credentials_file to "
		                      "a file of 'account password' lines (mode 0600)");
		return -1;
	}
	int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		snprintf(err, errlen, "cannot read steam_credentials_file: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077)) {
		snprintf(err, errlen, "steam_credentials_file must be a regular file readable by its owner "
		                      "only (chmod 600)");
		return -1;
	}
	char *text = NULL;
	size_t len = 0;
	int rc = jv_read_file_at(AT_FDCWD, file, 64 * 1024, &text, &len);
	if (rc < 0) {
		snprintf(err, errlen, "cannot read steam_credentials_file: %s", strerror(-rc));
		return -1;
	}
	char script[512] = "";
	int found = 0;
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '#' || !*p)
			continue;
		size_t ul = strcspn(p, " \t");
		if (ul != alen || strncmp(p, account, alen) != 0)
			continue;
		char *pw = p + ul;
		while (*pw == ' ' || *pw == '\t')
			pw++;
		size_t pl = strcspn(pw, " \t\r");
		if (pl == 0 || pw[pl + strspn(pw + pl, " \t\r")] != '\0') {
			found = -1; /* no password, or one with blanks: SteamCMD cannot take it */
			break;
		}
		pw[pl] = '\0';
		found = snprintf(script, sizeof(script), "login %s %s\n", account, pw) < (int)sizeof(script)
		            ? 1 : -1;
		break;
	}
	explicit_bzero(text, len);
	free(text);
	if (found <= 0) {
		explicit_bzero(script, sizeof(script));
		snprintf(err, errlen, found < 0 ? "steam_credentials_file: the line of account '%s' must be "
		                                  "'account password' (no blanks in the password)"
		                                : "no credentials for Steam account '%s' in steam_credentials_file",
		         account);
		return -1;
	}
	int mfd = memfd_create("steam-login", MFD_CLOEXEC);
	size_t slen = strlen(script);
	if (mfd < 0 || jv_write_all(mfd, script, slen) < 0 || lseek(mfd, 0, SEEK_SET) < 0) {
		snprintf(err, errlen, "cannot hand the login to SteamCMD: %s", strerror(errno));
		if (mfd >= 0)
			close(mfd);
		mfd = -1;
	}
	explicit_bzero(script, sizeof(script));
	return mfd;
}

static const char *signame(int sig)
{
	switch (sig) {
	case 1: return "SIGHUP";
	case 2: return "SIGINT";
	case 3: return "SIGQUIT";
	case 4: return "SIGILL";
	case 6: return "SIGABRT";
	case 7: return "SIGBUS";
	case 8: return "SIGFPE";
	case 9: return "SIGKILL";
	case 11: return "SIGSEGV";
	case 13: return "SIGPIPE";
	case 14: return "SIGALRM";
	case 15: return "SIGTERM";
	default: return "signal";
	}
}

/* The options of proc.run (at index 2) other than progress, env and
 * steam_login. on_line and progress_pattern stay on the stack at their
 * indices; stdin_data is kept alive by the options table. Raises on a bad one. */
struct proc_opts {
	char cwd[FSX_PATH_MAX];
	double timeout, grace;
	const char *stdin_data;
	size_t stdin_len;
	int on_line_idx, pattern_idx;
	size_t capture;
	int max_procs, nofile;
};

static void read_opts(lua_State *L, struct proc_opts *po)
{
	snprintf(po->cwd, sizeof(po->cwd), ".");
	const char *cwd_opt = apiutil_opt_str(L, 2, "cwd", NULL);
	if (cwd_opt) {
		lua_pushstring(L, cwd_opt);
		apiutil_path(L, -1, po->cwd, false);
		lua_pop(L, 1);
	}
	po->timeout = 0;
	po->grace = 5;
	if (!lua_isnoneornil(L, 2)) {
		if (lua_getfield(L, 2, "timeout") != LUA_TNIL) {
			luaL_argcheck(L, lua_isnumber(L, -1) && lua_tonumber(L, -1) > 0 &&
			                     lua_tonumber(L, -1) <= 7 * 86400,
			              2, "option 'timeout' must be seconds, more than 0 and at most 7 days");
			po->timeout = lua_tonumber(L, -1);
		}
		if (lua_getfield(L, 2, "kill_grace") != LUA_TNIL) {
			luaL_argcheck(L, lua_isnumber(L, -1) && lua_tonumber(L, -1) >= 0 &&
			                     lua_tonumber(L, -1) <= 60,
			              2, "option 'kill_grace' must be seconds from 0 to 60");
			po->grace = lua_tonumber(L, -1);
		}
		lua_pop(L, 2);
	}
	po->stdin_len = 0;
	po->stdin_data = NULL;
	if (!lua_isnoneornil(L, 2)) {
		int t = lua_getfield(L, 2, "stdin");
		if (t == LUA_TSTRING)
			po->stdin_data = lua_tolstring(L, -1, &po->stdin_len);
		else if (t != LUA_TNIL)
			luaL_error(L, "option 'stdin' must be a string");
		lua_pop(L, 1); /* still referenced by opts */
	}
	po->on_line_idx = 0;
	po->pattern_idx = 0;
	if (!lua_isnoneornil(L, 2)) {
		int t = lua_getfield(L, 2, "on_line");
		if (t == LUA_TFUNCTION)
			po->on_line_idx = lua_gettop(L);
		else if (t != LUA_TNIL)
			luaL_error(L, "option 'on_line' must be a function(stream, line)");
		else
			lua_pop(L, 1);
		t = lua_getfield(L, 2, "progress_pattern");
		if (t == LUA_TSTRING)
			po->pattern_idx = lua_gettop(L);
		else if (t != LUA_TNIL)
			luaL_error(L, "option 'progress_pattern' must be a Lua pattern string");
		else
			lua_pop(L, 1);
	}
	po->capture = (size_t)apiutil_opt_int(L, 2, "capture", CAPTURE_DEFAULT, 0, CAPTURE_MAX);
	po->max_procs = (int)apiutil_opt_int(L, 2, "max_procs", 64, 1, 4096);
	po->nofile = (int)apiutil_opt_int(L, 2, "nofile", 1024, 16, 65536);

}

/* steam_login: only for the steamcmd program, and a Steam account name. */
static void check_steam_login(lua_State *L, const struct jv_run_ctx *ctx, const char *path,
                              const char *steam_login)
{
	const char *steam = jv_json_str(ctx->settings, "steamcmd", NULL);
	if (!steam || strcmp(steam, path) != 0)
		luaL_error(L, "proc.run: option 'steam_login' is only for the steamcmd program");
	size_t alen = strlen(steam_login);
	bool ok = alen >= 1 && alen <= 64 && strcmp(steam_login, "anonymous") != 0;
	for (const char *p = steam_login; ok && *p; p++)
		ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		     *p == '_' || *p == '.' || *p == '-' || *p == '@';
	if (!ok)
		luaL_error(L, "proc.run: option 'steam_login' must be a Steam account name");
}

/* proc.run's result table for res. */
static void push_result(lua_State *L, const struct procx_result *res)
{
	lua_createtable(L, 0, 10);
	lua_pushboolean(L, res->end == PROCX_EXITED && res->exit_code == 0);
	lua_setfield(L, -2, "ok");
	if (res->exit_code >= 0) {
		lua_pushinteger(L, res->exit_code);
		lua_setfield(L, -2, "code");
	}
	if (res->signal > 0) {
		lua_pushstring(L, signame(res->signal));
		lua_setfield(L, -2, "signal");
	}
	lua_pushboolean(L, res->end == PROCX_TIMEOUT);
	lua_setfield(L, -2, "timed_out");
	lua_pushlstring(L, res->out, res->out_len);
	lua_setfield(L, -2, "stdout");
	lua_pushlstring(L, res->err, res->err_len);
	lua_setfield(L, -2, "stderr");
	lua_pushboolean(L, res->out_truncated);
	lua_setfield(L, -2, "stdout_truncated");
	lua_pushboolean(L, res->err_truncated);
	lua_setfield(L, -2, "stderr_truncated");
	lua_pushinteger(L, (lua_Integer)res->leftovers);
	lua_setfield(L, -2, "leftovers");
	lua_pushnumber(L, (double)res->ms / 1000.0);
	lua_setfield(L, -2, "seconds");
}

static void release_result(void *p)
{
	procx_result_free(p);
	free(p);
}

/* What the script gets from a finished run: the result table (with nil and
 * a message before it after a timeout or too many processes), or the
 * cancellation / on_line error raised again. */
static int end_of_run(lua_State *L, struct run *r, const struct procx_result *res, const char *path,
                      const struct proc_opts *po)
{
	if (res->leftovers) {
		char msg[300];
		snprintf(msg, sizeof(msg), "'%s' left %u process(es) behind: ended them", path,
		         res->leftovers);
		jv_emit_log(r->ctx, "warn", msg);
	}
	if (res->end == PROCX_CANCELLED)
		return jv_raise_cancel(L);
	if (res->end == PROCX_ABORTED) {
		lua_rawgeti(L, r->err_slot, 1);
		return lua_error(L);
	}
	if (r->prog.from >= 0 && res->end == PROCX_EXITED && res->exit_code == 0)
		jv_progress_report(r->ctx, &r->prog, 1.0, NULL);

	push_result(L, res);
	enum procx_end end = res->end;
	if (end == PROCX_TIMEOUT) {
		lua_pushnil(L);
		lua_pushfstring(L, "'%s' did not finish within %f s: ended it", path, po->timeout);
		lua_rotate(L, -3, 2); /* nil, message, result */
		return 3;
	}
	if (end == PROCX_TOO_MANY) {
		lua_pushnil(L);
		lua_pushfstring(L, "'%s' started more than %d processes: ended it", path, po->max_procs);
		lua_rotate(L, -3, 2);
		return 3;
	}
	return 1;
}

static int l_proc_run(lua_State *L)
{
	static const char *const keys[] = {"cwd", "env", "timeout", "kill_grace", "stdin", "on_line",
	                                   "capture", "progress", "progress_pattern", "max_procs",
	                                   "nofile", "steam_login", NULL};
	struct jv_run_ctx *ctx = jv_ctx(L);
	lua_settop(L, 2); /* opts at 2 (maybe nil); what we push goes above */
	char **argv = check_argv(L, 1);
	apiutil_opts(L, 2, "proc.run", keys);
	const char *path = argv[0];
	if (path[0] != '/')
		return luaL_error(L, "proc.run: argv[1] must be an absolute path, got '%s' (there is no "
		                     "PATH search)", path);
	if (!jv_proc_allowed(ctx->settings, path))
		return luaL_error(L, "proc.run: '%s' is not allowed: the agent setting job_executables "
		                     "lists the programs jobs may run", path);

	struct proc_opts po;
	read_opts(L, &po);
	struct run r = {.L = L, .ctx = ctx, .on_line = po.on_line_idx, .pattern = po.pattern_idx};
	const char *base = strrchr(path, '/') + 1;
	char what[160];
	snprintf(what, sizeof(what), "running %s", base);
	jv_progress_init(L, 2, &r.prog, what);
	if (po.pattern_idx && r.prog.from < 0)
		return luaL_error(L, "proc.run: progress_pattern needs progress = {from, to}");
	lua_pushvalue(L, lua_upvalueindex(1)); /* the real string.match, whatever the script did */
	r.match = lua_gettop(L);
	lua_createtable(L, 1, 0);
	lua_pushboolean(L, 0);
	lua_rawseti(L, -2, 1);
	r.err_slot = lua_gettop(L);
	luaL_checkstack(L, 16, "proc.run"); /* the callbacks push onto this frame */

	const char *steam_login = apiutil_opt_str(L, 2, "steam_login", NULL);
	if (steam_login)
		check_steam_login(L, ctx, path, steam_login);
	char **envp = build_env(L, 2, ctx);
	/* The result's buffers are owned by a box: pushing them may raise. */
	struct jv_box *rbox = jv_box_push(L);
	struct procx_result *res = calloc(1, sizeof(*res));
	if (!res)
		return luaL_error(L, "proc.run: out of memory");
	jv_box_set(rbox, res, release_result);
	struct fsx fx;
	apiutil_fsx(L, &fx);
	int cwd_fd; /* from here to procx_run's end nothing raises */
	int rc = fsx_open(&fx, po.cwd, O_RDONLY | O_DIRECTORY, 0, 0, &cwd_fd);
	if (rc < 0)
		return apiutil_fail(L, rc, "use as working directory", po.cwd);

	char err[1024];
	int extra_fd = -1;
	if (steam_login) {
		extra_fd = steam_login_fd(ctx, steam_login, err, sizeof(err));
		if (extra_fd < 0) {
			close(cwd_fd);
			return jv_push_fail(L, "%s", err);
		}
	}
	char rec_name[256];
	int rec_fd = open_record(ctx, rec_name, sizeof(rec_name));
	struct procx_spec s = {
		.path = path, .argv = argv, .envp = envp, .cwd_fd = cwd_fd,
		.stdin_data = po.stdin_data, .stdin_len = po.stdin_len,
		.timeout_ms = (int64_t)llround(po.timeout * 1000),
		.grace_ms = (int64_t)llround(po.grace * 1000),
		.max_procs = po.max_procs, .nofile = po.nofile, .capture_max = po.capture,
		.record_fd = rec_fd, .extra_fd = extra_fd,
		.on_line = (po.on_line_idx || po.pattern_idx) ? on_line : NULL, .cancelled = cancelled,
		.arg = &r,
	};
	char step[300];
	snprintf(step, sizeof(step), "running %s", path);
	jv_run_marker_step(ctx, step, -1);
	rc = procx_run(&s, res, err, sizeof(err));
	close(cwd_fd);
	if (extra_fd >= 0)
		close(extra_fd);
	if (rec_fd >= 0) {
		close(rec_fd);
		remove_record(ctx, rec_name);
	}
	if (rc < 0)
		return jv_push_fail(L, "%s", err);
	return end_of_run(L, &r, res, path, &po);
}

/* proc.steamcmd(): the agent's steamcmd setting, or nil. */
static int l_proc_steamcmd(lua_State *L)
{
	const char *p = jv_json_str(jv_ctx(L)->settings, "steamcmd", NULL);
	if (p && *p)
		lua_pushstring(L, p);
	else
		lua_pushnil(L);
	return 1;
}

static const luaL_Reg proc_funcs[] = {
	{"run", l_proc_run},
	{"steamcmd", l_proc_steamcmd},
	{NULL, NULL},
};

int luaopen_jv_proc(lua_State *L)
{
	luaL_newlibtable(L, proc_funcs);
	/* Every function gets string.match as it is now (the sandbox opens string
	 * first), so a script that replaces string.match cannot hook the pattern. */
	lua_getglobal(L, "string");
	if (lua_istable(L, -1))
		lua_getfield(L, -1, "match");
	else
		lua_pushnil(L);
	lua_remove(L, -2);
	luaL_setfuncs(L, proc_funcs, 1);
	return 1;
}
