/* monitor.h — internals shared by the instance monitor's files.
 *
 *   monitor_setup.c    command line, detaching, lock, adoption (cmd_monitor)
 *   monitor.c          the poll loop and the state machine
 *   monitor_proc.c     spawning the server, signalling and sweeping its tree, reaping
 *   monitor_cgroup.c   the optional cgroup v2 leaf (limits, cgroup.kill, OOM count)
 *   monitor_console.c  console FIFOs, log capture and rotation, in-memory tail, readiness
 *   monitor_state.c    state.json and the status object
 *   monitor_sock.c     the Unix socket: JSON-line requests, subscriptions
 *
 * The monitor is single-threaded; every file works on the one struct monitor
 * owned by cmd_monitor(). Nothing here blocks except short, bounded writes. */
#ifndef JOBVISOR_MONITOR_H
#define JOBVISOR_MONITOR_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <cjson/cJSON.h>

#include "jobvisor/instance_spec.h"
#include "jobvisor/procid.h"
#include "jobvisor/util.h"

enum mon_state { MON_STARTING, MON_RUNNING, MON_STOPPING, MON_STOPPED, MON_CRASHED, MON_BACKOFF,
                 MON_NSTATES };

/* What can happen to an instance; mon_event() runs actions[state][event]
 * (monitor.c). */
enum mon_event {
	EV_STOP,         /* a client, a signal or the deleted instance dir asks to stop (force: kill) */
	EV_CONSOLE_STOP, /* the stop command was typed on the console (it has been sent) */
	EV_READY,        /* the ready line was printed */
	EV_DEADLINE,     /* the current step's deadline passed */
	EV_LEADER_EXIT,  /* the server process exited */
	EV_TREE_EMPTY,   /* nothing is left of the server's process tree */
	EV_RESTART_DUE,  /* the backoff delay is over */
	MON_NEVENTS
};

/* Steps of the stop ladder and of the clean-up after an exit. */
enum mon_phase {
	PH_NONE,
	PH_CONSOLE, /* stop command sent, waiting */
	PH_SIGNAL,  /* stop signal sent to the tree, waiting */
	PH_KILL,    /* SIGKILL sent, waiting for the tree to vanish */
	PH_SWEEP,   /* leader gone; leftovers got the stop signal, then SIGKILL */
};

struct mon_exit {
	bool valid;
	int code;   /* exit status, -1 when killed by a signal or unknown */
	int signal; /* 0 when it exited */
	bool core;
	bool oom;
	bool requested; /* the monitor asked it to stop */
	bool unknown;   /* adopted process: its status cannot be collected */
	int64_t at_real_ms;
	int64_t uptime_ms;
	char reason[96]; /* human words: "exit code 1", "killed by SIGKILL (oom)" */
};

struct mon_cgroup {
	bool active;
	int dirfd;
	char path[PATH_MAX];
	uint64_t oom_base; /* memory.events oom_kill at spawn */
};

#define CONSOLE_RING (32 * 1024)
#define CONSOLE_LINE_MAX 4096

struct mon_console {
	int in_fd;  /* console.in FIFO (we write commands) */
	int out_fd; /* console.out FIFO (we read output) */
	int log_fd; /* logs/console.log, O_APPEND */
	off_t log_size;
	long long max_bytes;
	int keep;
	char ring[CONSOLE_RING]; /* recent complete lines, each ending in '\n', circular */
	size_t ring_start;       /* offset of the oldest byte */
	size_t ring_len;
	size_t ring_lines;
	uint64_t lines; /* complete lines seen since the monitor started */
	char line[CONSOLE_LINE_MAX + 1];
	size_t line_len;
};

#define MON_MAX_CLIENTS 32
#define MON_CLIENT_IN_MAX (64 * 1024)
#define MON_CLIENT_OUT_MAX (512 * 1024)

struct mon_client {
	int fd; /* -1 = free slot */
	struct jv_buf in;
	struct jv_buf out;
	bool subscribed;
	bool console;     /* subscribed to console lines too */
	bool stop_waiter; /* answer when the stop finishes */
	bool closing;     /* close once out is flushed */
};

struct monitor {
	char instance_dir[PATH_MAX];
	char instance_id[65];
	int inst_fd, jv_fd, logs_fd;
	int lock_fd, listen_fd, sig_fd;
	int ino_fd; /* inotify on the instance dir: deleted means decommissioned */
	int status_fd; /* --status-fd: one line to the starter, then closed */
	cJSON *settings;
	const cJSON *allowed; /* borrowed from settings */
	const char *user;     /* borrowed from settings */
	char boot_id[JV_BOOT_ID_LEN];
	uint64_t self_start_time;

	struct jv_instance_spec *spec;

	/* the server (leader of its session and process group) */
	pid_t pid;            /* 0 when none */
	int pidfd;            /* adopted servers: the only way to see their exit */
	uint64_t start_time;  /* ticks since boot */
	bool adopted;         /* not our child: exit status unknown */
	pid_t pgid;           /* == pid: the server leads its own session and group */
	bool leader_exited;   /* exited (a child zombie is kept until the sweep ends) */
	int leader_code;      /* exit status, -1 when signalled or unknown */
	int leader_sig;       /* terminating signal, 0 when it exited */
	bool leader_core;
	int64_t spawned_mono, spawned_real;
	struct mon_cgroup cg;
	struct mon_console con;

	enum mon_state state;
	enum mon_phase phase;
	int64_t since_real;
	int64_t ready_real;
	int64_t deadline;     /* monotonic ms for the current step, or -1 */
	int64_t tick;         /* next sweep poll, or -1 */
	int64_t restart_at;   /* BACKOFF: when to spawn again */
	double restart_delay_s; /* BACKOFF: the delay chosen (backoff with jitter) */
	bool crash_loop;      /* CRASHED by the crash-loop breaker */
	bool stop_requested;  /* by a client, a signal, or the stop command on the console */
	bool ready_timed_out; /* being stopped because it never printed the ready line */
	bool sweep_killed;    /* the sweep has escalated to SIGKILL */
	bool kill_requested;  /* force: straight to SIGKILL */
	double stop_timeout_s; /* per request override, < 0 = spec */
	unsigned restarts;    /* automatic restarts by this monitor */
	unsigned consecutive; /* crashes since the last stable run (backoff exponent) */
	int64_t crash_times[64]; /* monotonic ms of recent crashes, for the loop breaker */
	size_t ncrash;
	struct mon_exit last_exit;
	char message[600];

	bool exiting; /* final state written; flush clients and leave */
	int64_t exit_deadline;
	int exit_status;

	struct mon_client clients[MON_MAX_CLIENTS];
};

/* monitor.c */
typedef bool mon_action(struct monitor *m, bool force);
/* Run what ev means in the current state. Returns false when it means nothing there. */
bool mon_event(struct monitor *m, enum mon_event ev, bool force);
int mon_run_loop(struct monitor *m);
int mon_load_spec(struct monitor *m, char *err, size_t errlen);
int mon_spawn(struct monitor *m, char *err, size_t errlen); /* load the spec, start, set state */
void mon_set_state(struct monitor *m, enum mon_state st, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void mon_request_stop(struct monitor *m, bool force, double timeout_s);
bool mon_console_is_stop(struct monitor *m, const char *line);
void mon_on_console_line(struct monitor *m, const char *line);
const char *mon_state_name(enum mon_state st);

/* monitor_proc.c */
int proc_spawn(struct monitor *m, char *err, size_t errlen);
int proc_adopt(struct monitor *m, pid_t pid, uint64_t start_time, const char *cgroup);
void proc_signal_tree(struct monitor *m, int sig);
/* Reap children; returns true when the leader's exit was noticed just now. */
bool proc_on_sigchld(struct monitor *m);
bool proc_on_pidfd(struct monitor *m);
bool proc_tree_empty(struct monitor *m);
/* Reap the leader and forget the server (after the sweep). */
void proc_release(struct monitor *m);
void proc_describe_exit(struct monitor *m, struct mon_exit *e);
void proc_shed_inheritance(void);

/* monitor_cgroup.c */
int cg_create(struct monitor *m, char *err, size_t errlen);
int cg_open_existing(struct monitor *m, const char *path);
int cg_apply_limits(struct monitor *m);
int cg_procs_fd(struct monitor *m); /* O_WRONLY cgroup.procs, or -1 */
bool cg_contains(struct monitor *m, pid_t pid);
bool cg_populated(struct monitor *m);
void cg_kill(struct monitor *m);
void cg_signal(struct monitor *m, int sig);
uint64_t cg_oom_kills(struct monitor *m);
void cg_remove(struct monitor *m);

/* monitor_console.c */
int con_open(struct monitor *m, bool fresh);
void con_on_readable(struct monitor *m);
void con_drain_output(struct monitor *m);
void con_drain_input(struct monitor *m);
int con_send(struct monitor *m, const char *line);
/* Last n complete lines; returned-owned cJSON array of strings. first_seq gets
 * the sequence number of the first line returned. */
cJSON *con_tail(struct monitor *m, int n, uint64_t since, uint64_t *first_seq);
void con_log_note(struct monitor *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void con_close(struct monitor *m);
bool con_ready_in_log(struct monitor *m);

/* monitor_state.c */
cJSON *state_object(struct monitor *m);
int state_write(struct monitor *m);

/* monitor_sock.c */
int sock_listen(struct monitor *m);
void sock_accept(struct monitor *m);
void sock_on_client(struct monitor *m, struct mon_client *c, short revents);
void sock_broadcast_state(struct monitor *m);
void sock_broadcast_line(struct monitor *m, const char *line, size_t len, uint64_t seq);
void sock_finish_stop(struct monitor *m);
void sock_flush_all(struct monitor *m, int timeout_ms);
void sock_close(struct monitor *m);

#endif
