-- STOP_INSTANCE: stop the game server through its monitor's stop ladder
-- (console stop command, then the stop signal, then SIGKILL of the whole
-- process tree), each step bounded by the instance spec's timeouts.
--
-- Safe to retry: stopping a stopped instance is a no-op that says so. A
-- server whose monitor died is adopted by a fresh monitor and stopped the
-- same way. Cancelling abandons the wait only; the monitor finishes the stop.
--
-- params:  timeoutSeconds? wait after the console stop command before the
--                          signal (default: the spec's stop.timeoutSeconds)
--          force?          skip the graceful steps: SIGKILL at once
-- output:  {exitCode, signal, state, already}
return {
  type = "STOP_INSTANCE",
  description = "Stop the instance's game server (console command, signal, then kill).",
  cancellable = true,
  params = { timeoutSeconds = "number?", force = "boolean?" },
  run = function(job)
    local p = job.params
    if p.timeoutSeconds ~= nil and (p.timeoutSeconds <= 0 or p.timeoutSeconds > 86400) then
      job.fail("timeoutSeconds must be within (0, 86400]")
    end
    job.step(p.force and "killing the server" or "stopping the server")
    local r, err = instance.stop({ timeoutSeconds = p.timeoutSeconds, force = p.force == true,
                                   progress = { 5, 99 } })
    if not r then job.fail(err) end
    if r.already then
      log.info("already " .. r.state .. "; nothing to stop")
    elseif r.lastExit then
      log.info("stopped: " .. tostring(r.lastExit.reason))
    end
    job.progress(100, "stopped")
    return { exitCode = r.exitCode, signal = r.signal, state = r.state,
             already = r.already == true }
  end,
}
