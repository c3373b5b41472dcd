/* api_instance.h — what the parts of the `instance` module share:
 * api_instance.c (spec, check_spec, start, status, send, the monitor),
 * api_instance_stop.c (stop) and api_instance_wait.c (wait_ready, wait_log).
 * Private to lua/. */
#ifndef JOBVISOR_API_INSTANCE_H
#define JOBVISOR_API_INSTANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "apiutil.h"
#include "box.h"

#define SLICE_MS 100
#define LASTSEQ_KEY "jv.instance.lastseq"

/* Raise the cancellation error after freeing what the caller holds. */
/* What a binding holds across pushes is in boxes (box.h), so raising needs
 * no cleanup here. */
#define CANCEL_POINT(L, ctx)           \
	do {                               \
		if (jv_cancelled(ctx))         \
			return jv_raise_cancel(L); \
	} while (0)

bool instance_state_is(const cJSON *st, const char *name);
bool instance_state_final(const cJSON *st); /* STOPPED or CRASHED */
/* Option key of the table at idx in seconds, (0, max]; def when absent. Raises on misuse. */
double instance_opt_seconds(lua_State *L, int idx, const char *key, double def, int max);
void instance_progress_every_second(struct jv_run_ctx *ctx, struct jv_progress *p, int64_t *last,
                                    double fraction, const char *detail);

enum ensure_result { ENSURE_ALREADY, ENSURE_STARTED, ENSURE_ADOPTED, ENSURE_NONE };

/* Make sure a monitor runs (adopt_only: only for an orphaned server).
 * Returns 0 with *res, 1 when cancelled, or -errno with msg. */
int instance_ensure_monitor(struct jv_run_ctx *ctx, bool adopt_only, double timeout_s,
                            enum ensure_result *res, char *msg, size_t len);
/* The monitor's status, or NULL with msg. Owned by box when given (the
 * caller's, already pushed), else returned-owned: cJSON_Delete. */
cJSON *instance_fetch_status(struct jv_run_ctx *ctx, struct jv_box *box, char *msg, size_t len);

int l_instance_stop(lua_State *L);
int l_instance_wait_ready(lua_State *L);
int l_instance_wait_log(lua_State *L);

#endif
