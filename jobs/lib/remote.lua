-- lib/remote.lua — backups on an S3 remote (the `remote` module, lua/api_remote.c).
--
-- A remote backup is two objects under the remote's prefix:
-- <instanceId>/<backupId>.tar.zst and <instanceId>/<backupId>.json. The
-- manifest object is written last, so a backup without its manifest is never
-- complete for any job. Prune deletes the two together, never the manifest
-- first: the archive goes, then the manifest (a kill in between leaves a
-- manifest whose archive is missing, which every job reports as damaged and
-- the next prune removes).
--
-- Upload resume: the "remote-upload" marker holds the multipart upload id and
-- every acknowledged part (number, size, ETag), written durably after the
-- store acknowledged the part. A retry continues from the first missing
-- part; only a part whose acknowledgement arrived in the instant before a
-- kill (before the marker was written) is sent again. An upload id the store
-- no longer knows is given up and a new one started; one this job replaces
-- is aborted.
local common = require("lib.common")
local backups = require("lib.backups")

local M = {}

local PARTS_MAX = 10000

-- The remote param: a configured remote's name. Fails the run otherwise.
function M.check(job, name)
  if type(name) ~= "string" or #name > 32 or not name:match("^[a-z][a-z0-9_]*$") then
    job.fail("invalid remote: must be the name of a remote configured on the agent "
      .. "(remote.NAME.* settings; 1-32 of a-z 0-9 _ starting with a letter)")
  end
  local info, err = remote.info(name)
  if not info then job.fail(err) end
  return info
end

function M.archive_obj(job, id) return job.instance_id .. "/" .. id .. ".tar.zst" end
function M.manifest_obj(job, id) return job.instance_id .. "/" .. id .. ".json" end

-- A failed remote call: transient failures (after the retries inside the
-- call) are retryable, the rest (403, NoSuchBucket, bad credentials) not.
function M.fail(job, err, cls)
  job.fail(tostring(err), { retryable = cls == "transient" })
end

function M.must(job, v, err, cls)
  if v == nil then M.fail(job, err, cls) end
  return v
end

-- The complete manifest of remote backup id, nil + message + class when
-- there is none ("not_found") or it is unusable ("permanent").
function M.load_manifest(job, name, id)
  local text, err, cls = remote.get(name, M.manifest_obj(job, id), { max_bytes = backups.MANIFEST_MAX })
  if not text then
    if cls == "not_found" then
      return nil, string.format("backup '%s' does not exist on remote '%s'", id, name), cls
    end
    return nil, err, cls
  end
  local m = json.decode(text)
  if type(m) ~= "table" or m.complete ~= true or type(m.files) ~= "table"
      or not common.sha256_ok(m.sha256) or math.type(m.bytes) ~= "integer" then
    return nil, string.format("backup '%s' on remote '%s' has a malformed manifest", id, name), "permanent"
  end
  return m
end

-- Without an upload id in the marker state st: a new upload, recorded
-- before any part is sent.
local function new_upload(job, st, name, obj)
  if st.uploadId then return end
  st.uploadId = M.must(job, remote.mpu_create(name, obj))
  st.parts = json.array()
  st.completed = nil
  job.mark("remote-upload", st)
end

local function part_size_for(info, size)
  local ps = info.part_size
  while size > ps * PARTS_MAX do ps = ps * 2 end
  return ps
end

-- Upload the local backup id (archive backups/<id>.tar.zst, manifest doc) to
-- remote name, resuming the marker's multipart upload. Progress from..to.
function M.upload(job, name, info, id, doc, from, to)
  local obj = M.archive_obj(job, id)
  local path = backups.archive_path(id)
  local size = doc.bytes
  local ps = part_size_for(info, size)
  local nparts = math.max(1, (size + ps - 1) // ps)

  local mark = job.marker("remote-upload")
  local st
  if common.adopts(job, mark) and mark.backupId == id and mark.remote == name
      and mark.sha256 == doc.sha256 and (mark.partSize == ps or mark.completed)
      and type(mark.parts) == "table" then
    st = mark
    st.runId = job.run_id
    log.info(string.format("resuming the upload of '%s' to remote '%s': %d of %d parts acknowledged",
      obj, name, #st.parts, nparts))
  else
    M.abort_marked(job, mark)
    st = { jobId = job.id, runId = job.run_id, backupId = id, remote = name, object = obj,
           sha256 = doc.sha256, size = size, partSize = ps, parts = json.array() }
  end

  log.info(string.format("uploading '%s' (%d bytes, %d parts of %d bytes) to remote '%s'", obj, size,
    nparts, ps, name))
  for _ = 1, 3 do
    new_upload(job, st, name, obj)
    local acked, done = {}, 0
    for _, p in ipairs(st.parts) do
      acked[p.n] = p
      done = done + p.size
    end
    local todo = {}
    if not st.completed then
      for n = 1, nparts do
        if not acked[n] then
          local off = (n - 1) * ps
          todo[#todo + 1] = { n = n, offset = off, length = math.min(ps, size - off) }
        end
      end
    end
    local lost = false
    job.checkpoint()
    -- `parallel` parts in flight; each acknowledgement is recorded durably
    -- (the marker) before the next one is looked at
    local ok, err, cls = remote.mpu_upload(name, obj, st.uploadId, path, todo, function(n, etag, len)
      st.parts[#st.parts + 1] = { n = n, size = len, etag = etag }
      job.mark("remote-upload", st)
      done = done + len
      job.progress(from + (to - from) * done / math.max(size, 1),
        string.format("uploaded %d of %d parts to remote '%s'", #st.parts, nparts, name))
    end)
    if not ok and cls == "not_found" then
      log.warn(string.format("remote '%s' no longer knows upload %s of '%s': starting a new one",
        name, st.uploadId, obj))
      st.uploadId = nil
      lost = true
    elseif not ok then
      M.fail(job, err, cls)
    end
    if not lost then break end
  end
  if not st.uploadId then job.fail("the store kept losing the multipart upload of '" .. obj .. "'",
    { retryable = true }) end

  M.complete(job, st, nparts, doc)
  M.put_manifest(job, name, id, doc)
  return { archive = obj, manifest = M.manifest_obj(job, id), parts = nparts }
end

-- An earlier job's upload this job replaces: give its storage back.
function M.abort_marked(job, mark)
  if common.adopts(job, mark) and type(mark.uploadId) == "string" and type(mark.object) == "string"
      and type(mark.remote) == "string" then
    local ok, aerr = remote.mpu_abort(mark.remote, mark.object, mark.uploadId)
    if not ok then log.warn("cannot abort an earlier multipart upload: " .. tostring(aerr)) end
  end
end

-- Complete the marked upload st of parts 1..nparts (doc: the archive's
-- sha256 and bytes); the marker says so afterwards.
function M.complete(job, st, nparts, doc)
  if st.completed then return end
  local name, obj = st.remote, st.object
  local parts = {}
  for _, p in ipairs(st.parts) do
    if p.n <= nparts then parts[#parts + 1] = { n = p.n, etag = p.etag } end
  end
  table.sort(parts, function(a, b) return a.n < b.n end)
  local ok, err, cls = remote.mpu_complete(name, obj, st.uploadId, parts)
  if not ok then
    -- Killed after the store completed the upload but before the marker
    -- said so: the object is there; accept it only if it is our archive.
    local h = remote.head(name, obj)
    local sum = h and h.size == doc.bytes and remote.sha256(name, obj)
    if sum ~= doc.sha256 then M.fail(job, err, cls) end
    log.info(string.format("'%s' was completed by an earlier run (its SHA-256 matches)", obj))
  end
  st.completed = true
  st.sha256 = doc.sha256
  st.size = doc.bytes
  job.mark("remote-upload", st)
end

-- The manifest object (a table, its JSON text, or a handle from backups.load,
-- whose file is sent), last: from now on the backup exists on the remote.
function M.put_manifest(job, name, id, doc)
  local text = doc
  if type(doc) == "userdata" then
    text = common.must(job, "cannot read the manifest",
      fs.read(backups.manifest_path(id), { max_bytes = backups.MANIFEST_MAX }))
  elseif type(doc) ~= "string" then
    text = json.encode(doc) .. "\n"
  end
  M.must(job, remote.put(name, M.manifest_obj(job, id), text))
  job.unmark("remote-upload")
end

local function stream_state(job, name, info, id, obj)
  local mark = job.marker("remote-upload")
  if common.adopts(job, mark) and mark.stream == true and mark.backupId == id and mark.remote == name
      and type(mark.uploadId) == "string" and math.type(mark.partSize) == "integer"
      and type(mark.parts) == "table" then
    mark.runId = job.run_id
    log.info(string.format("resuming the upload of '%s' to remote '%s': %d parts acknowledged; the "
      .. "archive is made again and the parts that match are not sent", obj, name, #mark.parts))
    return mark
  end
  M.abort_marked(job, mark)
  return { jobId = job.id, runId = job.run_id, backupId = id, remote = name, object = obj,
           stream = true, partSize = info.part_size, parts = json.array() }
end

-- Archive data/ straight into a multipart upload to remote name: each part
-- is sent while the next ones are compressed, and recorded in the
-- "remote-upload" marker once the store acknowledged it. dst: a local copy
-- too (keepLocal), or nil. opts: archive.create's. A retry makes the archive
-- again (the same tree gives the same bytes) and sends only the parts the
-- marker does not hold; when the tree changed meanwhile, a part differs: the
-- old upload is aborted and a new one started. Returns the manifest, the
-- stats and the marker state (for M.complete).
function M.stream(job, name, info, id, dst, opts)
  local obj = M.archive_obj(job, id)
  local st = stream_state(job, name, info, id, obj)
  for _ = 1, 3 do
    new_upload(job, st, name, obj)
    local known = {}
    for _, p in ipairs(st.parts) do known[p.n] = true end
    opts.upload = { remote = name, object = obj, uploadId = st.uploadId, partSize = st.partSize,
      parts = st.parts, onPart = function(n, etag, size, md5, sent)
        if not known[n] then
          known[n] = true
          st.parts[#st.parts + 1] = { n = n, size = size, etag = etag, md5 = md5 }
          job.mark("remote-upload", st)
        end
        log.info(string.format("part %d (%d bytes) %s remote '%s'", n, size,
          sent and "acknowledged by" or "already on", name))
      end }
    local m, stats, cls = archive.create("data", dst, opts)
    if m then
      log.info(string.format("archive streamed to remote '%s': %d parts, %d sent by this run",
        name, stats.parts, stats.partsSent))
      return m, stats, st
    end
    if cls ~= "changed" and cls ~= "not_found" then
      if cls then M.fail(job, stats, cls) end
      job.fail("cannot back up data/: " .. tostring(stats), { retryable = true })
    end
    log.warn(string.format("%s: starting a new upload of '%s'", tostring(stats), obj))
    if cls == "changed" then M.abort_marked(job, st) end
    st.uploadId = nil
  end
  job.fail("the store kept losing the multipart upload of '" .. obj .. "'", { retryable = true })
end

-- Make remote backup id available as a local backup (backups/<id>.*) for a
-- restore: download the archive resumably into backups/.<id>.tar.zst.part,
-- check its SHA-256 and size against the remote manifest, then commit it and
-- write the manifest. Returns the manifest and whether a local copy was
-- created (false: an identical local backup was already there).
function M.fetch(job, name, id, from, to)
  local m, err, cls = M.load_manifest(job, name, id)
  if not m then M.fail(job, err, cls) end
  -- the "remote-fetch" marker says this job put the local copy there (a retry
  -- after a kill that came once the copy was committed removes it in the end)
  local mark = job.marker("remote-fetch")
  local ours = common.adopts(job, mark) and mark.backupId == id
  local lm = backups.load(id)
  if lm and lm.sha256 == m.sha256 then
    if not ours then
      log.info(string.format("backup '%s' is also on this host with the same SHA-256: not downloading", id))
    end
    return lm, ours
  end
  if lm then
    job.fail(string.format("a different local backup '%s' exists (its SHA-256 differs from the one on "
      .. "remote '%s'): remove it or restore it without 'remote'", id, name))
  end
  job.mark("remote-fetch", { jobId = job.id, runId = job.run_id, backupId = id, remote = name })
  fs.mkdir(backups.DIR)
  common.clean_temp_files(job, backups.DIR)
  if ours and fs.exists(backups.archive_path(id)) then
    -- killed between committing the archive and writing its manifest
    local sum = fs.sha256(backups.archive_path(id))
    if sum == m.sha256 then
      common.must(job, "cannot write the manifest", fs.write(backups.manifest_path(id), json.encode(m) .. "\n"))
      return m, true
    end
    common.must(job, "cannot remove a stale archive", fs.remove(backups.archive_path(id)))
  end
  local part = backups.DIR .. "/." .. id .. ".tar.zst.part"
  local st = fs.stat(part)
  if st and st.size > m.bytes then
    common.must(job, "cannot remove a stale partial download", fs.remove(part))
    st = nil
  end
  if st and st.size > 0 then
    log.info(string.format("resuming the download of backup '%s' at byte %d of %d", id, st.size, m.bytes))
  end
  if not st or st.size < m.bytes then
    local got, derr, dcls = remote.download(name, M.archive_obj(job, id), part,
      { progress = { from = from, to = from + (to - from) * 0.8 } })
    if not got then M.fail(job, derr, dcls) end
  end
  job.progress(from + (to - from) * 0.85, "checking the downloaded archive")
  local sum, size = common.must(job, "cannot hash the downloaded archive", fs.sha256(part))
  if sum ~= m.sha256 or size ~= m.bytes then
    fs.remove(part)
    job.fail(string.format("backup '%s' on remote '%s' is corrupt: its archive has SHA-256 %s and %d "
      .. "bytes, the manifest says %s and %d; nothing was restored", id, name, sum, size, m.sha256, m.bytes))
  end
  common.must(job, "cannot move the downloaded archive into backups/", fs.commit(part, backups.archive_path(id)))
  common.must(job, "cannot write the manifest", fs.write(backups.manifest_path(id), json.encode(m) .. "\n"))
  return m, true
end

-- The backups of this instance on remote name, like backups.scan():
-- complete (id -> {id, manifest = {createdAt}, mtime}) and leftovers (array
-- of {name, id, mtime, why}: an archive without manifest, a manifest without
-- archive). The listing is paginated by the store; every page is read.
function M.scan(job, name)
  local retention = require("lib.retention")
  local objs = M.must(job, remote.list(name, job.instance_id .. "/"))
  local archives, manifests = {}, {}
  local base = #job.instance_id + 2
  for _, o in ipairs(objs) do
    local rest = o.name:sub(base)
    local t = retention.parse_time(o.lastModified) or 0
    local id = rest:match("^(.+)%.tar%.zst$")
    if id and common.ident_ok(id) then archives[id] = t end
    id = rest:match("^(.+)%.json$")
    if id and common.ident_ok(id) then manifests[id] = t end
  end
  local complete, leftovers = {}, {}
  for id, t in pairs(manifests) do
    if archives[id] then
      local m, err = M.load_manifest(job, name, id)
      if m then
        complete[id] = { id = id, manifest = { createdAt = m.createdAt }, mtime = t }
      else
        log.warn(string.format("backup '%s' on remote '%s': %s: left alone", id, name, tostring(err)))
      end
    else
      leftovers[#leftovers + 1] = { name = id .. ".json", id = id, mtime = t, why = "manifest without archive" }
    end
  end
  for id, t in pairs(archives) do
    if not manifests[id] then
      leftovers[#leftovers + 1] = { name = id .. ".tar.zst", id = id, mtime = t, why = "archive without manifest" }
    end
  end
  return complete, leftovers
end

-- Delete backup id on remote name: the archive, then the manifest (never
-- the manifest first).
function M.remove(job, name, id)
  M.must(job, remote.delete(name, M.archive_obj(job, id)))
  M.must(job, remote.delete(name, M.manifest_obj(job, id)))
end

return M
