-- lib/builds.lua — server builds: staging a downloaded archive into
-- builds/<id>, and activating a build by swapping the `current` symlink.
--
-- builds/<id> appears in one rename of a fully extracted, fsynced tree, so
-- its existence means it is complete; builds are never modified afterwards.
-- The "builds" marker remembers the source digest each build id came from,
-- so the same id with another archive is refused instead of silently reused.
-- `current -> builds/<id>` and `previous -> builds/<id>` are replaced with
-- an atomic symlink swap; the "activate" marker lets a retry finish an
-- interrupted activation (restart the server it stopped, or roll back).
local common = require("lib.common")

local M = {}

M.FORMATS = { ["tar.zst"] = true, ["tar.gz"] = true, ["tgz"] = true, ["tar.xz"] = true,
              ["tar.bz2"] = true, ["tar"] = true, ["zip"] = true }

function M.path(id) return "builds/" .. id end

local SOURCE_KEYS = { url = true, sha256 = true, format = true, size = true, unpackedSize = true }

local function check_bytes(job, what, v)
  if v == nil then return nil end
  if math.type(v) ~= "integer" or v <= 0 then
    job.fail(string.format("invalid %s: must be a positive integer number of bytes", what))
  end
  return v
end

-- Check a source param {url, sha256, format?, size?, unpackedSize?}; returns a
-- normalised copy. size: the archive's bytes (the download must match);
-- unpackedSize: what it unpacks to, which then replaces the default size cap
-- and compression-ratio guard of the extraction.
function M.check_source(job, src, allow_format)
  if type(src) ~= "table" then job.fail("source must be an object {url, sha256" ..
    (allow_format and ", format" or "") .. ", size, unpackedSize}") end
  for k in pairs(src) do
    if not SOURCE_KEYS[k] or (k == "format" and not allow_format) then
      job.fail(string.format("unknown field '%s' in source (expected url, sha256%s, size, unpackedSize)",
        tostring(k), allow_format and ", format" or ""))
    end
  end
  local out = {
    url = common.check_url(job, "source.url", src.url),
    sha256 = common.check_sha256(job, "source.sha256", src.sha256),
    size = check_bytes(job, "source.size", src.size),
    unpackedSize = check_bytes(job, "source.unpackedSize", src.unpackedSize),
  }
  if src.format ~= nil then
    if not M.FORMATS[src.format] then
      job.fail("invalid source.format '" .. tostring(src.format)
        .. "': use tar.zst, tar.gz, tgz, tar.xz, tar.bz2, tar or zip")
    end
    out.format = src.format
  end
  return out
end

-- The digest builds/<id> was made from, if known.
function M.source_of(job, id)
  local m = job.marker("builds")
  if type(m) == "table" and type(m.sources) == "table" then return m.sources[id] end
  return nil
end

local function record_source(job, id, src)
  local m = job.marker("builds")
  if type(m) ~= "table" then m = {} end
  if type(m.sources) ~= "table" then m.sources = {} end
  m.sources[id] = { sha256 = src.sha256, url = src.url, stagedAt = common.now_iso() }
  job.mark("builds", m)
end

-- A download of src's digest that an earlier run left unfinished: the set of
-- run ids whose staging must survive the stale-staging cleanup, and the
-- staging directory holding the ".part" to resume. The download marker is
-- keyed by digest, not by job: the content is the same whoever fetches it.
function M.resumable(job, src)
  local m = job.marker("download")
  if type(m) == "table" and m.sha256 == src.sha256 and type(m.stage) == "string"
    and fs.exists(m.stage) then
    local run = m.stage:match("^%.jobvisor/staging/([^/]+)/[^/]+$")
    if run then return { [run] = true }, m.stage end
  end
  return {}, nil
end

-- Forget the source digest recorded for builds/<id> (a build this run made and
-- took back).
function M.forget_source(job, id)
  local m = job.marker("builds")
  if type(m) == "table" and type(m.sources) == "table" and m.sources[id] ~= nil then
    m.sources[id] = nil
    job.mark("builds", m)
  end
end

-- Make builds/<id> exist, downloading and extracting src if needed. resume is
-- the staging directory from M.resumable (or nil). check(dir), if given, is
-- called with the extracted tree before it is published (it fails the job to
-- refuse the build; nothing is left then). Returns true when the build was
-- staged now, false when it was already there.
function M.stage(job, id, src, from, to, resume, check)
  local have = fs.exists(M.path(id))
  local rec = M.source_of(job, id)
  if have then
    if type(rec) == "table" and type(rec.sha256) == "string" and rec.sha256:lower() ~= src.sha256 then
      job.fail(string.format("build '%s' already exists, made from a different archive (sha256 %s); "
        .. "use a new build id", id, rec.sha256))
    end
    if resume then job.unmark("download") end
    log.info(string.format("build '%s' is already staged", id))
    return false
  end
  record_source(job, id, src)
  local stage = resume
  if stage then
    log.info("resuming the download of build '" .. id .. "' an earlier run began")
    fs.remove_tree(stage .. "/build") -- a partial extraction of the killed run
  else
    stage = common.must(job, "cannot create a staging directory", fs.staging())
  end
  job.mark("download", { sha256 = src.sha256, url = src.url, stage = stage })
  local ext = src.format or (src.url:match("%.(tar%.%w+)$") or src.url:match("%.(zip)$") or "archive")
  local file = stage .. "/source." .. ext
  local mid = from + (to - from) * 0.6
  local downloading = false
  common.guard(function()
    job.progress(from, "downloading build '" .. id .. "'")
    downloading = true
    local res, derr = http.download(src.url, file, { sha256 = src.sha256, resume = true,
      size = src.size, progress = { from = from, to = mid } })
    if not res then
      job.fail(string.format("cannot download build '%s': %s", id, tostring(derr)), { retryable = true })
    end
    downloading = false
    job.checkpoint()
    job.progress(mid, "extracting build '" .. id .. "'")
    -- A decompression bomb stops at the agent's extract_max_bytes /
    -- extract_max_ratio, or exactly at the size the control plane declared.
    local xopts = { progress = { from = mid, to = to - 1 } }
    if src.unpackedSize then
      xopts.max_bytes = src.unpackedSize
      xopts.max_ratio = 0
    end
    local x, xerr, xcode = archive.extract(file, stage .. "/build", xopts)
    if not x then
      job.fail(string.format("cannot extract build '%s': %s", id, tostring(xerr)),
        { retryable = common.disk_full(xcode) })
    end
    fs.remove(file)
    job.checkpoint()
    if check then check(stage .. "/build") end
    common.must(job, "cannot move the build into builds/", fs.commit(stage .. "/build", M.path(id)))
  end, function()
    -- A download that broke off keeps its ".part" for the next run to resume;
    -- anything else of this attempt goes.
    if not (downloading and fs.exists(file .. ".part")) then
      fs.remove_tree(stage)
      job.unmark("download")
    end
  end)
  fs.remove_tree(stage)
  job.unmark("download")
  log.info(string.format("build '%s' staged into builds/%s", id, id))
  return true
end

-- Point current at builds/<id>. opts.restart: stop the server if it runs,
-- swap, start it again, and roll back to the previous build if the start
-- fails. Returns {build, previous, changed}.
function M.activate(job, id, opts)
  opts = opts or {}
  if not fs.exists(M.path(id)) then
    job.fail(string.format("build '%s' does not exist (stage it with UPDATE_SERVER first)", id))
  end
  common.clean_temp_files(job, ".") -- a symlink swap's temp link left by a killed run
  local cur = common.current_build()
  local mark = job.marker("activate")
  local mine = common.adopts(job, mark) and mark.build == id
  local state = common.instance_state(job)
  local running = common.is_running(state)

  if cur == id and not (mine and mark.phase ~= "done") then
    local prev = common.current_build("previous")
    log.info(string.format("build '%s' is already active", id))
    return { build = id, previous = prev or json.null, changed = false }
  end
  if running and not opts.restart and not mine then
    log.warn(string.format("instance '%s' is running: it keeps running its current build until it "
      .. "is restarted (activate with restart = true to restart it now)", job.instance_id))
  end
  local stop = running and opts.restart == true

  local plan
  if mine then
    plan = mark
    plan.jobId = job.id
    job.mark("activate", plan)
    log.info(string.format("finishing the activation of build '%s' an earlier run began (phase %s)",
      id, tostring(mark.phase)))
  else
    plan = { jobId = job.id, build = id, previous = cur or json.null, wasRunning = stop,
             restart = opts.restart == true, phase = "stopping",
             previousLink = common.current_build("previous") or json.null }
    job.mark("activate", plan)
  end
  local previous = plan.previous ~= json.null and plan.previous or nil

  local need_start
  if mine and plan.phase == "swapped" then
    need_start = plan.wasRunning and plan.restart and not running
  else
    if stop then
      job.step("stopping the server")
      common.stop(job, 80, 85)
    end
    if previous and common.current_build("previous") ~= previous then
      common.must(job, "cannot record the previous build", fs.link_swap("previous", M.path(previous)))
    end
    if common.current_build() ~= id then
      job.step("activating build '" .. id .. "'")
      common.must(job, "cannot swap current", fs.link_swap("current", M.path(id)))
    end
    plan.phase = "swapped"
    job.mark("activate", plan)
    need_start = plan.wasRunning and plan.restart
  end

  if need_start then
    job.step("starting the server on build '" .. id .. "'")
    local ok, serr = common.start_and_wait(job, 90, 99)
    if not ok then
      if not previous then
        job.unmark("activate")
        job.fail(string.format("build '%s' did not start: %s", id, tostring(serr)))
      end
      log.error(string.format("the server did not start on build '%s' (%s): rolling back to '%s'",
        id, tostring(serr), previous))
      -- end any restart-policy retries of the failed build before swapping back
      instance.stop({ force = true })
      common.must(job, "cannot roll back current", fs.link_swap("current", M.path(previous)))
      local before = plan.previousLink ~= json.null and plan.previousLink or nil
      if before and common.current_build("previous") ~= before then
        fs.link_swap("previous", M.path(before))
      elseif not before then
        fs.remove("previous")
      end
      local ok2, serr2 = common.start_and_wait(job, 90, 99)
      job.unmark("activate")
      job.fail(string.format("build '%s' did not start (%s); rolled back to build '%s'%s", id,
        tostring(serr), previous, ok2 and ", which is running again"
          or (", which did not start either: " .. tostring(serr2))), { retryable = false })
    end
  end
  job.unmark("activate")
  return { build = id, previous = previous or json.null, changed = true }
end

return M
