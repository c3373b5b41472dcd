-- activate_build.lua — ACTIVATE_BUILD: point current at builds/<build> with
-- an atomic symlink swap, recording the build it replaces as `previous`.
--
-- With restart: stop the server, swap, start it, and roll back to the
-- previous build if it does not start. Without restart a running server is
-- left alone and keeps running its build until it is restarted. The "activate" marker lets a retry after a kill finish the
-- activation, including starting a server an earlier run stopped.
local common = require("lib.common")
local builds = require("lib.builds")

return {
  type = "ACTIVATE_BUILD",
  description = "Switch the instance to an installed build (optionally restarting it).",
  cancellable = true,
  params = { build = "string", restart = "boolean?" },

  run = function(job)
    local build = common.check_ident(job, "build", job.params.build)
    local act = builds.activate(job, build, { restart = job.params.restart == true })
    common.clean_stale_staging(job)
    return { build = act.build, previous = act.previous, changed = act.changed }
  end,
}
