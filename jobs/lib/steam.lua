-- lib/steam.lua — SteamCMD as an install/update source for INSTALL_SERVER and
-- UPDATE_SERVER: `"source": {"steam": {"appId", "branch", "betaPassword",
-- "platform", "validate", "login"}}`.
--
-- SteamCMD (the agent setting `steamcmd`, allowed for this use without being
-- listed in job_executables) installs into a staging directory with
-- +force_install_dir; its progress lines become job progress and its failure
-- lines clear FAILED messages. The finished tree becomes builds/<id> in one
-- rename, like an HTTP package, and activation (with rollback) is
-- lib/builds.lua's. A run killed mid-download leaves the "steam" marker
-- naming its staging directory: the retry points SteamCMD at the same
-- directory, and SteamCMD continues its own partial download
-- (steamapps/downloading/) instead of starting over.
local common = require("lib.common")

local M = {}

local KEYS = { appId = true, branch = true, betaPassword = true, platform = true, validate = true,
               login = true }
local PLATFORMS = { linux = true, windows = true, macos = true }

function M.is_steam(src)
  return type(src) == "table" and src.steam ~= nil
end

-- Check {steam = {...}}; returns a normalised copy.
function M.check_source(job, src)
  for k in pairs(src) do
    if k ~= "steam" then
      job.fail(string.format("unknown field '%s' in source (a steam source is {\"steam\": {appId, branch, "
        .. "betaPassword, platform, validate, login}})", tostring(k)))
    end
  end
  local s = src.steam
  if type(s) ~= "table" or #s > 0 then job.fail("source.steam must be an object {appId, branch, ...}") end
  for k in pairs(s) do
    if not KEYS[k] then
      job.fail(string.format("unknown field '%s' in source.steam (expected appId, branch, betaPassword, "
        .. "platform, validate, login)", tostring(k)))
    end
  end
  local app = s.appId
  if math.type(app) == "integer" then app = tostring(app) end
  if type(app) ~= "string" or not app:match("^%d+$") or #app > 10 then
    job.fail("source.steam.appId must be a Steam app id (digits), e.g. \"896660\"")
  end
  local out = { appId = app, branch = "public", platform = "linux", validate = false, login = "anonymous" }
  if s.branch ~= nil and s.branch ~= json.null then
    if type(s.branch) ~= "string" or not s.branch:match("^[%w._-]+$") or #s.branch > 64 then
      job.fail("source.steam.branch must be a branch name such as \"public\" or \"experimental\"")
    end
    out.branch = s.branch
  end
  if s.betaPassword ~= nil and s.betaPassword ~= json.null then
    if type(s.betaPassword) ~= "string" or s.betaPassword == "" or s.betaPassword:find("[%s%z]") then
      job.fail("source.steam.betaPassword must be a non-empty string without spaces")
    end
    out.betaPassword = s.betaPassword
  end
  if s.platform ~= nil and s.platform ~= json.null then
    if not PLATFORMS[s.platform] then job.fail("source.steam.platform must be linux, windows or macos") end
    out.platform = s.platform
  end
  if s.validate ~= nil and s.validate ~= json.null then
    if type(s.validate) ~= "boolean" then job.fail("source.steam.validate must be a boolean") end
    out.validate = s.validate
  end
  if s.login ~= nil and s.login ~= json.null then
    -- An account name only: its password comes from the agent's
    -- steam_credentials_file, never from job params.
    if type(s.login) ~= "string" or not s.login:match("^[%w_.@-]+$") or #s.login > 64 then
      job.fail("source.steam.login must be \"anonymous\" or a Steam account name listed in the agent's "
        .. "steam_credentials_file (the password is never a job param)")
    end
    out.login = s.login
  end
  return out
end

local function same_source(a, b)
  return type(a) == "table" and a.appId == b.appId and a.branch == b.branch and a.platform == b.platform
end

-- The builds a steam source made: {[buildId] = {appId, branch, platform, stagedAt}}.
function M.source_of(job, id)
  local m = job.marker("steam-builds")
  return type(m) == "table" and type(m.sources) == "table" and m.sources[id] or nil
end

local function record_source(job, id, src)
  local m = job.marker("steam-builds")
  if type(m) ~= "table" or type(m.sources) ~= "table" then m = { sources = {} } end
  m.sources[id] = { appId = src.appId, branch = src.branch, platform = src.platform, stagedAt = common.now_iso() }
  job.mark("steam-builds", m)
end

-- A download of the same app/branch an earlier run left: the run ids whose
-- staging must survive the stale-staging cleanup, and that staging directory.
function M.resumable(job, src)
  local m = job.marker("steam")
  if type(m) == "table" and same_source(m, src) and type(m.stage) == "string" and fs.exists(m.stage) then
    local run = m.stage:match("^%.jobvisor/staging/([^/]+)/[^/]+$")
    if run then return { [run] = true }, m.stage end
  end
  return {}, nil
end

-- SteamCMD's failure lines -> a FAILED message and whether a retry can help.
local APP_ERRORS = {
  ["No subscription"] = { false, "the login does not own this app (use an app id that allows anonymous "
    .. "downloads, such as a dedicated server's)" },
  ["Invalid platform"] = { false, "the app has no build for this platform" },
  ["Missing configuration"] = { false, "Steam has no such app, or no configuration for it" },
  ["Invalid beta branch"] = { false, "the branch does not exist" },
  ["Invalid beta password"] = { false, "the beta password is wrong" },
  ["Disk write failure"] = { false, "the disk is full or not writable" },
  ["Not enough disk space"] = { false, "the disk is full" },
  ["Rate Limit Exceeded"] = { true, "Steam is rate-limiting this host; retry later" },
  ["Timeout"] = { true, "Steam did not answer in time" },
  ["No Connection"] = { true, "Steam could not be reached" },
  ["Service Unavailable"] = { true, "Steam is unavailable" },
  ["Update canceled"] = { true, "SteamCMD gave up the update" },
}
local LOGIN_ERRORS = {
  ["Rate Limit Exceeded"] = { true, "Steam is rate-limiting logins from this host; retry later" },
  ["Invalid Password"] = { false, "the login was refused (wrong account or password)" },
  ["Account Logon Denied"] = { false, "Steam Guard refused the login" },
  ["No Connection"] = { true, "Steam could not be reached" },
}

local function explain(app_id, seen, code)
  if seen.app_error then
    local known = APP_ERRORS[seen.app_error]
    if known then
      return string.format("SteamCMD could not install app %s: %s (%s)", app_id, seen.app_error, known[2]), known[1]
    end
    return string.format("SteamCMD could not install app %s: %s", app_id, seen.app_error), true
  end
  if seen.login_error then
    local known = LOGIN_ERRORS[seen.login_error]
    if known then
      return string.format("SteamCMD login failed: %s (%s)", seen.login_error, known[2]), known[1]
    end
    return "SteamCMD login failed: " .. seen.login_error, true
  end
  return string.format("SteamCMD exited with code %s without installing app %s%s", tostring(code), app_id,
    seen.last and (" (last line: " .. seen.last .. ")") or ""), true
end

-- Make builds/<id> exist from src (checked by M.check_source) between from%
-- and to% of the job. Returns true when it was staged now, false when it was
-- already there. resume is the staging directory from M.resumable (or nil);
-- check(dir), when given, is called on the installed tree before it is
-- published (and fails the job to refuse it), like lib/builds.lua's.
function M.stage(job, id, src, from, to, resume, check)
  local dest = "builds/" .. id
  if fs.exists(dest) then
    local rec = M.source_of(job, id)
    if rec ~= nil and not same_source(rec, src) then
      job.fail(string.format("build '%s' already exists, made from app %s branch %s; use a new build id",
        id, tostring(rec.appId), tostring(rec.branch)))
    end
    if resume then job.unmark("steam") end
    log.info(string.format("build '%s' is already staged", id))
    return false
  end
  local steamcmd = M.steamcmd(job)
  local stage = resume
  if stage then
    log.info("continuing the SteamCMD download an earlier run of build '" .. id .. "' began")
  else
    stage = common.must(job, "cannot create a staging directory", fs.staging())
  end
  job.mark("steam", { appId = src.appId, branch = src.branch, platform = src.platform, stage = stage })
  local dir = stage .. "/build"
  common.must(job, "cannot create the install directory", fs.mkdir(dir))
  local argv = { steamcmd, "+@ShutdownOnFailedCommand", "1", "+@NoPromptForPassword", "1",
                 "+@sSteamCmdForcePlatformType", src.platform,
                 "+force_install_dir", common.must(job, "cannot resolve the install directory", fs.abspath(dir)) }
  if src.login == "anonymous" then
    argv[#argv + 1] = "+login"; argv[#argv + 1] = "anonymous"
  else
    -- proc.run hands SteamCMD "login <account> <password>" as descriptor 4
    -- (opts.steam_login); the password never reaches this script, a file or
    -- SteamCMD's command line, where /proc would show it.
    argv[#argv + 1] = "+runscript"; argv[#argv + 1] = "/proc/self/fd/4"
  end
  argv[#argv + 1] = "+app_update"; argv[#argv + 1] = src.appId
  if src.branch ~= "public" then
    argv[#argv + 1] = "-beta"; argv[#argv + 1] = src.branch
  end
  if src.betaPassword then
    argv[#argv + 1] = "-betapassword"; argv[#argv + 1] = src.betaPassword
  end
  if src.validate then argv[#argv + 1] = "validate" end
  argv[#argv + 1] = "+quit"
  local seen = {}
  job.progress(from, string.format("installing app %s (branch %s) with SteamCMD as %s", src.appId, src.branch,
    src.login))
  local r, err = proc.run(argv, {
    cwd = stage,
    steam_login = src.login ~= "anonymous" and src.login or nil,
    progress = { from, to - 1 },
    progress_pattern = "Update state %(0x%x+%) downloading, progress: ([%d.]+) %(",
    on_line = function(stream, line)
      local reason = line:match("^ERROR! Failed to install app '%d+' %((.-)%)")
      if reason then seen.app_error = reason end
      local lreason = line:match("^FAILED login with result code (.+)$")
      if lreason then seen.login_error = lreason end
      if line:match("^Success! App '" .. src.appId .. "' fully installed") then seen.success = true end
      if line:match("%S") then seen.last = line end
      if line:match("^ERROR!") or line:match("^FAILED") then log.warn("steamcmd: " .. line) end
    end,
  })
  if not r then
    local creds = tostring(err):find("steam_credentials_file", 1, true) or tostring(err):find("Steam credentials", 1, true)
    job.fail((creds and "" or "SteamCMD did not run: ") .. tostring(err), { retryable = not creds })
  end
  if not (r.ok and seen.success) then
    -- Keep the staging directory (and the marker): SteamCMD's partial download
    -- in it is what a retry continues.
    local msg, retryable = explain(src.appId, seen, r.code or r.signal)
    job.fail(msg, { retryable = retryable })
  end
  job.checkpoint()
  fs.remove_tree(dir .. "/steamapps/downloading")
  if check then check(dir) end
  record_source(job, id, src)
  common.must(job, "cannot create builds/", fs.mkdir("builds"))
  common.must(job, "cannot move the build into builds/", fs.commit(dir, dest))
  fs.remove_tree(stage)
  job.unmark("steam")
  log.info(string.format("build '%s' installed from Steam app %s (branch %s)", id, src.appId, src.branch))
  return true
end

-- The agent's SteamCMD (setting steamcmd); the job never names the program.
function M.steamcmd(job)
  local path = proc.steamcmd()
  if not path then
    job.fail("this agent has no SteamCMD: set the agent setting steamcmd (JOBVISOR_STEAMCMD) to its path")
  end
  return path
end

return M
