/* store_pg_schema.c — the PostgreSQL schema and its migrations.
 *
 * The same tables as the SQLite schema (store_sqlite.c; PostgreSQL's version 1
 * is SQLite's 6, and each later migration follows SQLite's: 2 is 7, 3 is 8) in PostgreSQL's
 * dialect: wall-clock milliseconds and seqs are BIGINT, flags stay INTEGER
 * 0/1 (so the SQL of both backends reads alike), SQLite's AUTOINCREMENT
 * keys are BIGSERIAL, JSON stays TEXT exactly as stored (it was produced by
 * cJSON from validated input). Two tables exist only here: ws_head (the
 * cluster-wide WebSocket epoch and the last WebSocket seq handed out) and
 * ws_log (the WebSocket messages by seq, for every replica's clients and for
 * replay); docs/scaling.md explains them.
 *
 * The version lives in schema_version (one row). Each migration moves it from
 * N to N+1 in one transaction together with the bump. Replicas starting at
 * once take a session advisory lock (PG_MIGRATION_LOCK) around the whole
 * check-and-migrate: the first migrates, the others wait for it and then
 * find nothing to do. A database migrated by a newer jobvisor-cp is refused. */
#include "store_pg_conn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "jobvisor/log.h"

#define JOB_STATUSES "'CREATED','QUEUED','RUNNING','COMPLETED','FAILED','CANCELLED','RETRIED'"
#define RUN_STATUSES "'QUEUED','RUNNING','COMPLETED','FAILED','CANCELLED'"
#define RUN_COUNTER_SHARDS "16" /* rows per run counter (migration 2 -> 3); never change: add a migration */

/* Migration i takes the schema from version i to i + 1. Never edit a shipped
 * entry: add a new one. */
static const char *const migrations[] = {
	/* 0 -> 1: the SQLite schema of version 6, plus ws_head and ws_log. */
	"CREATE TABLE agents ("
	"  agent_id TEXT PRIMARY KEY,"
	"  last_seen BIGINT NOT NULL DEFAULT 0,"
	"  capacity INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE jobs ("
	"  seq BIGSERIAL PRIMARY KEY,"
	"  job_id TEXT NOT NULL UNIQUE,"
	"  type TEXT NOT NULL,"
	"  agent_id TEXT NOT NULL,"
	"  instance_id TEXT NOT NULL,"
	"  params TEXT NOT NULL,"
	"  status TEXT NOT NULL CHECK (status IN (" JOB_STATUSES ")),"
	"  max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),"
	"  timeout_s INTEGER NOT NULL DEFAULT 0,"
	"  cancel_grace_s INTEGER NOT NULL DEFAULT 0,"
	"  cancel_requested INTEGER NOT NULL DEFAULT 0,"
	"  created_at BIGINT NOT NULL,"
	"  updated_at BIGINT NOT NULL,"
	"  schedule_id TEXT);"
	"CREATE INDEX jobs_by_instance ON jobs(agent_id, instance_id, seq);"
	"CREATE INDEX jobs_by_status ON jobs(status, seq);"
	"CREATE INDEX jobs_active ON jobs(agent_id, instance_id, seq)"
	"  WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED');"
	"CREATE INDEX jobs_by_schedule ON jobs(schedule_id, seq) WHERE schedule_id IS NOT NULL;"
	"CREATE TABLE job_runs ("
	"  run_id TEXT PRIMARY KEY,"
	"  job_id TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,"
	"  attempt INTEGER NOT NULL,"
	"  agent_id TEXT NOT NULL,"
	"  status TEXT NOT NULL CHECK (status IN (" RUN_STATUSES ")),"
	"  percent DOUBLE PRECISION,"
	"  message TEXT,"
	"  progress_seq BIGINT NOT NULL DEFAULT 0,"
	"  last_seq BIGINT NOT NULL DEFAULT 0,"
	"  acked INTEGER NOT NULL DEFAULT 0,"
	"  cancel_requested INTEGER NOT NULL DEFAULT 0,"
	"  output TEXT,"
	"  error TEXT,"
	"  finished_by TEXT,"
	"  not_before BIGINT NOT NULL DEFAULT 0,"
	"  created_at BIGINT NOT NULL,"
	"  started_at BIGINT NOT NULL DEFAULT 0,"
	"  finished_at BIGINT NOT NULL DEFAULT 0,"
	"  ack_deadline BIGINT NOT NULL DEFAULT 0,"
	"  lease_until BIGINT NOT NULL DEFAULT 0,"
	"  UNIQUE (job_id, attempt));"
	"CREATE INDEX runs_by_agent ON job_runs(agent_id, status);"
	"CREATE INDEX runs_by_status ON job_runs(status);"
	"CREATE TABLE events ("
	"  run_id TEXT NOT NULL REFERENCES job_runs(run_id) ON DELETE CASCADE,"
	"  seq BIGINT NOT NULL,"
	"  body TEXT NOT NULL,"
	"  received_at BIGINT NOT NULL,"
	"  PRIMARY KEY (run_id, seq));"
	"CREATE TABLE instances ("
	"  agent_id TEXT NOT NULL,"
	"  instance_id TEXT NOT NULL,"
	"  state TEXT NOT NULL,"
	"  state_seq BIGINT NOT NULL DEFAULT 0,"
	"  last_seq BIGINT NOT NULL DEFAULT 0,"
	"  body TEXT NOT NULL,"
	"  removed INTEGER NOT NULL DEFAULT 0,"
	"  updated_at BIGINT NOT NULL,"
	"  PRIMARY KEY (agent_id, instance_id));"
	"CREATE TABLE instance_events ("
	"  agent_id TEXT NOT NULL,"
	"  instance_id TEXT NOT NULL,"
	"  seq BIGINT NOT NULL,"
	"  body TEXT NOT NULL,"
	"  received_at BIGINT NOT NULL,"
	"  PRIMARY KEY (agent_id, instance_id, seq));"
	"CREATE TABLE agent_job_types ("
	"  agent_id TEXT PRIMARY KEY,"
	"  body TEXT NOT NULL,"
	"  reported_at BIGINT NOT NULL);"
	"CREATE TABLE schedules ("
	"  schedule_id TEXT PRIMARY KEY,"
	"  cron TEXT NOT NULL,"
	"  timezone TEXT NOT NULL,"
	"  job TEXT NOT NULL,"
	"  enabled INTEGER NOT NULL,"
	"  overlap TEXT NOT NULL CHECK (overlap IN ('skip', 'queue')),"
	"  next_fire BIGINT NOT NULL DEFAULT 0,"
	"  last_fire BIGINT NOT NULL DEFAULT 0,"
	"  last_job_id TEXT,"
	"  last_outcome TEXT,"
	"  created_at BIGINT NOT NULL,"
	"  updated_at BIGINT NOT NULL);"
	"CREATE INDEX schedules_due ON schedules(next_fire) WHERE enabled = 1;"
	"CREATE TABLE audit_log ("
	"  seq BIGSERIAL PRIMARY KEY,"
	"  at BIGINT NOT NULL,"
	"  who TEXT NOT NULL,"
	"  role TEXT NOT NULL,"
	"  method TEXT NOT NULL,"
	"  path TEXT NOT NULL,"
	"  status INTEGER NOT NULL,"
	"  remote TEXT NOT NULL);"
	/* One row: the epoch of WebSocket seqs (random, fixed for the life of the
	 * database) and the last seq handed out. Appending to ws_log moves seq on
	 * under this row's lock, so seqs are dense and commit in order. */
	"CREATE TABLE ws_head ("
	"  id INTEGER PRIMARY KEY CHECK (id = 1),"
	"  epoch TEXT NOT NULL,"
	"  seq BIGINT NOT NULL);"
	"INSERT INTO ws_head VALUES (1, substr(md5(random()::text || clock_timestamp()::text), 1, 16), 0);"
	"CREATE TABLE ws_log ("
	"  seq BIGINT PRIMARY KEY,"
	"  body TEXT NOT NULL,"
	"  at BIGINT NOT NULL);",
	/* 1 -> 2: the claim walks an agent's active jobs in seq order and stops
	 * after the runs it takes (store_pg_dispatch.c, PGS_SQL_CLAIM); without
	 * this index it read, joined and sorted every queued run of the agent.
	 * job_id and instance_id included: the walk reads the index only, so the
	 * planner prefers it to the primary key (seq) filtered by agent. */
	"CREATE INDEX jobs_active_by_seq ON jobs(agent_id, seq) INCLUDE (job_id, instance_id)"
	"  WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED');",
	/* 2 -> 3: the counters behind jobvisor_runs_started_total and
	 * jobvisor_runs_finished_total, as SQLite's 7 -> 8 (store_sqlite.c): a
	 * trigger adds 1 in the statement that moves the run (QUEUED -> RUNNING:
	 * started; QUEUED or RUNNING -> COMPLETED, FAILED or CANCELLED: finished),
	 * retention and give-backs never lower them. One row per counter would be
	 * locked by every start and finish of every replica until its commit, so
	 * each counter has RUN_COUNTER_SHARDS rows and a transaction adds to the
	 * one of its backend (pg_backend_pid() modulo): two transactions wait for
	 * each other only when their connections share a shard. /metrics sums the
	 * shards. The table is locked against writes first so that the starting
	 * values (today's rows, in shard 0) and the trigger see the same runs. */
	"LOCK TABLE job_runs IN SHARE ROW EXCLUSIVE MODE;"
	"CREATE TABLE run_counters ("
	"  name TEXT NOT NULL CHECK (name IN ('started','COMPLETED','FAILED','CANCELLED')),"
	"  shard INTEGER NOT NULL,"
	"  value BIGINT NOT NULL DEFAULT 0,"
	"  PRIMARY KEY (name, shard));"
	"INSERT INTO run_counters (name, shard)"
	"  SELECT n, s FROM unnest(ARRAY['started','COMPLETED','FAILED','CANCELLED']) n,"
	"  generate_series(0, " RUN_COUNTER_SHARDS " - 1) s;"
	"UPDATE run_counters c SET value = (SELECT count(*) FROM job_runs r"
	"  WHERE CASE c.name WHEN 'started' THEN r.started_at > 0 ELSE r.status = c.name END)"
	"  WHERE c.shard = 0;"
	"CREATE FUNCTION run_counters_bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
	"  UPDATE run_counters SET value = value + 1"
	"   WHERE name = CASE NEW.status WHEN 'RUNNING' THEN 'started' ELSE NEW.status END"
	"     AND shard = pg_backend_pid() % " RUN_COUNTER_SHARDS ";"
	"  RETURN NULL;"
	" END $$;"
	"CREATE TRIGGER run_counters_bump AFTER UPDATE OF status ON job_runs FOR EACH ROW"
	"  WHEN ((OLD.status = 'QUEUED' AND NEW.status = 'RUNNING')"
	"     OR (OLD.status IN ('QUEUED', 'RUNNING') AND NEW.status IN ('COMPLETED', 'FAILED', 'CANCELLED')))"
	"  EXECUTE PROCEDURE run_counters_bump();",
};

_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == PG_SCHEMA_VERSION,
               "one migration per schema version");

int pg_schema_version(PGconn *c)
{
	PGresult *r = pg_exec(c, "SELECT version FROM schema_version", NULL);
	int v = r && PQntuples(r) == 1 ? (int)pg_i64(r, 0, 0) : -1;
	PQclear(r);
	return v;
}

static int migrate_locked(PGconn *c, char *err, size_t errlen)
{
	if (pg_cmd(c, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", NULL) < 0 ||
	    pg_cmd(c, "INSERT INTO schema_version SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version)",
	           NULL) < 0) {
		snprintf(err, errlen, "cannot create the schema_version table: %s", PQerrorMessage(c));
		return -EIO;
	}
	int v = pg_schema_version(c);
	if (v < 0) {
		snprintf(err, errlen, "cannot read the schema version: %s", PQerrorMessage(c));
		return -EIO;
	}
	if (v > PG_SCHEMA_VERSION) {
		snprintf(err, errlen, "database schema version %d is newer than this jobvisor-cp (%d)", v,
		         PG_SCHEMA_VERSION);
		return -EPROTO;
	}
	for (; v < PG_SCHEMA_VERSION; v++) {
		struct pg_params p = {0};
		pg_p_i64(&p, v + 1);
		if (pg_begin(c) < 0 || pg_cmd(c, migrations[v], NULL) < 0 ||
		    pg_cmd(c, "UPDATE schema_version SET version = $1", &p) != 1 || pg_commit(c) < 0) {
			snprintf(err, errlen, "cannot migrate the schema from version %d to %d: %s", v, v + 1,
			         PQerrorMessage(c));
			pg_rollback(c);
			return -EIO;
		}
		jv_info(NULL, NULL, "database schema migrated to version %d", v + 1);
	}
	return 0;
}

int pg_migrate(PGconn *c, char *err, size_t errlen)
{
	struct pg_params p = {0};
	pg_p_i64(&p, PG_MIGRATION_LOCK);
	if (pg_cmd(c, "SELECT pg_advisory_lock($1)", &p) < 0) {
		snprintf(err, errlen, "cannot take the migration lock: %s", PQerrorMessage(c));
		return -EIO;
	}
	int rc = migrate_locked(c, err, errlen);
	if (pg_cmd(c, "SELECT pg_advisory_unlock($1)", &p) < 0 && rc == 0) {
		snprintf(err, errlen, "cannot release the migration lock: %s", PQerrorMessage(c));
		rc = -EIO;
	}
	return rc;
}
