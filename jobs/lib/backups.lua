-- lib/backups.lua — the backups/ directory of an instance.
--
-- A backup is <id>.tar.zst plus its manifest <id>.json. The manifest is
-- written last, atomically, with "complete": true; a backup exists for every
-- job only when that manifest exists. Anything else in backups/ (an archive
-- without a manifest, a manifest not marked complete, temp files) is the
-- leftover of an interrupted backup.
local common = require("lib.common")

local M = {}

M.DIR = "backups"

-- A manifest lists every file of data/ (about 150 bytes each): allow big worlds.
M.MANIFEST_MAX = 256 * 1024 * 1024

function M.archive_path(id) return M.DIR .. "/" .. id .. ".tar.zst" end
function M.manifest_path(id) return M.DIR .. "/" .. id .. ".json" end

-- The complete manifest of backup id, or nil and a message for the user: a
-- handle from archive.manifest (read in C entry by entry: a big world's file
-- list never becomes a Lua table). Its fields are the top-level members
-- (sha256, bytes, jobId, complete, ...) and entries, file_count, file_bytes;
-- archive.extract/verify and remote.verify take it as the manifest.
function M.load(id)
  local path = M.manifest_path(id)
  if not fs.exists(path) then
    if fs.exists(M.archive_path(id)) then
      return nil, string.format("backup '%s' is incomplete: its archive has no manifest "
        .. "(an interrupted backup)", id)
    end
    return nil, string.format("backup '%s' does not exist", id)
  end
  local m, err = archive.manifest(path)
  if not m then
    if err:find("not marked complete", 1, true) then
      return nil, string.format("backup '%s' is incomplete: its manifest is not marked complete", id)
    end
    return nil, string.format("backup '%s' has an unreadable manifest: %s", id, err)
  end
  if m.complete ~= true then
    return nil, string.format("backup '%s' is incomplete: its manifest is not marked complete", id)
  end
  if not common.sha256_ok(m.sha256) or math.type(m.bytes) ~= "integer" then
    return nil, string.format("backup '%s' has a malformed manifest (sha256 or bytes missing)", id)
  end
  if not fs.exists(M.archive_path(id)) then
    return nil, string.format("backup '%s' is damaged: its archive '%s' is missing", id, M.archive_path(id))
  end
  return m
end

-- The manifest path of the newest backup (by manifest mtime) whose archive is
-- there, and its id, or nil: archive.create reads it (in C, no Lua table) to
-- reuse the per-file digests of files that did not change, and ignores it
-- with a reason (info.reuse_error) when it is not a usable manifest.
function M.latest_path()
  local entries = fs.list(M.DIR)
  if not entries then return nil end
  local names, cands = {}, {}
  for _, e in ipairs(entries) do names[e.name] = e end
  for _, e in ipairs(entries) do
    local id = e.name:match("^(.+)%.json$")
    if id and common.ident_ok(id) and e.type == "file" and names[id .. ".tar.zst"] then
      cands[#cands + 1] = { id = id, mtime = e.mtime or 0 }
    end
  end
  table.sort(cands, function(a, b) return a.mtime > b.mtime end)
  if #cands == 0 then return nil end
  return M.manifest_path(cands[1].id), cands[1].id
end

-- Regular files and all entries of a manifest: a table (files list) or a
-- handle from M.load.
function M.file_count(m)
  if type(m) == "userdata" then return m.file_count end
  local n = 0
  for _, f in ipairs(m.files) do
    if f.type == "file" then n = n + 1 end
  end
  return n
end

function M.entries(m)
  if type(m) == "userdata" then return m.entries end
  return #m.files
end

-- Everything in backups/: complete backups (id -> {id, manifest, mtime}) and
-- leftovers (array of {name, mtime, why}). Unreadable manifests are reported
-- in `unreadable` and never treated as leftovers (they may be a real backup
-- this version cannot read).
function M.scan()
  local complete, leftovers, unreadable = {}, {}, {}
  local entries = fs.list(M.DIR)
  if not entries then return complete, leftovers, unreadable end
  local names = {}
  for _, e in ipairs(entries) do names[e.name] = e end
  for _, e in ipairs(entries) do
    local name = e.name
    local id = name:match("^(.+)%.json$")
    if id and common.ident_ok(id) then
      local m, err = common.read_json(M.DIR .. "/" .. name, M.MANIFEST_MAX)
      if m and type(m) == "table" and m.complete == true then
        -- keep only what retention needs; the file list can be large
        complete[id] = { id = id, manifest = { createdAt = m.createdAt }, mtime = e.mtime or 0 }
      elseif m and type(m) == "table" then
        leftovers[#leftovers + 1] = { name = name, mtime = e.mtime or 0, why = "manifest not complete" }
      else
        unreadable[#unreadable + 1] = { name = name, why = err }
      end
    end
  end
  for _, e in ipairs(entries) do
    local name = e.name
    local id = name:match("^(.+)%.tar%.zst$")
    if id and common.ident_ok(id) and not complete[id] then
      local mf = names[id .. ".json"]
      local counted = false
      for _, u in ipairs(unreadable) do if u.name == id .. ".json" then counted = true end end
      if not counted then
        leftovers[#leftovers + 1] = { name = name, mtime = e.mtime or 0,
          why = mf and "manifest not complete" or "archive without manifest" }
      end
    elseif name:match("^%..+%.tmp%.%d+$") or name:match("^%..+%.part$") then
      leftovers[#leftovers + 1] = { name = name, mtime = e.mtime or 0, why = "temp file" }
    end
  end
  return complete, leftovers, unreadable
end

-- Remove a backup: manifest first (from then on it no longer exists for any
-- job), then the archive.
function M.remove(job, id)
  common.must(job, "cannot remove '" .. M.manifest_path(id) .. "'", fs.remove(M.manifest_path(id)))
  common.must(job, "cannot remove '" .. M.archive_path(id) .. "'", fs.remove(M.archive_path(id)))
end

return M
