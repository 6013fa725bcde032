-- tiergate: one atomic decision over every window of one identity, plus its concurrency lease.
--
-- KEYS[1..n]   the identity's window keys ({prefix}:{identity}:<window>); KEYS[n+1] its lease set
-- ARGV[1]      "take" (consume if every window and the lease have room) | "peek" (read only)
-- ARGV[2]      algorithm: 1 sliding_log, 2 gcra, 3 fixed_window
-- ARGV[3]      n, the number of windows
-- ARGV[4]      time offset in ms added to Redis TIME (0 in production; tests move time with it)
-- ARGV[5]      concurrency cap (-1: none)
-- ARGV[6]      lease TTL in ms
-- ARGV[7]      lease member (unique per request); extra slots get ".1", ".2", … appended
-- ARGV[8]      quota batching: further units to reserve beyond the request (0: none)
-- ARGV[9]      quota batching: further concurrency slots to lease beyond the request's (0: none)
-- ARGV[10]     quota batching: unspent units of this caller's last reservation, given back first
-- ARGV[11]     the Redis time (ms) of that reservation
-- ARGV[12..]   per window: limit, window length in ms
--
-- Returns {allowed, now_ms, concurrency_full, in_flight, then per window: remaining, reset_ms, retry_ms,
-- then units reserved, extra slots leased}. Without batching (ARGV[8..11] all 0) the arithmetic mirrors
-- src/limit/local.rs exactly (the test suite compares the two).
--
-- A reservation is taken only when the request is admitted, and is the same k units in every window
-- (one unit admits one request, which counts in all of them): k = min(ARGV[8], the fewest units any
-- window has left after this request / 4). A quarter of what is left keeps a replica from taking the
-- last units of a window other replicas still need, and falls to 0 near the limit, where Redis decides
-- every request. Extra slots likewise: min(ARGV[9], free slots after this request / 2).

local mode = ARGV[1]
local alg = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local lease_ttl = tonumber(ARGV[6])
local member = ARGV[7]
local want_units = tonumber(ARGV[8])
local want_slots = tonumber(ARGV[9])
local back_units = tonumber(ARGV[10])
local back_anchor = tonumber(ARGV[11])

local function fmt(x) return string.format('%.0f', x) end
-- Whole milliseconds (13 digits) and counts concatenate exactly with `..` (Lua prints up to 14
-- significant digits); only GCRA's microsecond times need fmt.

local vals = {}
if n > 0 then vals = redis.call('MGET', unpack(KEYS, 1, n)) end

-- A caller's own expired reservation comes back before its next decision (same keys, same call).
local returned
if back_units > 0 then
  returned = {}
  for i = 1, n do
    local nv = give_back(alg, vals[i], back_units, back_anchor, tonumber(ARGV[10 + 2 * i]),
      tonumber(ARGV[11 + 2 * i]), now)
    if nv then vals[i] = nv; returned[i] = true end
  end
end

local out = {0, now, 0, 0}
local allowed = true
-- Per admitting window, what its new value is made of once the reservation k is known:
-- sliding log  head[i] .. (base[i] + 1 + k)  with  total[i] + 1 + k  in front
-- gcra         base[i] + k * step[i]          (microseconds)
-- fixed        head[i] .. (base[i] + 1 + k)
local head, base, total_of, step, ttl_of = {}, {}, {}, {}, {}
local o = 4

for i = 1, n do
  local limit = tonumber(ARGV[10 + 2 * i])
  local w = math.max(1, tonumber(ARGV[11 + 2 * i]))
  local v = vals[i]
  local remaining, reset, retry, ok = 0, 0, 0, false
  if alg == 1 then
    -- Bucketed sliding log, buckets of width max(1, w/60): "total|end:count,end:count,..." oldest
    -- first, where total is the sum of the listed counts. The admit path reads the total, the
    -- front bucket (expired ones are dropped) and the newest bucket; the rest is copied untouched.
    local width = math.max(1, math.floor(w / 60))
    local floor_t = now - w
    local bucket_end = now - (now % width) + width
    local total, pos, first_end = 0, 1, nil
    local bar = v and string.find(v, '|', 1, true)
    if bar then
      total = tonumber(string.sub(v, 1, bar - 1))
      pos = bar + 1
      while true do
        local e, c, nxt = string.match(v, '^(%d+):(%d+),?()', pos)
        if not e then break end
        e = tonumber(e)
        if e > floor_t then first_end = e; break end
        total = total - tonumber(c)
        pos = nxt
      end
    else
      v = ''
    end
    if total < limit then
      ok = true
      remaining = limit - total - 1
      reset = (first_end or bucket_end) + w
      local ttl_end = bucket_end
      if first_end then
        -- The newest bucket starts after the last comma.
        local last = string.match(v, '^.*,()', pos) or pos
        local le, lc = string.match(v, '^(%d+):(%d+)', last)
        le = tonumber(le)
        if le >= bucket_end then
          head[i] = string.sub(v, pos, last - 1) .. le .. ':'
          base[i] = tonumber(lc)
          ttl_end = le
        else
          head[i] = string.sub(v, pos) .. ',' .. bucket_end .. ':'
          base[i] = 0
        end
      else
        head[i] = bucket_end .. ':'
        base[i] = 0
      end
      total_of[i] = total
      ttl_of[i] = ttl_end + w - now
    else
      local need = total + 1 - limit
      local dropped = 0
      retry = now + w
      for e, c in string.gmatch(string.sub(v, pos), '(%d+):(%d+)') do
        dropped = dropped + tonumber(c)
        if dropped >= need then retry = tonumber(e) + w; break end
      end
      if limit == 0 then retry = now + w end
      reset = retry
    end
  elseif alg == 2 then
    -- GCRA: the theoretical arrival time in microseconds.
    if limit == 0 then
      reset = now + w; retry = now + w
    else
      -- Anything else in the key (another algorithm's state after a reload) starts afresh.
      local tat = tonumber(v) or 0
      local now_us = now * 1000
      local interval = math.ceil(w * 1000 / limit)
      local new_tat = math.max(tat, now_us) + interval
      local horizon = now_us + w * 1000
      if new_tat <= horizon then
        ok = true
        remaining = math.min(math.floor((horizon - new_tat) / interval), limit - 1)
        reset = math.ceil(new_tat / 1000)
        base[i] = new_tat
        step[i] = interval
      else
        retry = math.ceil((new_tat - w * 1000) / 1000)
        reset = retry
      end
    end
  else
    -- Fixed window: "start:count", windows aligned to the epoch (UTC minute/hour/day).
    local start = now - (now % w)
    local count = 0
    if v then
      local s, c = string.match(v, '(%d+):(%d+)')
      if tonumber(s) == start then count = tonumber(c) end
    end
    local window_end = start + w
    reset = window_end
    if count < limit then
      ok = true
      remaining = limit - count - 1
      head[i] = start .. ':'
      base[i] = count
      ttl_of[i] = window_end - now
    else
      retry = window_end
    end
  end
  if not ok then allowed = false end
  out[o + 1] = remaining
  out[o + 2] = reset
  out[o + 3] = retry
  o = o + 3
end

if cap >= 0 then
  local lkey = KEYS[n + 1]
  redis.call('ZREMRANGEBYSCORE', lkey, '-inf', now)
  local in_flight = redis.call('ZCARD', lkey)
  out[4] = in_flight
  if in_flight >= cap then
    out[3] = 1
    allowed = false
  end
end

if allowed then out[1] = 1 end
local k, slots = 0, 0
if allowed and mode == 'take' then
  if want_units > 0 and n > 0 then
    k = want_units
    for i = 1, n do k = math.min(k, math.floor(out[2 + 3 * i] / 4)) end
    for i = 1, n do out[2 + 3 * i] = out[2 + 3 * i] - k end
  end
  for i = 1, n do
    if alg == 1 then
      redis.call('SET', KEYS[i], (total_of[i] + 1 + k) .. '|' .. head[i] .. (base[i] + 1 + k), 'PX',
        math.max(1, ttl_of[i]))
    elseif alg == 2 then
      local tat = base[i] + k * step[i]
      local reset_ms = math.ceil(tat / 1000)
      out[3 + 3 * i] = reset_ms
      redis.call('SET', KEYS[i], fmt(tat), 'PX', math.max(1, reset_ms - now + 1))
    else
      redis.call('SET', KEYS[i], head[i] .. (base[i] + 1 + k), 'PX', math.max(1, ttl_of[i]))
    end
  end
  if cap >= 0 then
    local lkey = KEYS[n + 1]
    local exp = now + lease_ttl
    if want_slots > 0 then slots = math.min(want_slots, math.floor((cap - out[4] - 1) / 2)) end
    if slots > 0 then
      local args = {exp, member}
      for j = 1, slots do args[#args + 1] = exp; args[#args + 1] = member .. '.' .. j end
      redis.call('ZADD', lkey, unpack(args))
    else
      redis.call('ZADD', lkey, exp, member)
    end
    redis.call('PEXPIRE', lkey, lease_ttl)
  end
else
  -- A refused (or peeked) decision writes nothing of its own, but what came back must stay back.
  for i = 1, n do
    if returned and returned[i] then redis.call('SET', KEYS[i], vals[i], 'KEEPTTL') end
  end
end
out[o + 1] = k
out[o + 2] = slots
return out
