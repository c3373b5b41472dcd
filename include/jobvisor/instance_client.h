/* instance_client.h — talking to an instance monitor from outside.
 *
 * Used by the `instance` Lua binding, `jobvisor status` and the agent. Every
 * call is bounded by a timeout and nothing here blocks longer; callers that
 * must stay cancellable pass short timeouts and loop. The protocol on the
 * socket is documented in supervisor/monitor/monitor_sock.c and docs/operations.md.
 *
 * A monitor is started with jv_monitor_launch(): double fork, setsid, exec of
 * `jobvisor-monitor` (or `jobvisor monitor`), which reports one line on a pipe once it holds the
 * instance lock and has started (or adopted) the server. Two concurrent
 * launches for one instance yield one monitor; the loser reports -EBUSY and
 * the caller talks to the winner. */
#ifndef JOBVISOR_INSTANCE_CLIENT_H
#define JOBVISOR_INSTANCE_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <cjson/cJSON.h>

struct jv_monconn;

/* Connect to <instance_dir>/.jobvisor/monitor.sock. Returns 0 (*out
 * returned-owned, jv_monconn_close), -ENOENT or -ECONNREFUSED when no monitor
 * listens, or -errno. */
int jv_monconn_open(const char *instance_dir, struct jv_monconn **out);
/* Send one request (borrowed). Returns 0 or -errno. */
int jv_monconn_send(struct jv_monconn *c, const cJSON *req);
/* Next message within timeout_ms. Returns 0 (*msg returned-owned), -ETIMEDOUT,
 * -ECONNRESET when the monitor closed the connection, -EPROTO on garbage. */
int jv_monconn_recv(struct jv_monconn *c, int timeout_ms, cJSON **msg);
int jv_monconn_fd(const struct jv_monconn *c);
void jv_monconn_close(struct jv_monconn *c); /* NULL ok */

/* One request, the first reply carrying "ok" (events before it are skipped).
 * Returns 0 (*reply returned-owned; check its "ok"), or what open/recv return. */
int jv_monitor_call(const char *instance_dir, const cJSON *req, int timeout_ms, cJSON **reply);

/* <instance_dir>/.jobvisor/state.json, parsed. -ENOENT when never started. */
int jv_instance_read_state(const char *instance_dir, cJSON **out);
/* The same from the instance's open .jobvisor directory (the monitor has it). */
int jv_instance_read_state_at(int jv_fd, cJSON **out);

/* The instance's status from the outside: the monitor's own answer when one
 * runs ("monitor": true), else state.json checked against the process table
 * ("monitor": false). Without a monitor, "orphan": true marks a server that
 * is still running (pid + start time verified through a pidfd), and a state
 * that claims a running server that is gone becomes "CRASHED" with
 * "stale": true and the recorded state in "recordedState". Never started:
 * {"state": "STOPPED", "neverStarted": true}. A monitor whose socket this user
 * may not open: state.json as it is, "monitor" from its pid + start time, and
 * "error" saying why. Returns 0 (*out returned-owned)
 * or -errno (-ETIMEDOUT: a monitor is there but does not answer). */
int jv_instance_status(const char *instance_dir, cJSON **out);

struct jv_monitor_launch {
	const char *instance_dir; /* absolute */
	const char *instance_id;  /* validated identifier */
	const cJSON *settings;    /* borrowed agent settings, may be NULL; only the keys the
	                             monitor uses are passed on */
	bool adopt_only;          /* adopt an orphaned server, never start one */
	bool switch_user;         /* run the monitor as uid/gid (the agent as root with `user`) */
	unsigned uid, gid;
	const char *exe;          /* NULL: jobvisor-monitor beside the running binary,
	                             else `/proc/self/exe monitor`; or a jobvisor binary
	                             to run as `EXE monitor` */
};

/* Start a detached monitor. *status_fd (returned-owned) delivers its one
 * status line; read it with jv_monitor_launch_wait(). Returns 0 or -errno. */
int jv_monitor_launch(const struct jv_monitor_launch *l, int *status_fd);

/* Wait up to timeout_ms for the status line. Returns 0 when the monitor runs
 * (msg: "started PID", "adopted PID" or "none" for adopt_only without an
 * orphan), -EBUSY when another monitor holds the instance, -ETIMEDOUT (call
 * again; the fd stays open), or another -errno with the reason in msg (the fd
 * is then finished: close it). */
int jv_monitor_launch_wait(int status_fd, int timeout_ms, char *msg, size_t msglen);

#endif
