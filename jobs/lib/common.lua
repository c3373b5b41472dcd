-- lib/common.lua — what every built-in job shares: identifier and digest
-- checks (before any file is touched), error handling that turns an API
-- failure into a clear job failure, cleanup on failure or cancel, stale
-- staging from interrupted runs, and the instance's run state.
--
-- Conventions of the sandbox API this relies on (docs/lua-api.md): fs,
-- archive and http calls return a value on success and nil plus a message on
-- an expected failure; misuse and cancellation raise.
local M = {}

local IDENT_RULE = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
M.IDENT_RULE = IDENT_RULE

function M.ident_ok(s)
  return type(s) == "string" and #s >= 1 and #s <= 64 and s:match("^[A-Za-z0-9][A-Za-z0-9._-]*$") ~= nil
end

-- Fail the run unless s is a valid identifier; `what` names it ("backupId").
function M.check_ident(job, what, s)
  if not M.ident_ok(s) then
    job.fail(string.format("invalid %s %s: must match %s", what,
      type(s) == "string" and ("'" .. s:sub(1, 80) .. "'") or ("(" .. type(s) .. ")"), IDENT_RULE))
  end
  return s
end

function M.sha256_ok(s)
  return type(s) == "string" and #s == 64 and s:match("^[0-9a-fA-F]+$") ~= nil
end

function M.check_sha256(job, what, s)
  if not M.sha256_ok(s) then
    job.fail(string.format("invalid %s: must be 64 hex digits (a SHA-256), got %s", what,
      type(s) == "string" and ("'" .. s:sub(1, 80) .. "'") or type(s)))
  end
  return s:lower()
end

function M.check_url(job, what, s)
  if type(s) ~= "string" or not (s:match("^[Hh][Tt][Tt][Pp][Ss]?://[^%s]+$")) then
    job.fail(string.format("invalid %s: must be an http:// or https:// URL", what))
  end
  return s
end

-- A console line sent to the server: one line, printable.
function M.check_line(job, what, s)
  if type(s) ~= "string" or s == "" or #s > 1024 or s:find("[%c]") then
    job.fail(string.format("invalid %s: each entry must be a non-empty single line of at most "
      .. "1024 characters without control characters", what))
  end
  return s
end

-- An array of strings param (nil allowed), each checked by check(s) -> ok.
function M.check_string_array(job, what, arr, max)
  if arr == nil then return {} end
  if type(arr) ~= "table" then job.fail(what .. " must be an array of strings") end
  if #arr > (max or 1000) then job.fail(string.format("%s has more than %d entries", what, max or 1000)) end
  for i, s in ipairs(arr) do
    if type(s) ~= "string" then
      job.fail(string.format("%s[%d] must be a string, got %s", what, i, type(s)))
    end
  end
  return arr
end

-- Is the failure code (the third result of a failed fs, archive or http call)
-- a full disk? The API reports quotas as "ENOSPC" too. A full disk is never
-- the input's fault: such failures are retryable once space was freed.
function M.disk_full(code)
  return code == "ENOSPC"
end

-- Result of an API call: the value, or fail the run with "what: message".
-- I/O failures are retryable (a retry may well succeed). Only nil is a
-- failure: false is an ordinary answer (fs.remove of a missing path).
function M.must(job, what, v, err, ...)
  if v == nil then
    job.fail(what .. ": " .. tostring(err or "failed"), { retryable = true })
  end
  return v, err, ...
end

-- Run fn(); if it raises (a failure, a cancellation or a bug), run cleanup()
-- and re-raise the same error, so a cancellation stays a cancellation.
function M.guard(fn, cleanup)
  local results = table.pack(pcall(fn))
  if not results[1] then
    local ok, cerr = pcall(cleanup)
    if not ok then log.warn("cleanup after a failure failed too: " .. tostring(cerr)) end
    error(results[2], 0)
  end
  return table.unpack(results, 2, results.n)
end

-- Remove staging directories left by earlier runs that were killed (the
-- instance lock guarantees that no other run is using them). `keep` is a
-- set of run ids to leave alone.
function M.clean_stale_staging(job, keep)
  local runs = M.must(job, "cannot list staging directories", fs.stale_staging())
  local n = 0
  for _, run in ipairs(runs) do
    if not (keep and keep[run]) then
      M.must(job, "cannot remove stale staging '" .. run .. "'", fs.clean_staging(run))
      n = n + 1
    end
  end
  if n > 0 then log.info(string.format("removed %d staging director%s left by interrupted runs",
    n, n == 1 and "y" or "ies")) end
  return n
end

-- Remove the temp files a killed run left in dir: ".<name>.tmp.<pid>" (an
-- atomic write or an archive being written) and ".<name>.lnk.<pid>" (a
-- symlink swap).
function M.clean_temp_files(job, dir)
  local entries = fs.list(dir)
  if not entries then return 0 end
  local n = 0
  for _, e in ipairs(entries) do
    local name = e.name
    -- Not ".<name>.swap.<pid>": that is a whole tree parked by the non-atomic
    -- swap fallback (filesystems without RENAME_EXCHANGE) and needs a human.
    if name:match("^%..+%.tmp%.%d+$") or name:match("^%..+%.lnk%.%d+$") then
      local p = dir == "." and name or (dir .. "/" .. name)
      if e.type == "dir" then
        M.must(job, "cannot remove leftover '" .. p .. "'", fs.remove_tree(p))
      else
        M.must(job, "cannot remove leftover '" .. p .. "'", fs.remove(p))
      end
      n = n + 1
    end
  end
  return n
end

-- Did this job write marker m? True for a retry of the same job (the
-- agent gives it the same job id) and for the run right after an
-- interrupted run whose run marker (job.previous) names the marker's job:
-- that run was killed mid-way and this one takes over its work.
function M.adopts(job, m)
  if type(m) ~= "table" or type(m.jobId) ~= "string" then return false end
  if m.jobId == job.id then return true end
  local prev = job.previous
  return type(prev) == "table" and prev.jobId == m.jobId
end

function M.read_json(path, max_bytes)
  local text, err = fs.read(path, max_bytes and { max_bytes = max_bytes } or nil)
  if not text then return nil, err end
  local v, jerr = json.decode(text)
  if v == nil then return nil, "'" .. path .. "' is not valid JSON" .. (jerr and (": " .. jerr) or "") end
  return v
end

function M.write_json(job, path, value)
  M.must(job, "cannot write '" .. path .. "'", fs.write(path, json.encode(value, { indent = true }) .. "\n"))
end

function M.now_iso()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

-- The instance's server state (instance.status().state: STARTING, RUNNING,
-- STOPPING, STOPPED, CRASHED, BACKOFF). An instance without instance.json
-- has no server and counts as STOPPED.
function M.instance_state(job)
  if not fs.exists("instance.json") or type(instance) ~= "table" or type(instance.status) ~= "function" then
    return "STOPPED"
  end
  local st, err = instance.status()
  if st == nil then
    job.fail("cannot query the instance state: " .. tostring(err), { retryable = true })
  end
  return type(st) == "table" and tostring(st.state or "STOPPED"):upper() or "STOPPED"
end

-- States with a server process that may write data/ (BACKOFF will restart one).
function M.is_running(state)
  return state == "RUNNING" or state == "STARTING" or state == "STOPPING" or state == "BACKOFF"
end

-- Start the server and wait until it is ready (the spec's ready pattern).
-- Returns the status table, or nil and a message.
function M.start_and_wait(job, from, to)
  local spec, err = instance.spec()
  if not spec then return nil, err end
  local st
  st, err = instance.start()
  if not st then return nil, err end
  if st.state == "RUNNING" then return st end
  local timeout = ((type(spec.ready) == "table" and spec.ready.timeoutSeconds) or 120) + 10
  return instance.wait_ready(timeout, { progress = { from, to } })
end

-- Stop the server (the spec's stop ladder); fails the run if it cannot.
function M.stop(job, from, to)
  local st, err = instance.stop({ progress = { from, to } })
  if not st then job.fail("cannot stop the server: " .. tostring(err), { retryable = true }) end
  return st
end

-- The build `current` points at ("builds/<id>" -> "<id>"), or nil.
function M.current_build(link)
  local st = fs.stat(link or "current")
  if not st or st.type ~= "symlink" then return nil end
  local target = st.target
  if type(target) ~= "string" then return nil end
  return target:match("^builds/([^/]+)/?$") or target:match("^%./builds/([^/]+)/?$")
end

-- Deep equality of JSON-like values (for "is this already in place?").
function M.same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not M.same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

function M.count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

return M
