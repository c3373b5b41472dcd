-- update_server.lua — UPDATE_SERVER: stage a new build into builds/<build>
-- (download verified by SHA-256 and cached by digest, extract into staging,
-- one rename into place) without touching data/ or current. With activate,
-- continue as ACTIVATE_BUILD: if the server is running it is stopped, current
-- is swapped, and it is started again, rolling back to the previous build if
-- it does not start.
--
-- Retry: a complete builds/<build> is never staged twice, and an interrupted
-- activation is finished from its marker (lib/builds.lua).
local common = require("lib.common")
local builds = require("lib.builds")
local steam = require("lib.steam")

return {
  type = "UPDATE_SERVER",
  description = "Download and install a new build of the game server.",
  cancellable = true,
  params = { source = "object", build = "string", activate = "boolean?" },

  run = function(job)
    local p = job.params
    local build = common.check_ident(job, "build", p.build)
    -- {"steam": {...}} installs with SteamCMD (lib/steam.lua); anything else is an archive URL.
    local source = steam.is_steam(p.source) and steam or builds
    local src = source == steam and steam.check_source(job, p.source) or builds.check_source(job, p.source, true)
    local keep, resume = source.resumable(job, src)
    common.clean_stale_staging(job, keep)
    common.clean_temp_files(job, "builds")

    -- With activate, the new build must run the instance's spec (its server
    -- where ${build} says): checked on the extracted tree, before anything is
    -- published. Without activate the spec may still change with the build.
    local spec = p.activate and fs.exists("instance.json") and common.read_json("instance.json") or nil
    local function check(dir)
      if not spec then return end
      local ok, err = instance.check_spec(spec, dir)
      if not ok then
        job.fail(string.format("build '%s' cannot run this instance's spec: %s", build, tostring(err)))
      end
    end
    local staged = source.stage(job, build, src, 1, p.activate and 80 or 99, resume, check)
    local out = { build = build, staged = staged, activated = false }
    if p.activate then
      if not staged then check(builds.path(build)) end
      job.checkpoint()
      local running = common.is_running(common.instance_state(job))
      job.progress(85, "activating build '" .. build .. "'")
      local act = common.guard(function()
        return builds.activate(job, build, { restart = running })
      end, function()
        -- activation failed (and rolled current back): a build this run staged goes too
        if staged and common.current_build() ~= build and common.current_build("previous") ~= build then
          fs.remove_tree(builds.path(build))
          builds.forget_source(job, build)
        end
      end)
      out.activated = true
      out.previous = act.previous
    end
    common.clean_stale_staging(job)
    return out
  end,
}
