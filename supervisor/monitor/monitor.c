/* monitor.c — the instance monitor's poll loop and state machine.
 *
 * States STARTING -> RUNNING -> STOPPING -> STOPPED, with BACKOFF and CRASHED
 * on unrequested exits: the table actions[state][event] below says what each
 * event does in each state; detecting the events is the loop's job. The command line, detaching, the lock and adoption
 * live in monitor_setup.c; spawning and killing in monitor_proc.c, console
 * capture in monitor_console.c, state.json in monitor_state.c and the socket
 * in monitor_sock.c. Those four and the cgroup file are below this one and
 * never call back here by name: what they report (a console line, a line a
 * client typed, a stop request) comes through the constant hooks table after
 * the state machine (struct mon_hooks, monitor_types.h).
 *
 * The monitor is a child subreaper, so everything the server forks and
 * orphans comes back to it to be killed and reaped. Signals arrive through a
 * signalfd; the loop sleeps in poll() with a timeout taken from the next
 * deadline, so an idle monitor does not wake at all. The monitor exits once
 * the server is STOPPED or CRASHED; state.json keeps the final word. */
#include "monitor.h"
#include "monitor_cgroup.h"
#include "monitor_console.h"
#include "monitor_proc.h"
#include "monitor_sock.h"
#include "monitor_state.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define SWEEP_GRACE_MS 2000
#define KILL_WAIT_MS 5000
#define SWEEP_TICK_MS 50
#define EXIT_FLUSH_MS 2000

/* What an event does in a state (actions[][] below); force: straight to SIGKILL. */
typedef bool mon_action(struct monitor *m, bool force);

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
	if (final && m->cg.active && m->pid == 0)
		cg_remove(m); /* the tree is gone: nothing is left to track */
	if (final) {
		/* state.json must already say the monitor is leaving. */
		m->exiting = true;
		m->exit_status = st == MON_STOPPED ? 0 : 1;
		m->exit_deadline = jv_now_mono_ms() + EXIT_FLUSH_MS;
		m->deadline = m->tick = m->restart_at = -1;
	}
	jv_info(NULL, NULL, "instance %s: %s%s%s", m->instance_id, state_name(st),
	        m->message[0] ? ": " : "", m->message);
	if (final) {
		/* Durable first: a client told "done" may read state.json at once. */
		state_write(m);
		sock_broadcast_state(m);
		sock_finish_stop(m);
	} else {
		/* Subscribers first: waiting for RUNNING should not include fsyncs. */
		sock_broadcast_state(m);
		state_write(m);
	}
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
		con_log_note(m, "stop: sent console command '%s', waiting up to %gs",
		             m->spec->stop_command, stop_timeout(m));
		sock_broadcast_state(m);
	} else {
		begin_signal_step(m, now);
	}
}

/* EV_STOP while STARTING or RUNNING. */
static bool stop_live(struct monitor *m, bool force)
{
	m->stop_requested = true;
	begin_stop(m, force, false);
	return true;
}

/* EV_STOP while STOPPING: only force changes anything (straight to SIGKILL). */
static bool stop_again(struct monitor *m, bool force)
{
	m->stop_requested = true;
	if (force && (m->phase == PH_CONSOLE || m->phase == PH_SIGNAL))
		begin_kill_step(m, jv_now_mono_ms());
	return true;
}

/* EV_STOP while waiting to restart: nothing runs, so it is stopped now. */
static bool stop_in_backoff(struct monitor *m, bool force)
{
	m->stop_requested = true;
	mon_set_state(m, MON_STOPPED, "stopped while waiting to restart");
	return true;
}

/* EV_CONSOLE_STOP: an operator typing the stop command means "stop", not "crash". */
static bool console_stop(struct monitor *m, bool force)
{
	m->stop_requested = true;
	begin_stop(m, false, true);
	return true;
}

void mon_request_stop(struct monitor *m, bool force, double timeout_s)
{
	if (timeout_s > 0)
		m->stop_timeout_s = timeout_s;
	mon_event(m, EV_STOP, force);
}

/* Hook: a client typed a line on the console; the stop command means EV_CONSOLE_STOP. */
static void console_sent(struct monitor *m, const char *line)
{
	if (m->spec && m->spec->stop_command && strcmp(line, m->spec->stop_command) == 0)
		mon_event(m, EV_CONSOLE_STOP, false);
}

/* The spec is re-read before each spawn so a restart picks up a new build or
 * an edited instance.json. */
int mon_load_spec(struct monitor *m, char *err, size_t errlen)
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

int mon_spawn(struct monitor *m, char *err, size_t errlen)
{
	int rc = mon_load_spec(m, err, errlen);
	if (rc == 0)
		rc = proc_spawn(m, err, errlen);
	if (rc == 0) {
		con_log_note(m, "server started: pid %ld", (long)m->pid);
		after_spawn(m);
	}
	return rc;
}

/* EV_READY while STARTING. */
static bool ready(struct monitor *m, bool force)
{
	m->deadline = -1;
	m->ready_real = jv_now_real_ms();
	mon_set_state(m, MON_RUNNING, "ready (pid %ld)", (long)m->pid);
	return true;
}

/* Hook: a console line; the server's ready line means EV_READY. Then the
 * console subscribers get it. */
static void console_line(struct monitor *m, const char *line, size_t len, uint64_t seq,
                         bool from_server)
{
	if (from_server && m->state == MON_STARTING && m->spec && m->spec->ready_pattern &&
	    regexec(&m->spec->ready_re, line, 0, NULL, 0) == 0)
		mon_event(m, EV_READY, false);
	sock_broadcast_line(m, line, len, seq);
}

static bool is_success_code(const struct monitor *m, int code)
{
	for (size_t i = 0; m->spec && i < m->spec->nsuccess; i++)
		if (m->spec->success_codes[i] == code)
			return true;
	return false;
}

/* EV_TREE_EMPTY: the whole tree is gone: decide what comes next. */
static bool after_exit(struct monitor *m, bool force)
{
	int64_t now = jv_now_mono_ms();
	struct mon_exit *e = &m->last_exit;
	con_drain_output(m); /* what leftover children printed during the sweep */
	proc_release(m);
	con_drain_input(m);
	m->phase = PH_NONE;
	m->deadline = m->tick = -1;
	con_log_note(m, "server exited: %s", e->reason);
	m->crash_loop = false;
	if (m->stop_requested) {
		mon_set_state(m, MON_STOPPED, "stopped: %s", e->reason);
		return true;
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
		return true;
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
		m->crash_loop = true;
		mon_set_state(m, MON_CRASHED,
		              "crash loop: %zu restarts within %.0fs (maxRestarts %d); last exit: %s",
		              m->ncrash, m->spec->window_s, m->spec->max_restarts, e->reason);
		return true;
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
	m->restart_delay_s = delay;
	mon_set_state(m, MON_BACKOFF, "%s; restart %u in %.1fs", e->reason, m->consecutive, delay);
	return true;
}

/* EV_LEADER_EXIT: record how it ended, then sweep what it left behind. */
static bool leader_exit(struct monitor *m, bool force)
{
	int64_t now = jv_now_mono_ms();
	con_drain_output(m);
	proc_describe_exit(m, &m->last_exit);
	m->last_exit.requested = m->stop_requested;
	jv_info(NULL, NULL, "instance %s: server pid %ld exited: %s", m->instance_id, (long)m->pid,
	        m->last_exit.reason);
	if (proc_tree_empty(m))
		return after_exit(m, false);
	/* Leftovers (children, double-forked daemons) get the stop signal, then
	 * SIGKILL after a grace period; the next spawn must find nothing. */
	proc_signal_tree(m, m->phase == PH_KILL ? SIGKILL : stop_signal(m));
	m->sweep_killed = m->phase == PH_KILL;
	m->phase = PH_SWEEP;
	m->deadline = now + SWEEP_GRACE_MS;
	m->tick = now + SWEEP_TICK_MS;
	return true;
}

/* EV_RESTART_DUE while in BACKOFF. */
static bool restart(struct monitor *m, bool force)
{
	char err[512];
	m->restart_at = -1;
	m->restarts++;
	if (mon_spawn(m, err, sizeof(err)) < 0) {
		con_log_note(m, "restart failed: %s", err);
		mon_set_state(m, MON_CRASHED, "restart failed: %s", err);
	}
	return true;
}

/* The deadline of each step of the stop ladder (m->phase). */

static bool no_step_due(struct monitor *m, bool force)
{
	if (m->state == MON_STARTING) {
		double t = m->spec ? m->spec->ready_timeout_s : 0;
		con_log_note(m, "server not ready within %gs; stopping it", t);
		m->ready_timed_out = true;
		snprintf(m->message, sizeof(m->message), "not ready within %gs", t);
		begin_signal_step(m, jv_now_mono_ms());
	} else {
		m->deadline = -1;
	}
	return true;
}

static bool console_step_due(struct monitor *m, bool force)
{
	con_log_note(m, "stop: no exit %gs after the console command", stop_timeout(m));
	begin_signal_step(m, jv_now_mono_ms());
	return true;
}

static bool signal_step_due(struct monitor *m, bool force)
{
	begin_kill_step(m, jv_now_mono_ms());
	return true;
}

static bool kill_step_due(struct monitor *m, bool force)
{
	jv_error(NULL, NULL, "instance %s: server pid %ld survives SIGKILL (uninterruptible?)",
	         m->instance_id, (long)m->pid);
	proc_signal_tree(m, SIGKILL);
	m->deadline = jv_now_mono_ms() + KILL_WAIT_MS;
	return true;
}

static bool sweep_step_due(struct monitor *m, bool force)
{
	if (m->sweep_killed) {
		jv_error(NULL, NULL, "instance %s: leftover processes survive SIGKILL; giving up",
		         m->instance_id);
		return after_exit(m, false);
	}
	proc_signal_tree(m, SIGKILL);
	m->sweep_killed = true;
	m->deadline = jv_now_mono_ms() + KILL_WAIT_MS;
	return true;
}

/* EV_DEADLINE: the current step of the ladder is over. */
static bool step_due(struct monitor *m, bool force)
{
	static mon_action *const ladder[] = {
		[PH_NONE] = no_step_due,
		[PH_CONSOLE] = console_step_due,
		[PH_SIGNAL] = signal_step_due,
		[PH_KILL] = kill_step_due,
		[PH_SWEEP] = sweep_step_due,
	};
	return ladder[m->phase](m, force);
}

/* The state machine, in one place (s6-supervise's model): what each event
 * does in each state. An empty cell: the event means nothing in that state.
 * Within STOPPING (and a STARTING server that missed its ready line, or a
 * server whose leftovers are being swept) the ladder above orders the steps. */
static mon_action *const actions[MON_NSTATES][MON_NEVENTS] = {
	/*               EV_STOP          EV_CONSOLE_STOP EV_READY EV_DEADLINE EV_LEADER_EXIT EV_TREE_EMPTY EV_RESTART_DUE */
	[MON_STARTING] = {stop_live,       console_stop,   ready,   step_due,   leader_exit,   after_exit,   NULL},
	[MON_RUNNING]  = {stop_live,       console_stop,   NULL,    step_due,   leader_exit,   after_exit,   NULL},
	[MON_STOPPING] = {stop_again,      NULL,           NULL,    step_due,   leader_exit,   after_exit,   NULL},
	[MON_BACKOFF]  = {stop_in_backoff, NULL,           NULL,    step_due,   NULL,          NULL,         restart},
	[MON_STOPPED]  = {NULL},
	[MON_CRASHED]  = {NULL},
};

bool mon_event(struct monitor *m, enum mon_event ev, bool force)
{
	mon_action *act = actions[m->state][ev];
	return act ? act(m, force) : false;
}

/* What the parts below report up (monitor_types.h). */
static const struct mon_hooks hooks = {
	.console_line = console_line,
	.console_sent = console_sent,
	.stop_requested = mon_request_stop,
};

void mon_attach_hooks(struct monitor *m)
{
	m->hooks = &hooks;
}

static void on_timers(struct monitor *m, int64_t now)
{
	if (m->state == MON_BACKOFF && m->restart_at >= 0 && now >= m->restart_at) {
		mon_event(m, EV_RESTART_DUE, false);
		return;
	}
	if (m->phase == PH_SWEEP && m->tick >= 0 && now >= m->tick) {
		m->tick = now + SWEEP_TICK_MS;
		if (proc_tree_empty(m)) {
			mon_event(m, EV_TREE_EMPTY, false);
			return;
		}
	}
	if (m->deadline >= 0 && now >= m->deadline)
		mon_event(m, EV_DEADLINE, false);
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
		mon_event(m, EV_LEADER_EXIT, false);
	else if (chld && m->phase == PH_SWEEP && proc_tree_empty(m))
		mon_event(m, EV_TREE_EMPTY, false);
}

static void on_inotify(struct monitor *m)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	const char *base = strrchr(m->instance_dir, '/');
	base = base ? base + 1 : m->instance_dir;
	bool deleted = false;
	ssize_t n;
	while ((n = read(m->ino_fd, buf, sizeof(buf))) > 0) {
		for (char *p = buf; p < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			if ((ev->mask & IN_DELETE) && (ev->mask & IN_ISDIR) && ev->len &&
			    strcmp(ev->name, base) == 0)
				deleted = true;
			p += sizeof(*ev) + ev->len;
		}
	}
	if (!deleted)
		return;
	close(m->ino_fd);
	m->ino_fd = -1;
	jv_warn(NULL, NULL, "instance %s: instance directory '%s' was deleted; stopping the server",
	        m->instance_id, m->instance_dir);
	mon_request_stop(m, false, -1);
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

int mon_run_loop(struct monitor *m)
{
	struct pollfd p[5 + MON_MAX_CLIENTS];
	int who[5 + MON_MAX_CLIENTS];
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
		p[n] = (struct pollfd){.fd = m->ino_fd, .events = POLLIN};
		who[n++] = -5;
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
					mon_event(m, EV_LEADER_EXIT, false);
				break;
			case -5: on_inotify(m); break;
			default: sock_on_client(m, &m->clients[who[i]], p[i].revents); break;
			}
		}
	}
}
