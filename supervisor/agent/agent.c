/* agent.c — `jobvisor agent`: set up, run the loop, reload, shut down.
 *
 * Everything that can be wrong with the configuration (settings, token file,
 * data dir, another agent on the same data dir) is found before the agent
 * reports READY, and ends it with exit status 2 and one clear message —
 * never a half-started agent. After that, nothing but a clean shutdown ends
 * it: failures of the control plane, the disk or a job run are logged and
 * retried. The token is read here, handed to the transport, and wiped. */
#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "delivery.h"
#include "instconsole.h"
#include "inststats.h"
#include "jobtypes.h"
#include "instwatch.h"
#include "jobvisor/commands.h"
#include "jobvisor/durable.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"
#include "loop.h"
#include "poller.h"
#include "scheduler.h"
#include "spool.h"
#include "transport.h"

/* Block the signals the loop reads and open ag->sigfd; ignore SIGPIPE.
 * Returns 0 or -errno. Signal handlers do nothing: the signals are read
 * from the signalfd by the loop. */
static int signals_init(struct agent *ag)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGQUIT);
	sigaddset(&set, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -errno;
	signal(SIGPIPE, SIG_IGN); /* job-run children reset every disposition */
	ag->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	return ag->sigfd < 0 ? -errno : 0;
}

static void signals_close(struct agent *ag)
{
	if (ag->sigfd >= 0)
		close(ag->sigfd);
	ag->sigfd = -1;
}

static int usage(void)
{
	/* The shape of every usage error of the command line (supervisor/cli/help.c). */
	fprintf(stderr, "usage: jobvisor agent [--config FILE] [--check-config]\n"
	                "Run 'jobvisor help agent' for details.\n");
	return 2;
}

static void transport_opts_from(const struct config *cfg, const char *token,
                                struct transport_opts *o)
{
	*o = (struct transport_opts){
		.urls = cfg->urls,
		.nurls = cfg->nurls,
		.token = token,
		.ca_file = cfg->tls_ca_file,
		.insecure = cfg->tls_insecure_loopback,
		.connect_timeout_ms = (long)cfg->connect_timeout_s * 1000,
		.max_response = (size_t)cfg->max_response,
		.proxy = cfg->proxy,
		.no_proxy = cfg->no_proxy,
	};
}

static void warn_plain_http(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->nurls; i++) {
		char err[256];
		bool loopback = false;
		if (strncmp(cfg->urls[i], "http://", 7) == 0 &&
		    transport_check_url(cfg->urls[i], &loopback, err, sizeof(err)) == 0 && !loopback)
			jv_warn(NULL, NULL, "the control plane URL %s is plain http: the agent token travels "
			        "unencrypted", cfg->urls[i]);
	}
}

/* Which control plane URLs go through a proxy (at start and reload). */
static void log_routes(const struct transport *tp, const struct config *cfg)
{
	for (size_t i = 0; i < cfg->nurls; i++) {
		char how[400];
		int rc = transport_route(tp, cfg->urls[i], how, sizeof(how));
		if (rc > 0)
			jv_info(NULL, NULL, "requests to %s go %s", cfg->urls[i], how);
		else if (rc < 0)
			jv_error(NULL, NULL, "requests to %s will fail: %s", cfg->urls[i], how);
	}
}

void agent_reload(struct agent *ag)
{
	char err[512];
	struct config nc;
	sdnotify_send(&ag->notify, "RELOADING=1");
	if (config_load(ag->config_path, NULL, &nc, err, sizeof(err))) {
		jv_error(NULL, NULL, "reload failed, keeping the current configuration: %s", err);
		sdnotify_send(&ag->notify, "READY=1");
		return;
	}
	char *token = NULL;
	if (config_read_token(&nc, &token, err, sizeof(err))) {
		jv_error(NULL, NULL, "reload failed, keeping the current configuration: %s", err);
		config_free(&nc);
		sdnotify_send(&ag->notify, "READY=1");
		return;
	}
	cJSON *settings = config_child_settings(&nc);
	struct transport_opts o;
	transport_opts_from(&nc, token, &o);
	if (!settings || transport_configure(ag->tp, &o)) {
		jv_error(NULL, NULL, "reload failed, keeping the current configuration: out of memory");
		cJSON_Delete(settings);
		config_free_token(token);
		config_free(&nc);
		sdnotify_send(&ag->notify, "READY=1");
		return;
	}
	config_free_token(token);
	if (strcmp(nc.data_dir, ag->cfg.data_dir) != 0) {
		jv_warn(NULL, NULL, "data_dir cannot change while running; keeping '%s' until a restart",
		        ag->cfg.data_dir);
		char *keep = ag->cfg.data_dir;
		ag->cfg.data_dir = nc.data_dir;
		nc.data_dir = keep;
		cJSON_ReplaceItemInObjectCaseSensitive(settings, "data_dir",
		                                       cJSON_CreateString(nc.data_dir));
	}
	/* Runs that are going already copied their spec; new runs get the new settings. */
	struct config old = ag->cfg;
	ag->cfg = nc;
	config_free(&old);
	cJSON_Delete(ag->child_settings);
	ag->child_settings = settings;
	config_run_user(&ag->cfg, &ag->run_uid, &ag->run_gid);
	jv_log_setup((enum jv_log_format)ag->cfg.log_format, (enum jv_log_level)ag->cfg.log_level);
	log_routes(ag->tp, &ag->cfg);
	ag->poller.bo.max_ms = ag->cfg.backoff_max_ms;
	for (struct srun *r = ag->runs; r; r = r->next)
		r->bo.max_ms = ag->cfg.backoff_max_ms;
	poller_poll_now(ag);
	jobtypes_reconfigure(ag);
	jv_info(NULL, NULL, "configuration reloaded: url=%s capacity=%d poll_interval=%.1fs",
	        ag->cfg.url, ag->cfg.capacity, (double)ag->cfg.poll_interval_ms / 1000.0);
	sdnotify_send(&ag->notify, "READY=1");
}

static void on_signals(struct agent *ag)
{
	struct signalfd_siginfo si;
	bool reap = false, reload = false;
	for (;;) {
		ssize_t n = read(ag->sigfd, &si, sizeof(si));
		if (n != (ssize_t)sizeof(si))
			break;
		switch (si.ssi_signo) {
		case SIGCHLD:
			reap = true;
			break;
		case SIGHUP:
			reload = true;
			break;
		case SIGTERM:
		case SIGINT:
		case SIGQUIT:
			shutdown_on_signal(ag, (int)si.ssi_signo);
			break;
		default:
			break;
		}
	}
	if (reap)
		scheduler_reap(ag);
	if (reload && !ag->stopping)
		agent_reload(ag);
}

static int64_t min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

/* The event loop's sources, in the order the loop runs them: the agent's own
 * (shutdown, watchdog, signals), the poller, delivery, the network, the job
 * runs. The loop knows none of them by name; this is where they are wired. */

static int64_t agent_prepare(void *ud, int64_t now)
{
	struct agent *ag = ud;
	int64_t next = INT64_MAX;
	if (shutdown_step(ag, now, &next)) {
		loop_stop(&ag->loop);
		return INT64_MAX;
	}
	if (ag->notify.watchdog_ms > 0) {
		if (now >= ag->watchdog_at_ms) {
			sdnotify_send(&ag->notify, "WATCHDOG=1");
			ag->watchdog_at_ms = now + ag->notify.watchdog_ms;
		}
		next = min64(next, ag->watchdog_at_ms);
	}
	return min64(next, health_state_beat(ag, now));
}

static size_t agent_fds(void *ud, struct pollfd *fds, void **tags, size_t max)
{
	struct agent *ag = ud;
	if (max == 0)
		return 0;
	fds[0] = (struct pollfd){.fd = ag->sigfd, .events = POLLIN};
	tags[0] = NULL;
	return 1;
}

static void agent_ready(void *ud, void *tag, short revents)
{
	if (revents & POLLIN)
		on_signals(ud);
}

static int64_t poller_prepare(void *ud, int64_t now)
{
	poller_tick(ud, now);
	return poller_next_deadline(ud);
}

static int64_t delivery_prepare(void *ud, int64_t now)
{
	delivery_kick_all(ud, now);
	return delivery_next_deadline(ud);
}

static int network_wait(void *ud, struct pollfd *fds, unsigned nfds, int timeout_ms)
{
	return transport_wait(ud, fds, nfds, timeout_ms);
}

static void network_after(void *ud, int64_t now)
{
	transport_perform(ud);
}

static int64_t runs_prepare(void *ud, int64_t now)
{
	return scheduler_next_deadline(ud);
}

static size_t runs_fds(void *ud, struct pollfd *fds, void **tags, size_t max)
{
	return scheduler_pollfds(ud, fds, (struct srun **)tags, max);
}

static void runs_ready(void *ud, void *tag, short revents)
{
	if (revents & (POLLIN | POLLHUP | POLLERR))
		scheduler_on_readable(tag);
}

static void runs_after(void *ud, int64_t now)
{
	struct agent *ag = ud;
	scheduler_take_verdicts(ag);
	scheduler_on_timers(ag, now);
	if (scheduler_housekeeping(ag) > 0) {
		if (!ag->stopping)
			poller_poll_now(ag); /* a slot is free: ask for more work now */
		instwatch_rescan_soon(ag); /* the run may have made or removed an instance */
	}
}

/* Instances: monitors watched (instwatch), consoles streamed (instconsole),
 * resource stats (inststats). The tag of a descriptor is the descriptor. */
static int64_t instances_prepare(void *ud, int64_t now)
{
	struct agent *ag = ud;
	instwatch_tick(ag, now);
	instconsole_tick(ag, now);
	inststats_tick(ag, now);
	return min64(instwatch_next_deadline(ag),
	             min64(instconsole_next_deadline(ag), inststats_next_deadline(ag)));
}

static size_t instances_fds(void *ud, struct pollfd *fds, void **tags, size_t max)
{
	struct agent *ag = ud;
	size_t n = instwatch_pollfds(ag, fds, max > INSTCONSOLE_MAX_FDS ? max - INSTCONSOLE_MAX_FDS : 0);
	size_t k = instconsole_pollfds(ag, fds + n, max - n);
	for (size_t i = 0; i < n + k; i++)
		tags[i] = (void *)(intptr_t)fds[i].fd;
	return n + k;
}

static void instances_ready(void *ud, void *tag, short revents)
{
	struct agent *ag = ud;
	int fd = (int)(intptr_t)tag;
	if (!instconsole_on_fd(ag, fd, revents))
		instwatch_on_fd(ag, fd, revents);
}

static int run_loop(struct agent *ag)
{
	struct loop_source sources[] = {
		{.ud = ag, .prepare = agent_prepare, .fds = agent_fds, .ready = agent_ready},
		{.ud = ag, .prepare = poller_prepare},
		{.ud = ag, .prepare = delivery_prepare},
		{.ud = ag->tp, .after = network_after},
		{.ud = ag, .prepare = runs_prepare, .fds = runs_fds, .ready = runs_ready, .after = runs_after},
		{.ud = ag, .prepare = instances_prepare, .fds = instances_fds, .ready = instances_ready},
	};
	struct loop_source types;
	int rc = jobtypes_start(ag, &types);
	if (rc)
		jv_error(NULL, NULL, "cannot set up the job type report: %s", strerror(-rc));
	loop_init(&ag->loop, network_wait, ag->tp);
	for (size_t i = 0; i < JV_ARRAY_LEN(sources); i++)
		loop_add(&ag->loop, &sources[i]);
	loop_add(&ag->loop, &types);
	return loop_run(&ag->loop);
}

/* The data dir must be usable by job runs that switch to `user`: it is
 * created world-traversable, and the directories job runs create entries in
 * (instances/, cache/) are handed to that user when the agent creates them.
 * runs/ stays the agent's own (spool_open makes it 0700). */
static int prepare_data_dir(const struct config *cfg, int uid, int gid, char *err, size_t errlen)
{
	int rc = jv_mkdir_p(cfg->data_dir, 0755);
	if (rc) {
		snprintf(err, errlen, "cannot create data_dir '%s': %s", cfg->data_dir, strerror(-rc));
		return rc;
	}
	if (uid < 0)
		return 0;
	static const char *const subdirs[] = {"instances", "cache"};
	for (size_t i = 0; i < JV_ARRAY_LEN(subdirs); i++) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, subdirs[i]);
		if (mkdir(path, 0750) == 0) {
			if (chown(path, (uid_t)uid, (gid_t)gid) < 0) {
				snprintf(err, errlen, "cannot hand '%s' to user '%s': %s", path, cfg->user,
				         strerror(errno));
				return -errno;
			}
		} else if (errno != EEXIST) {
			snprintf(err, errlen, "cannot create '%s': %s", path, strerror(errno));
			return -errno;
		}
	}
	return 0;
}

static int setup(struct agent *ag, bool check_only, char *err, size_t errlen)
{
	/* cmd_agent blocked the signals and opened the signalfd before this (a
	 * thread started here, the transport's resolver, inherits the mask, so SIGTERM
	 * only ever arrives through the signalfd); --check-config needs neither. */
	int rc;
	if (config_load(ag->config_path, NULL, &ag->cfg, err, errlen))
		return 2;
	jv_log_setup((enum jv_log_format)ag->cfg.log_format, (enum jv_log_level)ag->cfg.log_level);
	char *token = NULL;
	if (config_read_token(&ag->cfg, &token, err, errlen))
		return 2;
	if (check_only) {
		/* No side effects: a running agent keeps its data dir lock. */
		config_free_token(token);
		return 0;
	}
	if (transport_global_init()) {
		config_free_token(token);
		snprintf(err, errlen, "cannot initialise HTTP");
		return 1;
	}
	struct transport_opts o;
	transport_opts_from(&ag->cfg, token, &o);
	rc = transport_new(&o, &ag->tp);
	config_free_token(token);
	if (rc) {
		snprintf(err, errlen, "cannot set up HTTP: %s", strerror(-rc));
		return 1;
	}
	config_run_user(&ag->cfg, &ag->run_uid, &ag->run_gid);
	if (prepare_data_dir(&ag->cfg, ag->run_uid, ag->run_gid, err, errlen))
		return 2;
	rc = spool_open(ag->cfg.data_dir, &ag->spool);
	if (rc == -EBUSY) {
		snprintf(err, errlen, "another agent is using data_dir '%s' (runs/.agent.lock is held)",
		         ag->cfg.data_dir);
		return 2;
	}
	if (rc) {
		snprintf(err, errlen, "cannot use data_dir '%s': %s", ag->cfg.data_dir, strerror(-rc));
		return 2;
	}
	ag->child_settings = config_child_settings(&ag->cfg);
	if (!ag->child_settings) {
		snprintf(err, errlen, "out of memory");
		return 1;
	}
	return 0;
}

static void teardown(struct agent *ag)
{
	scheduler_free_all(ag); /* closes records; the spool stays on disk */
	instconsole_free(ag);
	inststats_free(ag);
	instwatch_free(ag);
	jobtypes_free(ag);
	poller_abort(ag);
	transport_free(ag->tp);
	transport_global_cleanup();
	spool_close(ag->spool);
	signals_close(ag);
	sdnotify_close(&ag->notify);
	cJSON_Delete(ag->child_settings);
	config_free(&ag->cfg);
}

int cmd_agent(int argc, char **argv)
{
	struct agent ag;
	memset(&ag, 0, sizeof(ag));
	ag.sigfd = -1;
	ag.run_uid = ag.run_gid = -1;
	ag.notify.fd = -1;
	bool check_only = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			ag.config_path = argv[++i];
		} else if (strncmp(argv[i], "--config=", 9) == 0) {
			ag.config_path = argv[i] + 9;
		} else if (strcmp(argv[i], "--check-config") == 0) {
			check_only = true;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage();
			return 0;
		} else if (strcmp(argv[i], "--config") == 0) {
			fprintf(stderr, "jobvisor agent: option '--config' needs a value\n");
			return usage();
		} else {
			fprintf(stderr, "jobvisor agent: %s '%s'\n",
			        argv[i][0] == '-' ? "unknown option" : "unexpected argument", argv[i]);
			return usage();
		}
	}
	jv_log_set_component("agent");
	char err[768] = "";
	/* Block the loop's signals first: a SIGTERM that arrives while the agent
	 * is still starting is then handled as a clean shutdown, not a kill. */
	int code = 0, rc = check_only ? 0 : signals_init(&ag);
	if (rc) {
		snprintf(err, sizeof(err), "cannot set up signal handling: %s", strerror(-rc));
		code = 1;
	}
	if (code == 0)
		code = setup(&ag, check_only, err, sizeof(err));
	if (code) {
		jv_error(NULL, NULL, "cannot start the agent: %s", err);
		teardown(&ag);
		return code;
	}
	if (check_only) {
		fprintf(stderr, "jobvisor agent: configuration is valid\n");
		teardown(&ag);
		return 0;
	}
	sdnotify_open(&ag.notify);
	poller_init(&ag);
	size_t replayed = scheduler_replay(&ag);
	int irc = instwatch_start(&ag);
	if (irc)
		jv_error(NULL, NULL, "cannot watch instances: %s", strerror(-irc));
	if ((irc = inststats_start(&ag)) != 0)
		jv_error(NULL, NULL, "cannot set up instance stats: %s", strerror(-irc));
	if ((irc = instconsole_start(&ag)) != 0)
		jv_error(NULL, NULL, "cannot set up consoles: %s", strerror(-irc));
	jv_info(NULL, NULL,
	        "agent %s started: url=%s data_dir=%s capacity=%d poll_interval=%.1fs poll_wait=%ds "
	        "runs_in_spool=%zu",
	        ag.cfg.agent_id, ag.cfg.url, ag.cfg.data_dir, ag.cfg.capacity,
	        (double)ag.cfg.poll_interval_ms / 1000.0, ag.cfg.poll_wait_s, replayed);
	warn_plain_http(&ag.cfg);
	log_routes(ag.tp, &ag.cfg);
	sdnotify_send(&ag.notify, "READY=1\nSTATUS=polling");
	ag.watchdog_at_ms = jv_now_mono_ms();
	ag.started_real_ms = jv_now_real_ms();
	code = run_loop(&ag);
	health_state_remove(&ag);
	size_t left = 0;
	for (struct srun *r = ag.runs; r; r = r->next)
		if (delivery_has_work(r))
			left++;
	if (left)
		jv_warn(NULL, NULL, "stopped with %zu runs not yet delivered; they stay in '%s/runs'",
		        left, ag.cfg.data_dir);
	jv_info(NULL, NULL, "agent stopped");
	teardown(&ag);
	return code;
}
