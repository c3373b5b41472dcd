/* jobrun.c — the parent side of one job run: spawn, events, throttle, cancel,
 * timeout, result. See jobrun.h for the contract; the spec and the forked
 * child's setup are in jobrun_spawn.c. */
#include "jobvisor/jobrun.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jobvisor/durable.h"
#include "jobvisor/execpipe.h"
#include "jobvisor/ident.h"
#include "jobvisor/jobchild.h"
#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/protocol.h"
#include "jobvisor/util.h"

#include "jobrun_spawn.h"

#define THROTTLE_MS 250          /* at most 4 progress events per second per run */
#define LOG_BURST 100            /* log events: token bucket */
#define LOG_PER_SECOND 20
#define MAX_EVENT_LINE (8u << 20) /* one event line (the result may be large) */
#define EXIT_DRAIN_MS 2000        /* wait for EOF after the child exited */
#define DEFAULT_GRACE_S 10

struct jobrun {
	char *job_id, *run_id, *instance_id, *type;
	const struct jobrun_ops *ops;
	void *ud;
	pid_t pid;
	int fd;
	struct jv_buf in;
	uint64_t seq;

	double percent; /* last known, -1 = unknown */
	char *message;  /* last progress message sent */

	bool pending;
	double pending_percent;
	char *pending_msg;
	int64_t pending_ts;
	int64_t last_progress_ms;

	double log_tokens;
	int64_t log_refill_ms;
	unsigned suppressed;

	bool cancellable;
	char *why;
	int attempt;
	bool start_logged; /* a run by script path logs its start once the script named its type */

	enum jobrun_stop stop; /* JOBRUN_NOT_STOPPING until jobrun_cancel */
	bool term_sent, kill_sent, refused_logged;
	bool grace_ran_out; /* the SIGKILL came from the grace timer, not a caller */
	int64_t kill_at;
	int64_t timeout_at;
	int grace_s;

	int64_t started_mono;
	bool exited, eof, done;
	int wstatus;
	int64_t drain_until;

	cJSON *result; /* the child's result event */
	char *protocol_error;
};

static char *xstrdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

static void set_str(char **dst, const char *s)
{
	free(*dst);
	*dst = xstrdup(s);
}

/* ---- wire events ---- */

static void emit(struct jobrun *r, const char *kind, const char *status, double percent,
                 const char *message, const char *level, int64_t ts_ms)
{
	struct jv_proto_event e = {
		.seq = ++r->seq,
		.kind = kind,
		.job_id = r->job_id,
		.run_id = r->run_id,
		.instance_id = r->instance_id,
		.status = status,
		.percent = percent,
		.message = message,
		.level = level,
		.ts_ms = ts_ms,
	};
	r->ops->event(r->ud, r, jv_proto_event(&e));
}

static void send_progress(struct jobrun *r, double percent, const char *msg, int64_t ts)
{
	if (percent >= 0)
		r->percent = percent;
	bool new_msg = msg && (!r->message || strcmp(msg, r->message) != 0);
	if (new_msg) {
		set_str(&r->message, msg);
		jv_info(r->job_id, r->run_id, "step: %s", msg);
	}
	r->last_progress_ms = jv_now_mono_ms();
	emit(r, "progress", "RUNNING", r->percent, msg ? msg : r->message, NULL, ts);
}

static void flush_pending(struct jobrun *r)
{
	if (!r->pending)
		return;
	r->pending = false;
	send_progress(r, r->pending_percent, r->pending_msg, r->pending_ts);
	set_str(&r->pending_msg, NULL);
}

static void on_progress(struct jobrun *r, const cJSON *ev, int64_t ts)
{
	double pct = jv_json_has_num(ev, "percent") ? jv_json_num(ev, "percent", -1) : -1;
	if (pct > 100)
		pct = 100;
	const char *msg = jv_json_str(ev, "message", NULL);
	int64_t now = jv_now_mono_ms();
	if (!r->pending && now - r->last_progress_ms >= THROTTLE_MS) {
		send_progress(r, pct, msg, ts);
		return;
	}
	/* Within the window: keep the newest; a percent survives a later step-only update. */
	if (pct < 0 && r->pending)
		pct = r->pending_percent;
	r->pending = true;
	r->pending_percent = pct;
	if (msg)
		set_str(&r->pending_msg, msg);
	r->pending_ts = ts;
}

static void on_log(struct jobrun *r, const cJSON *ev, int64_t ts)
{
	int64_t now = jv_now_mono_ms();
	r->log_tokens += (double)(now - r->log_refill_ms) * LOG_PER_SECOND / 1000.0;
	if (r->log_tokens > LOG_BURST)
		r->log_tokens = LOG_BURST;
	r->log_refill_ms = now;
	if (r->log_tokens < 1) {
		r->suppressed++;
		return;
	}
	flush_pending(r);
	if (r->suppressed) {
		char msg[96];
		snprintf(msg, sizeof(msg), "%u log lines suppressed (more than %d per second)",
		         r->suppressed, LOG_PER_SECOND);
		jv_warn(r->job_id, r->run_id, "%s", msg);
		emit(r, "log", "RUNNING", r->percent, msg, "warn", 0);
		r->suppressed = 0;
		r->log_tokens -= 1;
	}
	r->log_tokens -= 1;
	const char *level = jv_json_str(ev, "level", "info");
	int lvl = jv_log_level_parse(level);
	if (lvl < 0) {
		level = "info";
		lvl = JV_LOG_INFO;
	}
	const char *msg = jv_json_str(ev, "message", "");
	jv_log((enum jv_log_level)lvl, r->job_id, r->run_id, "script: %s", msg);
	emit(r, "log", "RUNNING", r->percent, msg, level, ts);
}

static void log_started(struct jobrun *r)
{
	if (r->start_logged)
		return;
	r->start_logged = true;
	jv_info(r->job_id, r->run_id, "job run started: type=%s instance=%s attempt=%d pid=%d",
	        r->type[0] ? r->type : "-", r->instance_id, r->attempt, (int)r->pid);
}

static void protocol_error(struct jobrun *r, const char *msg)
{
	if (!r->protocol_error)
		r->protocol_error = strdup(msg);
	jv_error(r->job_id, r->run_id, "%s", msg);
	jobrun_kill(r);
}

static void handle_line(struct jobrun *r, const char *line, size_t len)
{
	cJSON *ev = jv_json_parse(line, len);
	if (!cJSON_IsObject(ev)) {
		cJSON_Delete(ev);
		protocol_error(r, "job-run child wrote a malformed event line");
		return;
	}
	const char *k = jv_json_str(ev, "k", "");
	int64_t ts = jv_json_int(ev, "ts", 0);
	if (strcmp(k, "progress") == 0) {
		on_progress(r, ev, ts);
	} else if (strcmp(k, "log") == 0) {
		on_log(r, ev, ts);
	} else if (strcmp(k, "meta") == 0) {
		const char *type = jv_json_str(ev, "type", NULL);
		if (!r->type[0] && type && jv_job_type_valid(type))
			set_str(&r->type, type);
		log_started(r);
		r->cancellable = jv_json_bool(ev, "cancellable", true);
		set_str(&r->why, jv_json_str(ev, "why", NULL));
		if (r->stop == JOBRUN_CANCELLED && !r->cancellable) {
			/* A cancel raced the meta line: the signal is already out. */
			jv_warn(r->job_id, r->run_id, "cancel was sent before the script said it is not cancellable");
		}
	} else if (strcmp(k, "result") == 0) {
		if (!r->result) {
			r->result = ev;
			ev = NULL;
		}
	}
	cJSON_Delete(ev);
}

void jobrun_on_readable(struct jobrun *r)
{
	if (r->fd < 0)
		return;
	char chunk[65536];
	for (;;) {
		ssize_t n = read(r->fd, chunk, sizeof(chunk));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			n = 0; /* treat errors as EOF */
		}
		if (n == 0) {
			r->eof = true;
			close(r->fd);
			r->fd = -1;
			break;
		}
		if (jv_buf_append(&r->in, chunk, (size_t)n) < 0) {
			protocol_error(r, "job-run child wrote an event line larger than 8 MiB");
			jv_buf_consume(&r->in, r->in.len);
			break;
		}
		size_t start = 0;
		for (size_t i = r->in.len - (size_t)n; i < r->in.len; i++) {
			if (r->in.data[i] != '\n')
				continue;
			if (i > start)
				handle_line(r, r->in.data + start, i - start);
			start = i + 1;
		}
		jv_buf_consume(&r->in, start);
	}
	if (r->eof && r->exited)
		jobrun_on_timer(r, jv_now_mono_ms());
}

/* ---- result ---- */

const char *jobrun_stop_name(enum jobrun_stop why)
{
	switch (why) {
	case JOBRUN_NOT_STOPPING: return "none";
	case JOBRUN_CANCELLED: return "cancelled";
	case JOBRUN_TIMEOUT: return "timeout";
	case JOBRUN_SHUTDOWN: return "shutdown";
	case JOBRUN_LOST: return "lost";
	}
	return "unknown";
}

static void finish(struct jobrun *r)
{
	if (r->done)
		return;
	r->done = true;
	flush_pending(r);
	if (r->fd >= 0) {
		close(r->fd);
		r->fd = -1;
	}

	const char *status = "FAILED";
	cJSON *output = NULL, *error = NULL;
	const char *child_status = r->result ? jv_json_str(r->result, "status", "") : NULL;
	bool completed = child_status && strcmp(child_status, "COMPLETED") == 0;
	char msg[512];

	if (r->protocol_error) {
		error = jv_proto_error(r->protocol_error, NULL, false, "protocol");
	} else if (r->stop == JOBRUN_TIMEOUT && !completed) {
		snprintf(msg, sizeof(msg), "job run timed out after %lld s",
		         (long long)((r->timeout_at - r->started_mono) / 1000));
		error = jv_proto_error(msg, NULL, true, jobrun_stop_name(JOBRUN_TIMEOUT));
	} else if ((r->stop == JOBRUN_SHUTDOWN || r->stop == JOBRUN_LOST) && !completed) {
		snprintf(msg, sizeof(msg), "job run interrupted: %s",
		         r->stop == JOBRUN_SHUTDOWN ? "the agent is shutting down" : "the run was lost");
		error = jv_proto_error(msg, NULL, true, jobrun_stop_name(r->stop));
	} else if (r->result) {
		status = child_status;
		if (strcmp(status, "COMPLETED") != 0 && strcmp(status, "CANCELLED") != 0)
			status = "FAILED";
		output = cJSON_DetachItemFromObjectCaseSensitive(r->result, "output");
		cJSON *e = cJSON_DetachItemFromObjectCaseSensitive(r->result, "error");
		if (cJSON_IsObject(e))
			error = e;
		else
			cJSON_Delete(e);
	} else if (r->stop == JOBRUN_CANCELLED) {
		status = "CANCELLED";
		if (r->kill_sent && r->grace_ran_out)
			snprintf(msg, sizeof(msg),
			         "job cancelled; the script did not stop within %d s and was killed", r->grace_s);
		else if (r->kill_sent)
			snprintf(msg, sizeof(msg), "job cancelled; killed on request before it had stopped");
		else
			snprintf(msg, sizeof(msg), "job cancelled");
		error = jv_proto_error(msg, NULL, false, jobrun_stop_name(JOBRUN_CANCELLED));
	} else if (r->exited && WIFSIGNALED(r->wstatus)) {
		int sig = WTERMSIG(r->wstatus);
		snprintf(msg, sizeof(msg), "job-run child was killed by %s%s", jv_signal_name(sig),
		         sig == SIGKILL ? " (killed from outside, or out of memory)" : "");
		error = jv_proto_error(msg, NULL, true, "killed");
	} else {
		snprintf(msg, sizeof(msg), "job-run child exited with status %d without reporting a result",
		         r->exited && WIFEXITED(r->wstatus) ? WEXITSTATUS(r->wstatus) : -1);
		error = jv_proto_error(msg, NULL, false, "crashed");
	}
	if (!output)
		output = cJSON_CreateObject();

	log_started(r);
	const char *emsg = error ? jv_json_str(error, "message", NULL) : NULL;
	double pct = strcmp(status, "COMPLETED") == 0 ? 100 : r->percent;
	emit(r, "status", status, pct, emsg ? emsg : (strcmp(status, "COMPLETED") == 0 ? "completed" : NULL),
	     NULL, 0);
	double secs = (double)(jv_now_mono_ms() - r->started_mono) / 1000.0;
	if (strcmp(status, "COMPLETED") == 0)
		jv_info(r->job_id, r->run_id, "job run COMPLETED in %.2f s", secs);
	else
		jv_log(strcmp(status, "CANCELLED") == 0 ? JV_LOG_WARN : JV_LOG_ERROR, r->job_id, r->run_id,
		       "job run %s after %.2f s: %s", status, secs, emsg ? emsg : "-");

	r->ops->done(r->ud, r, jv_proto_result(status, output, error, r->seq));
}

/* ---- lifecycle ---- */

static void signal_group(struct jobrun *r, int sig)
{
	if (r->pid > 0 && !r->exited)
		kill(-r->pid, sig);
}

void jobrun_cancel(struct jobrun *r, enum jobrun_stop why)
{
	if (r->done || r->stop != JOBRUN_NOT_STOPPING || why == JOBRUN_NOT_STOPPING)
		return;
	if (why == JOBRUN_CANCELLED && !r->cancellable) {
		if (!r->refused_logged) {
			char msg[700];
			snprintf(msg, sizeof(msg), "cancel requested, but this job is not cancellable: %s",
			         r->why ? r->why : "(no reason given)");
			jv_warn(r->job_id, r->run_id, "%s", msg);
			emit(r, "log", "RUNNING", r->percent, msg, "warn", 0);
			r->refused_logged = true;
		}
		return;
	}
	r->stop = why;
	jv_info(r->job_id, r->run_id, "cancelling job run (%s): SIGTERM, SIGKILL after %d s",
	        jobrun_stop_name(why), r->grace_s);
	signal_group(r, SIGTERM);
	r->term_sent = true;
	r->kill_at = jv_now_mono_ms() + (int64_t)r->grace_s * 1000;
}

void jobrun_kill(struct jobrun *r)
{
	if (!r->kill_sent) {
		signal_group(r, SIGKILL);
		r->kill_sent = true;
	}
}

void jobrun_on_exit(struct jobrun *r, int wstatus)
{
	if (r->exited)
		return;
	r->exited = true;
	r->wstatus = wstatus;
	r->drain_until = jv_now_mono_ms() + EXIT_DRAIN_MS;
	if (r->fd >= 0)
		jobrun_on_readable(r); /* read what is left; may finish */
	if (r->eof)
		finish(r);
}

void jobrun_reap(struct jobrun *r)
{
	if (r->pid <= 0 || r->exited)
		return;
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)r->pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid == 0)
		return;
	/* The zombie leader still reserves the group id: stragglers can be killed
	 * without any risk of hitting a reused id. */
	kill(-r->pid, SIGKILL);
	int st = 0;
	while (waitpid(r->pid, &st, 0) < 0 && errno == EINTR)
		;
	jobrun_on_exit(r, st);
}

int64_t jobrun_next_deadline(const struct jobrun *r)
{
	if (r->done)
		return INT64_MAX;
	int64_t d = INT64_MAX;
	if (r->pending && r->last_progress_ms + THROTTLE_MS < d)
		d = r->last_progress_ms + THROTTLE_MS;
	if (r->term_sent && !r->kill_sent && !r->exited && r->kill_at < d)
		d = r->kill_at;
	if (r->timeout_at && r->stop == JOBRUN_NOT_STOPPING && r->timeout_at < d)
		d = r->timeout_at;
	if (r->exited && r->drain_until < d)
		d = r->drain_until;
	return d;
}

void jobrun_on_timer(struct jobrun *r, int64_t now)
{
	if (r->done)
		return;
	if (r->pending && now >= r->last_progress_ms + THROTTLE_MS)
		flush_pending(r);
	if (r->timeout_at && r->stop == JOBRUN_NOT_STOPPING && now >= r->timeout_at) {
		jv_warn(r->job_id, r->run_id, "job run exceeded its timeout of %lld s",
		        (long long)((r->timeout_at - r->started_mono) / 1000));
		jobrun_cancel(r, JOBRUN_TIMEOUT);
	}
	if (r->term_sent && !r->kill_sent && !r->exited && now >= r->kill_at) {
		jv_warn(r->job_id, r->run_id, "job run did not stop within %d s: SIGKILL to its process group",
		        r->grace_s);
		r->grace_ran_out = true;
		jobrun_kill(r);
	}
	if (r->exited && (r->eof || now >= r->drain_until))
		finish(r);
}

/* ---- spawn ---- */

/* Wait for the child's exec: 0 once it happened, or -errno (logged) when the
 * child failed before it (and has been reaped). */
static int wait_exec(struct jobrun *r, pid_t pid, int errfd, int uid)
{
	static const char *const what[] = {
		[EXEC_FDS] = "cannot set up the job-run child's descriptors",
		[EXEC_CWD] = "cannot change the job-run child to '/'",
		[EXEC_USER] = "cannot switch the job-run child to the run user",
		[EXEC_EXEC] = "cannot execute /proc/self/exe for the job-run child",
	};
	int stage, err;
	if (!jv_exec_wait(errfd, pid, &stage, &err))
		return 0;
	bool known = stage >= EXEC_FDS && stage <= EXEC_EXEC;
	if (stage == EXEC_USER)
		jv_error(r->job_id, r->run_id, "%s (uid %d): %s", what[stage], uid, strerror(err));
	else
		jv_error(r->job_id, r->run_id, "%s: %s", known ? what[stage] : "job-run child failed",
		         strerror(err));
	return err > 0 ? -err : -EIO;
}

int jobrun_start(const struct jobrun_spec *spec, const struct jobrun_ops *ops, void *ud,
                 struct jobrun **out)
{
	*out = NULL;
	struct jobrun *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->fd = -1;
	r->percent = -1;
	r->cancellable = true;
	r->ops = ops;
	r->ud = ud;
	r->job_id = xstrdup(spec->job_id);
	r->run_id = xstrdup(spec->run_id);
	r->instance_id = xstrdup(spec->instance_id ? spec->instance_id : "");
	r->type = xstrdup(spec->type ? spec->type : "");
	r->grace_s = spec->cancel_grace_s > 0 ? spec->cancel_grace_s : DEFAULT_GRACE_S;
	r->log_tokens = LOG_BURST;
	jv_buf_init(&r->in, MAX_EVENT_LINE);
	int rc = 0, spec_fd = -1, pipefd[2] = {-1, -1}, errpipe[2] = {-1, -1};

	cJSON *sj = jobrun_build_spec(spec);
	if (!sj) {
		rc = -ENOMEM;
		goto fail;
	}
	int (*direct)(cJSON *) = spec->run_uid < 0 && spec->run_gid < 0 ? spec->child_main : NULL;
	if (!direct) {
		rc = jobrun_spec_memfd(sj, &spec_fd);
		if (rc < 0)
			goto fail;
	}
	if (pipe2(pipefd, O_CLOEXEC) < 0 || pipe2(errpipe, O_CLOEXEC) < 0) {
		rc = -errno;
		goto fail;
	}
	char arg0[] = "jobvisor", arg1[] = "__jobrun";
	char *argv[] = {arg0, arg1, NULL};
	pid_t parent = getpid();
	fflush(NULL);
	cpu_set_t allowed;
	bool pinned = direct && jobrun_pin_to_this_cpu(&allowed);
	pid_t pid = fork();
	if (pinned)
		sched_setaffinity(0, sizeof(allowed), &allowed); /* both sides */
	if (pid < 0) {
		rc = -errno;
		goto fail;
	}
	if (pid == 0)
		jobrun_child_exec(spec_fd, sj, pipefd[1], errpipe[1], parent, spec->run_uid, spec->run_gid, argv,
		                  direct);
	cJSON_Delete(sj);
	sj = NULL;
	setpgid(pid, pid); /* also in the parent: no window where a signal misses the group */
	close(errpipe[1]);
	errpipe[1] = -1;
	rc = wait_exec(r, pid, errpipe[0], spec->run_uid);
	if (rc)
		goto fail;
	close(errpipe[0]);
	close(pipefd[1]);
	if (spec_fd >= 0)
		close(spec_fd);
	r->pid = pid;
	r->fd = pipefd[0];
	jv_set_nonblock(r->fd);
	r->started_mono = jv_now_mono_ms();
	r->log_refill_ms = r->started_mono;
	if (spec->timeout_s > 0)
		r->timeout_at = r->started_mono + (int64_t)spec->timeout_s * 1000;
	r->attempt = spec->attempt > 0 ? spec->attempt : 1;
	/* Run by script path, the type is known once the child has loaded the
	 * script (its meta line); a script that fails to load logs "-". */
	if (r->type[0])
		log_started(r);
	*out = r;
	emit(r, "status", "RUNNING", -1, "started", NULL, 0);
	return 0;
fail:
	for (int i = 0; i < 2; i++)
		if (errpipe[i] >= 0)
			close(errpipe[i]);
	if (pipefd[0] >= 0)
		close(pipefd[0]);
	if (pipefd[1] >= 0)
		close(pipefd[1]);
	if (spec_fd >= 0)
		close(spec_fd);
	cJSON_Delete(sj);
	jobrun_free(r);
	return rc;
}

int jobrun_fd(const struct jobrun *r) { return r->fd; }
pid_t jobrun_pid(const struct jobrun *r) { return r->exited ? 0 : r->pid; }
const char *jobrun_run_id(const struct jobrun *r) { return r->run_id; }
const char *jobrun_job_id(const struct jobrun *r) { return r->job_id; }
const char *jobrun_instance_id(const struct jobrun *r) { return r->instance_id; }
uint64_t jobrun_last_seq(const struct jobrun *r) { return r->seq; }
bool jobrun_finished(const struct jobrun *r) { return r->done; }

void jobrun_free(struct jobrun *r)
{
	if (!r)
		return;
	if (r->pid > 0 && !r->exited) {
		kill(-r->pid, SIGKILL);
		while (waitpid(r->pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
	if (r->fd >= 0)
		close(r->fd);
	jv_buf_free(&r->in);
	cJSON_Delete(r->result);
	free(r->job_id);
	free(r->run_id);
	free(r->instance_id);
	free(r->type);
	free(r->message);
	free(r->pending_msg);
	free(r->why);
	free(r->protocol_error);
	free(r);
}

int jobrun_forget_completion(const char *data_dir, const char *instance_id, const char *job_id)
{
	if (!jv_ident_valid(instance_id) || !jv_ident_valid(job_id))
		return 0; /* the child wrote no record for such ids */
	char path[4200];
	snprintf(path, sizeof(path), "%s/instances/%s", data_dir, instance_id);
	int ifd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (ifd < 0)
		return errno == ENOENT ? 0 : -errno;
	int jfd = openat(ifd, ".jobvisor", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	close(ifd);
	if (jfd < 0)
		return errno == ENOENT ? 0 : -errno;
	int cfd = openat(jfd, JV_COMPLETED_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	close(jfd);
	if (cfd < 0)
		return errno == ENOENT ? 0 : -errno;
	char name[160];
	snprintf(name, sizeof(name), "%s.json", job_id);
	int rc = 0;
	if (unlinkat(cfd, name, 0) < 0)
		rc = errno == ENOENT ? 0 : -errno;
	close(cfd);
	return rc;
}
