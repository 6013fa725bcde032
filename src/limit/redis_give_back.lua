-- tiergate: giving reserved units back (quota batching). Shared by the decision script (a caller's
-- own expired reservation rides along with its next decision) and the return script (many callers'
-- reservations in one call). Prepended to both scripts, so it defines functions only.
--
-- give_back(alg, v, units, anchor, limit, w, now) -> the window's new value, or nil (nothing to change)
--   alg     1 sliding_log, 2 gcra, 3 fixed_window
--   v       the window key's current value (false/nil: the key is gone, so is what was reserved)
--   units   how many reserved units were not spent
--   anchor  Redis time (ms) of the call that reserved them
-- The units go back where they were taken: the sliding log's bucket that holds them (only while it is
-- still in the window), the same fixed window's counter, or GCRA's theoretical arrival time. A value
-- never drops below what the window held before the reservation, so nothing counted is lost.

local function give_back(alg, v, units, anchor, limit, w, now)
  if not v or units <= 0 then return nil end
  w = math.max(1, w)
  if alg == 1 then
    local bar = string.find(v, '|', 1, true)
    if not bar then return nil end
    local total = tonumber(string.sub(v, 1, bar - 1))
    local width = math.max(1, math.floor(w / 60))
    local target = anchor - (anchor % width) + width
    if target <= now - w then return nil end
    local parts, changed = {}, false
    for e, c in string.gmatch(string.sub(v, bar + 1), '(%d+):(%d+)') do
      local be, bc = tonumber(e), tonumber(c)
      if be == target and not changed then
        local back = math.min(bc, units)
        bc = bc - back
        total = total - back
        changed = true
      end
      if bc > 0 then parts[#parts + 1] = string.format('%.0f:%.0f', be, bc) end
    end
    if not changed then return nil end
    return string.format('%.0f', total) .. '|' .. table.concat(parts, ',')
  elseif alg == 2 then
    local tat = tonumber(v)
    if not tat or limit <= 0 then return nil end
    local interval = math.ceil(w * 1000 / limit)
    return string.format('%.0f', math.max(0, tat - units * interval))
  else
    local s, c = string.match(v, '(%d+):(%d+)')
    if not s or tonumber(s) ~= anchor - (anchor % w) then return nil end
    return s .. ':' .. string.format('%.0f', math.max(0, tonumber(c) - units))
  end
end
