/* replicas.c — the store's cross-replica signals wired to this process.
 *
 * On PostgreSQL a listener thread (store_pg_bus.c) reports: an agent has new
 * work or a cancel (wake its long polls parked here), a WebSocket message was
 * appended (feed it to the ring), or the listener reconnected (wake every
 * parked poll to look again: notifications may have been lost meanwhile).
 * The WebSocket epoch and seq are the cluster's, from the database, so a
 * client may resume on any replica. docs/scaling.md has the design. */
#include "cp.h"
#include "replicas.h"
#include "store_pg.h"

#include <stdio.h>

#include "jobvisor/log.h"

static void on_wake(void *ud, const char *agent_id)
{
	struct cp *cp = ud;
	pthread_mutex_lock(&cp->mu);
	lc_wake_local(cp, agent_id);
	pthread_mutex_unlock(&cp->mu);
}

static void on_ws(void *ud, uint64_t seq, const char *text)
{
	ws_ingest(ud, seq, text);
}

static void on_resync(void *ud)
{
	struct cp *cp = ud;
	pthread_mutex_lock(&cp->mu);
	for (size_t i = 0; i < cp->nagents; i++)
		lc_wake_local(cp, cp->agents[i].id);
	pthread_mutex_unlock(&cp->mu);
}

int replicas_start(struct cp *cp, char *err, size_t errlen)
{
	if (!store_is_pg(cp->store))
		return 0;
	uint64_t head = 0;
	char epoch[17];
	if (store_pg_ws_head(cp->store, epoch, &head) < 0) {
		snprintf(err, errlen, "cannot read the WebSocket sequence from the database");
		return -1;
	}
	snprintf(cp->epoch, sizeof(cp->epoch), "%s", epoch);
	ws_seed(cp, head);
	struct store_signals sig = {.wake = on_wake, .ws = on_ws, .resync = on_resync, .ud = cp};
	if (store_pg_signals_start(cp->store, &sig, head, err, errlen) < 0)
		return -1;
	jv_info(NULL, NULL, "listening for other replicas (WebSocket epoch %s, seq %llu)", cp->epoch,
	        (unsigned long long)head);
	return 0;
}

void replicas_stop(struct cp *cp)
{
	store_pg_signals_stop(cp->store);
}
