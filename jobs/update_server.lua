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

    local staged = source.stage(job, build, src, 1, p.activate and 80 or 99, resume)
    local out = { build = build, staged = staged, activated = false }
    if p.activate then
      job.checkpoint()
      local running = common.is_running(common.instance_state(job))
      job.progress(85, "activating build '" .. build .. "'")
      local act = builds.activate(job, build, { restart = running })
      out.activated = true
      out.previous = act.previous
    end
    common.clean_stale_staging(job)
    return out
  end,
}
