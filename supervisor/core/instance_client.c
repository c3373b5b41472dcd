/* instance_client.c — connect to, query and launch instance monitors.
 *
 * The socket path is reached through /proc/self/fd/<dirfd>/monitor.sock, the
 * same trick the monitor binds with, so deep instance paths fit sun_path.
 * Launching forks twice: the intermediate child calls setsid() and exits, so
 * the monitor is no child of the caller, is not a session leader, and is
 * reparented to init (or the nearest subreaper). Everything the exec needs is
 * prepared before fork, so the children only call async-signal-safe
 * functions. */
#include "jobvisor/instance_client.h"
#include "jobvisor/durable.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/procid.h"
#include "jobvisor/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define MSG_MAX (1024 * 1024)

struct jv_monconn {
	int fd;
	struct jv_buf in;
};

/* <instance_dir>/.jobvisor, opened. Returns the fd or -errno. */
static int open_jvdir(const char *instance_dir)
{
	char dir[PATH_MAX];
	if (snprintf(dir, sizeof(dir), "%s/.jobvisor", instance_dir) >= (int)sizeof(dir))
		return -ENAMETOOLONG;
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return dfd < 0 ? -errno : dfd;
}

int jv_monconn_open(const char *instance_dir, struct jv_monconn **out)
{
	*out = NULL;
	int dfd = open_jvdir(instance_dir);
	if (dfd < 0)
		return dfd;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/monitor.sock", dfd);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int rc = 0;
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		rc = -errno;
	close(dfd);
	if (rc) {
		if (fd >= 0)
			close(fd);
		return rc;
	}
	struct jv_monconn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	c->fd = fd;
	jv_buf_init(&c->in, MSG_MAX);
	*out = c;
	return 0;
}

int jv_monconn_fd(const struct jv_monconn *c)
{
	return c->fd;
}

void jv_monconn_close(struct jv_monconn *c)
{
	if (!c)
		return;
	close(c->fd);
	jv_buf_free(&c->in);
	free(c);
}

int jv_monconn_send(struct jv_monconn *c, const cJSON *req)
{
	char *text = jv_json_print(req);
	if (!text)
		return -ENOMEM;
	size_t len = strlen(text);
	int rc = 0;
	/* Requests are small; a monitor that cannot take them in 5 s is stuck. */
	int64_t end = jv_now_mono_ms() + 5000;
	size_t off = 0;
	char nl = '\n';
	while (rc == 0 && off <= len) {
		const char *p = off < len ? text + off : &nl;
		size_t n = off < len ? len - off : 1;
		ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w >= 0) {
			off += (size_t)w;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			rc = -errno;
			break;
		}
		int64_t left = end - jv_now_mono_ms();
		struct pollfd pf = {.fd = c->fd, .events = POLLOUT};
		if (left <= 0 || poll(&pf, 1, (int)left) == 0)
			rc = -ETIMEDOUT;
	}
	free(text);
	return rc;
}

int jv_monconn_recv(struct jv_monconn *c, int timeout_ms, cJSON **msg)
{
	*msg = NULL;
	int64_t end = jv_now_mono_ms() + (timeout_ms < 0 ? 0 : timeout_ms);
	for (;;) {
		char *nl = c->in.len ? memchr(c->in.data, '\n', c->in.len) : NULL;
		if (nl) {
			size_t len = (size_t)(nl - c->in.data);
			cJSON *m = jv_json_parse(c->in.data, len);
			jv_buf_consume(&c->in, len + 1);
			if (!cJSON_IsObject(m)) {
				cJSON_Delete(m);
				return -EPROTO;
			}
			*msg = m;
			return 0;
		}
		int64_t left = end - jv_now_mono_ms();
		struct pollfd pf = {.fd = c->fd, .events = POLLIN};
		int r = poll(&pf, 1, left > 0 ? (int)left : 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		char buf[8192];
		ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return n == 0 ? -ECONNRESET : -errno;
		if (jv_buf_append(&c->in, buf, (size_t)n) < 0)
			return -EPROTO;
	}
}

int jv_monitor_call(const char *instance_dir, const cJSON *req, int timeout_ms, cJSON **reply)
{
	*reply = NULL;
	struct jv_monconn *c;
	int rc = jv_monconn_open(instance_dir, &c);
	if (rc)
		return rc;
	rc = jv_monconn_send(c, req);
	int64_t end = jv_now_mono_ms() + timeout_ms;
	while (rc == 0) {
		cJSON *m = NULL;
		int64_t left = end - jv_now_mono_ms();
		rc = jv_monconn_recv(c, left > 0 ? (int)left : 0, &m);
		if (rc == 0 && cJSON_GetObjectItemCaseSensitive(m, "ok")) {
			*reply = m;
			break;
		}
		cJSON_Delete(m);
	}
	jv_monconn_close(c);
	return rc;
}

int jv_instance_read_state(const char *instance_dir, cJSON **out)
{
	*out = NULL;
	int dfd = open_jvdir(instance_dir);
	if (dfd < 0)
		return dfd;
	int rc = jv_instance_read_state_at(dfd, out);
	close(dfd);
	return rc;
}

int jv_instance_read_state_at(int jv_fd, cJSON **out)
{
	*out = NULL;
	char *text = NULL;
	size_t len = 0;
	int rc = jv_read_file_at(jv_fd, "state.json", 64 * 1024, &text, &len);
	if (rc)
		return rc;
	cJSON *o = jv_json_parse(text, len);
	free(text);
	if (!cJSON_IsObject(o)) {
		cJSON_Delete(o);
		return -EINVAL;
	}
	*out = o;
	return 0;
}

static void set_item(cJSON *o, const char *key, cJSON *v)
{
	if (cJSON_GetObjectItemCaseSensitive(o, key))
		cJSON_ReplaceItemInObjectCaseSensitive(o, key, v);
	else
		cJSON_AddItemToObject(o, key, v);
}

int jv_instance_status(const char *instance_dir, cJSON **out)
{
	*out = NULL;
	cJSON *req = cJSON_CreateObject();
	if (!req)
		return -ENOMEM;
	cJSON_AddStringToObject(req, "op", "status");
	cJSON *reply = NULL;
	int rc = jv_monitor_call(instance_dir, req, 3000, &reply);
	cJSON_Delete(req);
	if (rc == 0) {
		cJSON *st = cJSON_DetachItemFromObjectCaseSensitive(reply, "status");
		cJSON_Delete(reply);
		if (!cJSON_IsObject(st)) {
			cJSON_Delete(st);
			return -EPROTO;
		}
		set_item(st, "monitor", cJSON_CreateTrue());
		*out = st;
		return 0;
	}
	bool denied = rc == -EACCES || rc == -EPERM;
	if (rc != -ENOENT && rc != -ECONNREFUSED && rc != -ECONNRESET && !denied)
		return rc;
	cJSON *st = NULL;
	rc = jv_instance_read_state(instance_dir, &st);
	if (rc == 0 && denied) {
		/* Another user's monitor: say what state.json says, and whether that
		 * monitor (pid + start time) is alive, but judge nothing else. */
		pid_t mpid = (pid_t)jv_json_int(st, "monitorPid", 0);
		int64_t mstart = jv_json_int(st, "monitorStartTime", -1);
		int mfd = -1;
		bool alive = mpid > 1 && mstart >= 0 &&
		             jv_proc_open_verified(mpid, (uint64_t)mstart, NULL, &mfd) == 0;
		if (mfd >= 0)
			close(mfd);
		set_item(st, "monitor", cJSON_CreateBool(alive));
		set_item(st, "error", cJSON_CreateString("the monitor's socket is not accessible to this user"));
		*out = st;
		return 0;
	}
	if (rc == -ENOENT) {
		st = cJSON_CreateObject();
		if (!st)
			return -ENOMEM;
		const char *slash = strrchr(instance_dir, '/');
		cJSON_AddStringToObject(st, "instanceId", slash ? slash + 1 : instance_dir);
		cJSON_AddStringToObject(st, "state", "STOPPED");
		cJSON_AddNullToObject(st, "pid");
		cJSON_AddBoolToObject(st, "neverStarted", true);
	} else if (rc) {
		return rc;
	}
	set_item(st, "monitor", cJSON_CreateFalse());
	pid_t pid = (pid_t)jv_json_int(st, "pid", 0);
	int64_t start = jv_json_int(st, "startTime", -1);
	int pidfd = -1;
	bool alive = pid > 1 && start >= 0 &&
	             jv_proc_open_verified(pid, (uint64_t)start, jv_json_str(st, "bootId", NULL),
	                                   &pidfd) == 0;
	if (pidfd >= 0)
		close(pidfd);
	set_item(st, "alive", cJSON_CreateBool(alive));
	set_item(st, "orphan", cJSON_CreateBool(alive));
	const char *state = jv_json_str(st, "state", "STOPPED");
	bool active = strcmp(state, "STARTING") == 0 || strcmp(state, "RUNNING") == 0 ||
	              strcmp(state, "STOPPING") == 0 || strcmp(state, "BACKOFF") == 0;
	if (active && !alive) {
		set_item(st, "recordedState", cJSON_CreateString(state));
		set_item(st, "state", cJSON_CreateString("CRASHED"));
		set_item(st, "stale", cJSON_CreateTrue());
		set_item(st, "message",
		         cJSON_CreateString("the monitor is gone and the server is not running"));
		set_item(st, "pid", cJSON_CreateNull());
	}
	*out = st;
	return 0;
}

/* The settings a monitor uses; everything else stays out of its argv (which
 * any local user can read in /proc). */
static char *monitor_settings(const cJSON *settings)
{
	static const char *const keys[] = {"allowed_executables", "user", "console_log_max_bytes",
	                                   "console_log_keep", "cgroup_parent", "cgroups",
	                                   "log_level", "log_format"};
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return NULL;
	for (size_t i = 0; i < JV_ARRAY_LEN(keys); i++) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(settings, keys[i]);
		if (v)
			cJSON_AddItemToObject(o, keys[i], cJSON_Duplicate(v, true));
	}
	char *text = jv_json_print(o);
	cJSON_Delete(o);
	return text;
}

/* jobvisor-monitor beside the running binary: the monitor without the job
 * runtime's libraries (see supervisor/cli/jobvisor_monitor.c). */
static int monitor_binary(char *out, size_t len)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return -ENOENT;
	self[n] = '\0';
	char *slash = strrchr(self, '/');
	if (!slash)
		return -ENOENT;
	*slash = '\0';
	if (snprintf(out, len, "%s/jobvisor-monitor", self) >= (int)len)
		return -ENAMETOOLONG;
	return access(out, X_OK) == 0 ? 0 : -ENOENT;
}

int jv_monitor_launch(const struct jv_monitor_launch *l, int *status_fd)
{
	*status_fd = -1;
	char *settings = monitor_settings(l->settings);
	if (!settings)
		return -ENOMEM;
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0) {
		int e = errno;
		free(settings);
		return -e;
	}
	char fdarg[16];
	snprintf(fdarg, sizeof(fdarg), "%d", p[1]);
	char slim[PATH_MAX];
	const char *exe = l->exe;
	const char *argv[14];
	int n = 0;
	if (!exe && monitor_binary(slim, sizeof(slim)) == 0) {
		exe = slim;
		argv[n++] = "jobvisor-monitor";
	} else {
		if (!exe)
			exe = "/proc/self/exe";
		argv[n++] = "jobvisor";
		argv[n++] = "monitor";
	}
	argv[n++] = "--instance-dir";
	argv[n++] = l->instance_dir;
	argv[n++] = "--instance-id";
	argv[n++] = l->instance_id;
	argv[n++] = "--settings";
	argv[n++] = settings;
	argv[n++] = "--status-fd";
	argv[n++] = fdarg;
	if (l->adopt_only)
		argv[n++] = "--adopt-only";
	argv[n] = NULL;

	pid_t pid = fork();
	if (pid == 0) {
		setsid();
		if (l->switch_user) {
			gid_t g = (gid_t)l->gid;
			if (setgroups(1, &g) < 0 || setgid(g) < 0 || setuid((uid_t)l->uid) < 0)
				_exit(1);
		}
		pid_t gc = fork();
		if (gc != 0)
			_exit(gc < 0 ? 1 : 0);
		fcntl(p[1], F_SETFD, 0); /* the status pipe survives the exec */
		execv(exe, (char *const *)argv);
		static const char msg[] = "error cannot execute the jobvisor binary\n";
		(void)!write(p[1], msg, sizeof(msg) - 1);
		_exit(127);
	}
	int e = errno;
	close(p[1]);
	free(settings);
	if (pid < 0) {
		close(p[0]);
		return -e;
	}
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
	}
	*status_fd = p[0];
	return 0;
}

int jv_monitor_launch_wait(int status_fd, int timeout_ms, char *msg, size_t msglen)
{
	if (msglen)
		msg[0] = '\0';
	struct pollfd pf = {.fd = status_fd, .events = POLLIN};
	int r = poll(&pf, 1, timeout_ms);
	if (r == 0)
		return -ETIMEDOUT;
	if (r < 0)
		return errno == EINTR ? -ETIMEDOUT : -errno;
	/* One short line, written with a single write(): read it whole. */
	char buf[600];
	ssize_t n;
	do {
		n = read(status_fd, buf, sizeof(buf) - 1);
	} while (n < 0 && errno == EINTR);
	if (n <= 0) {
		snprintf(msg, msglen, "the monitor exited before reporting (see logs/monitor.log)");
		return -EIO;
	}
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	if (strncmp(buf, "ok ", 3) == 0) {
		snprintf(msg, msglen, "%s", buf + 3);
		return 0;
	}
	if (strncmp(buf, "busy", 4) == 0) {
		snprintf(msg, msglen, "%s", buf[4] ? buf + 5 : "another monitor is running");
		return -EBUSY;
	}
	snprintf(msg, msglen, "%s", strncmp(buf, "error ", 6) == 0 ? buf + 6 : buf);
	return -EINVAL;
}
