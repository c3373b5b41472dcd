/* jobtypes.c — report the job types this host can run: once per start, after
 * a reload, and whenever the admin's jobs_dir changes.
 *
 * The agent does not load Lua (docs/architecture.md): the list is made by a
 * child, `jobvisor __jobtypes [jobs_dir]` (lua/jobtypes.c), which loads each
 * script's table in the inspection sandbox as `jobvisor check` does, running
 * as the run user like a job run. Its JSON is posted to
 * POST /v1/agents/{agentId}/job-types. Changes of jobs_dir are seen through
 * inotify and coalesced (DEBOUNCE_MS). A control plane that answers 404
 * predates job types: the agent logs it once and goes on without; failures
 * to reach it are retried with a backoff; a newer change replaces a report
 * still waiting to be sent. */
#include "jobtypes.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "transport.h"

#define DEBOUNCE_MS 300
#define CHILD_TIMEOUT_MS 30000
#define OUT_MAX (4u << 20)
#define RETRY_MIN_MS 1000
#define RETRY_MAX_MS 60000

struct jobtypes {
	struct agent *ag;
	int ino_fd;          /* inotify on jobs_dir, -1 when none */
	char *watched;       /* the directory watched, owned */
	bool want;           /* a (new) list is to be made at due_ms */
	int64_t due_ms;
	pid_t pid;           /* the __jobtypes child, 0 when none */
	int out_fd;          /* its stdout, -1 once at EOF */
	int64_t kill_at_ms;
	char *out;
	size_t out_len;
	char *pending;       /* body waiting to be posted, owned */
	int64_t post_at_ms;
	int64_t retry_ms;
	struct transport_req *req;
	bool told_unsupported;
};

static struct jobtypes *g_of(struct agent *ag)
{
	return ag->jt;
}

static void watch_dir(struct jobtypes *jt)
{
	const char *dir = jt->ag->cfg.jobs_dir;
	if (jt->watched && dir && strcmp(jt->watched, dir) == 0)
		return;
	if (jt->ino_fd >= 0)
		close(jt->ino_fd);
	jt->ino_fd = -1;
	free(jt->watched);
	jt->watched = NULL;
	if (!dir)
		return;
	int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (fd < 0 || inotify_add_watch(fd, dir, IN_CREATE | IN_DELETE | IN_CLOSE_WRITE | IN_MOVED_TO |
	                                             IN_MOVED_FROM | IN_ATTRIB | IN_DELETE_SELF |
	                                             IN_MOVE_SELF) < 0) {
		jv_warn(NULL, NULL, "cannot watch jobs_dir '%s' for changes (%s): job types are reported at "
		        "start and on reload only", dir, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	jt->ino_fd = fd;
	jt->watched = strdup(dir);
}

static void reset_child(struct jobtypes *jt)
{
	if (jt->out_fd >= 0)
		close(jt->out_fd);
	jt->out_fd = -1;
	free(jt->out);
	jt->out = NULL;
	jt->out_len = 0;
	jt->pid = 0;
}

/* fork + exec `jobvisor __jobtypes [jobs_dir]` with stdout on a pipe. */
static int spawn(struct jobtypes *jt, int64_t now)
{
	struct agent *ag = jt->ag;
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	char *argv[] = {"jobvisor", "__jobtypes", ag->cfg.jobs_dir ? ag->cfg.jobs_dir : "", NULL};
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(p[0]);
		close(p[1]);
		return -e;
	}
	if (pid == 0) {
		/* Between fork and exec: system calls only. */
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		int devnull = open("/dev/null", O_RDONLY);
		if (devnull < 0 || dup2(devnull, STDIN_FILENO) < 0 || dup2(p[1], STDOUT_FILENO) < 0)
			_exit(127);
		if (chdir("/") < 0)
			_exit(127);
		if (ag->run_gid >= 0 && getuid() == 0 &&
		    (setgroups(0, NULL) < 0 || setgid((gid_t)ag->run_gid) < 0))
			_exit(127);
		if (ag->run_uid >= 0 && getuid() == 0 && setuid((uid_t)ag->run_uid) < 0)
			_exit(127);
		prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
		execv("/proc/self/exe", argv);
		_exit(127);
	}
	close(p[1]);
	fcntl(p[0], F_SETFL, O_NONBLOCK);
	jt->pid = pid;
	jt->out_fd = p[0];
	jt->kill_at_ms = now + CHILD_TIMEOUT_MS;
	return 0;
}

/* The child's output -> the body to post ({jobTypes, problems}). */
static void take_output(struct jobtypes *jt, int status)
{
	cJSON *root = NULL;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && jt->out)
		root = cJSON_Parse(jt->out);
	const cJSON *types = cJSON_GetObjectItemCaseSensitive(root, "jobTypes");
	const cJSON *problems = cJSON_GetObjectItemCaseSensitive(root, "problems");
	if (!cJSON_IsArray(types) || !cJSON_IsArray(problems)) {
		jv_error(NULL, NULL, "cannot list the job types: `jobvisor __jobtypes` %s",
		         WIFSIGNALED(status) ? "was killed" : "failed (see its messages above)");
		cJSON_Delete(root);
		return;
	}
	const cJSON *pr;
	cJSON_ArrayForEach(pr, problems)
		if (cJSON_IsString(pr))
			jv_warn(NULL, NULL, "job script not offered to the control plane: %s", pr->valuestring);
	free(jt->pending);
	jt->pending = cJSON_PrintUnformatted(root);
	jt->post_at_ms = 0;
	jt->retry_ms = RETRY_MIN_MS;
	jv_info(NULL, NULL, "job types: %d to report (%d script%s with problems)", cJSON_GetArraySize(types),
	        cJSON_GetArraySize(problems), cJSON_GetArraySize(problems) == 1 ? "" : "s");
	cJSON_Delete(root);
}

static void on_answer(void *ud, const struct transport_response *resp)
{
	struct jobtypes *jt = ud;
	jt->req = NULL;
	enum transport_class c = transport_classify(resp);
	if (c == TRANSPORT_OK) {
		jv_info(NULL, NULL, "job types reported to the control plane");
	} else if (resp->status == 404) {
		if (!jt->told_unsupported)
			jv_info(NULL, NULL, "the control plane does not take job types (404); not reporting them");
		jt->told_unsupported = true;
	} else if (c == TRANSPORT_RETRY) {
		jv_warn(NULL, NULL, "cannot report job types (%s); trying again in %lld s",
		        resp->status ? "server error" : (resp->error ? resp->error : "no answer"),
		        (long long)jt->retry_ms / 1000);
		jt->post_at_ms = jv_now_mono_ms() + jt->retry_ms;
		jt->retry_ms = jt->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : jt->retry_ms * 2;
		return; /* keep pending */
	} else {
		jv_error(NULL, NULL, "the control plane refused the job types (HTTP %ld): %.300s", resp->status,
		         resp->body ? resp->body : "");
	}
	free(jt->pending);
	jt->pending = NULL;
}

static void reap(struct jobtypes *jt, int64_t now)
{
	if (!jt->pid)
		return;
	if (jt->out_fd >= 0 && now >= jt->kill_at_ms) {
		jv_error(NULL, NULL, "`jobvisor __jobtypes` took longer than %d s; killed", CHILD_TIMEOUT_MS / 1000);
		kill(jt->pid, SIGKILL);
		close(jt->out_fd);
		jt->out_fd = -1;
	}
	if (jt->out_fd >= 0)
		return;
	int status = 0;
	pid_t r = waitpid(jt->pid, &status, WNOHANG);
	if (r == 0)
		return;
	if (r == jt->pid)
		take_output(jt, status);
	reset_child(jt);
}

static int64_t jt_prepare(void *ud, int64_t now)
{
	struct jobtypes *jt = ud;
	reap(jt, now);
	int64_t next = INT64_MAX;
	if (jt->ag->stopping)
		return next;
	if (jt->want && !jt->pid) {
		if (now >= jt->due_ms) {
			jt->want = false;
			int rc = spawn(jt, now);
			if (rc < 0)
				jv_error(NULL, NULL, "cannot list the job types: %s", strerror(-rc));
		} else {
			next = jt->due_ms;
		}
	}
	if (jt->pid)
		next = jt->out_fd >= 0 ? jt->kill_at_ms : now + 20; /* EOF seen: reap soon */
	if (jt->pending && !jt->req && !jt->pid) {
		if (now >= jt->post_at_ms) {
			char path[160];
			snprintf(path, sizeof(path), "/v1/agents/%s/job-types", jt->ag->cfg.agent_id);
			char *body = strdup(jt->pending);
			if (body && transport_post(jt->ag->tp, path, body, (long)jt->ag->cfg.request_timeout_s * 1000,
			                           on_answer, jt, &jt->req) < 0)
				jt->req = NULL;
			if (!jt->req)
				jt->post_at_ms = now + RETRY_MIN_MS;
		}
		if (!jt->req && jt->post_at_ms < next)
			next = jt->post_at_ms;
	}
	return next;
}

static size_t jt_fds(void *ud, struct pollfd *fds, void **tags, size_t max)
{
	struct jobtypes *jt = ud;
	size_t n = 0;
	if (jt->ino_fd >= 0 && n < max) {
		fds[n] = (struct pollfd){.fd = jt->ino_fd, .events = POLLIN};
		tags[n++] = &jt->ino_fd;
	}
	if (jt->out_fd >= 0 && n < max) {
		fds[n] = (struct pollfd){.fd = jt->out_fd, .events = POLLIN};
		tags[n++] = &jt->out_fd;
	}
	return n;
}

static void jt_ready(void *ud, void *tag, short revents)
{
	struct jobtypes *jt = ud;
	if (tag == &jt->ino_fd) {
		char buf[4096];
		while (read(jt->ino_fd, buf, sizeof(buf)) > 0)
			;
		jt->want = true;
		jt->due_ms = jv_now_mono_ms() + DEBOUNCE_MS;
		return;
	}
	if (tag != &jt->out_fd || jt->out_fd < 0 || !(revents & (POLLIN | POLLHUP | POLLERR)))
		return;
	for (;;) {
		char buf[16384];
		ssize_t n = read(jt->out_fd, buf, sizeof(buf));
		if (n > 0 && jt->out_len + (size_t)n <= OUT_MAX) {
			char *grown = realloc(jt->out, jt->out_len + (size_t)n + 1);
			if (!grown)
				break;
			jt->out = grown;
			memcpy(jt->out + jt->out_len, buf, (size_t)n);
			jt->out_len += (size_t)n;
			jt->out[jt->out_len] = '\0';
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		break; /* EOF, error, or too much: done reading */
	}
	close(jt->out_fd);
	jt->out_fd = -1;
}

int jobtypes_start(struct agent *ag, struct loop_source *src)
{
	*src = (struct loop_source){0};
	struct jobtypes *jt = calloc(1, sizeof(*jt));
	if (!jt)
		return -ENOMEM;
	jt->ag = ag;
	jt->ino_fd = jt->out_fd = -1;
	jt->want = true;
	jt->retry_ms = RETRY_MIN_MS;
	ag->jt = jt;
	watch_dir(jt);
	*src = (struct loop_source){.ud = jt, .prepare = jt_prepare, .fds = jt_fds, .ready = jt_ready};
	return 0;
}

void jobtypes_reconfigure(struct agent *ag)
{
	struct jobtypes *jt = g_of(ag);
	if (!jt)
		return;
	watch_dir(jt);
	jt->want = true;
	jt->due_ms = 0;
}

void jobtypes_free(struct agent *ag)
{
	struct jobtypes *jt = g_of(ag);
	if (!jt)
		return;
	if (jt->req)
		transport_abort(ag->tp, jt->req);
	if (jt->pid) {
		kill(jt->pid, SIGKILL);
		while (waitpid(jt->pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
	reset_child(jt);
	if (jt->ino_fd >= 0)
		close(jt->ino_fd);
	free(jt->watched);
	free(jt->pending);
	free(jt);
	ag->jt = NULL;
}
