/* replicas.h — several jobvisor-cp replicas on one PostgreSQL database:
 * the glue between the store's signals (store_pg.h) and this process's
 * long polls and WebSocket ring. Nothing happens on SQLite. */
#ifndef JV_CP_REPLICAS_H
#define JV_CP_REPLICAS_H

#include <stddef.h>
#include <stdint.h>

struct cp;

/* After ws_hub_start: take the cluster's WebSocket epoch and seq, start the
 * listener. 0, or <0 with err. */
int replicas_start(struct cp *cp, char *err, size_t errlen);
/* Before ws_hub_stop: stop the listener (no callback runs after). */
void replicas_stop(struct cp *cp);

/* ---- lifecycle.c ---- */
/* Wake this process's long polls of the agent (mu held); lc_wake_agent
 * does this and tells the other replicas. */
void lc_wake_local(struct cp *cp, const char *agent_id);

/* ---- ws.c ---- */
/* A numbered message from ws_log, in seq order (takes cp->mu). */
void ws_ingest(struct cp *cp, uint64_t seq, const char *text);
/* Start the ring at the cluster's current seq (takes cp->mu). */
void ws_seed(struct cp *cp, uint64_t head);

#endif
