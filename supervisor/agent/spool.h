/* spool.h — the durable per-run record under <data-dir>/runs/<jobRunId>/.
 *
 *   assignment.json  the assignment as received (durable before the child starts)
 *   events.jsonl     wire events, one JSON object a line, appended in seq order
 *   ack              the highest seq the control plane acknowledged (durable)
 *   result.json      the final result (durable before it is first sent)
 *
 * Fsync policy: assignment.json, ack and result.json are written with
 * jv_durable_write_at (temp, fsync, rename, fsync dir). Event lines are
 * appended with write(2) as they are numbered and made durable by
 * spool_run_sync() (one fdatasync per loop pass — group commit), which the
 * agent calls before any of them is sent; a process crash loses nothing
 * because the page cache survives it, a power cut may lose the unsynced tail.
 *
 * Acknowledged events are dropped from memory at once and from the file by
 * truncation when none is left (or by a rewrite once the acknowledged prefix
 * passes 64 KiB); replay skips lines at or below `ack`. Delivery is therefore
 * at least once, and the control plane's dedup by (jobRunId, seq) makes it
 * exactly once as the control plane sees it.
 *
 * This module keeps the unacknowledged events in memory in seq order and
 * builds request bodies from them; it never logs (callers do). One agent per
 * data dir: spool_open takes an exclusive lock on runs/.agent.lock. */
#ifndef JOBVISOR_SPOOL_H
#define JOBVISOR_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

struct spool;
struct spool_run;

/* Create <data_dir>/runs (0700) and lock it. -EBUSY when another agent holds
 * the lock. *out returned-owned: spool_close. */
int spool_open(const char *data_dir, struct spool **out);
void spool_close(struct spool *sp); /* NULL ok; open runs must be closed first */

/* Start the record of a new run; assignment is borrowed (copied). -EEXIST
 * when a record with that id exists. *out returned-owned: spool_run_close,
 * spool_run_remove or spool_run_reject. */
int spool_run_create(struct spool *sp, const char *run_id, const cJSON *assignment,
                     struct spool_run **out);

/* Load every record for replay, calling cb once per directory entry that
 * looks like a run: with sr (ownership passes to cb) or, when it cannot be
 * loaded, sr == NULL and err < 0. Returns 0 or -errno of the scan itself. */
typedef void (*spool_replay_cb)(void *ud, const char *run_id, struct spool_run *sr, int err);
int spool_replay(struct spool *sp, spool_replay_cb cb, void *ud);

/* Remove, or move to runs/.rejected/, a record by name (e.g. one that could not be loaded). */
int spool_remove_name(struct spool *sp, const char *run_id);
int spool_reject_name(struct spool *sp, const char *run_id);

/* Append an event (borrowed; must carry "seq" greater than every earlier one).
 * The event is queued even when the disk write fails (-errno returned): it is
 * still delivered, only its durability is lost. */
int spool_run_append(struct spool_run *sr, const cJSON *event);
/* fdatasync appended events, if any are unsynced. */
int spool_run_sync(struct spool_run *sr);

size_t spool_run_pending(const struct spool_run *sr); /* unacknowledged events */
/* The i-th unacknowledged event, oldest first (i < spool_run_pending).
 * Returned-owned: cJSON_Delete. NULL when out of range or ENOMEM. */
cJSON *spool_run_pending_event(const struct spool_run *sr, size_t i);
/* Request body {"events":[...]} with the oldest unacknowledged events, at most
 * max_events and about max_bytes (at least one). *last gets the highest seq
 * in it. Returned-owned: free(). NULL when nothing is pending or ENOMEM. */
char *spool_run_batch(const struct spool_run *sr, size_t max_events, size_t max_bytes,
                      uint64_t *last);
/* The control plane holds every event up to ack (clamped to the last seq). */
int spool_run_ack(struct spool_run *sr, uint64_t ack);

/* Record the result durably (borrowed, copied). */
int spool_run_set_result(struct spool_run *sr, const cJSON *result);
const cJSON *spool_run_result(const struct spool_run *sr);         /* borrowed, NULL if none */
const cJSON *spool_run_assignment(const struct spool_run *sr);     /* borrowed */
const char *spool_run_id(const struct spool_run *sr);
uint64_t spool_run_last_seq(const struct spool_run *sr);
uint64_t spool_run_acked(const struct spool_run *sr);
size_t spool_run_skipped(const struct spool_run *sr); /* unreadable lines seen at replay */

/* Delete the record (delivered, or dropped after 409) and free sr. */
int spool_run_remove(struct spool_run *sr);
/* Move the record to runs/.rejected/<id> (the control plane refused it) and free sr. */
int spool_run_reject(struct spool_run *sr);
/* Free the handle, keep the record. NULL ok. */
void spool_run_close(struct spool_run *sr);

/* Instance event streams (runs/.instances/<instanceId>/): the same record
 * without a result, opened (created or loaded) by instance id. Returned-owned:
 * spool_run_close. Never removed, so seq numbers never restart. */
int spool_stream_open(struct spool *sp, const char *instance_id, struct spool_run **out);
/* Names of the streams on disk; *names returned-owned (free each, then the array). */
int spool_stream_names(struct spool *sp, char ***names, size_t *n);
/* A small JSON side file in the record (written durably) and reading it back
 * (returned-owned, NULL when missing or unreadable). */
int spool_run_put(struct spool_run *sr, const char *name, const cJSON *obj);
cJSON *spool_run_get(struct spool_run *sr, const char *name);

#endif
