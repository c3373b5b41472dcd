/* store_sqlite.c — the SQLite backend: opening, pragmas, migrations,
 * checkpoints and the statement helpers its domain files share.
 *
 * The schema version is PRAGMA user_version (kept from before the store
 * interface, so existing databases and tools read it as before); the table
 * schema_version records each migration applied and when. Each migration
 * moves the schema from version N to N+1 inside one BEGIN IMMEDIATE
 * transaction together with the version bump, the version being re-read
 * inside it: of several processes opening one file at once exactly one
 * migrates, the others find the schema current. A database written by a
 * newer jobvisor-cp (higher version) is refused rather than guessed at. WAL
 * lets readers (sqlite3 on the command line, backups, other replicas) run
 * beside the server; synchronous=NORMAL in WAL mode loses nothing when the
 * process dies (only a power cut can drop the last commits), FULL (--sync
 * full) fsyncs every commit.
 *
 * Checkpoints (copying the WAL back into the database, with fsync) are taken
 * off the request path: the main connection has automatic checkpoints turned
 * off, and store_maintain runs a PASSIVE checkpoint on a second connection
 * of its own, which never waits for the main connection's mutex. */
#include "store_sqlite_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobvisor/log.h"
#include "jobvisor/util.h"

#define SQ_SCHEMA_VERSION 8

/* Migration i takes the schema from version i to i + 1. Never edit a shipped
 * entry: add a new one. */
static const char *const migrations[] = {
	/* 0 -> 1: the initial schema. Times are wall-clock milliseconds, 0 = unset. */
	"CREATE TABLE agents ("
	"  agent_id TEXT PRIMARY KEY,"
	"  last_seen INTEGER NOT NULL DEFAULT 0,"
	"  capacity INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE jobs ("
	"  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  job_id TEXT NOT NULL UNIQUE,"
	"  type TEXT NOT NULL,"
	"  agent_id TEXT NOT NULL,"
	"  instance_id TEXT NOT NULL,"
	"  params TEXT NOT NULL,"
	"  status TEXT NOT NULL CHECK (status IN ('CREATED','QUEUED','RUNNING','COMPLETED',"
	"                                         'FAILED','CANCELLED','RETRIED')),"
	"  max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),"
	"  timeout_s INTEGER NOT NULL DEFAULT 0,"
	"  cancel_grace_s INTEGER NOT NULL DEFAULT 0,"
	"  cancel_requested INTEGER NOT NULL DEFAULT 0,"
	"  created_at INTEGER NOT NULL,"
	"  updated_at INTEGER NOT NULL);"
	"CREATE INDEX jobs_by_instance ON jobs(agent_id, instance_id, seq);"
	"CREATE INDEX jobs_by_status ON jobs(status, seq);"
	"CREATE TABLE job_runs ("
	"  run_id TEXT PRIMARY KEY,"
	"  job_id TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,"
	"  attempt INTEGER NOT NULL,"
	"  agent_id TEXT NOT NULL,"
	"  status TEXT NOT NULL CHECK (status IN ('QUEUED','RUNNING','COMPLETED','FAILED','CANCELLED')),"
	"  percent REAL,"
	"  message TEXT,"
	"  progress_seq INTEGER NOT NULL DEFAULT 0,"  /* seq of the event percent/message came from */
	"  last_seq INTEGER NOT NULL DEFAULT 0,"      /* highest contiguous seq stored */
	"  acked INTEGER NOT NULL DEFAULT 0,"
	"  cancel_requested INTEGER NOT NULL DEFAULT 0,"
	"  output TEXT,"
	"  error TEXT,"
	"  finished_by TEXT,"                          /* 'agent' or 'server' */
	"  not_before INTEGER NOT NULL DEFAULT 0,"    /* automatic retry backoff */
	"  created_at INTEGER NOT NULL,"
	"  started_at INTEGER NOT NULL DEFAULT 0,"
	"  finished_at INTEGER NOT NULL DEFAULT 0,"
	"  ack_deadline INTEGER NOT NULL DEFAULT 0,"
	"  lease_until INTEGER NOT NULL DEFAULT 0,"
	"  UNIQUE (job_id, attempt));"
	"CREATE INDEX runs_by_agent ON job_runs(agent_id, status);"
	"CREATE INDEX runs_by_status ON job_runs(status);"
	"CREATE TABLE events ("
	"  run_id TEXT NOT NULL REFERENCES job_runs(run_id) ON DELETE CASCADE,"
	"  seq INTEGER NOT NULL,"
	"  body TEXT NOT NULL,"
	"  received_at INTEGER NOT NULL,"
	"  PRIMARY KEY (run_id, seq)) WITHOUT ROWID;",
	/* 1 -> 2: dispatch asks "is an earlier job of this instance still active?"
	 * on every poll; without this index the answer scans every finished job
	 * the instance ever had. */
	"CREATE INDEX jobs_active ON jobs(agent_id, instance_id, seq)"
	"  WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED');",
	/* 2 -> 3: game-server instances as their agents report them. last_seq is
	 * the highest event seq stored (each (agent, instance, seq) once);
	 * state_seq the seq the current state came from (a snapshot may be newer
	 * than events still on their way); body the latest state event. */
	"CREATE TABLE instances ("
	"  agent_id TEXT NOT NULL,"
	"  instance_id TEXT NOT NULL,"
	"  state TEXT NOT NULL,"
	"  state_seq INTEGER NOT NULL DEFAULT 0,"
	"  last_seq INTEGER NOT NULL DEFAULT 0,"
	"  body TEXT NOT NULL,"
	"  removed INTEGER NOT NULL DEFAULT 0,"
	"  updated_at INTEGER NOT NULL,"
	"  PRIMARY KEY (agent_id, instance_id)) WITHOUT ROWID;"
	"CREATE TABLE instance_events ("
	"  agent_id TEXT NOT NULL,"
	"  instance_id TEXT NOT NULL,"
	"  seq INTEGER NOT NULL,"
	"  body TEXT NOT NULL,"
	"  received_at INTEGER NOT NULL,"
	"  PRIMARY KEY (agent_id, instance_id, seq)) WITHOUT ROWID;",
	/* 3 -> 4: the job types each agent reported (JSON {jobTypes, problems}). */
	"CREATE TABLE agent_job_types ("
	"  agent_id TEXT PRIMARY KEY,"
	"  body TEXT NOT NULL,"
	"  reported_at INTEGER NOT NULL);",
	/* 4 -> 5: schedules. next_fire is the claim: a replica fires a schedule
	 * only by moving next_fire on from the value it read (a conditional
	 * UPDATE in the transaction that inserts the job), so each firing makes
	 * at most one job whichever replica gets there first. 0 = none (paused). */
	"CREATE TABLE schedules ("
	"  schedule_id TEXT PRIMARY KEY,"
	"  cron TEXT NOT NULL,"
	"  timezone TEXT NOT NULL,"
	"  job TEXT NOT NULL,"
	"  enabled INTEGER NOT NULL,"
	"  overlap TEXT NOT NULL CHECK (overlap IN ('skip', 'queue')),"
	"  next_fire INTEGER NOT NULL DEFAULT 0,"
	"  last_fire INTEGER NOT NULL DEFAULT 0,"
	"  last_job_id TEXT,"
	"  last_outcome TEXT,"
	"  created_at INTEGER NOT NULL,"
	"  updated_at INTEGER NOT NULL);"
	"CREATE INDEX schedules_due ON schedules(next_fire) WHERE enabled = 1;"
	"ALTER TABLE jobs ADD COLUMN schedule_id TEXT;"
	"CREATE INDEX jobs_by_schedule ON jobs(schedule_id, seq) WHERE schedule_id IS NOT NULL;",
	/* 5 -> 6: the audit log: every mutating UI call, who, what, when, answer. */
	"CREATE TABLE audit_log ("
	"  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  at INTEGER NOT NULL,"
	"  who TEXT NOT NULL,"
	"  role TEXT NOT NULL,"
	"  method TEXT NOT NULL,"
	"  path TEXT NOT NULL,"
	"  status INTEGER NOT NULL,"
	"  remote TEXT NOT NULL);",
	/* 6 -> 7: claiming walks an agent's active jobs in seq order and stops
	 * after the runs it takes (store_sqlite_dispatch.c, SQL_WALK); without
	 * this index it read and sorted every queued run of the agent. */
	"CREATE INDEX jobs_active_by_seq ON jobs(agent_id, seq)"
	"  WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED');",
	/* 7 -> 8: the counters behind jobvisor_runs_started_total and
	 * jobvisor_runs_finished_total (metrics.c). Counting rows went down when
	 * retention deleted jobs or an agent gave a run back unstarted; these only
	 * go up. A trigger moves them in the statement that changes the run, so
	 * every path (claim, result, sweep, cancel, give-back) counts in its own
	 * transaction, and nothing that deletes runs touches them. Started: a run
	 * goes QUEUED -> RUNNING (given to an agent). Finished: QUEUED or RUNNING
	 * -> COMPLETED, FAILED or CANCELLED. They start from today's rows. */
	"CREATE TABLE run_counters ("
	"  name TEXT PRIMARY KEY CHECK (name IN ('started','COMPLETED','FAILED','CANCELLED')),"
	"  value INTEGER NOT NULL);"
	"INSERT INTO run_counters VALUES"
	"  ('started', (SELECT count(*) FROM job_runs WHERE started_at > 0)),"
	"  ('COMPLETED', (SELECT count(*) FROM job_runs WHERE status = 'COMPLETED')),"
	"  ('FAILED', (SELECT count(*) FROM job_runs WHERE status = 'FAILED')),"
	"  ('CANCELLED', (SELECT count(*) FROM job_runs WHERE status = 'CANCELLED'));"
	"CREATE TRIGGER run_counters_started AFTER UPDATE OF status ON job_runs"
	"  WHEN OLD.status = 'QUEUED' AND NEW.status = 'RUNNING'"
	"  BEGIN UPDATE run_counters SET value = value + 1 WHERE name = 'started'; END;"
	"CREATE TRIGGER run_counters_finished AFTER UPDATE OF status ON job_runs"
	"  WHEN OLD.status IN ('QUEUED', 'RUNNING') AND NEW.status IN ('COMPLETED', 'FAILED', 'CANCELLED')"
	"  BEGIN UPDATE run_counters SET value = value + 1 WHERE name = NEW.status; END;",
};

_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == SQ_SCHEMA_VERSION,
               "one migration per schema version");

/* Bookkeeping beside user_version: when each migration was applied. */
static const char SQL_VERSION_TABLE[] = "CREATE TABLE IF NOT EXISTS schema_version ("
                                        "  version INTEGER PRIMARY KEY,"
                                        "  applied_at INTEGER NOT NULL)";

void sq_lock(struct sq *q)
{
	pthread_mutex_lock(&q->mu);
}

void sq_unlock(struct sq *q)
{
	pthread_mutex_unlock(&q->mu);
}

static int exec_sql(sqlite3 *db, const char *sql)
{
	char *msg = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		jv_error(NULL, NULL, "sqlite: %s", msg ? msg : sqlite3_errmsg(db));
		sqlite3_free(msg);
		return -EIO;
	}
	return 0;
}

sqlite3_stmt *sq_prep(struct sq *q, const char *sql)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(q->db, sql, -1, &st, NULL) != SQLITE_OK) {
		jv_error(NULL, NULL, "sqlite prepare: %s", sqlite3_errmsg(q->db));
		return NULL;
	}
	return st;
}

void sq_bindv(sqlite3_stmt *st, const char *fmt, va_list ap)
{
	for (int k = 1; fmt && fmt[k - 1]; k++) {
		switch (fmt[k - 1]) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (s)
				sqlite3_bind_text(st, k, s, -1, SQLITE_TRANSIENT);
			else
				sqlite3_bind_null(st, k);
			break;
		}
		case 'i':
			sqlite3_bind_int64(st, k, va_arg(ap, int64_t));
			break;
		case 'd':
			sqlite3_bind_double(st, k, va_arg(ap, double));
			break;
		default:
			sqlite3_bind_null(st, k);
		}
	}
}

void sq_bind(sqlite3_stmt *st, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	sq_bindv(st, fmt, ap);
	va_end(ap);
}

int sq_step(struct sq *q, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		return 1;
	if (rc == SQLITE_DONE)
		return 0;
	jv_error(NULL, NULL, "sqlite: %s", sqlite3_errmsg(q->db));
	return -EIO;
}

static sqlite3_stmt *queryv(struct sq *q, const char *sql, const char *fmt, va_list ap)
{
	sqlite3_stmt *st = sq_prep(q, sql);
	if (st)
		sq_bindv(st, fmt, ap);
	return st;
}

int sq_exec(struct sq *q, const char *sql, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	sqlite3_stmt *st = queryv(q, sql, fmt, ap);
	va_end(ap);
	if (!st)
		return -EIO;
	int rc;
	while ((rc = sq_step(q, st)) == 1)
		;
	sqlite3_finalize(st);
	return rc < 0 ? rc : sqlite3_changes(q->db);
}

sqlite3_stmt *sq_query(struct sq *q, const char *sql, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	sqlite3_stmt *st = queryv(q, sql, fmt, ap);
	va_end(ap);
	return st;
}

int sq_int64(struct sq *q, int64_t *out, const char *sql, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	sqlite3_stmt *st = queryv(q, sql, fmt, ap);
	va_end(ap);
	int rc = st ? sq_step(q, st) : -EIO;
	if (rc == 1)
		*out = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return rc;
}

int sq_rows(struct sq *q, sqlite3_stmt *st, cJSON *(*conv)(sqlite3_stmt *st, void *ud), void *ud, cJSON **out)
{
	cJSON *arr = st ? cJSON_CreateArray() : NULL;
	int rc = arr ? 1 : st ? -ENOMEM : -EIO;
	while (arr && (rc = sq_step(q, st)) == 1) {
		cJSON *o = conv(st, ud);
		if (o)
			cJSON_AddItemToArray(arr, o);
	}
	sqlite3_finalize(st);
	if (rc < 0) {
		cJSON_Delete(arr);
		return rc;
	}
	*out = arr;
	return 0;
}

int sq_begin(struct sq *q)
{
	return exec_sql(q->db, "BEGIN IMMEDIATE");
}

int sq_commit(struct sq *q)
{
	return exec_sql(q->db, "COMMIT");
}

void sq_rollback(struct sq *q)
{
	if (!sqlite3_get_autocommit(q->db))
		exec_sql(q->db, "ROLLBACK");
}

int sq_end(struct sq *q, int rc)
{
	if (rc == 0 && sq_commit(q) < 0)
		rc = -EIO;
	if (rc != 0)
		sq_rollback(q);
	return rc;
}

int sq_tx_begin(struct sq *q)
{
	sq_lock(q);
	int rc = sq_begin(q);
	if (rc < 0)
		sq_unlock(q);
	else
		q->tx_now = jv_now_real_ms();
	return rc;
}

int64_t sq_tx_time(const struct sq *q, int64_t now)
{
	return q->tx_now > now ? q->tx_now : now;
}

int sq_tx_end(struct sq *q, int rc)
{
	if (rc > 0)
		sq_rollback(q);
	else
		rc = sq_end(q, rc);
	sq_unlock(q);
	return rc;
}

void sq_col(sqlite3_stmt *st, int col, char *buf, size_t len)
{
	const char *t = (const char *)sqlite3_column_text(st, col);
	snprintf(buf, len, "%s", t ? t : "");
}

const char *sq_text(sqlite3_stmt *st, int col)
{
	return (const char *)sqlite3_column_text(st, col);
}

static int user_version(struct sq *q)
{
	int64_t v = -1;
	return sq_int64(q, &v, "PRAGMA user_version", NULL) == 1 ? (int)v : -1;
}

/* One step under the write lock: 1 migrated, 0 already current, <0 error. */
static int migrate_step(struct sq *q, char *err, size_t errlen)
{
	if (sq_begin(q) < 0) {
		snprintf(err, errlen, "cannot lock the database for migrations: %s", sqlite3_errmsg(q->db));
		return -EIO;
	}
	int v = user_version(q);
	if (v < 0 || v > SQ_SCHEMA_VERSION) {
		sq_rollback(q);
		if (v < 0)
			snprintf(err, errlen, "cannot read the schema version: %s", sqlite3_errmsg(q->db));
		else
			snprintf(err, errlen, "database schema version %d is newer than this jobvisor-cp (%d)", v,
			         SQ_SCHEMA_VERSION);
		return v < 0 ? -EIO : -EPROTO;
	}
	if (v == SQ_SCHEMA_VERSION) {
		sq_rollback(q);
		return 0;
	}
	char bump[64];
	snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", v + 1);
	if (exec_sql(q->db, migrations[v]) < 0 || exec_sql(q->db, bump) < 0 || exec_sql(q->db, SQL_VERSION_TABLE) < 0 ||
	    sq_exec(q, "INSERT OR REPLACE INTO schema_version (version, applied_at) VALUES (?, ?)", "ii",
	            (int64_t)(v + 1), jv_now_real_ms()) < 0 ||
	    sq_commit(q) < 0) {
		snprintf(err, errlen, "cannot migrate the schema from version %d to %d: %s", v, v + 1,
		         sqlite3_errmsg(q->db));
		sq_rollback(q);
		return -EIO;
	}
	jv_info(NULL, NULL, "database schema migrated to version %d", v + 1);
	return 1;
}

static int migrate(struct sq *q, char *err, size_t errlen)
{
	int rc;
	while ((rc = migrate_step(q, err, errlen)) == 1)
		;
	return rc;
}

static int configure(struct sq *q, const char *path, bool sync_full, char *err, size_t errlen)
{
	sqlite3_busy_timeout(q->db, 5000);
	sqlite3_stmt *st = sq_prep(q, "PRAGMA journal_mode=WAL");
	const char *mode = NULL;
	if (st && sqlite3_step(st) == SQLITE_ROW)
		mode = (const char *)sqlite3_column_text(st, 0);
	bool wal = mode && strcmp(mode, "wal") == 0;
	sqlite3_finalize(st);
	if (!wal) {
		snprintf(err, errlen, "cannot switch database '%s' to WAL mode: %s", path, sqlite3_errmsg(q->db));
		return -EIO;
	}
	if (exec_sql(q->db, "PRAGMA foreign_keys=ON") < 0 || exec_sql(q->db, "PRAGMA wal_autocheckpoint=0") < 0 ||
	    exec_sql(q->db, sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL") < 0) {
		snprintf(err, errlen, "cannot configure database '%s': %s", path, sqlite3_errmsg(q->db));
		return -EIO;
	}
	return 0;
}

static int open_checkpointer(struct sq *q, const char *path, char *err, size_t errlen)
{
	if (sqlite3_open_v2(path, &q->ck, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "cannot open database '%s' for checkpoints: %s", path,
		         q->ck ? sqlite3_errmsg(q->ck) : "out of memory");
		return -EIO;
	}
	sqlite3_busy_timeout(q->ck, 1000);
	return 0;
}

static void sq_close(struct store *s)
{
	struct sq *q = sq_of(s);
	if (q->ck)
		sqlite3_close(q->ck);
	if (q->db)
		sqlite3_close(q->db);
	pthread_mutex_destroy(&q->mu);
	free(q);
}

int store_sqlite_open(const char *path, const struct store_options *o, struct store **out, char *err,
                      size_t errlen)
{
	struct sq *q = calloc(1, sizeof(*q));
	if (!q) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	q->base.ops = &sq_ops;
	pthread_mutexattr_t attr;
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&q->mu, &attr);
	pthread_mutexattr_destroy(&attr);
	int rc = sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
	                         NULL);
	if (rc != SQLITE_OK) {
		snprintf(err, errlen, "cannot open database '%s': %s", path,
		         q->db ? sqlite3_errmsg(q->db) : "out of memory");
		rc = -EIO;
	} else {
		rc = configure(q, path, o && o->sync_full, err, errlen);
	}
	if (rc == 0)
		rc = migrate(q, err, errlen);
	if (rc == 0)
		rc = open_checkpointer(q, path, err, errlen);
	if (rc < 0) {
		sq_close(&q->base);
		return rc;
	}
	*out = &q->base;
	return 0;
}

static void sq_maintain(struct store *s, bool final)
{
	struct sq *q = sq_of(s);
	int log = 0, done = 0;
	int rc = sqlite3_wal_checkpoint_v2(q->ck, NULL, final ? SQLITE_CHECKPOINT_TRUNCATE : SQLITE_CHECKPOINT_PASSIVE,
	                                   &log, &done);
	if (rc != SQLITE_OK && rc != SQLITE_BUSY)
		jv_warn(NULL, NULL, "sqlite checkpoint: %s", sqlite3_errmsg(q->ck));
}

static int sq_ping(struct store *s, char *why, size_t len)
{
	struct sq *q = sq_of(s);
	int64_t n = 0;
	sq_lock(q);
	int rc = sq_int64(q, &n, "SELECT count(*) FROM agents", NULL);
	if (rc != 1)
		snprintf(why, len, "%s", sqlite3_errmsg(q->db));
	sq_unlock(q);
	return rc == 1 ? 0 : -EIO;
}

/* A poll and a creation hold the connection's (recursive) mutex across all
 * their steps: one wait for it per request rather than one per step, as
 * when cp->mu serialised them. */
static int sq_poll(struct store *s, const struct store_poll *p, struct store_poll_result *out)
{
	sq_lock(sq_of(s));
	int rc = store_poll_steps(s, p, out);
	sq_unlock(sq_of(s));
	return rc;
}

static int sq_job_submit(struct store *s, const struct store_new_job *nj, const struct store_sched_claim *claim,
                         int64_t now, struct store_submitted *out)
{
	sq_lock(sq_of(s));
	int rc = store_job_submit_steps(s, nj, claim, now, out);
	sq_unlock(sq_of(s));
	return rc;
}

static int sq_schema_version(struct store *s)
{
	struct sq *q = sq_of(s);
	sq_lock(q);
	int v = user_version(q);
	sq_unlock(q);
	return v;
}

static const char *sq_backend_name(const struct store *s)
{
	(void)s;
	return "sqlite";
}

const struct store_ops sq_ops = {
	.close = sq_close,
	.maintain = sq_maintain,
	.ping = sq_ping,
	.schema_version = sq_schema_version,
	.backend_name = sq_backend_name,
	.job_json = sq_job_json,
	.run_json = sq_run_json,
	.jobs_list = sq_jobs_list,
	.run_events = sq_run_events,
	.run_state = sq_run_state,
	.job_info = sq_job_info,
	.assignment_json = sq_assignment_json,
	.job_create = sq_job_create,
	.job_enqueue = sq_job_enqueue,
	.jobs_created = sq_jobs_created,
	.job_cancel = sq_job_cancel,
	.job_retry = sq_job_retry,
	.run_finish = sq_run_finish,
	.agents_register = sq_agents_register,
	.agent_touch = sq_agent_touch,
	.agents_each = sq_agents_each,
	.agent_running = sq_agent_running,
	.agents_running = sq_agents_running,
	.runs_renew = sq_runs_renew,
	.agent_runs = sq_agent_runs,
	.runs_claim = sq_runs_claim,
	.runs_lost = sq_runs_lost,
	.retry_agents = sq_retry_agents,
	.runs_refresh = sq_runs_refresh,
	.events_append = sq_events_append,
	.instance_events_append = sq_instance_events_append,
	.instances_snapshot = sq_instances_snapshot,
	.instances_list = sq_instances_list,
	.instance_get = sq_instance_get,
	.instance_history = sq_instance_history,
	.jobtypes_put = sq_jobtypes_put,
	.jobtypes_get = sq_jobtypes_get,
	.schedule_create = sq_schedule_create,
	.schedule_json = sq_schedule_json,
	.schedules_list = sq_schedules_list,
	.schedule_update = sq_schedule_update,
	.schedule_delete = sq_schedule_delete,
	.schedules_due = sq_schedules_due,
	.schedule_claim = sq_schedule_claim,
	.schedule_active_job = sq_schedule_active_job,
	.audit_append = sq_audit_append,
	.audit_set_status = sq_audit_set_status,
	.audit_list = sq_audit_list,
	.metrics_jobs = sq_metrics_jobs,
	.metrics_runs = sq_metrics_runs,
	.retention_pick = sq_retention_pick,
	.retention_events = sq_retention_events,
	.job_delete = sq_job_delete,
	.poll = sq_poll,
	.job_submit = sq_job_submit,
};
