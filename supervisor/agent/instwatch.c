/* instwatch.c — subscribe to every monitor, re-adopt after a monitor dies,
 * report instance state changes durably (see instwatch.h for the contract).
 * This file finds instances and keeps their monitors; instreport.c turns what
 * the monitors say into events and delivers them.
 *
 * Per instance the agent keeps: the subscription (a monitor socket), the
 * status pipe of a monitor it launched itself, the durable event stream and
 * the last state it reported ("last", also kept in the stream as last.json so
 * a restarted agent reports only what changed). A state event is made
 * durable (append + fdatasync) before it is sent; one request per instance is
 * in flight, so events arrive in seq order, and the control plane keeps each
 * (agent, instance, seq) once.
 *
 * Owns no process: monitors are launched detached (jv_monitor_launch) and
 * outlive the agent. */
#include "instwatch_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobvisor/ident.h"
#include "jobvisor/instance_client.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/procid.h"
#include "jobvisor/util.h"
#include "spool.h"
#include "transport.h"

#define RESCAN_MS 10000        /* backstop for missed inotify events */
#define RESCAN_SOON_MS 50      /* debounce after an inotify event */
#define SUBSCRIBE_WAIT_MS 5000 /* a monitor that does not answer subscribe */
#define LAUNCH_WAIT_MS 20000
#define RETRY_MS 1000          /* no monitor yet, but one seems to be starting */
#define LAUNCH_WINDOW_MS 60000
#define SNAPSHOT_DELAY_MS 300  /* let subscriptions answer before the first snapshot */
#define DELIVERY_BASE_MS 500


/* ---- instances ------------------------------------------------------------*/

static struct inst *find(struct instwatch *iw, const char *id)
{
	for (struct inst *in = iw->list; in; in = in->next)
		if (strcmp(in->id, id) == 0)
			return in;
	return NULL;
}

static void drop_sub(struct inst *in)
{
	jv_monconn_close(in->mc);
	in->mc = NULL;
	in->sub_ok = false;
}

static void watch_jv_dir(struct inst *in)
{
	struct instwatch *iw = in->iw;
	if (in->wd >= 0 || iw->ino_fd < 0)
		return;
	char path[PATH_MAX + 16];
	snprintf(path, sizeof(path), "%s/.jobvisor", in->dir);
	in->wd = inotify_add_watch(iw->ino_fd, path, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
}

static struct inst *inst_new(struct instwatch *iw, const char *id)
{
	struct inst *in = calloc(1, sizeof(*in));
	if (!in)
		return NULL;
	in->iw = iw;
	snprintf(in->id, sizeof(in->id), "%s", id);
	snprintf(in->dir, sizeof(in->dir), "%s/%s", iw->root, id);
	in->wd = -1;
	in->launch_fd = -1;
	backoff_init(&in->bo, DELIVERY_BASE_MS, iw->ag->cfg.backoff_max_ms);
	int rc = spool_stream_open(iw->ag->spool, id, &in->stream);
	if (rc) {
		jv_warn(NULL, NULL, "instance %s: cannot open its event stream in '%s/runs/.instances': %s; "
		        "its state changes are not reported", id, iw->ag->cfg.data_dir, strerror(-rc));
		in->stream = NULL;
	} else {
		in->last = instreport_load_last(in);
		if (spool_run_pending(in->stream) > 0)
			jv_info(NULL, NULL, "instance %s: %zu state events from before the restart to deliver",
			        id, spool_run_pending(in->stream));
	}
	in->next = iw->list;
	iw->list = in;
	iw->n++;
	watch_jv_dir(in);
	return in;
}

static void inst_free(struct inst *in)
{
	struct agent *ag = in->iw->ag;
	if (in->req)
		transport_abort(ag->tp, in->req);
	drop_sub(in);
	if (in->launch_fd >= 0)
		close(in->launch_fd);
	spool_run_close(in->stream);
	cJSON_Delete(in->last);
	free(in);
}

static bool launch_allowed(struct inst *in, int64_t now)
{
	size_t keep = 0;
	for (size_t i = 0; i < in->nlaunch; i++)
		if (now - in->launches[i] < LAUNCH_WINDOW_MS)
			in->launches[keep++] = in->launches[i];
	in->nlaunch = keep;
	return in->nlaunch < LAUNCH_BURST;
}

static void launch(struct inst *in, bool adopt_only, int64_t now)
{
	struct agent *ag = in->iw->ag;
	if (in->launch_fd >= 0)
		return;
	if (!launch_allowed(in, now)) {
		jv_error(NULL, NULL, "instance %s: %d monitors started within %ds and none stayed; "
		         "trying again in %ds", in->id, LAUNCH_BURST, LAUNCH_WINDOW_MS / 1000,
		         LAUNCH_WINDOW_MS / 1000);
		in->next_try_ms = now + LAUNCH_WINDOW_MS;
		return;
	}
	struct jv_monitor_launch l = {
		.instance_dir = in->dir,
		.instance_id = in->id,
		.settings = ag->child_settings,
		.adopt_only = adopt_only,
		.switch_user = ag->run_uid >= 0,
		.uid = ag->run_uid >= 0 ? (unsigned)ag->run_uid : 0,
		.gid = ag->run_gid >= 0 ? (unsigned)ag->run_gid : 0,
	};
	int fd = -1;
	int rc = jv_monitor_launch(&l, &fd);
	in->launches[in->nlaunch++] = now;
	if (rc) {
		jv_error(NULL, NULL, "instance %s: cannot start a monitor: %s", in->id, strerror(-rc));
		in->next_try_ms = now + RETRY_MS;
		return;
	}
	in->launch_fd = fd;
	in->launch_deadline = now + LAUNCH_WAIT_MS;
	in->next_try_ms = INT64_MAX; /* the launch answers first */
}

static void on_launch_status(struct inst *in)
{
	char msg[600];
	int rc = jv_monitor_launch_wait(in->launch_fd, 0, msg, sizeof(msg));
	if (rc == -ETIMEDOUT)
		return;
	close(in->launch_fd);
	in->launch_fd = -1;
	int64_t now = jv_now_mono_ms();
	in->next_try_ms = now;
	if (rc == 0) {
		char text[700];
		snprintf(text, sizeof(text), "new monitor: %s", msg);
		jv_info(NULL, NULL, "instance %s: %s", in->id, text);
		instreport_note(in, "monitor", text);
	} else if (rc == -EBUSY) {
		jv_info(NULL, NULL, "instance %s: another monitor took over first", in->id);
	} else {
		jv_error(NULL, NULL, "instance %s: the monitor the agent started failed: %s", in->id, msg);
		in->next_try_ms = now + RETRY_MS;
	}
}

/* Whether a process that looks like a monitor holds the instance (its pid
 * is in .jobvisor/monitor.lock) while its socket is not there yet. */
static bool monitor_starting(const struct inst *in)
{
	char path[PATH_MAX + 32], buf[32];
	snprintf(path, sizeof(path), "%s/.jobvisor/monitor.lock", in->dir);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	long pid = strtol(buf, NULL, 10);
	if (pid <= 1)
		return false;
	snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	char cmd[256];
	n = read(fd, cmd, sizeof(cmd) - 1);
	close(fd);
	if (n <= 0)
		return false;
	cmd[n] = '\0';
	for (ssize_t i = 0; i < n; i++)
		if (cmd[i] == '\0')
			cmd[i] = ' ';
	return strstr(cmd, "monitor") && strstr(cmd, in->dir);
}

static bool verified_alive(const cJSON *st, const char *pid_key, const char *start_key)
{
	int64_t pid = jv_json_int(st, pid_key, 0);
	int64_t start = jv_json_int(st, start_key, -1);
	int fd = -1;
	bool alive = pid > 1 && start >= 0 &&
	             jv_proc_open_verified((pid_t)pid, (uint64_t)start, NULL, &fd) == 0;
	if (fd >= 0)
		close(fd);
	return alive;
}

static bool is_active(const char *state)
{
	return strcmp(state, "STARTING") == 0 || strcmp(state, "RUNNING") == 0 ||
	       strcmp(state, "STOPPING") == 0 || strcmp(state, "BACKOFF") == 0;
}

/* No monitor answers: decide from state.json and the process table. */
static void probe(struct inst *in, int64_t now)
{
	cJSON *st = NULL;
	int rc = jv_instance_read_state(in->dir, &st);
	in->next_try_ms = INT64_MAX;
	if (rc == -ENOENT) {
		if (!in->last) {
			cJSON *s = cJSON_CreateObject();
			cJSON_AddStringToObject(s, "state", "STOPPED");
			instreport_status(in, s, NULL, "installed, never started");
			cJSON_Delete(s);
		}
		return;
	}
	if (rc) {
		jv_warn(NULL, NULL, "instance %s: cannot read .jobvisor/state.json: %s", in->id, strerror(-rc));
		in->next_try_ms = now + RESCAN_MS;
		return;
	}
	const char *state = jv_json_str(st, "state", "STOPPED");
	bool server = verified_alive(st, "pid", "startTime");
	bool monitor = !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(st, "monitorPid")) &&
	               verified_alive(st, "monitorPid", "monitorStartTime");
	if (monitor || monitor_starting(in)) {
		/* A monitor is there but its socket is not (yet): look again soon. */
		in->next_try_ms = now + RETRY_MS;
	} else if (server) {
		jv_warn(NULL, NULL, "instance %s: its monitor is gone but the server (pid %lld) runs; "
		        "starting a monitor to adopt it", in->id, (long long)jv_json_int(st, "pid", 0));
		instreport_note(in, "monitor", "the monitor died; adopting the running server with a new monitor");
		launch(in, true, now);
	} else if (is_active(state)) {
		const char *policy = jv_json_str(st, "policy", "on-failure");
		bool restart = strcmp(state, "STOPPING") != 0 && strcmp(policy, "never") != 0;
		cJSON *copy = cJSON_Duplicate(st, true);
		if (copy)
			cJSON_ReplaceItemInObjectCaseSensitive(copy, "alive", cJSON_CreateFalse());
		instreport_status(in, copy, strcmp(state, "STOPPING") == 0 ? "STOPPED" : "CRASHED",
		          "the monitor and its server are gone");
		cJSON_Delete(copy);
		if (restart) {
			jv_warn(NULL, NULL, "instance %s: its monitor and server are gone (was %s); "
			        "starting it again (restart policy %s)", in->id, state, policy);
			launch(in, false, now);
		}
	} else {
		instreport_status(in, st, NULL, NULL);
	}
	cJSON_Delete(st);
}

static void attach(struct inst *in, int64_t now)
{
	if (in->mc || in->launch_fd >= 0)
		return;
	struct jv_monconn *c = NULL;
	int rc = jv_monconn_open(in->dir, &c);
	if (rc == 0) {
		cJSON *req = cJSON_CreateObject();
		cJSON_AddStringToObject(req, "op", "subscribe");
		rc = req ? jv_monconn_send(c, req) : -ENOMEM;
		cJSON_Delete(req);
		if (rc) {
			jv_monconn_close(c);
			in->next_try_ms = now + RETRY_MS;
			return;
		}
		in->mc = c;
		in->sub_ok = false;
		in->sub_deadline = now + SUBSCRIBE_WAIT_MS;
		in->next_try_ms = INT64_MAX;
		return;
	}
	if (rc == -ENOENT || rc == -ECONNREFUSED || rc == -ENOTDIR) {
		probe(in, now);
		return;
	}
	jv_debug(NULL, NULL, "instance %s: cannot connect to its monitor: %s", in->id, strerror(-rc));
	/* e.g. another user's monitor: say what state.json says, look again later */
	probe(in, now);
	if (in->launch_fd < 0)
		in->next_try_ms = now + RESCAN_MS;
}

static void on_sub_readable(struct inst *in)
{
	for (;;) {
		cJSON *msg = NULL;
		int rc = jv_monconn_recv(in->mc, 0, &msg);
		if (rc == -ETIMEDOUT)
			return;
		if (rc) {
			/* The monitor went away: normal after a final state, otherwise
			 * it died. Either way state.json and the process table say. */
			jv_debug(NULL, NULL, "instance %s: monitor connection ended: %s", in->id,
			         strerror(-rc));
			drop_sub(in);
			in->next_try_ms = jv_now_mono_ms() + RESCAN_SOON_MS;
			return;
		}
		const cJSON *st = cJSON_GetObjectItemCaseSensitive(msg, "status");
		if (cJSON_GetObjectItemCaseSensitive(msg, "ok")) {
			in->sub_ok = jv_json_bool(msg, "ok", false);
			if (!in->sub_ok)
				jv_warn(NULL, NULL, "instance %s: monitor refused the subscription: %s", in->id,
				        jv_json_str(msg, "error", "no reason"));
		}
		if (cJSON_IsObject(st))
			instreport_status(in, st, NULL, NULL);
		cJSON_Delete(msg);
		if (!in->mc)
			return;
	}
}

/* ---- scanning -------------------------------------------------------------*/

static void scan(struct instwatch *iw, int64_t now)
{
	iw->scan_at_ms = now + RESCAN_MS;
	for (struct inst *in = iw->list; in; in = in->next)
		in->present = false;
	DIR *d = opendir(iw->root);
	if (d) {
		struct dirent *e;
		while ((e = readdir(d))) {
			if (!jv_ident_valid(e->d_name))
				continue;
			struct stat st;
			if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
				continue;
			struct inst *in = find(iw, e->d_name);
			if (!in) {
				if (iw->n >= INSTWATCH_MAX) {
					if (!iw->too_many_warned)
						jv_warn(NULL, NULL, "more than %d instances: only the first are watched",
						        INSTWATCH_MAX);
					iw->too_many_warned = true;
					continue;
				}
				if (!(in = inst_new(iw, e->d_name)))
					continue;
				in->next_try_ms = now;
			}
			in->present = true;
			watch_jv_dir(in);
		}
		closedir(d);
	}
	for (struct inst *in = iw->list; in; in = in->next) {
		if (!in->present) {
			drop_sub(in);
			if (in->wd >= 0 && iw->ino_fd >= 0)
				inotify_rm_watch(iw->ino_fd, in->wd);
			in->wd = -1;
			instreport_removed(in);
			continue;
		}
		const char *prev = instreport_last_state(in);
		if (prev && strcmp(prev, "REMOVED") == 0) {
			cJSON_Delete(in->last); /* it is back: report it afresh */
			in->last = NULL;
		}
		/* Unsubscribed instances are looked at again on every scan. */
		if (!in->mc && in->launch_fd < 0 && in->next_try_ms > now + RESCAN_MS)
			in->next_try_ms = now;
	}
}

static void on_inotify(struct instwatch *iw)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t n;
	bool any = false;
	while ((n = read(iw->ino_fd, buf, sizeof(buf))) > 0)
		any = true;
	if (any) {
		int64_t soon = jv_now_mono_ms() + RESCAN_SOON_MS;
		if (iw->scan_at_ms > soon)
			iw->scan_at_ms = soon;
	}
}

/* ---- the module's face ----------------------------------------------------*/

int instwatch_start(struct agent *ag)
{
	struct instwatch *iw = calloc(1, sizeof(*iw));
	if (!iw)
		return -ENOMEM;
	iw->ag = ag;
	iw->reporting = true;
	iw->root_wd = -1;
	backoff_init(&iw->snap_bo, 1000, ag->cfg.backoff_max_ms);
	snprintf(iw->root, sizeof(iw->root), "%s/instances", ag->cfg.data_dir);
	if (mkdir(iw->root, 0755) < 0 && errno != EEXIST)
		jv_warn(NULL, NULL, "cannot create '%s': %s", iw->root, strerror(errno));
	iw->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (iw->ino_fd >= 0)
		iw->root_wd = inotify_add_watch(iw->ino_fd, iw->root,
		                                IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_ONLYDIR);
	if (iw->ino_fd < 0 || iw->root_wd < 0)
		jv_warn(NULL, NULL, "cannot watch '%s' with inotify: %s; new instances are found within %ds",
		        iw->root, strerror(errno), RESCAN_MS / 1000);
	ag->iw = iw;
	/* Streams of instances whose directory is gone: report the removal. */
	char **names = NULL;
	size_t n = 0;
	if (spool_stream_names(ag->spool, &names, &n) == 0)
		for (size_t i = 0; i < n && iw->n < INSTWATCH_MAX; i++)
			if (!find(iw, names[i]))
				inst_new(iw, names[i]);
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	int64_t now = jv_now_mono_ms();
	scan(iw, now);
	iw->snap_wanted = true;
	iw->snap_at_ms = now + SNAPSHOT_DELAY_MS;
	return 0;
}

void instwatch_free(struct agent *ag)
{
	struct instwatch *iw = ag->iw;
	if (!iw)
		return;
	if (iw->snap_req)
		transport_abort(ag->tp, iw->snap_req);
	while (iw->list) {
		struct inst *in = iw->list;
		iw->list = in->next;
		inst_free(in);
	}
	if (iw->ino_fd >= 0)
		close(iw->ino_fd);
	free(iw);
	ag->iw = NULL;
}

size_t instwatch_pollfds(struct agent *ag, struct pollfd *fds, size_t max)
{
	struct instwatch *iw = ag->iw;
	size_t n = 0;
	if (!iw)
		return 0;
	if (iw->ino_fd >= 0 && n < max)
		fds[n++] = (struct pollfd){.fd = iw->ino_fd, .events = POLLIN};
	for (struct inst *in = iw->list; in && n < max; in = in->next) {
		if (in->mc)
			fds[n++] = (struct pollfd){.fd = jv_monconn_fd(in->mc), .events = POLLIN};
		if (in->launch_fd >= 0 && n < max)
			fds[n++] = (struct pollfd){.fd = in->launch_fd, .events = POLLIN};
	}
	return n;
}

void instwatch_on_fd(struct agent *ag, int fd, short revents)
{
	struct instwatch *iw = ag->iw;
	if (!iw || !(revents & (POLLIN | POLLHUP | POLLERR)))
		return;
	if (fd == iw->ino_fd) {
		on_inotify(iw);
		return;
	}
	for (struct inst *in = iw->list; in; in = in->next) {
		if (in->mc && jv_monconn_fd(in->mc) == fd) {
			on_sub_readable(in);
			return;
		}
		if (in->launch_fd == fd) {
			on_launch_status(in);
			return;
		}
	}
}

int64_t instwatch_next_deadline(const struct agent *ag)
{
	const struct instwatch *iw = ag->iw;
	if (!iw)
		return INT64_MAX;
	int64_t next = iw->scan_at_ms;
	if (iw->reporting && iw->snap_wanted && !iw->snap_req && iw->snap_at_ms < next)
		next = iw->snap_at_ms;
	for (const struct inst *in = iw->list; in; in = in->next) {
		if (!in->mc && in->launch_fd < 0 && in->next_try_ms < next)
			next = in->next_try_ms;
		if (in->mc && !in->sub_ok && in->sub_deadline < next)
			next = in->sub_deadline;
		if (in->launch_fd >= 0 && in->launch_deadline < next)
			next = in->launch_deadline;
		if (iw->reporting && !in->req && in->stream && spool_run_pending(in->stream) > 0 &&
		    in->retry_at_ms < next)
			next = in->retry_at_ms;
	}
	return next;
}

void instwatch_tick(struct agent *ag, int64_t now)
{
	struct instwatch *iw = ag->iw;
	if (!iw)
		return;
	if (now >= iw->scan_at_ms)
		scan(iw, now);
	for (struct inst *in = iw->list; in; in = in->next) {
		if (in->mc && !in->sub_ok && now >= in->sub_deadline) {
			jv_warn(NULL, NULL, "instance %s: its monitor did not answer a subscription within %ds",
			        in->id, SUBSCRIBE_WAIT_MS / 1000);
			drop_sub(in);
			in->next_try_ms = now + RETRY_MS;
		}
		if (in->launch_fd >= 0 && now >= in->launch_deadline) {
			jv_error(NULL, NULL, "instance %s: the monitor the agent started did not report within "
			         "%ds", in->id, LAUNCH_WAIT_MS / 1000);
			close(in->launch_fd);
			in->launch_fd = -1;
			in->next_try_ms = now;
		}
		if (in->present && !in->mc && in->launch_fd < 0 && now >= in->next_try_ms &&
		    !ag->stopping)
			attach(in, now);
		instreport_deliver(iw, in, now);
	}
	instreport_snapshot(iw, now);
}

void instwatch_want_snapshot(struct agent *ag)
{
	if (!ag->iw)
		return;
	instreport_wake(ag->iw); /* the control plane answered a poll */
	if (ag->iw->snap_req)
		return; /* one on its way already says the same */
	ag->iw->snap_wanted = true;
	ag->iw->snap_at_ms = jv_now_mono_ms();
}

void instwatch_rescan_soon(struct agent *ag)
{
	struct instwatch *iw = ag->iw;
	if (!iw)
		return;
	int64_t soon = jv_now_mono_ms() + RESCAN_SOON_MS;
	if (iw->scan_at_ms > soon)
		iw->scan_at_ms = soon;
}

bool instwatch_busy(const struct agent *ag)
{
	const struct instwatch *iw = ag->iw;
	if (!iw)
		return false;
	if (iw->snap_req)
		return true;
	for (const struct inst *in = iw->list; in; in = in->next)
		if (in->req)
			return true;
	return false;
}

size_t instwatch_live(const struct agent *ag, struct instwatch_live *out, size_t max)
{
	const struct instwatch *iw = ag->iw;
	size_t n = 0;
	for (const struct inst *in = iw ? iw->list : NULL; in && n < max; in = in->next) {
		if (!in->present)
			continue;
		struct instwatch_live *l = &out[n++];
		memset(l, 0, sizeof(*l));
		snprintf(l->id, sizeof(l->id), "%s", in->id);
		snprintf(l->dir, sizeof(l->dir), "%s", in->dir);
		l->pid = in->mc ? in->live_pid : 0; /* without a subscription the pid may be stale */
		l->start_time = in->live_start_time;
		l->started_ms = in->live_started_ms;
		snprintf(l->cgroup, sizeof(l->cgroup), "%s", in->cgroup);
	}
	return n;
}

bool instwatch_reporting(const struct agent *ag)
{
	return ag->iw && ag->iw->reporting;
}
