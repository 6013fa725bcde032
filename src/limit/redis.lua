-- tiergate: one atomic decision over every window of one identity, plus its concurrency lease.
--
-- KEYS[1..n]   the identity's window keys ({prefix}:{identity}:<window>); KEYS[n+1] its lease set
-- ARGV[1]      "take" (consume if every window and the lease have room) | "peek" (read only)
-- ARGV[2]      algorithm: 1 sliding_log, 2 gcra, 3 fixed_window
-- ARGV[3]      n, the number of windows
-- ARGV[4]      time offset in ms added to Redis TIME (0 in production; tests move time with it)
-- ARGV[5]      concurrency cap (-1: none)
-- ARGV[6]      lease TTL in ms
-- ARGV[7]      lease member (unique per request)
-- ARGV[8..]    per window: limit, window length in ms
--
-- Returns {allowed, now_ms, concurrency_full, in_flight, then per window: remaining, reset_ms, retry_ms}.
-- The arithmetic mirrors src/limit/local.rs exactly (the test suite compares the two).

local mode = ARGV[1]
local alg = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local lease_ttl = tonumber(ARGV[6])
local member = ARGV[7]

local function fmt(x) return string.format('%.0f', x) end

local vals = {}
if n > 0 then vals = redis.call('MGET', unpack(KEYS, 1, n)) end

local out = {0, now, 0, 0}
local allowed = true
local writes = {}

for i = 1, n do
  local limit = tonumber(ARGV[6 + 2 * i])
  local w = math.max(1, tonumber(ARGV[7 + 2 * i]))
  local v = vals[i]
  local remaining, reset, retry, ok = 0, 0, 0, false
  if alg == 1 then
    -- Bucketed sliding log: "end:count,end:count,..." oldest first, buckets of width max(1, w/60).
    local width = math.max(1, math.floor(w / 60))
    local floor_t = now - w
    local ends, counts, total = {}, {}, 0
    if v then
      for e, c in string.gmatch(v, '(%d+):(%d+)') do
        e = tonumber(e); c = tonumber(c)
        if e > floor_t then
          ends[#ends + 1] = e; counts[#counts + 1] = c; total = total + c
        end
      end
    end
    local bucket_end = now - (now % width) + width
    if total < limit then
      ok = true
      remaining = limit - total - 1
      reset = (ends[1] or bucket_end) + w
      if #ends > 0 and ends[#ends] >= bucket_end then
        counts[#counts] = counts[#counts] + 1
      else
        ends[#ends + 1] = bucket_end; counts[#counts + 1] = 1
      end
      local parts = {}
      for j = 1, #ends do parts[j] = fmt(ends[j]) .. ':' .. fmt(counts[j]) end
      writes[#writes + 1] = {KEYS[i], table.concat(parts, ','), ends[#ends] + w - now}
    else
      local need = total + 1 - limit
      local dropped = 0
      retry = now + w
      for j = 1, #ends do
        dropped = dropped + counts[j]
        if dropped >= need then retry = ends[j] + w; break end
      end
      if limit == 0 then retry = now + w end
      reset = retry
    end
  elseif alg == 2 then
    -- GCRA: the theoretical arrival time in microseconds.
    if limit == 0 then
      reset = now + w; retry = now + w
    else
      local tat = tonumber(v or '0')
      local now_us = now * 1000
      local interval = math.ceil(w * 1000 / limit)
      local new_tat = math.max(tat, now_us) + interval
      local horizon = now_us + w * 1000
      if new_tat <= horizon then
        ok = true
        remaining = math.min(math.floor((horizon - new_tat) / interval), limit - 1)
        reset = math.ceil(new_tat / 1000)
        writes[#writes + 1] = {KEYS[i], fmt(new_tat), reset - now + 1}
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
      writes[#writes + 1] = {KEYS[i], fmt(start) .. ':' .. fmt(count + 1), window_end - now}
    else
      retry = window_end
    end
  end
  if not ok then allowed = false end
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
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
if allowed and mode == 'take' then
  for _, wr in ipairs(writes) do
    redis.call('SET', wr[1], wr[2], 'PX', fmt(math.max(1, wr[3])))
  end
  if cap >= 0 then
    local lkey = KEYS[n + 1]
    redis.call('ZADD', lkey, fmt(now + lease_ttl), member)
    redis.call('PEXPIRE', lkey, fmt(lease_ttl))
  end
end
return out
