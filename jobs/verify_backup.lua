-- verify_backup.lua — VERIFY_BACKUP: check a backup's archive against its
-- manifest: the archive's own SHA-256 and size, then every entry's type,
-- size, mode and SHA-256, with missing and extra entries. Read-only, so a
-- retry after a kill simply verifies again.
--
-- With `remote`, the backup on that S3 remote is checked the same way while
-- it streams from the store (remote.verify): nothing is written to disk.
local common = require("lib.common")
local backups = require("lib.backups")
local remotes = require("lib.remote")

return {
  type = "VERIFY_BACKUP",
  description = "Check a backup's archive against its manifest (digests, sizes, modes, missing and extra entries).",
  cancellable = true,
  params = { backupId = "string", remote = "string?" },

  run = function(job)
    local id = common.check_ident(job, "backupId", job.params.backupId)
    local rname = job.params.remote
    if rname then
      remotes.check(job, rname)
      local m, err, cls = remotes.load_manifest(job, rname, id)
      if not m then remotes.fail(job, err, cls) end
      job.progress(1, string.format("verifying backup '%s' on remote '%s' (%d entries, %d bytes)", id,
        rname, #m.files, m.bytes))
      local ok, verr, vcls = remote.verify(rname, remotes.archive_obj(job, id), m,
        { progress = { from = 1, to = 99 } })
      if not ok and vcls == "corrupt" then
        job.fail(string.format("backup '%s' on remote '%s' is corrupt: %s", id, rname, tostring(verr)))
      end
      if not ok then remotes.fail(job, verr, vcls) end
      log.info(string.format("backup '%s' on remote '%s' verified: %d files, %d bytes", id, rname,
        backups.file_count(m), m.bytes))
      return { backupId = id, remote = rname, files = backups.file_count(m), entries = #m.files,
               bytes = m.bytes }
    end
    local m, err = backups.load(id)
    if not m then job.fail(err) end
    job.progress(1, string.format("verifying backup '%s' (%d entries, %d bytes)", id, m.entries, m.bytes))
    local ok, verr = archive.verify(backups.archive_path(id), m, { progress = { from = 1, to = 99 } })
    if not ok then
      job.fail(string.format("backup '%s' is corrupt: %s", id, tostring(verr)))
    end
    common.clean_stale_staging(job)
    log.info(string.format("backup '%s' verified: %d files, %d bytes", id, m.file_count, m.bytes))
    return { backupId = id, files = m.file_count, entries = m.entries, bytes = m.bytes }
  end,
}
