-- install_server.lua — INSTALL_SERVER: download a server build (verified by
-- SHA-256, cached by digest), extract it into staging, move it to
-- builds/<build>, write instance.json, create data/ and point current at the
-- build.
--
-- Every step is idempotent and checks whether it is already done, so a
-- retry after a kill at any instant continues where the earlier run stopped:
-- builds/<build> appears in one rename of a complete tree, instance.json is
-- written atomically, and current is swapped atomically last. Running it
-- again with the same build and spec is a fast no-op that says so.
local common = require("lib.common")
local builds = require("lib.builds")
local steam = require("lib.steam")

local SPEC_KEYS = { command = true, cwd = true, env = true, stop = true, ready = true, restart = true,
                    limits = true, name = true, description = true }

local function check_spec(job, spec)
  if type(spec) ~= "table" or #spec > 0 then
    job.fail("instance must be an object: the instance spec {command, cwd, env, stop, ready, restart, limits}")
  end
  local cmd = spec.command
  if type(cmd) ~= "table" or #cmd == 0 then
    job.fail("instance.command must be a non-empty array of strings (e.g. [\"${build}/server\", \"--port\", \"30000\"])")
  end
  for i, a in ipairs(cmd) do
    if type(a) ~= "string" or a:find("%z") then
      job.fail(string.format("instance.command[%d] must be a string", i))
    end
  end
  if spec.cwd ~= nil and type(spec.cwd) ~= "string" then job.fail("instance.cwd must be a string") end
  if spec.env ~= nil then
    if type(spec.env) ~= "table" then job.fail("instance.env must be an object of strings") end
    for k, v in pairs(spec.env) do
      if type(k) ~= "string" or type(v) ~= "string" then
        job.fail("instance.env must map names to string values")
      end
    end
  end
  for k in pairs(spec) do
    if type(k) ~= "string" or not (SPEC_KEYS[k] or k:match("^x%-")) then
      job.fail(string.format("unknown field '%s' in instance (expected command, cwd, env, stop, ready, "
        .. "restart, limits, name, description or x-*)", tostring(k)))
    end
  end
  return spec
end

return {
  type = "INSTALL_SERVER",
  cancellable = true,
  params = { source = "object", build = "string", instance = "object" },

  run = function(job)
    local p = job.params
    local build = common.check_ident(job, "build", p.build)
    -- {"steam": {...}} installs with SteamCMD (lib/steam.lua); anything else is an archive URL.
    local source = steam.is_steam(p.source) and steam or builds
    local src = source == steam and steam.check_source(job, p.source) or builds.check_source(job, p.source, true)
    local spec = check_spec(job, p.instance)

    local existing = fs.exists("instance.json") and common.read_json("instance.json") or nil
    local cur = common.current_build()
    local data = fs.stat("data")
    if fs.exists(builds.path(build)) and cur == build and common.same(existing, spec)
      and data and data.type == "dir" then
      local rec = builds.source_of(job, build)
      if not (type(rec) == "table" and type(rec.sha256) == "string" and rec.sha256:lower() ~= src.sha256) then
        common.clean_stale_staging(job)
        job.unmark("download")
        job.step(string.format("build '%s' is already installed and active: nothing to do", build))
        log.info(string.format("build '%s' is already installed and active with this spec: nothing to do", build))
        return { build = build, alreadyInstalled = true }
      end
    end

    if data and data.type ~= "dir" then
      job.fail("'data' exists in the instance but is not a directory")
    end
    if cur and cur ~= build and common.is_running(common.instance_state(job)) then
      job.fail(string.format("instance '%s' is running build '%s': stop it first, or use UPDATE_SERVER "
        .. "with activate to switch builds", job.instance_id, cur))
    end
    local keep, resume = source.resumable(job, src)
    common.clean_stale_staging(job, keep)
    common.clean_temp_files(job, ".")
    common.clean_temp_files(job, "builds")

    local staged = source.stage(job, build, src, 2, 85, resume)
    job.checkpoint()

    if not (data and data.type == "dir") then
      job.progress(88, "creating data/")
      common.must(job, "cannot create data/", fs.mkdir("data"))
    end
    job.progress(92, "activating build '" .. build .. "'")
    local act = builds.activate(job, build, { restart = false })

    if not common.same(existing, spec) then
      job.progress(96, "writing instance.json")
      local old_text = fs.exists("instance.json") and fs.read("instance.json") or nil
      common.write_json(job, "instance.json", spec)
      -- The monitor's own parser has the last word (field types, ranges, the
      -- executable rule); a refused spec is put back as it was.
      local ok, serr = instance.spec()
      if not ok then
        if old_text then fs.write("instance.json", old_text) else fs.remove("instance.json") end
        job.fail("the instance spec was refused: " .. tostring(serr))
      end
    end
    common.clean_stale_staging(job)
    log.info(string.format("build '%s' installed%s", build, staged and "" or " (it was already staged)"))
    return { build = build, alreadyInstalled = false, previous = act.previous }
  end,
}
