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
    -- Bucketed sliding log, buckets of width max(1, w/60): "total|end:count,end:count,..." oldest
    -- first, where total is the sum of the listed counts. Only expired buckets at the front and the
    -- newest bucket are parsed on the admit path; the rest of the string is copied untouched.
    local width = math.max(1, math.floor(w / 60))
    local floor_t = now - w
    local total, body = 0, ''
    if v then
      local bar = string.find(v, '|', 1, true)
      if bar then
        total = tonumber(string.sub(v, 1, bar - 1))
        body = string.sub(v, bar + 1)
      end
    end
    local pos, len = 1, #body
    while pos <= len do
      local colon = string.find(body, ':', pos, true)
      if tonumber(string.sub(body, pos, colon - 1)) > floor_t then break end
      local comma = string.find(body, ',', colon, true) or (len + 1)
      total = total - tonumber(string.sub(body, colon + 1, comma - 1))
      pos = comma + 1
    end
    if pos > 1 then body = string.sub(body, pos) end
    local bucket_end = now - (now % width) + width
    if total < limit then
      ok = true
      remaining = limit - total - 1
      local first_end = tonumber(string.match(body, '^(%d+)') or '')
      reset = (first_end or bucket_end) + w
      -- The newest bucket: after the last comma (searched from the end).
      local head, last_end, last_count = '', nil, 0
      if #body > 0 then
        local from_end = string.find(string.reverse(body), ',', 1, true)
        local start = from_end and (#body - from_end + 2) or 1
        head = string.sub(body, 1, start - 1)
        local colon = string.find(body, ':', start, true)
        last_end = tonumber(string.sub(body, start, colon - 1))
        last_count = tonumber(string.sub(body, colon + 1))
      end
      local tail
      if last_end and last_end >= bucket_end then
        tail = fmt(last_end) .. ':' .. fmt(last_count + 1)
      elseif last_end then
        tail = fmt(last_end) .. ':' .. fmt(last_count) .. ',' .. fmt(bucket_end) .. ':1'
        last_end = bucket_end
      else
        tail = fmt(bucket_end) .. ':1'
        last_end = bucket_end
      end
      writes[#writes + 1] = {KEYS[i], fmt(total + 1) .. '|' .. head .. tail, last_end + w - now}
    else
      local need = total + 1 - limit
      local dropped = 0
      retry = now + w
      for e, c in string.gmatch(body, '(%d+):(%d+)') do
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
