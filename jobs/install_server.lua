-- install_server.lua — INSTALL_SERVER: download a server build (verified by
-- SHA-256, cached by digest), extract it into staging, move it to
-- builds/<build>, write instance.json, create data/ and point current at the
-- build.
--
-- Every step is idempotent and checks whether it is already done, so a
-- retry after a kill at any instant continues where the earlier run stopped:
-- builds/<build> appears in one rename of a complete tree, instance.json is
-- written atomically, and current is swapped atomically last. Running it
-- again with the same build and spec is a fast no-op that says so.
local common = require("lib.common")
local builds = require("lib.builds")
local steam = require("lib.steam")

local SPEC_KEYS = { command = true, cwd = true, env = true, stop = true, ready = true, restart = true,
                    limits = true, name = true, description = true }

local function check_spec(job, spec)
  if type(spec) ~= "table" or #spec > 0 then
    job.fail("instance must be an object: the instance spec {command, cwd, env, stop, ready, restart, limits}")
  end
  local cmd = spec.command
  if type(cmd) ~= "table" or #cmd == 0 then
    job.fail("instance.command must be a non-empty array of strings (e.g. [\"${build}/server\", \"--port\", \"30000\"])")
  end
  for i, a in ipairs(cmd) do
    if type(a) ~= "string" or a:find("%z") then
      job.fail(string.format("instance.command[%d] must be a string", i))
    end
  end
  if spec.cwd ~= nil and type(spec.cwd) ~= "string" then job.fail("instance.cwd must be a string") end
  if spec.env ~= nil then
    if type(spec.env) ~= "table" then job.fail("instance.env must be an object of strings") end
    for k, v in pairs(spec.env) do
      if type(k) ~= "string" or type(v) ~= "string" then
        job.fail("instance.env must map names to string values")
      end
    end
  end
  for k in pairs(spec) do
    if type(k) ~= "string" or not (SPEC_KEYS[k] or k:match("^x%-")) then
      job.fail(string.format("unknown field '%s' in instance (expected command, cwd, env, stop, ready, "
        .. "restart, limits, name, description or x-*)", tostring(k)))
    end
  end
  return spec
end

-- Take back what a failed run of this job changed (st: what it found and what
-- it did), so the instance is as it was: instance.json, current, previous,
-- the build it staged and the data/ it created (when still empty).
local function roll_back(job, build, st)
  if st.spec_written then
    if st.old_text then fs.write("instance.json", st.old_text) else fs.remove("instance.json") end
  end
  if common.current_build() ~= st.cur then
    if st.cur then fs.link_swap("current", builds.path(st.cur)) else fs.remove("current") end
  end
  if common.current_build("previous") ~= st.prev then
    if st.prev then fs.link_swap("previous", builds.path(st.prev)) else fs.remove("previous") end
  end
  job.unmark("activate")
  if st.staged and common.current_build() ~= build and common.current_build("previous") ~= build then
    fs.remove_tree(builds.path(build))
    builds.forget_source(job, build)
  end
  if st.data_created then
    local l = fs.list("data")
    if l and #l == 0 then fs.remove_tree("data") end
  end
  log.warn(string.format("install of build '%s' failed: the instance is back as it was%s", build,
    st.cur and (" (current -> builds/" .. st.cur .. ")") or ""))
end

return {
  type = "INSTALL_SERVER",
  description = "Install a game server build from a source and create the instance.",
  cancellable = true,
  params = { source = "object", build = "string", instance = "object" },

  run = function(job)
    local p = job.params
    local build = common.check_ident(job, "build", p.build)
    -- {"steam": {...}} installs with SteamCMD (lib/steam.lua); anything else is an archive URL.
    local source = steam.is_steam(p.source) and steam or builds
    local src = source == steam and steam.check_source(job, p.source) or builds.check_source(job, p.source, true)
    local spec = check_spec(job, p.instance)
    -- The monitor's own parser has the last word on the spec (field types,
    -- ranges, the ready regex, placeholders): ask it before downloading
    -- anything, and again against the extracted build before publishing it.
    local sok, serr = instance.check_spec(spec)
    if not sok then job.fail("the instance spec was refused: " .. tostring(serr)) end

    local existing = fs.exists("instance.json") and common.read_json("instance.json") or nil
    local cur = common.current_build()
    local data = fs.stat("data")
    if fs.exists(builds.path(build)) and cur == build and common.same(existing, spec)
      and data and data.type == "dir" then
      local rec = builds.source_of(job, build)
      if not (type(rec) == "table" and type(rec.sha256) == "string" and rec.sha256:lower() ~= src.sha256) then
        common.clean_stale_staging(job)
        job.unmark("download")
        job.step(string.format("build '%s' is already installed and active: nothing to do", build))
        log.info(string.format("build '%s' is already installed and active with this spec: nothing to do", build))
        return { build = build, alreadyInstalled = true }
      end
    end

    if data and data.type ~= "dir" then
      job.fail("'data' exists in the instance but is not a directory")
    end
    if cur and cur ~= build and common.is_running(common.instance_state(job)) then
      job.fail(string.format("instance '%s' is running build '%s': stop it first, or use UPDATE_SERVER "
        .. "with activate to switch builds", job.instance_id, cur))
    end
    local keep, resume = source.resumable(job, src)
    common.clean_stale_staging(job, keep)
    common.clean_temp_files(job, ".")
    common.clean_temp_files(job, "builds")

    local st = { cur = cur, prev = common.current_build("previous"),
                 old_text = fs.exists("instance.json") and fs.read("instance.json") or nil }
    local act
    common.guard(function()
      if not (data and data.type == "dir") then
        -- first, so the spec's cwd (usually data) can be resolved against the build
        common.must(job, "cannot create data/", fs.mkdir("data"))
        st.data_created = true
      end
      local function check(dir)
        local ok, err = instance.check_spec(spec, dir)
        if not ok then
          job.fail(string.format("build '%s' cannot run this instance spec: %s", build, tostring(err)))
        end
      end
      st.staged = source.stage(job, build, src, 2, 85, resume, check)
      if not st.staged then check(builds.path(build)) end
      job.checkpoint()

      job.progress(92, "activating build '" .. build .. "'")
      act = builds.activate(job, build, { restart = false })

      if not common.same(existing, spec) then
        job.progress(96, "writing instance.json")
        st.spec_written = true
        common.write_json(job, "instance.json", spec)
        local ok, perr = instance.spec()
        if not ok then job.fail("the instance spec was refused: " .. tostring(perr)) end
      end
    end, function() roll_back(job, build, st) end)
    common.clean_stale_staging(job)
    log.info(string.format("build '%s' installed%s", build, st.staged and "" or " (it was already staged)"))
    return { build = build, alreadyInstalled = false, previous = act.previous }
  end,
}
