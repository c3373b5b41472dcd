-- lib/retention.lua — which backups a retention policy keeps (PRUNE_BACKUPS).
--
-- Pure Lua, no file access: the job script lists the backups and removes
-- files; this module only decides. The semantics are restic's `forget`
-- policy:
--   * backups are considered newest first;
--   * keepLast n keeps the n newest;
--   * keepHourly/Daily/Weekly/Monthly/Yearly n: walking newest to oldest, a
--     backup whose calendar bucket (UTC hour, day, ISO week starting Monday,
--     month, year) differs from the previous bucket kept by that rule is kept
--     and uses up one count; so each rule keeps the newest backup of each of
--     the n most recent buckets that contain any backup;
--   * if a count rule still has counts left when the oldest backup is reached,
--     the oldest backup is kept too (it maximises the history kept);
--   * -1 as a count means "unlimited" (restic's `unlimited`);
--   * keepWithin "1y2m3d4h" keeps every backup strictly newer than the newest
--     backup (ignoring backups timestamped in the future) minus that duration,
--     using calendar arithmetic for years and months;
--   * rules are ORed: a backup kept by any rule is kept, and may be kept by
--     several (its reasons list them all);
--   * an empty policy (no rule, or only zero counts) is refused.
-- On top of restic, the newest backup is always kept (reason "newest").
-- All calendar buckets are in UTC, whatever the host's time zone.
local M = {}

local COUNT_RULES = {
  { key = "keepLast", reason = "last" },
  { key = "keepHourly", reason = "hourly" },
  { key = "keepDaily", reason = "daily" },
  { key = "keepWeekly", reason = "weekly" },
  { key = "keepMonthly", reason = "monthly" },
  { key = "keepYearly", reason = "yearly" },
}
M.POLICY_KEYS = { "keepLast", "keepHourly", "keepDaily", "keepWeekly", "keepMonthly",
                  "keepYearly", "keepWithin" }

-- Days since 1970-01-01 of a proleptic Gregorian date (month may be any
-- integer 1..12, day any integer: overflow rolls into the next month like
-- Go's time.Date, which restic relies on for AddDate).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = (153 * mp + 2) // 5
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468 + (d - 1)
end
M.days_from_civil = days_from_civil

-- The inverse: civil date of a day number.
local function civil_from_days(z)
  z = z + 719468
  local era = (z >= 0 and z or z - 146096) // 146097
  local doe = z - era * 146097
  local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
  local mp = (5 * doy + 2) // 153
  local d = doy - (153 * mp + 2) // 5 + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end
M.civil_from_days = civil_from_days

-- UTC fields of a time in seconds since the epoch (fractions ignored).
local function utc(t)
  local secs = math.floor(t)
  local days = secs // 86400
  local sod = secs - days * 86400
  local y, m, d = civil_from_days(days)
  return { year = y, month = m, day = d, hour = sod // 3600, days = days, sod = sod }
end
M.utc = utc

-- ISO 8601 week: (ISO year, week 1..53); weeks start on Monday.
local function iso_week(days)
  local wday = (days + 3) % 7 + 1 -- 1970-01-01 was a Thursday: Monday = 1 .. Sunday = 7
  local thursday = days + (4 - wday)
  local ty = civil_from_days(thursday)
  local jan1 = days_from_civil(ty, 1, 1)
  return ty, (thursday - jan1) // 7 + 1
end
M.iso_week = iso_week

local BUCKETS = {
  keepLast = function(_, nr) return nr end, -- every backup is its own bucket
  keepHourly = function(u) return ((u.year * 100 + u.month) * 100 + u.day) * 100 + u.hour end,
  keepDaily = function(u) return (u.year * 100 + u.month) * 100 + u.day end,
  keepWeekly = function(u) local y, w = iso_week(u.days); return y * 100 + w end,
  keepMonthly = function(u) return u.year * 100 + u.month end,
  keepYearly = function(u) return u.year end,
}

-- "2019-09-01T11:00:00Z", optional fraction, "Z" or "+hh:mm"/"-hh:mm".
-- Returns seconds since the epoch (UTC), or nil and a message.
function M.parse_time(s)
  if type(s) ~= "string" then return nil, "timestamp must be a string" end
  local y, mo, d, h, mi, se, rest =
    s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil, "not an ISO 8601 timestamp: '" .. s .. "'" end
  y, mo, d, h, mi, se = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(se)
  if mo < 1 or mo > 12 or d < 1 or d > 31 or h > 23 or mi > 59 or se > 60 then
    return nil, "timestamp out of range: '" .. s .. "'"
  end
  local frac = 0
  local f, tz = rest:match("^%.(%d+)(.*)$")
  if f then frac = tonumber("0." .. f); rest = tz end
  local offset
  if rest == "Z" or rest == "z" then
    offset = 0
  else
    local sign, oh, om = rest:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then return nil, "timestamp needs a time zone (Z or +hh:mm): '" .. s .. "'" end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  end
  local days = days_from_civil(y, mo, d)
  return days * 86400 + h * 3600 + mi * 60 + se + frac - offset
end

-- "2024-05-01T10:00:00Z" for a time in seconds since the epoch.
function M.format_time(t)
  local u = utc(t)
  local sod = u.sod
  return string.format("%04d-%02d-%02dT%02d:%02d:%02dZ", u.year, u.month, u.day,
                       sod // 3600, (sod // 60) % 60, sod % 60)
end

-- restic's duration: numbers each followed by y (years), m (months), d (days)
-- or h (hours), e.g. "7d", "1y2m3d4h". Each unit at most once; the total must
-- not be zero. Returns {years, months, days, hours} or nil and a message.
function M.parse_duration(s)
  if type(s) ~= "string" then return nil, "duration must be a string like \"7d\"" end
  local str = s:match("^%s*(.-)%s*$")
  if str == "" then return nil, "empty duration (use e.g. \"7d\" or \"1y2m3d4h\")" end
  local dur = { years = 0, months = 0, days = 0, hours = 0 }
  local names = { y = "years", m = "months", d = "days", h = "hours" }
  local seen = {}
  local pos = 1
  while pos <= #str do
    local num, unit, nxt = str:match("^(%d+)(%a?)()", pos)
    if not num then
      return nil, "invalid duration '" .. s .. "': expected a number at position " .. pos
    end
    if unit == "" then
      return nil, "invalid duration '" .. s .. "': no unit after " .. num .. " (use y, m, d or h)"
    end
    local field = names[unit]
    if not field then
      return nil, "invalid duration '" .. s .. "': unknown unit '" .. unit .. "' (use y, m, d or h)"
    end
    if seen[unit] then
      return nil, "invalid duration '" .. s .. "': unit '" .. unit .. "' given twice"
    end
    if #num > 6 then return nil, "invalid duration '" .. s .. "': number too large" end
    seen[unit] = true
    dur[field] = tonumber(num)
    pos = nxt
  end
  if dur.years + dur.months + dur.days + dur.hours == 0 then
    return nil, "invalid duration '" .. s .. "': it is zero"
  end
  return dur
end

-- t minus a duration, with calendar years and months (day overflow rolls
-- over, e.g. 31 March minus one month is 3 March), then hours.
function M.subtract(t, dur)
  local u = utc(t)
  local months = u.year * 12 + (u.month - 1) - dur.years * 12 - dur.months
  local y, m = months // 12, months % 12 + 1
  local days = days_from_civil(y, m, 1) + (u.day - 1) - dur.days
  return days * 86400 + u.sod + (t - math.floor(t)) - dur.hours * 3600
end

local function describe(policy)
  local parts = {}
  for _, r in ipairs(COUNT_RULES) do
    local n = policy[r.key]
    if n and n ~= 0 then
      parts[#parts + 1] = (n < 0 and "all " or (n .. " ")) .. r.reason
    end
  end
  if policy.keepWithin then parts[#parts + 1] = "all within " .. policy.keepWithin end
  return "keep " .. table.concat(parts, ", ")
end

-- Check a policy table as given in the job params. Returns a normalised
-- policy {keepLast = n, ..., keepWithin = "7d", within = {..}, text = ".."}
-- or nil and a message naming the bad field.
function M.validate(p)
  if type(p) ~= "table" then return nil, "policy must be a table" end
  local out = {}
  local any = false
  for _, r in ipairs(COUNT_RULES) do
    local v = p[r.key]
    if v ~= nil then
      if math.type(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) then
        return nil, r.key .. " must be a whole number (or -1 for unlimited)"
      end
      v = math.tointeger(v)
      if v == nil or v < -1 then
        return nil, r.key .. " must be 0 or more, or -1 for unlimited, got " .. tostring(p[r.key])
      end
      out[r.key] = v
      if v ~= 0 then any = true end
    end
  end
  if p.keepWithin ~= nil then
    local dur, err = M.parse_duration(p.keepWithin)
    if not dur then return nil, "keepWithin: " .. err end
    out.keepWithin = p.keepWithin
    out.within = dur
    any = true
  end
  if not any then
    return nil, "empty retention policy: give at least one of keepLast, keepHourly, keepDaily, "
      .. "keepWeekly, keepMonthly, keepYearly or keepWithin (an empty policy would remove "
      .. "every backup, so it is refused)"
  end
  out.text = describe(out)
  return out
end

-- Apply a validated policy to items {id = "...", time = seconds, ...}.
-- now (seconds) is used only to ignore future timestamps when finding the
-- newest backup for keepWithin. Returns keep, remove: arrays of the items
-- (newest first); kept items get a `reasons` array.
function M.apply(items, policy, now)
  local list = {}
  for i, it in ipairs(items) do list[i] = it end
  table.sort(list, function(a, b)
    if a.time ~= b.time then return a.time > b.time end
    return a.id > b.id
  end)
  local keep, remove = {}, {}
  if #list == 0 then return keep, remove end

  local latest
  for _, it in ipairs(list) do
    if it.time < now and (latest == nil or it.time > latest) then latest = it.time end
  end
  local within_from
  if policy.within then
    -- With every backup in the future there is no newest; keep them all.
    within_from = latest and M.subtract(latest, policy.within) or -math.huge
  end

  local state = {}
  for _, r in ipairs(COUNT_RULES) do
    local n = policy[r.key]
    if n and n ~= 0 then state[#state + 1] = { rule = r, count = n, last = nil } end
  end

  for nr, it in ipairs(list) do
    local reasons = {}
    if nr == 1 then reasons[#reasons + 1] = "newest" end
    if within_from and it.time > within_from then
      reasons[#reasons + 1] = "within " .. policy.keepWithin
    end
    local u = utc(it.time)
    for _, s in ipairs(state) do
      if s.count ~= 0 then
        local val = BUCKETS[s.rule.key](u, nr)
        if val ~= s.last then
          s.last = val
          if s.count > 0 then s.count = s.count - 1 end
          reasons[#reasons + 1] = s.rule.reason
        elseif nr == #list then
          -- Counts left at the oldest backup: keep it too (restic's "oldest").
          if s.count > 0 then s.count = s.count - 1 end
          reasons[#reasons + 1] = "oldest " .. s.rule.reason
        end
      end
    end
    if #reasons > 0 then
      it.reasons = reasons
      keep[#keep + 1] = it
    else
      remove[#remove + 1] = it
    end
  end
  return keep, remove
end

return M
