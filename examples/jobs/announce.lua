-- announce.lua — ANNOUNCE: a scheduled announcement on the server console.
--
-- Sends `say <message>` `count` times, `intervalSeconds` apart (a panel
-- schedules the job, e.g. before a restart). Cancelling stops between two
-- announcements. Fails clearly when the server is not running.
return {
  type = "ANNOUNCE",
  params = { message = "string", count = "integer?", intervalSeconds = "number?" },
  run = function(job)
    local msg = job.params.message
    if msg == "" or msg:find("[\r\n]") then job.fail("message must be one non-empty line") end
    local count = job.params.count or 1
    local interval = job.params.intervalSeconds or 60
    if count < 1 or count > 1000 then job.fail("count must be within 1..1000") end
    local st = instance.status()
    if st.state ~= "RUNNING" then job.fail("the server is not running (state " .. tostring(st.state) .. ")") end
    for i = 1, count do
      local ok, err = instance.send("say " .. msg)
      if not ok then job.fail("cannot send to the console: " .. tostring(err), { retryable = true }) end
      job.progress(100 * i / count, string.format("announced %d of %d", i, count))
      if i < count then job.sleep(interval) end
    end
    return { sent = count }
  end,
}
