-- restore_backup.lua — RESTORE_BACKUP: replace data/ with the contents of a
-- backup, atomically.
--
-- The archive is extracted into this run's staging directory while every
-- entry is checked against the manifest (type, size, mode, SHA-256, no
-- missing or extra entries, the archive's own digest); a corrupt backup
-- fails here and data/ is never touched. Then the server is stopped if it
-- runs (only with restart = true), and the staged tree and data/ are
-- exchanged with one renameat2(RENAME_EXCHANGE): data/ is at every instant
-- exactly the old tree or exactly the restored one. The old tree stays in
-- staging until the run completes.
--
-- The "restore" marker records the phase, whether the server was running
-- and where the previous data went, so a retry after a kill restarts a
-- server this job stopped, keeps the previous data until it completes, and
-- otherwise simply restores again (restoring is idempotent).
--
-- With `remote`, the backup is first fetched from that S3 remote into
-- backups/ (lib/remote.lua: a ranged download resumed from
-- backups/.<id>.tar.zst.part, its SHA-256 checked against the remote
-- manifest before anything is extracted); then the restore is the local one.
-- The fetched copy is removed when the restore completes, unless keepLocal.
local common = require("lib.common")
local backups = require("lib.backups")
local remotes = require("lib.remote")

return {
  type = "RESTORE_BACKUP",
  description = "Replace the instance's data/ with a verified backup.",
  cancellable = true,
  params = { backupId = "string", restart = "boolean?", remote = "string?", keepLocal = "boolean?" },

  run = function(job)
    local id = common.check_ident(job, "backupId", job.params.backupId)
    local restart = job.params.restart == true
    local rname = job.params.remote
    if job.params.keepLocal ~= nil and not rname then
      job.fail("invalid keepLocal: only meaningful with 'remote'")
    end
    local m, err, fetched
    local from = 1
    if rname then
      remotes.check(job, rname)
      job.progress(1, string.format("fetching backup '%s' from remote '%s'", id, rname))
      _, fetched = remotes.fetch(job, rname, id, 1, 40)
      from = 40
    end
    -- the local manifest (fetch wrote it), read in C: no Lua table of the files
    m, err = backups.load(id)
    if not m then job.fail(err) end

    local dst = fs.stat("data")
    if dst and dst.type ~= "dir" then
      job.fail(string.format("data/ of instance '%s' is a %s, not a directory: refusing to replace it",
        job.instance_id, dst.type))
    end

    local mark = job.marker("restore")
    local mine = common.adopts(job, mark) and mark.backupId == id
    local running = common.is_running(common.instance_state(job))
    if running and not restart then
      job.fail(string.format("instance '%s' is running: stop it first, or run the restore with "
        .. "restart = true to stop it, restore and start it again", job.instance_id))
    end
    local was_running = running or (mine and mark.wasRunning == true) or false

    -- Staging left by interrupted runs goes, except what holds data that
    -- earlier runs of this job swapped out: kept until we complete.
    local keep, held = {}, json.array()
    if mine and type(mark.previousRuns) == "table" then
      for _, r in ipairs(mark.previousRuns) do
        if type(r) == "string" and not keep[r] then
          keep[r] = true
          held[#held + 1] = r
        end
      end
    end
    common.clean_stale_staging(job, keep)

    local state = { jobId = job.id, runId = job.run_id, backupId = id, wasRunning = was_running,
                    previousRuns = held, phase = "extracting" }
    job.mark("restore", state)

    local stage = common.must(job, "cannot create a staging directory", fs.staging())
    local staged = stage .. "/data"
    job.progress(from, string.format("extracting and verifying backup '%s'", id))
    common.guard(function()
      -- The manifest bounds what may come out: exactly its files' sizes, however
      -- well the world compressed (no ratio guard for our own backups).
      local total = m.file_bytes
      local res, xerr, xcode = archive.extract(backups.archive_path(id), staged,
        { manifest = m, max_bytes = total, max_ratio = 0, progress = { from = from, to = 85 } })
      if not res and common.disk_full(xcode) then
        -- the backup is fine: the disk is full (never say "corrupt" here, an
        -- operator might delete a good backup)
        job.fail(string.format("not enough disk space to restore backup '%s': %s; data/ was not "
          .. "touched (free some space and retry)", id, tostring(xerr)), { retryable = true })
      end
      if not res then
        job.fail(string.format("backup '%s' is corrupt or unreadable: %s; data/ was not touched", id,
          tostring(xerr)))
      end
    end, function() fs.remove_tree(stage) end)
    job.checkpoint()

    if running then
      job.progress(88, "stopping the server for the restore")
      common.stop(job, 86, 90)
    end

    -- From here the previous data lives in this run's staging directory.
    state.phase = "swapping"
    held[#held + 1] = job.run_id
    job.mark("restore", state)
    job.progress(92, "swapping the restored tree into data/")
    if fs.exists("data") then
      common.must(job, "cannot swap the restored tree with data/", fs.swap(staged, "data"))
    else
      common.must(job, "cannot move the restored tree to data/", fs.commit(staged, "data"))
    end
    state.phase = "swapped"
    job.mark("restore", state)

    if restart and was_running then
      job.progress(96, "starting the server")
      local ok, serr = common.start_and_wait(job, 96, 99)
      if not ok then
        job.fail(string.format("backup '%s' was restored, but the server did not start: %s "
          .. "(the previous data is kept in .jobvisor/staging/%s/data until another job runs)",
          id, tostring(serr), job.run_id), { retryable = true })
      end
    end

    -- Done: the previous data (ours and that of an interrupted earlier run) goes.
    common.clean_stale_staging(job)
    if fetched and job.params.keepLocal ~= true then backups.remove(job, id) end
    if rname then job.unmark("remote-fetch") end
    job.unmark("restore")
    log.info(string.format("backup '%s' restored into data/ (%d files)", id, backups.file_count(m)))
    return { backupId = id, files = m.file_count, entries = m.entries }
  end,
}
