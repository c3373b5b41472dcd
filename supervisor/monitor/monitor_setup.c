/* monitor_setup.c — `jobvisor monitor`: command line, detaching, lock, adoption.
 *
 * Started by instance_client.c (double fork + setsid, then exec of this
 * binary) from a job-run child, so it first sheds what it inherited
 * (monitor_proc.c: signal mask and dispositions, rlimits, descriptors,
 * process group), then takes the instance lock (.jobvisor/monitor.lock,
 * flock: one monitor per instance; a second one reports "busy" and exits 3),
 * adopts a server an earlier monitor left running or starts a new one, and
 * tells the starter how it went with one line on --status-fd:
 * "ok started PID", "ok adopted PID", "ok none" (--adopt-only, nothing to
 * adopt), "busy ..." or "error MESSAGE". Then it runs the loop in monitor.c. */
#include "monitor.h"
#include "monitor_cgroup.h"
#include "monitor_console.h"
#include "monitor_proc.h"
#include "monitor_sock.h"
#include "monitor_state.h"
#include "jobvisor/commands.h"
#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/instance_client.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

static void status_line(struct monitor *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void status_line(struct monitor *m, const char *fmt, ...)
{
	if (m->status_fd < 0)
		return;
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n > sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	jv_write_all(m->status_fd, buf, (size_t)n);
	close(m->status_fd);
	m->status_fd = -1;
}

static int usage(void)
{
	/* The shape of every usage error of the command line (supervisor/cli/help.c). */
	fprintf(stderr, "usage: jobvisor monitor --instance-dir DIR [--instance-id ID] [--settings JSON] "
	                "[--status-fd N]\n                        [--adopt-only] [--foreground]\n"
	                "Run 'jobvisor help monitor' for details.\n");
	return 2;
}

struct mon_args {
	const char *dir, *id, *settings;
	int status_fd;
	bool adopt_only, foreground;
};

static int parse_args(int argc, char **argv, struct mon_args *a)
{
	*a = (struct mon_args){.status_fd = -1};
	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(argv[i], "--adopt-only") == 0) {
			a->adopt_only = true;
		} else if (strcmp(argv[i], "--foreground") == 0) {
			a->foreground = true;
		} else if (argv[i][0] != '-') {
			fprintf(stderr, "jobvisor monitor: unexpected argument '%s'\n", argv[i]);
			return -1;
		} else if (!v && (strcmp(argv[i], "--instance-dir") == 0 ||
		                  strcmp(argv[i], "--instance-id") == 0 || strcmp(argv[i], "--settings") == 0 ||
		                  strcmp(argv[i], "--status-fd") == 0)) {
			fprintf(stderr, "jobvisor monitor: option '%s' needs a value\n", argv[i]);
			return -1;
		} else if (strcmp(argv[i], "--instance-dir") == 0) {
			a->dir = argv[++i];
		} else if (strcmp(argv[i], "--instance-id") == 0) {
			a->id = argv[++i];
		} else if (strcmp(argv[i], "--settings") == 0) {
			a->settings = argv[++i];
		} else if (strcmp(argv[i], "--status-fd") == 0) {
			char *end;
			long fd = strtol(argv[++i], &end, 10);
			if (*end || fd < 3 || fd > 65535) {
				fprintf(stderr, "jobvisor monitor: --status-fd must be a descriptor number from 3\n");
				return -1;
			}
			a->status_fd = (int)fd;
		} else {
			fprintf(stderr, "jobvisor monitor: unknown option '%s'\n", argv[i]);
			return -1;
		}
	}
	if (!a->dir || a->dir[0] != '/') {
		fprintf(stderr, "jobvisor monitor: %s\n", a->dir ? "--instance-dir must be an absolute path"
		                                                 : "--instance-dir is required");
		return -1;
	}
	return 0;
}

/* Directories, logging, lock. Returns 0, 3 when another monitor holds the lock, or 1. */
static int setup(struct monitor *m, const struct mon_args *a, char *err, size_t errlen)
{
	m->inst_fd = open(m->instance_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (m->inst_fd < 0) {
		snprintf(err, errlen, "cannot open instance dir '%s': %s", m->instance_dir, strerror(errno));
		return 1;
	}
	mkdirat(m->inst_fd, ".jobvisor", 0700);
	mkdirat(m->inst_fd, "logs", 0750);
	m->jv_fd = openat(m->inst_fd, ".jobvisor", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	m->logs_fd = openat(m->inst_fd, "logs", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (m->jv_fd < 0 || m->logs_fd < 0) {
		snprintf(err, errlen, "cannot open '%s/.jobvisor' or 'logs': %s", m->instance_dir,
		         strerror(errno));
		return 1;
	}
	if (!a->foreground) {
		/* Our own log: small, rotated once at start when it grew past 1 MiB. */
		struct stat st;
		if (fstatat(m->logs_fd, "monitor.log", &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    st.st_size > (1 << 20))
			renameat(m->logs_fd, "monitor.log", m->logs_fd, "monitor.log.1");
		int lfd = openat(m->logs_fd, "monitor.log",
		                 O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
		int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (nul >= 0)
			dup2(nul, STDIN_FILENO);
		if (lfd >= 0) {
			dup2(lfd, STDOUT_FILENO);
			dup2(lfd, STDERR_FILENO);
			close(lfd);
		}
		if (nul > STDERR_FILENO)
			close(nul);
	}
	m->lock_fd = openat(m->jv_fd, "monitor.lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (m->lock_fd < 0) {
		snprintf(err, errlen, "cannot open '.jobvisor/monitor.lock': %s", strerror(errno));
		return 1;
	}
	if (flock(m->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			return 3;
		snprintf(err, errlen, "cannot lock '.jobvisor/monitor.lock': %s", strerror(errno));
		return 1;
	}
	char pidline[32];
	int n = snprintf(pidline, sizeof(pidline), "%ld\n", (long)getpid());
	if (ftruncate(m->lock_fd, 0) == 0)
		(void)!pwrite(m->lock_fd, pidline, (size_t)n, 0);
	return 0;
}

static int setup_signals(struct monitor *m)
{
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	m->sig_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (m->sig_fd < 0)
		return -errno;
	/* An instance directory removed under a running server (decommissioned
	 * without a stop) must not leave the server running forever. The parent
	 * is watched: our own open descriptors below the instance directory keep
	 * it from ever reporting IN_DELETE_SELF. */
	char parent[PATH_MAX];
	snprintf(parent, sizeof(parent), "%s", m->instance_dir);
	char *slash = strrchr(parent, '/');
	if (slash && slash != parent)
		*slash = '\0';
	m->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (m->ino_fd >= 0 && inotify_add_watch(m->ino_fd, parent, IN_DELETE | IN_ONLYDIR) < 0) {
		close(m->ino_fd);
		m->ino_fd = -1;
	}
	/* Orphans of the server's tree reparent to us, so we can kill and reap them. */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		return -errno;
	return 0;
}

/* A server left running by a monitor that died: state.json names it and the
 * pidfd check proves it is the same process (never a reused pid). */
static bool try_adopt(struct monitor *m, char *prev_state, size_t len)
{
	cJSON *prev = NULL;
	if (jv_instance_read_state_at(m->jv_fd, &prev) < 0)
		return false;
	bool adopted = false;
	pid_t pid = (pid_t)jv_json_int(prev, "pid", 0);
	int64_t st = jv_json_int(prev, "startTime", -1);
	const char *boot = jv_json_str(prev, "bootId", NULL);
	const char *state = jv_json_str(prev, "state", "");
	if (pid > 1 && st >= 0 &&
	    proc_adopt(m, pid, (uint64_t)st, jv_json_str(prev, "cgroup", NULL)) == 0) {
		if (boot && strcmp(boot, m->boot_id) != 0) {
			proc_release(m);
		} else {
			adopted = true;
			snprintf(prev_state, len, "%s", state);
			m->restarts = (unsigned)jv_json_int(prev, "restarts", 0);
			m->spawned_real = jv_json_int(prev, "startedAtMs", jv_now_real_ms());
			m->spawned_mono = jv_now_mono_ms() - (jv_now_real_ms() - m->spawned_real);
			jv_warn(NULL, NULL, "instance %s: adopted running server pid %ld (was %s)",
			        m->instance_id, (long)pid, state);
		}
	}
	cJSON_Delete(prev);
	return adopted;
}

static void monitor_free(struct monitor *m)
{
	sock_close(m);
	con_close(m);
	if (m->cg.active)
		cg_remove(m);
	jv_instance_spec_free(m->spec);
	cJSON_Delete(m->settings);
	if (m->pidfd >= 0)
		close(m->pidfd);
	if (m->sig_fd >= 0)
		close(m->sig_fd);
	if (m->ino_fd >= 0)
		close(m->ino_fd);
	if (m->lock_fd >= 0)
		close(m->lock_fd); /* releases the lock last: the socket is gone by now */
	if (m->logs_fd >= 0)
		close(m->logs_fd);
	if (m->jv_fd >= 0)
		close(m->jv_fd);
	if (m->inst_fd >= 0)
		close(m->inst_fd);
	free(m);
}

static int monitor_new(const struct mon_args *a, struct monitor **out)
{
	struct monitor *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->inst_fd = m->jv_fd = m->logs_fd = m->lock_fd = m->listen_fd = m->sig_fd = -1;
	m->ino_fd = -1;
	m->pidfd = -1;
	m->status_fd = a->status_fd;
	m->con.in_fd = m->con.out_fd = m->con.log_fd = -1;
	m->cg.dirfd = -1;
	m->deadline = m->tick = m->restart_at = -1;
	m->stop_timeout_s = -1;
	m->state = MON_STOPPED;
	mon_attach_hooks(m);
	for (int i = 0; i < MON_MAX_CLIENTS; i++)
		m->clients[i].fd = -1;
	*out = m;
	return 0;
}

/* Instance dir and id, settings, logging. 0, or -1 with the status line sent. */
static int identify(struct monitor *m, const struct mon_args *a)
{
	snprintf(m->instance_dir, sizeof(m->instance_dir), "%s", a->dir);
	const char *slash = strrchr(m->instance_dir, '/');
	snprintf(m->instance_id, sizeof(m->instance_id), "%s", a->id ? a->id : slash + 1);
	if (!jv_ident_valid(m->instance_id)) {
		status_line(m, "error invalid instance id '%.64s'", m->instance_id);
		return -1;
	}
	m->settings = a->settings ? jv_json_parse(a->settings, strlen(a->settings)) : cJSON_CreateObject();
	if (!cJSON_IsObject(m->settings)) {
		status_line(m, "error --settings is not a JSON object");
		return -1;
	}
	m->allowed = cJSON_GetObjectItemCaseSensitive(m->settings, "allowed_executables");
	m->user = jv_json_str(m->settings, "user", NULL);
	int lvl = jv_log_level_parse(jv_json_str(m->settings, "log_level", "info"));
	int fmt = jv_log_format_parse(jv_json_str(m->settings, "log_format", "logfmt"));
	jv_log_setup(fmt < 0 ? JV_LOG_LOGFMT : (enum jv_log_format)fmt,
	             lvl < 0 ? JV_LOG_INFO : (enum jv_log_level)lvl);
	jv_log_set_component("monitor");
	return 0;
}

/* Take over the server a dead monitor left, in the state it had (prev). */
static void resume_adopted(struct monitor *m, const char *prev)
{
	/* Before our own note: the scan reads console.log. */
	bool starting = strcmp(prev, "STARTING") == 0 && m->spec && m->spec->ready_pattern;
	bool ready_logged = starting && con_ready_in_log(m);
	con_log_note(m, "monitor restarted; adopted the running server (pid %ld)%s", (long)m->pid,
	             ready_logged ? "; its ready line is already in the log" : "");
	m->phase = PH_NONE;
	if (starting && !ready_logged) {
		/* Its ready line may still sit unread in the console FIFO. */
		m->deadline = jv_now_mono_ms() + (int64_t)(m->spec->ready_timeout_s * 1000);
		mon_set_state(m, MON_STARTING, "adopted starting server (pid %ld)", (long)m->pid);
	} else {
		m->ready_real = jv_now_real_ms();
		mon_set_state(m, MON_RUNNING, "adopted running server (pid %ld)", (long)m->pid);
	}
	status_line(m, "ok adopted %ld", (long)m->pid);
	if (strcmp(prev, "STOPPING") == 0)
		mon_request_stop(m, false, -1); /* finish what the dead monitor began */
}

int cmd_monitor(int argc, char **argv)
{
	struct mon_args a;
	if (parse_args(argc, argv, &a) < 0)
		return usage();
	proc_shed_inheritance();
	int keep[] = {a.status_fd};
	jv_close_fds_from(3, keep, a.status_fd >= 0 ? 1 : 0);
	if (a.status_fd >= 0)
		jv_set_cloexec(a.status_fd);

	struct monitor *m;
	if (monitor_new(&a, &m) < 0)
		return 1;
	char err[512] = "";
	int rc = 1;
	if (strlen(a.dir) >= sizeof(m->instance_dir)) {
		status_line(m, "error instance dir path too long");
		goto out;
	}
	if (identify(m, &a) < 0)
		goto out;
	rc = setup(m, &a, err, sizeof(err));
	if (rc == 3) {
		status_line(m, "busy another monitor is running for this instance");
		goto out;
	}
	if (rc) {
		status_line(m, "error %s", err);
		goto out;
	}
	rc = 1;
	jv_boot_id(m->boot_id);
	jv_proc_start_time(getpid(), &m->self_start_time);
	if (setup_signals(m) < 0) {
		status_line(m, "error cannot set up signals: %s", strerror(errno));
		goto out;
	}
	char prev[16] = "";
	bool adopted = try_adopt(m, prev, sizeof(prev));
	if (!adopted && a.adopt_only) {
		status_line(m, "ok none");
		rc = 0;
		goto out;
	}
	if (mon_load_spec(m, err, sizeof(err)) < 0) {
		if (!adopted) {
			m->state = MON_CRASHED;
			snprintf(m->message, sizeof(m->message), "cannot start: %s", err);
			m->since_real = jv_now_real_ms();
			state_write(m);
			status_line(m, "error %s", err);
			goto out;
		}
		jv_warn(NULL, NULL, "instance %s: %s (supervising the adopted server with defaults)",
		        m->instance_id, err);
	}
	if (sock_listen(m) < 0 || con_open(m, !adopted) < 0) {
		status_line(m, "error cannot set up '.jobvisor' (socket or console): %s", strerror(errno));
		goto out;
	}
	if (adopted) {
		resume_adopted(m, prev);
	} else if (mon_spawn(m, err, sizeof(err)) < 0) {
		con_log_note(m, "cannot start the server: %s", err);
		mon_set_state(m, MON_CRASHED, "cannot start: %s", err);
		status_line(m, "error %s", err);
		sock_flush_all(m, 0);
		goto out;
	} else {
		status_line(m, "ok started %ld", (long)m->pid);
	}
	rc = mon_run_loop(m);
out:
	if (m->status_fd >= 0)
		status_line(m, "error monitor failed to start");
	monitor_free(m);
	return rc;
}
