-- world_reset.lua — WORLD_RESET: wipe the world for a new season.
--
-- Warns the players, stops the server if it runs, keeps the old world under
-- data/<world>.old-<time> (or removes it with keepOld = false), lays down a
-- fresh world directory with the new seed through staging + commit (so
-- data/<world> is never half-made), and starts the server again if it was
-- running. A retry after a kill finds either the old world or the new one.
return {
  type = "WORLD_RESET",
  params = { world = "string?", seed = "integer?", keepOld = "boolean?", warnSeconds = "number?" },
  run = function(job)
    local world = job.params.world or "world"
    if not world:match("^[A-Za-z0-9][A-Za-z0-9._-]*$") then job.fail("world must be a plain directory name") end
    local seed = job.params.seed or os.time()
    local keep = job.params.keepOld ~= false

    local was_running = instance.status().state == "RUNNING"
    if was_running then
      local warn = job.params.warnSeconds or 0
      instance.send(string.format("say The world resets in %d seconds!", math.floor(warn)))
      job.step("warning players")
      job.sleep(warn)
      job.step("stopping the server")
      instance.stop({ progress = { 10, 30 } })
    end

    local live = "data/" .. world
    if fs.exists(live) then
      if keep then
        local old = string.format("%s.old-%s", live, os.date("!%Y%m%dT%H%M%S"))
        job.step("keeping the old world as " .. old)
        assert(fs.commit(live, old))
      else
        job.step("removing the old world")
        assert(fs.remove_tree(live))
      end
    end
    job.checkpoint()
    job.step("creating a new world with seed " .. seed)
    local stage = fs.staging()
    assert(fs.write(stage .. "/seed.txt", tostring(seed) .. "\n"))
    assert(fs.commit(stage, live))

    if was_running then
      job.step("starting the server")
      instance.start()
      assert(instance.wait_ready(120, { progress = { 80, 99 } }))
    end
    return { world = world, seed = seed, restarted = was_running }
  end,
}
