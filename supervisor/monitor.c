/* monitor.c — `jobvisor monitor`: one small supervisor per running instance.
 *
 * Responsible for the command line, detaching from what the starter left
 * behind, the one-monitor-per-instance lock, the poll loop and the state
 * machine (STARTING -> RUNNING -> STOPPING -> STOPPED, with BACKOFF and
 * CRASHED on unrequested exits). Spawning and killing live in
 * monitor_proc.c, console capture in monitor_console.c, state.json in
 * monitor_state.c and the socket in monitor_sock.c.
 *
 * Started by instance_client.c (double fork + setsid, then exec of this
 * binary). It is a child subreaper, so everything the server forks and
 * orphans comes back to it to be killed and reaped. Signals arrive through a
 * signalfd; the loop sleeps in poll() with a timeout taken from the next
 * deadline, so an idle monitor does not wake at all. The monitor exits once
 * the server is STOPPED or CRASHED; state.json keeps the final word. */
#include "monitor.h"
#include "commands.h"
#include "jobvisor/durable.h"
#include "jobvisor/ident.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#define SWEEP_GRACE_MS 2000
#define KILL_WAIT_MS 5000
#define SWEEP_TICK_MS 50
#define EXIT_FLUSH_MS 2000

const char *mon_state_name(enum mon_state st)
{
	switch (st) {
	case MON_STARTING: return "STARTING";
	case MON_RUNNING: return "RUNNING";
	case MON_STOPPING: return "STOPPING";
	case MON_STOPPED: return "STOPPED";
	case MON_CRASHED: return "CRASHED";
	case MON_BACKOFF: return "BACKOFF";
	}
	return "UNKNOWN";
}

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

void mon_set_state(struct monitor *m, enum mon_state st, const char *fmt, ...)
{
	bool changed = m->state != st;
	m->state = st;
	if (changed)
		m->since_real = jv_now_real_ms();
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(m->message, sizeof(m->message), fmt, ap);
		va_end(ap);
	}
	bool final = st == MON_STOPPED || st == MON_CRASHED;
	if (final) {
		/* state.json must already say the monitor is leaving. */
		m->exiting = true;
		m->exit_status = st == MON_STOPPED ? 0 : 1;
		m->exit_deadline = jv_now_mono_ms() + EXIT_FLUSH_MS;
		m->deadline = m->tick = m->restart_at = -1;
	}
	jv_info(NULL, NULL, "instance %s: %s%s%s", m->instance_id, mon_state_name(st),
	        m->message[0] ? ": " : "", m->message);
	state_write(m);
	sock_broadcast_state(m);
	if (final)
		sock_finish_stop(m);
}

static double stop_timeout(const struct monitor *m)
{
	if (m->stop_timeout_s > 0)
		return m->stop_timeout_s;
	return m->spec ? m->spec->stop_timeout_s : 30;
}

static int stop_signal(const struct monitor *m)
{
	return m->spec ? m->spec->stop_signal : SIGTERM;
}

static void begin_signal_step(struct monitor *m, int64_t now)
{
	int sig = stop_signal(m);
	proc_signal_tree(m, sig);
	m->phase = PH_SIGNAL;
	double t = m->spec ? m->spec->stop_signal_timeout_s : 10;
	if (!(m->spec && m->spec->stop_command) && m->stop_timeout_s > 0)
		t = m->stop_timeout_s; /* no console step: the caller's timeout applies here */
	m->deadline = now + (int64_t)(t * 1000);
	con_log_note(m, "sent %s to the server's process tree", jv_signal_name(sig));
	sock_broadcast_state(m);
}

static void begin_kill_step(struct monitor *m, int64_t now)
{
	proc_signal_tree(m, SIGKILL);
	m->phase = PH_KILL;
	m->deadline = now + KILL_WAIT_MS;
	con_log_note(m, "sent SIGKILL to the server's process tree");
	sock_broadcast_state(m);
}

/* Start the stop ladder, with the console command already sent or not. */
static void begin_stop(struct monitor *m, bool force, bool console_sent)
{
	int64_t now = jv_now_mono_ms();
	m->restart_at = -1;
	if (m->leader_exited) {
		/* Already exiting on its own: the sweep finishes, then STOPPED. */
		mon_set_state(m, MON_STOPPING, "stop requested while the server was exiting");
		return;
	}
	mon_set_state(m, MON_STOPPING, force ? "killing the server" : "stopping the server");
	if (force) {
		begin_kill_step(m, now);
	} else if (m->spec && m->spec->stop_command && m->con.in_fd >= 0 && !m->ready_timed_out) {
		if (!console_sent && con_send(m, m->spec->stop_command) < 0) {
			begin_signal_step(m, now);
			return;
		}
		m->phase = PH_CONSOLE;
		m->deadline = now + (int64_t)(stop_timeout(m) * 1000);
		con_log_note(m, "stop: sent console command '%s', waiting up to %.0fs",
		             m->spec->stop_command, stop_timeout(m));
		sock_broadcast_state(m);
	} else {
		begin_signal_step(m, now);
	}
}

void mon_request_stop(struct monitor *m, bool force, double timeout_s)
{
	if (timeout_s > 0)
		m->stop_timeout_s = timeout_s;
	switch (m->state) {
	case MON_STOPPED:
	case MON_CRASHED:
		return;
	case MON_BACKOFF:
		m->stop_requested = true;
		mon_set_state(m, MON_STOPPED, "stopped while waiting to restart");
		return;
	case MON_STOPPING:
		m->stop_requested = true;
		if (force && (m->phase == PH_CONSOLE || m->phase == PH_SIGNAL))
			begin_kill_step(m, jv_now_mono_ms());
		return;
	case MON_STARTING:
	case MON_RUNNING:
		m->stop_requested = true;
		begin_stop(m, force, false);
		return;
	}
}

bool mon_console_is_stop(struct monitor *m, const char *line)
{
	if (!m->spec || !m->spec->stop_command || strcmp(line, m->spec->stop_command) != 0)
		return false;
	if (m->state != MON_STARTING && m->state != MON_RUNNING)
		return false;
	/* An operator typing the stop command means "stop", not "crash". */
	m->stop_requested = true;
	begin_stop(m, false, true);
	return true;
}

/* The spec is re-read before each spawn so a restart picks up a new build or
 * an edited instance.json. */
static int load_spec(struct monitor *m, char *err, size_t errlen)
{
	struct jv_instance_spec *spec = NULL;
	int rc = jv_instance_spec_load(m->instance_dir, m->allowed, &spec, err, errlen);
	if (rc)
		return rc;
	jv_instance_spec_free(m->spec);
	m->spec = spec;
	return 0;
}

static void after_spawn(struct monitor *m)
{
	int64_t now = jv_now_mono_ms();
	m->phase = PH_NONE;
	m->ready_timed_out = false;
	m->sweep_killed = false;
	m->tick = -1;
	if (m->spec && m->spec->ready_pattern) {
		m->deadline = now + (int64_t)(m->spec->ready_timeout_s * 1000);
		mon_set_state(m, MON_STARTING, "waiting for the ready line (pid %ld)", (long)m->pid);
	} else {
		m->deadline = -1;
		m->ready_real = jv_now_real_ms();
		mon_set_state(m, MON_RUNNING, "running (pid %ld)", (long)m->pid);
	}
}

static int spawn(struct monitor *m, char *err, size_t errlen)
{
	int rc = load_spec(m, err, errlen);
	if (rc == 0)
		rc = proc_spawn(m, err, errlen);
	if (rc == 0) {
		con_log_note(m, "server started: pid %ld", (long)m->pid);
		after_spawn(m);
	}
	return rc;
}

void mon_on_console_line(struct monitor *m, const char *line)
{
	if (m->state == MON_STARTING && m->spec && m->spec->ready_pattern &&
	    regexec(&m->spec->ready_re, line, 0, NULL, 0) == 0) {
		m->deadline = -1;
		m->ready_real = jv_now_real_ms();
		mon_set_state(m, MON_RUNNING, "ready (pid %ld)", (long)m->pid);
	}
}

static bool is_success_code(const struct monitor *m, int code)
{
	for (size_t i = 0; m->spec && i < m->spec->nsuccess; i++)
		if (m->spec->success_codes[i] == code)
			return true;
	return false;
}

/* The whole tree is gone: decide what comes next. */
static void after_exit(struct monitor *m)
{
	int64_t now = jv_now_mono_ms();
	struct mon_exit *e = &m->last_exit;
	proc_release(m);
	con_drain_input(m);
	m->phase = PH_NONE;
	m->deadline = m->tick = -1;
	con_log_note(m, "server exited: %s", e->reason);
	if (m->stop_requested) {
		mon_set_state(m, MON_STOPPED, "stopped: %s", e->reason);
		return;
	}
	enum jv_restart_policy pol = m->spec ? m->spec->policy : JV_RESTART_NEVER;
	bool clean = !e->unknown && e->signal == 0 && is_success_code(m, e->code) && !e->oom &&
	             !m->ready_timed_out;
	if (pol == JV_RESTART_NEVER || (pol == JV_RESTART_ON_FAILURE && clean)) {
		if (clean)
			mon_set_state(m, MON_STOPPED, "exited on its own: %s", e->reason);
		else
			mon_set_state(m, MON_CRASHED, "crashed: %s (restart policy %s)", e->reason,
			              jv_restart_policy_name(pol));
		return;
	}
	/* A restart. A long enough run forgives earlier crashes. */
	if (e->uptime_ms >= (int64_t)(m->spec->stable_s * 1000))
		m->consecutive = 0;
	int64_t window = (int64_t)(m->spec->window_s * 1000);
	size_t keep = 0;
	for (size_t i = 0; i < m->ncrash; i++)
		if (now - m->crash_times[i] < window)
			m->crash_times[keep++] = m->crash_times[i];
	m->ncrash = keep;
	if ((int)m->ncrash >= m->spec->max_restarts) {
		mon_set_state(m, MON_CRASHED,
		              "crash loop: %zu restarts within %.0fs (maxRestarts %d); last exit: %s",
		              m->ncrash, m->spec->window_s, m->spec->max_restarts, e->reason);
		return;
	}
	if (m->ncrash == JV_ARRAY_LEN(m->crash_times))
		memmove(m->crash_times, m->crash_times + 1, sizeof(m->crash_times[0]) * (m->ncrash - 1)),
			m->ncrash--;
	m->crash_times[m->ncrash++] = now;
	m->consecutive++;
	double base = m->spec->backoff_s * pow(2.0, (double)(m->consecutive - 1));
	if (base > m->spec->backoff_max_s)
		base = m->spec->backoff_max_s;
	/* +-20% jitter so a host full of crashing servers does not restart in step. */
	double jitter = 0.8 + 0.4 * ((double)(jv_random_u64() % 10001) / 10000.0);
	double delay = base * jitter;
	m->restart_at = now + (int64_t)(delay * 1000);
	mon_set_state(m, MON_BACKOFF, "%s; restart %u in %.1fs", e->reason, m->consecutive, delay);
}

static void on_leader_exit(struct monitor *m)
{
	int64_t now = jv_now_mono_ms();
	proc_describe_exit(m, &m->last_exit);
	m->last_exit.requested = m->stop_requested;
	jv_info(NULL, NULL, "instance %s: server pid %ld exited: %s", m->instance_id, (long)m->pid,
	        m->last_exit.reason);
	if (proc_tree_empty(m)) {
		after_exit(m);
		return;
	}
	/* Leftovers (children, double-forked daemons) get the stop signal, then
	 * SIGKILL after a grace period; the next spawn must find nothing. */
	proc_signal_tree(m, m->phase == PH_KILL ? SIGKILL : stop_signal(m));
	m->sweep_killed = m->phase == PH_KILL;
	m->phase = PH_SWEEP;
	m->deadline = now + SWEEP_GRACE_MS;
	m->tick = now + SWEEP_TICK_MS;
}

static void on_timers(struct monitor *m, int64_t now)
{
	if (m->state == MON_BACKOFF && m->restart_at >= 0 && now >= m->restart_at) {
		char err[512];
		m->restart_at = -1;
		m->restarts++;
		if (spawn(m, err, sizeof(err)) < 0) {
			con_log_note(m, "restart failed: %s", err);
			mon_set_state(m, MON_CRASHED, "restart failed: %s", err);
		}
		return;
	}
	if (m->phase == PH_SWEEP && m->tick >= 0 && now >= m->tick) {
		m->tick = now + SWEEP_TICK_MS;
		if (proc_tree_empty(m)) {
			after_exit(m);
			return;
		}
	}
	if (m->deadline < 0 || now < m->deadline)
		return;
	switch (m->phase) {
	case PH_NONE:
		if (m->state == MON_STARTING) {
			double t = m->spec ? m->spec->ready_timeout_s : 0;
			con_log_note(m, "server not ready within %.0fs; stopping it", t);
			m->ready_timed_out = true;
			snprintf(m->message, sizeof(m->message), "not ready within %.0fs", t);
			begin_signal_step(m, now);
		} else {
			m->deadline = -1;
		}
		break;
	case PH_CONSOLE:
		con_log_note(m, "stop: no exit %.0fs after the console command", stop_timeout(m));
		begin_signal_step(m, now);
		break;
	case PH_SIGNAL:
		begin_kill_step(m, now);
		break;
	case PH_KILL:
		jv_error(NULL, NULL, "instance %s: server pid %ld survives SIGKILL (uninterruptible?)",
		         m->instance_id, (long)m->pid);
		proc_signal_tree(m, SIGKILL);
		m->deadline = now + KILL_WAIT_MS;
		break;
	case PH_SWEEP:
		if (!m->sweep_killed) {
			proc_signal_tree(m, SIGKILL);
			m->sweep_killed = true;
			m->deadline = now + KILL_WAIT_MS;
		} else {
			jv_error(NULL, NULL, "instance %s: leftover processes survive SIGKILL; giving up",
			         m->instance_id);
			after_exit(m);
		}
		break;
	}
}

static void on_signalfd(struct monitor *m)
{
	struct signalfd_siginfo si;
	bool chld = false;
	while (read(m->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGCHLD:
			chld = true;
			break;
		case SIGTERM:
		case SIGINT:
			jv_info(NULL, NULL, "instance %s: %s received, stopping", m->instance_id,
			        jv_signal_name((int)si.ssi_signo));
			mon_request_stop(m, m->state == MON_STOPPING, -1);
			break;
		default:
			break; /* SIGHUP: nothing to reload */
		}
	}
	if (chld && proc_on_sigchld(m))
		on_leader_exit(m);
	else if (chld && m->phase == PH_SWEEP && proc_tree_empty(m))
		after_exit(m);
}

static int64_t earliest(int64_t a, int64_t b)
{
	if (a < 0)
		return b;
	if (b < 0)
		return a;
	return a < b ? a : b;
}

static bool clients_pending(struct monitor *m)
{
	for (int i = 0; i < MON_MAX_CLIENTS; i++)
		if (m->clients[i].fd >= 0 && m->clients[i].out.len > 0)
			return true;
	return false;
}

static int run_loop(struct monitor *m)
{
	struct pollfd p[4 + MON_MAX_CLIENTS];
	int who[4 + MON_MAX_CLIENTS];
	for (;;) {
		int64_t now = jv_now_mono_ms();
		on_timers(m, now);
		if (m->exiting && (!clients_pending(m) || now >= m->exit_deadline))
			return m->exit_status;
		int n = 0;
		p[n] = (struct pollfd){.fd = m->sig_fd, .events = POLLIN};
		who[n++] = -1;
		p[n] = (struct pollfd){.fd = m->listen_fd, .events = POLLIN};
		who[n++] = -2;
		p[n] = (struct pollfd){.fd = m->con.out_fd, .events = POLLIN};
		who[n++] = -3;
		bool watch_pidfd = m->adopted && m->pidfd >= 0 && !m->leader_exited;
		p[n] = (struct pollfd){.fd = watch_pidfd ? m->pidfd : -1, .events = POLLIN};
		who[n++] = -4;
		for (int i = 0; i < MON_MAX_CLIENTS; i++) {
			struct mon_client *c = &m->clients[i];
			if (c->fd < 0)
				continue;
			p[n] = (struct pollfd){.fd = c->fd,
			                       .events = (short)((c->closing ? 0 : POLLIN) |
			                                         (c->out.len ? POLLOUT : 0))};
			who[n++] = i;
		}
		int64_t next = earliest(m->deadline, m->tick);
		next = earliest(next, m->state == MON_BACKOFF ? m->restart_at : -1);
		next = earliest(next, m->exiting ? m->exit_deadline : -1);
		int timeout = next < 0 ? -1 : (int)(next > now ? (next - now > 600000 ? 600000 : next - now) : 0);
		int r = poll(p, (nfds_t)n, timeout);
		if (r < 0 && errno != EINTR) {
			jv_error(NULL, NULL, "instance %s: poll failed: %s", m->instance_id, strerror(errno));
			return 1;
		}
		for (int i = 0; r > 0 && i < n; i++) {
			if (!p[i].revents)
				continue;
			switch (who[i]) {
			case -1: on_signalfd(m); break;
			case -2: sock_accept(m); break;
			case -3: con_on_readable(m); break;
			case -4:
				if (proc_on_pidfd(m))
					on_leader_exit(m);
				break;
			default: sock_on_client(m, &m->clients[who[i]], p[i].revents); break;
			}
		}
	}
}

static int usage(void)
{
	fprintf(stderr, "usage: jobvisor monitor --instance-dir DIR [--instance-id ID] "
	                "[--settings JSON] [--status-fd N] [--adopt-only] [--foreground]\n");
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
		} else if (!v) {
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
			if (*end || fd < 3 || fd > 65535)
				return -1;
			a->status_fd = (int)fd;
		} else {
			return -1;
		}
	}
	return a->dir && a->dir[0] == '/' ? 0 : -1;
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
	if (state_read(m->jv_fd, &prev) < 0)
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
	m->pidfd = -1;
	m->status_fd = a->status_fd;
	m->con.in_fd = m->con.out_fd = m->con.log_fd = -1;
	m->cg.dirfd = -1;
	m->deadline = m->tick = m->restart_at = -1;
	m->stop_timeout_s = -1;
	m->state = MON_STOPPED;
	for (int i = 0; i < MON_MAX_CLIENTS; i++)
		m->clients[i].fd = -1;
	*out = m;
	return 0;
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
	snprintf(m->instance_dir, sizeof(m->instance_dir), "%s", a.dir);
	const char *slash = strrchr(m->instance_dir, '/');
	snprintf(m->instance_id, sizeof(m->instance_id), "%s", a.id ? a.id : slash + 1);
	if (!jv_ident_valid(m->instance_id)) {
		status_line(m, "error invalid instance id '%.64s'", m->instance_id);
		goto out;
	}
	m->settings = a.settings ? jv_json_parse(a.settings, strlen(a.settings)) : cJSON_CreateObject();
	if (!cJSON_IsObject(m->settings)) {
		status_line(m, "error --settings is not a JSON object");
		goto out;
	}
	m->allowed = cJSON_GetObjectItemCaseSensitive(m->settings, "allowed_executables");
	m->user = jv_json_str(m->settings, "user", NULL);
	int lvl = jv_log_level_parse(jv_json_str(m->settings, "log_level", "info"));
	int fmt = jv_log_format_parse(jv_json_str(m->settings, "log_format", "logfmt"));
	jv_log_setup(fmt < 0 ? JV_LOG_LOGFMT : (enum jv_log_format)fmt,
	             lvl < 0 ? JV_LOG_INFO : (enum jv_log_level)lvl);
	jv_log_set_component("monitor");

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
	if (load_spec(m, err, sizeof(err)) < 0) {
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
		con_log_note(m, "monitor restarted; adopted the running server (pid %ld)", (long)m->pid);
		m->phase = PH_NONE;
		if (strcmp(prev, "STARTING") == 0 && m->spec && m->spec->ready_pattern) {
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
	} else if (spawn(m, err, sizeof(err)) < 0) {
		con_log_note(m, "cannot start the server: %s", err);
		mon_set_state(m, MON_CRASHED, "cannot start: %s", err);
		status_line(m, "error %s", err);
		sock_flush_all(m, 0);
		goto out;
	} else {
		status_line(m, "ok started %ld", (long)m->pid);
	}
	rc = run_loop(m);
out:
	if (m->status_fd >= 0)
		status_line(m, "error monitor failed to start");
	monitor_free(m);
	return rc;
}
