-- backup_instance.lua — BACKUP_INSTANCE: archive data/ into backups/<id>.tar.zst
-- with a per-file SHA-256 manifest <id>.json, written last.
--
-- Crash safety: the archive is built in this run's staging directory (its
-- temp file, fsync and rename are done by archive.create), committed into
-- backups/ (fsync, rename, fsync directory), and only then is the manifest
-- written atomically with complete = true. A kill at any instant leaves
-- either no backup, or an archive without manifest (a leftover no other job
-- treats as a backup), or the complete backup. The "backup" marker records
-- the id this job chose, so a retry reuses it: it returns the finished
-- backup if the manifest is there, and otherwise removes the leftover and
-- starts again.
--
-- With `remote`, the archive is streamed to that S3 remote while it is being
-- made: a multipart upload whose parts are sent as they are compressed, each
-- recorded in the "remote-upload" marker once acknowledged (lib/remote.lua).
-- No local copy is written unless keepLocal = true; the upload is completed,
-- then (keepLocal) the local backup committed, and the manifest object is
-- written last. A retry makes the archive again and sends only the parts the
-- marker lacks; a retry after the manifest object exists finishes at once.
local common = require("lib.common")
local backups = require("lib.backups")
local remotes = require("lib.remote")

local function choose_id(job)
  local base = os.date("!%Y%m%dT%H%M%SZ")
  local id = base
  local n = 1
  while fs.exists(backups.manifest_path(id)) or fs.exists(backups.archive_path(id)) do
    n = n + 1
    id = base .. "-" .. n
  end
  return id
end

-- m: a manifest (a handle from backups.load, or a remote's table), or the
-- summary archive.create returns (files counted there).
local function result_of(id, m, up)
  local files, entries
  if type(m) ~= "userdata" and math.type(m.files) == "integer" then
    files, entries = m.files, m.entries
  else
    files, entries = backups.file_count(m), backups.entries(m)
  end
  local out = { backupId = id, bytes = m.bytes, files = files, entries = entries,
           sha256 = m.sha256 }
  if up then
    out.remote = up.remote
    out.object = up.archive
    out.keepLocal = up.keepLocal
  end
  return out
end

-- Upload backup id to the remote (when asked), then drop the local copy
-- unless keepLocal; returns the job's result.
local function finish_remote(job, p, info, id, doc)
  if not p.remote then return result_of(id, doc) end
  local up = remotes.upload(job, p.remote, info, id, doc, 66, 99)
  up.remote = p.remote
  up.keepLocal = p.keepLocal == true
  if not up.keepLocal then backups.remove(job, id) end
  return result_of(id, doc, up)
end

-- The end of a streamed upload (st: its marker state, nparts: its parts):
-- complete it, commit the local copy (keepLocal), the manifest object last.
local function finish_stream(job, p, id, m, st, nparts, tmp_archive, tmp_manifest)
  job.progress(92, "completing the upload to remote '" .. p.remote .. "'")
  remotes.complete(job, st, nparts, m)
  local text = common.must(job, "cannot read the manifest",
    fs.read(tmp_manifest, { max_bytes = backups.MANIFEST_MAX }))
  if p.keepLocal then
    job.progress(94, "committing the archive")
    common.must(job, "cannot move the archive into backups/",
      fs.commit(tmp_archive, backups.archive_path(id)))
    common.must(job, "cannot move the manifest into backups/",
      fs.commit(tmp_manifest, backups.manifest_path(id)))
  end
  job.progress(98, "writing the manifest to remote '" .. p.remote .. "'")
  remotes.put_manifest(job, p.remote, id, text)
  return result_of(id, m, { remote = p.remote, archive = remotes.archive_obj(job, id),
                            keepLocal = p.keepLocal == true })
end

-- The `before` lines must arrive (or the backup may not be consistent); an
-- `after` line that cannot be sent (the server stopped meanwhile) is only
-- worth a warning: the backup itself is fine.
local function send_lines(job, lines, when, must)
  for _, line in ipairs(lines) do
    log.info(string.format("quiesce %s: sending '%s'", when, line))
    local ok, err = instance.send(line)
    if not ok then
      if must then job.fail("cannot send '" .. line .. "' to the server: " .. tostring(err), { retryable = true }) end
      log.warn(string.format("cannot send '%s' to the server: %s", line, tostring(err)))
    end
  end
end

return {
  type = "BACKUP_INSTANCE",
  description = "Archive the instance's data/ into backups/ with a per-file SHA-256 manifest.",
  cancellable = true,
  params = { backupId = "string?", exclude = "array?", quiesce = "object?", remote = "string?",
             keepLocal = "boolean?" },

  run = function(job)
    local p = job.params
    if p.backupId ~= nil then common.check_ident(job, "backupId", p.backupId) end
    if p.keepLocal ~= nil and not p.remote then
      job.fail("invalid keepLocal: only meaningful with 'remote' (a local backup is always kept)")
    end
    local info = p.remote and remotes.check(job, p.remote)
    local exclude = common.check_string_array(job, "exclude", p.exclude, 256)
    for i, pat in ipairs(exclude) do
      if pat == "" or #pat > 4096 or pat:find("%c") then
        job.fail(string.format("invalid exclude[%d]: patterns must be 1-4096 printable characters", i))
      end
    end
    local q = p.quiesce or {}
    local QKEYS = { before = true, after = true, waitLog = true, timeoutSeconds = true }
    for k in pairs(q) do
      if not QKEYS[k] then
        job.fail("invalid quiesce: only 'before' and 'after' (arrays of console lines), 'waitLog' "
          .. "and 'timeoutSeconds' are allowed, got '" .. tostring(k) .. "'")
      end
    end
    if q.waitLog ~= nil and (type(q.waitLog) ~= "string" or q.waitLog == "") then
      job.fail("invalid quiesce.waitLog: must be a regular expression (e.g. \"Saved the game\")")
    end
    local wait_timeout = q.timeoutSeconds or 60
    if type(wait_timeout) ~= "number" or wait_timeout <= 0 or wait_timeout > 3600 then
      job.fail("invalid quiesce.timeoutSeconds: must be a number of seconds within (0, 3600]")
    end
    local before = common.check_string_array(job, "quiesce.before", q.before, 32)
    local after = common.check_string_array(job, "quiesce.after", q.after, 32)
    for i, l in ipairs(before) do common.check_line(job, "quiesce.before[" .. i .. "]", l) end
    for i, l in ipairs(after) do common.check_line(job, "quiesce.after[" .. i .. "]", l) end

    local st = fs.stat("data")
    if st and st.type == "symlink" then
      job.fail(string.format("data/ of instance '%s' is a symlink (to '%s'): jobvisor backs up a real "
        .. "data/ directory only", job.instance_id, tostring(st.target)))
    end
    if not st or st.type ~= "dir" then
      job.fail(string.format("instance '%s' has no data/ directory to back up", job.instance_id))
    end

    -- Which backup is this job making? A retry of the same job reuses the id.
    local mark = job.marker("backup")
    local mine = common.adopts(job, mark) and common.ident_ok(mark.backupId)
    local id = p.backupId or (mine and mark.backupId) or choose_id(job)
    if mine and p.backupId and mark.backupId ~= p.backupId then mine = false end

    if p.remote and mine then
      -- the upload finished (and the local copy may be gone): done at once
      local rm = remotes.load_manifest(job, p.remote, id)
      if rm and rm.jobId == mark.jobId then
        log.info(string.format("backup '%s' was completed on remote '%s' by an earlier run", id, p.remote))
        if p.keepLocal ~= true and fs.exists(backups.manifest_path(id)) then backups.remove(job, id) end
        common.clean_stale_staging(job)
        job.unmark("remote-upload") -- killed between the manifest object and this unmark
        job.unmark("backup")
        return result_of(id, rm, { remote = p.remote, archive = remotes.archive_obj(job, id),
                                   keepLocal = p.keepLocal == true })
      end
    end

    if fs.exists(backups.manifest_path(id)) then
      local m, err = backups.load(id)
      if m and (mine or m.jobId == job.id) then
        log.info(string.format("backup '%s' was completed by an earlier run of this job", id))
        common.clean_stale_staging(job)
        local out = finish_remote(job, p, info, id, m)
        job.unmark("backup")
        return out
      end
      job.fail(string.format("backup '%s' already exists%s", id, m and "" or (" (" .. err .. ")")))
    end
    if fs.exists(backups.archive_path(id)) then
      log.warn(string.format("removing '%s': an archive without manifest left by an interrupted backup",
        backups.archive_path(id)))
      common.must(job, "cannot remove leftover archive", fs.remove(backups.archive_path(id)))
    end
    job.mark("backup", { jobId = job.id, runId = job.run_id, backupId = id })
    common.clean_stale_staging(job)
    common.clean_temp_files(job, backups.DIR)
    job.progress(2, "backing up to '" .. id .. "'")

    local running = #before + #after > 0 and common.is_running(common.instance_state(job))
    if #before + #after > 0 and not running then
      log.info("the server is not running: no quiesce lines sent")
    end
    local quiesced = false
    local manifest, upload, upload_parts
    local stage = common.must(job, "cannot create a staging directory", fs.staging())
    local tmp_archive = stage .. "/" .. id .. ".tar.zst"
    local tmp_manifest = stage .. "/" .. id .. ".json"
    local fields = { backupId = id, instanceId = job.instance_id, createdAt = common.now_iso(),
                     build = common.current_build() or json.null, exclude = json.array(exclude),
                     jobId = job.id, complete = true }

    common.guard(function()
      if running and #before > 0 then
        quiesced = true
        send_lines(job, before, "before", true)
        if q.waitLog then
          job.step("waiting for the server to confirm: " .. q.waitLog)
          local line, werr = instance.wait_log(q.waitLog, wait_timeout)
          if not line then
            job.fail("the server did not confirm the quiesce (" .. q.waitLog .. "): " .. tostring(werr),
              { retryable = true })
          end
        end
      end
      job.checkpoint()
      job.step("archiving data/")
      -- Files unchanged since the newest backup (same size, inode, mtime and
      -- ctime) keep their digest instead of being hashed again. The manifest
      -- file is written by archive.create itself, beside the archive.
      local prev, prev_id = backups.latest_path()
      local opts = { exclude = exclude, progress = { from = 5, to = 90 }, reuse = prev,
                     manifest = tmp_manifest, manifest_fields = fields }
      local m, err
      if p.remote then -- streamed: the parts go out while the archive is made
        m, err, upload = remotes.stream(job, p.remote, info, id, p.keepLocal and tmp_archive or nil,
          opts)
      else
        m, err = archive.create("data", tmp_archive, opts)
      end
      if not m then job.fail("cannot back up data/: " .. tostring(err), { retryable = true }) end
      manifest = m
      local stats = err
      upload_parts = stats.parts
      if stats.reuse_error then
        log.warn(string.format("file digests not reused from backup '%s' (every file is hashed): %s",
          prev_id, stats.reuse_error))
      elseif prev and stats.reused > 0 then
        log.info(string.format("%d of %d file digests reused from backup '%s' (files unchanged)",
          stats.reused, stats.files, prev_id))
      end
      manifest.files = stats.files
      if #stats.skipped > 0 then
        log.warn(string.format("%d entries were not archived (sockets, FIFOs, devices or symlinks "
          .. "leading outside data/), e.g. '%s'", #stats.skipped, stats.skipped[1]))
      end
      job.checkpoint()
    end, function()
      if quiesced and #after > 0 then send_lines(job, after, "after (on failure)") end
      fs.remove_tree(stage)
    end)
    if quiesced and #after > 0 then
      send_lines(job, after, "after")
    end

    local out
    if upload then
      out = finish_stream(job, p, id, manifest, upload, upload_parts, tmp_archive, tmp_manifest)
    else
      job.progress(92, "committing the archive")
      common.must(job, "cannot move the archive into backups/",
        fs.commit(tmp_archive, backups.archive_path(id)))
      -- The manifest last: from now on the backup exists for every job.
      job.progress(96, "committing the manifest")
      common.must(job, "cannot move the manifest into backups/",
        fs.commit(tmp_manifest, backups.manifest_path(id)))
      out = result_of(id, manifest)
    end
    job.unmark("backup")
    log.info(string.format("backup '%s' complete: %d files, %d bytes, sha256 %s%s", id, out.files,
      out.bytes, out.sha256, p.remote and (", on remote '" .. p.remote .. "'") or ""))
    return out
  end,
}
