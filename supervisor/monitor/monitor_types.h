/* monitor_types.h — the data every file of the instance monitor works on.
 *
 * The bottom of the monitor: states, events, limits and the one struct
 * monitor owned by cmd_monitor(). It declares no functions. The files above
 * it, each with its own header, top to bottom:
 *
 *   monitor_setup.c    command line, detaching, lock, adoption (cmd_monitor)
 *   monitor.c          the poll loop and the state machine
 *   monitor_proc.c     spawning the server, signalling and sweeping its tree, reaping
 *   monitor_sock.c     the Unix socket: JSON-line requests, subscriptions
 *   monitor_state.c    state.json, the status object, state names
 *   monitor_console.c  console FIFOs, log capture and rotation, in-memory tail, readiness
 *   monitor_cgroup.c   the optional cgroup v2 leaf (limits, cgroup.kill, OOM count)
 *
 * A file calls only files below it (proc uses console and cgroup, sock uses
 * console and state); what a lower file must tell monitor.c goes through the
 * struct mon_hooks table below.
 *
 * The monitor is single-threaded; nothing here blocks except short, bounded
 * writes. */
#ifndef JOBVISOR_MONITOR_TYPES_H
#define JOBVISOR_MONITOR_TYPES_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
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

struct monitor;

/* What the parts below monitor.c report upward. monitor.c fills one constant
 * table (mon_attach_hooks) and every part calls through m->hooks, so the
 * console and the socket never name the state machine and the console never
 * names the socket: the arrows between the files run one way, down. */
struct mon_hooks {
	/* monitor_console.c: a complete line (len bytes, NUL-terminated, valid
	 * UTF-8) entered the ring as number seq; from_server is false for the
	 * monitor's own "[jobvisor ...]" notes, which are never matched. */
	void (*console_line)(struct monitor *m, const char *line, size_t len, uint64_t seq,
	                     bool from_server);
	/* monitor_sock.c: a client's line went to the console (it has been sent). */
	void (*console_sent)(struct monitor *m, const char *line);
	/* monitor_sock.c: a client asks for a stop; force: SIGKILL at once;
	 * timeout_s <= 0: the spec's timeout. */
	void (*stop_requested)(struct monitor *m, bool force, double timeout_s);
};

struct monitor {
	const struct mon_hooks *hooks; /* monitor.c's table, set before any part runs */
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

#endif
