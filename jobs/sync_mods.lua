-- sync_mods.lua — SYNC_MODS: make a mods directory under data/ hold exactly the
-- listed mods (each downloaded once, verified by SHA-256 and cached by digest),
-- swapping the whole directory atomically.
--
-- The new directory is built in this run's staging directory: the listed mods
-- are downloaded into it (a cached digest is a hard link or a copy from the
-- cache, not a download), and, unless removeUnlisted is set, every entry of
-- the live directory that is not a listed mod is carried over (through a
-- temporary archive, which keeps modes, symlinks and subdirectories). Then the
-- staged directory and the live one are exchanged with one
-- renameat2(RENAME_EXCHANGE): the server sees either the old set or the new
-- one, never a mix. A mod is matched by its file name (`name`) and its
-- content (`sha256`): a listed mod whose file already has that digest is
-- unchanged; with another content it is updated.
--
-- removeUnlisted = false (default): files and directories in the mods
-- directory that are not listed stay (mods installed by hand, config
-- subdirectories). removeUnlisted = true: the directory holds exactly the
-- listed mods afterwards; everything else is reported in `removed`.
--
-- Retry: the result computed before the swap is kept in the "sync" marker; a
-- retry after a kill finds the live directory already in the wanted state and
-- reports that result, or builds and swaps again.
local common = require("lib.common")

local function check_target(job, t)
  if t == nil then return "mods" end
  if type(t) ~= "string" or t == "" or #t > 512 then
    job.fail("invalid target: must be a directory under data/, like \"mods\" or \"BepInEx/plugins\"")
  end
  for part in t:gmatch("[^/]+") do
    if not common.ident_ok(part) then
      job.fail(string.format("invalid target '%s': each part must match %s", t, common.IDENT_RULE))
    end
  end
  if t:sub(1, 1) == "/" or t:sub(-1) == "/" or t:find("//", 1, true) then
    job.fail(string.format("invalid target '%s': a relative path under data/ without empty parts", t))
  end
  return t
end

local function check_mods(job, mods)
  if type(mods) ~= "table" then job.fail("mods must be an array of {name, url, sha256}") end
  if #mods > 2000 then job.fail("mods lists more than 2000 entries") end
  local seen = {}
  local out = {}
  for i, m in ipairs(mods) do
    local what = "mods[" .. i .. "]"
    if type(m) ~= "table" then job.fail(what .. " must be an object {name, url, sha256}") end
    for k in pairs(m) do
      if k ~= "name" and k ~= "url" and k ~= "sha256" then
        job.fail(string.format("unknown field '%s' in %s (expected name, url, sha256)", tostring(k), what))
      end
    end
    local name = common.check_ident(job, what .. ".name", m.name)
    if seen[name] then job.fail(string.format("mod '%s' is listed twice", name)) end
    seen[name] = true
    out[i] = { name = name, url = common.check_url(job, what .. ".url", m.url),
               sha256 = common.check_sha256(job, what .. ".sha256", m.sha256) }
  end
  return out
end

local function sorted_array(t)
  table.sort(t)
  return json.array(t)
end

return {
  type = "SYNC_MODS",
  description = "Make the instance's mods match a list (download, verify, install, remove).",
  cancellable = true,
  params = { mods = "array", target = "string?", removeUnlisted = "boolean?" },

  run = function(job)
    local p = job.params
    local target = check_target(job, p.target)
    local mods = check_mods(job, p.mods)
    local remove_unlisted = p.removeUnlisted == true
    local live = "data/" .. target

    local dst = fs.stat("data")
    if not dst or dst.type ~= "dir" then
      job.fail(string.format("instance '%s' has no data/ directory", job.instance_id))
    end
    local st = fs.stat(live)
    if st and st.type ~= "dir" then
      job.fail(string.format("'%s' exists and is not a directory", live))
    end

    -- What is there now?
    job.step("comparing " .. live .. " with the list")
    local present = {}
    if st then
      for _, e in ipairs(common.must(job, "cannot list '" .. live .. "'", fs.list(live))) do
        present[e.name] = e
      end
    end
    local listed = {}
    local added, updated, unchanged, removed, kept = {}, {}, {}, {}, {}
    for _, m in ipairs(mods) do
      listed[m.name] = true
      local e = present[m.name]
      if not e then
        added[#added + 1] = m.name
      elseif e.type ~= "file" then
        updated[#updated + 1] = m.name
      else
        local sha = fs.sha256(live .. "/" .. m.name)
        if sha and sha:lower() == m.sha256 then
          unchanged[#unchanged + 1] = m.name
        else
          updated[#updated + 1] = m.name
        end
      end
    end
    for name in pairs(present) do
      if not listed[name] then
        if remove_unlisted then removed[#removed + 1] = name else kept[#kept + 1] = name end
      end
    end
    local result = { target = target, added = sorted_array(added), updated = sorted_array(updated),
                     removed = sorted_array(removed), unchanged = sorted_array(unchanged),
                     keptUnlisted = sorted_array(kept) }

    local mark = job.marker("sync")
    local mine = common.adopts(job, mark) and mark.target == target and type(mark.result) == "table"
    if #added + #updated + #removed == 0 and st then
      if mine then
        log.info("the mods were already swapped in by an earlier run of this job")
        result = mark.result
      else
        log.info(string.format("'%s' already holds the %d listed mods: nothing to do", live, #mods))
      end
      common.clean_stale_staging(job)
      job.unmark("sync")
      return result
    end

    common.clean_stale_staging(job)
    job.mark("sync", { jobId = job.id, runId = job.run_id, target = target, result = result })
    local stage = common.must(job, "cannot create a staging directory", fs.staging())
    local new = stage .. "/mods"
    common.guard(function()
      common.must(job, "cannot create '" .. new .. "'", fs.mkdir(new, { mode = st and st.mode or 493 }))
      if #kept > 0 then
        -- Carry the unlisted entries over: archive them (listed names left out)
        -- and unpack the archive into the new directory.
        job.progress(2, string.format("carrying over %d unlisted entries", #kept))
        local excl = {}
        for _, m in ipairs(mods) do excl[#excl + 1] = "/" .. m.name end
        local tmp = stage .. "/kept.tar.zst"
        common.must(job, "cannot carry over the unlisted entries of '" .. live .. "'",
          archive.create(live, tmp, { exclude = excl, level = 1 }))
        common.must(job, "cannot carry over the unlisted entries of '" .. live .. "'",
          -- our own archive of a live directory: no bomb guards (config files compress well)
          archive.extract(tmp, stage .. "/kept", { max_bytes = 0, max_ratio = 0 }))
        fs.remove(tmp)
        for _, e in ipairs(common.must(job, "cannot list staging", fs.list(stage .. "/kept"))) do
          common.must(job, "cannot stage '" .. e.name .. "'",
            fs.commit(stage .. "/kept/" .. e.name, new .. "/" .. e.name))
        end
      end
      for i, m in ipairs(mods) do
        job.checkpoint()
        local from = 10 + 80 * (i - 1) / #mods
        local res, derr = http.download(m.url, new .. "/" .. m.name, { sha256 = m.sha256,
          progress = { from = from, to = 10 + 80 * i / #mods } })
        if not res then
          job.fail(string.format("cannot download mod '%s': %s", m.name, tostring(derr)), { retryable = true })
        end
      end
      job.checkpoint()
    end, function() fs.remove_tree(stage) end)

    job.progress(95, "swapping the new mods into '" .. live .. "'")
    if st then
      common.must(job, "cannot swap the new mods into '" .. live .. "'", fs.swap(new, live))
    else
      common.must(job, "cannot move the new mods to '" .. live .. "'", fs.commit(new, live))
    end
    job.unmark("sync")
    log.info(string.format("mods synced: %d added, %d updated, %d removed, %d unchanged", #added,
      #updated, #removed, #unchanged))
    return result
  end,
}
