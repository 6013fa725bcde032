-- tiergate: the return script. Gives many reservations' unspent units back in one call.
--
-- KEYS[i]           a window key holding reserved units
-- ARGV[1]           time offset in ms added to Redis TIME (0 in production)
-- ARGV[2 + 5(i-1)…] per key: algorithm, units, anchor (Redis ms of the reserving call), limit, window ms
--
-- Every key keeps its TTL (the moment its data stops mattering does not move back). Returns how many
-- keys changed. On Redis Cluster the caller sends one call per hash tag.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local vals = redis.call('MGET', unpack(KEYS))
-- One key may come several times (several reservations of one caller): each return starts from
-- what the one before it left, and each key is written once, at the end.
local current, order = {}, {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local v = current[k]
  if v == nil then v = vals[i] end
  local a = 2 + 5 * (i - 1)
  local nv = give_back(tonumber(ARGV[a]), v, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
    tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), now)
  if nv then
    if current[k] == nil then order[#order + 1] = k end
    current[k] = nv
  end
end
for _, k in ipairs(order) do redis.call('SET', k, current[k], 'KEEPTTL') end
return #order
