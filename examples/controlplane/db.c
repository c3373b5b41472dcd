/* db.c — the SQLite connection: pragmas, schema version and migrations, small helpers.
 *
 * The schema version is PRAGMA user_version. Each migration moves the schema
 * from version N to N+1 inside one transaction together with the version bump,
 * so a crash leaves either the old or the new schema, never half of one. A
 * database written by a newer jobvisor-cp (higher version) is refused rather
 * than guessed at. WAL lets readers (sqlite3 on the command line, backups) run
 * beside the server; synchronous=NORMAL in WAL mode loses nothing when the
 * process dies (only a power cut can drop the last commits), FULL (--sync full)
 * fsyncs every commit. Callers serialise use of the connection with cp->mu.
 *
 * Checkpoints (copying the WAL back into the database, with fsync) are taken
 * off the request path: the main connection has automatic checkpoints turned
 * off, and the main thread runs a PASSIVE checkpoint twice a second on a
 * second connection of its own, which never waits for cp->mu. */
#include "cp.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "jobvisor/log.h"

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
};

_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == DB_SCHEMA_VERSION,
               "one migration per schema version");

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

int db_begin(sqlite3 *db)
{
	return exec_sql(db, "BEGIN IMMEDIATE");
}

int db_commit(sqlite3 *db)
{
	return exec_sql(db, "COMMIT");
}

void db_rollback(sqlite3 *db)
{
	if (!sqlite3_get_autocommit(db))
		exec_sql(db, "ROLLBACK");
}

sqlite3_stmt *db_prepare(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		jv_error(NULL, NULL, "sqlite prepare: %s", sqlite3_errmsg(db));
		return NULL;
	}
	return st;
}

int db_step_done(sqlite3 *db, sqlite3_stmt *st)
{
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		;
	if (rc != SQLITE_DONE) {
		jv_error(NULL, NULL, "sqlite: %s", sqlite3_errmsg(db));
		return -EIO;
	}
	return 0;
}

int db_schema_version(sqlite3 *db)
{
	sqlite3_stmt *st = db_prepare(db, "PRAGMA user_version");
	int v = -1;
	if (st && sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return v;
}

static int migrate(sqlite3 *db, char *err, size_t errlen)
{
	int v = db_schema_version(db);
	if (v < 0) {
		snprintf(err, errlen, "cannot read the schema version: %s", sqlite3_errmsg(db));
		return -EIO;
	}
	if (v > DB_SCHEMA_VERSION) {
		snprintf(err, errlen, "database schema version %d is newer than this jobvisor-cp (%d)",
		         v, DB_SCHEMA_VERSION);
		return -EPROTO;
	}
	for (; v < DB_SCHEMA_VERSION; v++) {
		char bump[64];
		snprintf(bump, sizeof(bump), "PRAGMA user_version = %d", v + 1);
		if (db_begin(db) < 0 || exec_sql(db, migrations[v]) < 0 || exec_sql(db, bump) < 0 ||
		    db_commit(db) < 0) {
			db_rollback(db);
			snprintf(err, errlen, "cannot migrate the schema from version %d to %d: %s", v, v + 1,
			         sqlite3_errmsg(db));
			return -EIO;
		}
		jv_info(NULL, NULL, "database schema migrated to version %d", v + 1);
	}
	return 0;
}

int db_open(const char *path, bool sync_full, sqlite3 **out, char *err, size_t errlen)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
	                         NULL);
	if (rc != SQLITE_OK) {
		snprintf(err, errlen, "cannot open database '%s': %s", path, db ? sqlite3_errmsg(db) : "out of memory");
		sqlite3_close(db);
		return -EIO;
	}
	sqlite3_busy_timeout(db, 5000);
	sqlite3_stmt *st = db_prepare(db, "PRAGMA journal_mode=WAL");
	const char *mode = NULL;
	if (st && sqlite3_step(st) == SQLITE_ROW)
		mode = (const char *)sqlite3_column_text(st, 0);
	bool wal = mode && strcmp(mode, "wal") == 0;
	sqlite3_finalize(st);
	if (!wal) {
		snprintf(err, errlen, "cannot switch database '%s' to WAL mode: %s", path, sqlite3_errmsg(db));
		goto fail;
	}
	if (exec_sql(db, "PRAGMA foreign_keys=ON") < 0 || exec_sql(db, "PRAGMA wal_autocheckpoint=0") < 0 ||
	    exec_sql(db, sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL") < 0) {
		snprintf(err, errlen, "cannot configure database '%s': %s", path, sqlite3_errmsg(db));
		goto fail;
	}
	if (migrate(db, err, errlen) < 0)
		goto fail;
	*out = db;
	return 0;
fail:
	sqlite3_close(db);
	return -EIO;
}

void db_close(sqlite3 *db)
{
	if (db)
		sqlite3_close(db);
}

int db_open_checkpointer(const char *path, sqlite3 **out)
{
	sqlite3 *db = NULL;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
		jv_error(NULL, NULL, "cannot open database '%s' for checkpoints: %s", path,
		         db ? sqlite3_errmsg(db) : "out of memory");
		sqlite3_close(db);
		return -EIO;
	}
	sqlite3_busy_timeout(db, 1000);
	*out = db;
	return 0;
}

void db_checkpoint(sqlite3 *ck, bool truncate)
{
	int log = 0, done = 0;
	int rc = sqlite3_wal_checkpoint_v2(ck, NULL, truncate ? SQLITE_CHECKPOINT_TRUNCATE : SQLITE_CHECKPOINT_PASSIVE,
	                                   &log, &done);
	if (rc != SQLITE_OK && rc != SQLITE_BUSY)
		jv_warn(NULL, NULL, "sqlite checkpoint: %s", sqlite3_errmsg(ck));
}
