-- RESTART_INSTANCE: STOP_INSTANCE, then START_INSTANCE.
--
-- Safe to retry: a retry after a kill between the two halves finds the
-- server stopped (the stop is a no-op) and starts it.
--
-- params:  timeoutSeconds? graceful stop wait, as for STOP_INSTANCE; also the
--                          readiness wait when given
--          force?          kill instead of a graceful stop
--          waitReady?      (default true)
-- output:  {pid, state, previousExit}
return {
  type = "RESTART_INSTANCE",
  description = "Stop and start the instance's game server.",
  cancellable = true,
  params = { timeoutSeconds = "number?", force = "boolean?", waitReady = "boolean?" },
  run = function(job)
    local p = job.params
    if p.timeoutSeconds ~= nil and (p.timeoutSeconds <= 0 or p.timeoutSeconds > 86400) then
      job.fail("timeoutSeconds must be within (0, 86400]")
    end
    local spec, err = instance.spec()
    if not spec then job.fail(err) end

    job.step("stopping the server")
    local stopped
    stopped, err = instance.stop({ timeoutSeconds = p.timeoutSeconds, force = p.force == true,
                                   progress = { 0, 45 } })
    if not stopped then job.fail(err) end
    log.info(stopped.already and "it was not running" or
             ("stopped: " .. tostring(stopped.lastExit and stopped.lastExit.reason)))
    job.checkpoint()

    job.progress(50, "starting the server")
    local st
    st, err = instance.start()
    if not st then job.fail(err) end
    log.info(string.format("started pid %s", tostring(st.pid)))
    if p.waitReady ~= false and st.state ~= "RUNNING" then
      local timeout = p.timeoutSeconds or ((spec.ready.timeoutSeconds or 120) + 10)
      local ready
      ready, err = instance.wait_ready(timeout, { progress = { 55, 99 } })
      if not ready then job.fail(err) end
      st = ready
    end
    job.progress(100, "restarted")
    local previous = nil
    if not stopped.already and stopped.lastExit then previous = stopped.lastExit.reason end
    return { pid = st.pid, state = st.state, previousExit = previous }
  end,
}
