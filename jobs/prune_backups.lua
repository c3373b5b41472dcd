-- prune_backups.lua — PRUNE_BACKUPS: apply a restic-style retention policy to
-- the complete backups of an instance (lib/retention.lua has the semantics)
-- and remove the incomplete leftovers of interrupted backups.
--
-- A backup is removed manifest first: from that instant it no longer exists
-- for any job, and the archive left behind is an ordinary leftover. Before
-- removing anything the plan is written to the "prune" marker; a retry of
-- the same job after a kill carries out that plan instead of recomputing it,
-- so it reports the same kept/removed lists and removes nothing else. The
-- newest complete backup is never removed; with dryRun nothing is removed.
--
-- With `remote`, the same rules apply to the instance's backups on that S3
-- remote (lib/remote.lua scans the paginated listing); a backup there is
-- deleted archive first, then manifest; the plan lives in the
-- "prune-remote" marker.
local common = require("lib.common")
local backups = require("lib.backups")
local retention = require("lib.retention")
local remotes = require("lib.remote")

local function ids_of(items)
  local out = json.array()
  for _, it in ipairs(items) do out[#out + 1] = it.id end
  return out
end

return {
  type = "PRUNE_BACKUPS",
  description = "Apply a retention policy to the backups and remove leftovers of interrupted ones.",
  cancellable = true,
  params = {
    keepLast = "integer?", keepHourly = "integer?", keepDaily = "integer?", keepWeekly = "integer?",
    keepMonthly = "integer?", keepYearly = "integer?", keepWithin = "string?", dryRun = "boolean?",
    remote = "string?",
  },

  run = function(job)
    local p = job.params
    local policy, perr = retention.validate(p)
    if not policy then job.fail(perr) end
    local dry = p.dryRun == true
    local rname = p.remote
    if rname then remotes.check(job, rname) end
    job.step("listing backups (" .. policy.text .. ")" .. (rname and (" on remote '" .. rname .. "'") or ""))

    local complete, leftovers, unreadable
    if rname then
      complete, leftovers = remotes.scan(job, rname)
      unreadable = {}
    else
      complete, leftovers, unreadable = backups.scan()
    end
    local marker_name = rname and "prune-remote" or "prune"
    for _, u in ipairs(unreadable) do
      log.warn(string.format("'%s/%s' is not a readable manifest (%s): left alone", backups.DIR, u.name,
        tostring(u.why)))
    end

    local mark = job.marker(marker_name)
    local plan
    if common.adopts(job, mark) and type(mark.remove) == "table" and mark.policy == policy.text
        and mark.remote == rname then
      plan = mark
      plan.jobId = job.id
      log.info(string.format("resuming the plan of an earlier run of this job: %d to remove", #plan.remove))
    else
      local items = {}
      for id, b in pairs(complete) do
        local t, terr = retention.parse_time(b.manifest.createdAt)
        if not t then
          log.warn(string.format("backup '%s' has no usable createdAt (%s): using its file time", id, terr))
          t = b.mtime
        end
        items[#items + 1] = { id = id, time = t }
      end
      local keep, remove = retention.apply(items, policy, os.time())
      local reasons = {}
      for _, it in ipairs(keep) do reasons[it.id] = json.array(it.reasons) end
      plan = { jobId = job.id, runId = job.run_id, policy = policy.text, keep = ids_of(keep),
               remove = ids_of(remove), reasons = reasons, remote = rname }
    end

    -- Leftovers older than the newest complete backup (a newer one could only
    -- come from a backup running right now, which the instance lock rules out,
    -- but a leftover newer than every complete backup is worth a look first).
    local newest_mtime
    for _, b in pairs(complete) do
      if newest_mtime == nil or b.mtime > newest_mtime then newest_mtime = b.mtime end
    end
    local planned = {}
    for _, id in ipairs(plan.remove) do
      planned[id .. ".tar.zst"] = true
      planned[id .. ".json"] = true
    end
    local stale = json.array()
    for _, l in ipairs(leftovers) do
      -- an archive whose manifest an interrupted run of this plan already removed
      -- is finished by the plan below, not reported as a leftover
      if newest_mtime and l.mtime <= newest_mtime and not planned[l.name] then stale[#stale + 1] = l end
    end
    table.sort(stale, function(a, b) return a.name < b.name end)

    local out = { kept = plan.keep, removed = plan.remove, reasons = plan.reasons, dryRun = dry,
                  policy = plan.policy, leftovers = json.array(), remote = rname }
    for _, l in ipairs(stale) do out.leftovers[#out.leftovers + 1] = l.name end

    if dry then
      log.info(string.format("dry run: would keep %d and remove %d backups and %d leftovers",
        #plan.keep, #plan.remove, #stale))
      return out
    end

    job.mark(marker_name, plan)
    local total = #plan.remove + #stale
    local done = 0
    for _, id in ipairs(plan.remove) do
      job.checkpoint()
      if rname then
        remotes.remove(job, rname, id)
        log.info("removed backup '" .. id .. "' from remote '" .. rname .. "'")
      elseif complete[id] or fs.exists(backups.manifest_path(id)) or fs.exists(backups.archive_path(id)) then
        backups.remove(job, id)
        log.info("removed backup '" .. id .. "'")
      end
      done = done + 1
      job.progress(100 * done / math.max(total, 1), "removed backup '" .. id .. "'")
    end
    for _, l in ipairs(stale) do
      job.checkpoint()
      if rname then
        remotes.must(job, remote.delete(rname, job.instance_id .. "/" .. l.name))
      else
        common.must(job, "cannot remove leftover '" .. l.name .. "'", fs.remove(backups.DIR .. "/" .. l.name))
      end
      log.info(string.format("removed leftover '%s' (%s)", l.name, l.why))
      done = done + 1
      job.progress(100 * done / math.max(total, 1), "removed leftover '" .. l.name .. "'")
    end
    common.clean_stale_staging(job)
    job.unmark(marker_name)
    return out
  end,
}
