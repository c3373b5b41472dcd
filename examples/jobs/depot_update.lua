-- depot_update.lua — DEPOT_UPDATE: a SteamCMD-style update driven by http.download.
--
-- The vendor publishes a depot manifest (JSON) listing every file of a build
-- with its URL and SHA-256:
--   { "files": [ { "path": "server", "url": "https://...", "sha256": "...", "mode": 493 }, ... ] }
-- ("mode" is optional: 493 = 0755, or the octal string "755"; without it a
-- file gets 0644. Setuid, setgid and sticky bits are dropped.)
-- This job fetches the manifest (pinned by its own SHA-256), downloads each
-- file into a staging directory (every file verified, and shared through the
-- agent's content cache, so a retry or a second instance downloads nothing
-- twice), then commits the complete tree as builds/<build> in one rename and,
-- with activate = true, points `current` at it atomically.
--
-- Safe to retry after a kill at any instant: builds/<build> either does not
-- exist or is complete; a retry re-downloads only what the cache lacks.
return {
  type = "DEPOT_UPDATE",
  params = {
    manifestUrl = "string",
    manifestSha256 = "string",
    build = "string",
    activate = "boolean?",
  },
  run = function(job)
    local p = job.params
    if not p.build:match("^[A-Za-z0-9][A-Za-z0-9._-]*$") or #p.build > 64 then
      job.fail("build must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    end
    local dest = "builds/" .. p.build
    if fs.exists(dest) then
      log.info("build '" .. p.build .. "' is already installed")
    else
      local stage = fs.staging()
      job.step("fetching the depot manifest")
      assert(http.download(p.manifestUrl, stage .. "/.manifest.json", { sha256 = p.manifestSha256 }))
      local manifest = assert(json.decode(assert(fs.read(stage .. "/.manifest.json"))))
      fs.remove(stage .. "/.manifest.json")
      local files = manifest.files or {}
      if #files == 0 then job.fail("the depot manifest lists no files") end
      for i, f in ipairs(files) do
        job.checkpoint()
        if type(f.path) ~= "string" or f.path:find("%.%.") or f.path:sub(1, 1) == "/" then
          job.fail("depot manifest entry " .. i .. " has a bad path")
        end
        local dir = f.path:match("^(.*)/[^/]+$")
        if dir then fs.mkdir(stage .. "/" .. dir) end
        -- The manifest's mode (a number such as 493, or an octal string such
        -- as "755") is kept: a server binary must stay executable. http.download
        -- keeps only the permission bits, never setuid/setgid/sticky.
        local mode = f.mode
        if type(mode) == "string" then mode = tonumber(mode, 8) or false end
        if mode ~= nil and (math.type(mode) ~= "integer" or mode < 0 or mode > 4095) then
          job.fail("depot manifest entry " .. i .. " ('" .. f.path .. "') has a bad mode")
        end
        local from, to = 5 + 85 * (i - 1) / #files, 5 + 85 * i / #files
        local ok, err = http.download(f.url, stage .. "/" .. f.path,
                                      { sha256 = f.sha256, mode = mode, progress = { from, to } })
        if not ok then job.fail("cannot download '" .. f.path .. "': " .. err, { retryable = true }) end
      end
      job.step("installing build " .. p.build)
      fs.mkdir("builds")
      assert(fs.commit(stage, dest))
    end
    local activated = false
    if p.activate then
      job.step("activating build " .. p.build)
      assert(fs.link_swap("current", dest))
      activated = true
    end
    return { build = p.build, activated = activated }
  end,
}
