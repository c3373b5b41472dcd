-- START_INSTANCE: start the instance's game server under its monitor and,
-- unless waitReady is false, wait until it prints its ready line.
--
-- Safe to retry at any point: starting a running instance is a no-op that
-- says so, and two START jobs racing on one instance end with one server (the
-- monitor's lock admits one). Cancelling while waiting for readiness leaves the
-- server starting under its monitor; a retry finds it and waits again.
--
-- params:  waitReady?      (default true)
--          timeoutSeconds? how long to wait for readiness (default: the spec's
--                          ready.timeoutSeconds + 10)
-- output:  {pid, state, already, adopted}
return {
  type = "START_INSTANCE",
  description = "Start the instance's game server under its monitor.",
  cancellable = true,
  params = { waitReady = "boolean?", timeoutSeconds = "number?" },
  run = function(job)
    local p = job.params
    if p.timeoutSeconds ~= nil and (p.timeoutSeconds <= 0 or p.timeoutSeconds > 86400) then
      job.fail("timeoutSeconds must be within (0, 86400]")
    end
    job.step("checking the instance spec")
    local spec, err = instance.spec()
    if not spec then job.fail(err) end
    log.info("starting " .. job.instance_id .. ": " .. table.concat(spec.command, " "))

    job.progress(5, "starting the server")
    local st
    st, err = instance.start()
    if not st then job.fail(err) end
    -- log lines, not only steps: quick successive steps may be coalesced.
    local what
    if st.already then
      what = string.format("already %s (pid %s); nothing to start", st.state, tostring(st.pid))
    elseif st.adopted then
      what = string.format("found the server running without a monitor (pid %s); adopted it",
        tostring(st.pid))
    else
      what = string.format("started pid %s", tostring(st.pid))
    end
    log.info(what)
    job.step(what)

    if p.waitReady ~= false and st.state ~= "RUNNING" then
      local timeout = p.timeoutSeconds or ((spec.ready.timeoutSeconds or 120) + 10)
      local ready
      ready, err = instance.wait_ready(timeout, { progress = { 10, 99 } })
      if not ready then job.fail(err) end
      st = ready
      log.info(string.format("ready (pid %s)", tostring(st.pid)))
    end
    job.progress(100, "started")
    return { pid = st.pid, state = st.state, already = st.already == true,
             adopted = st.adopted == true }
  end,
}
