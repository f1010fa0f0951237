-- Books one admission's usage, once: a settle retried after a timeout (which may have run)
-- finds the settled marker and changes nothing. An id that was never admitted (its admission
-- timed out before the script ran) only leaves the marker, which keeps that late admission
-- out (admit.lua returns 6).
--
-- KEYS: 1 requests TAT, 2 tokens TAT, 3 leases, 4 holds, 5 spent of the admission's month,
--       6 admitted record of this id, 7 settled marker of this id.
-- ARGV: 1 now ('' = Redis TIME), 2 id, 3 token interval, 4 unused tokens, 5 charge,
--       6 spent seed, 7 settled ttl ms, 8 spent ttl ms.
-- Reply: {booked (1) or not (0), 0, requests ahead, tokens ahead, leases}.

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local id = ARGV[2]

local function ahead(key)
  local tat = tonumber(redis.call('GET', key))
  if tat and tat > now then return tat - now end
  return 0
end
local function reply(booked)
  return {booked, 0, ahead(KEYS[1]), ahead(KEYS[2]), redis.call('ZCARD', KEYS[3])}
end

if not redis.call('SET', KEYS[7], '1', 'NX', 'PX', ARGV[7]) then
  return reply(0)
end
if redis.call('DEL', KEYS[6]) == 0 then
  return reply(0)
end

redis.call('ZREM', KEYS[3], id)
redis.call('HDEL', KEYS[4], id)
-- Give back the unused tokens; a TAT pushed into the past means a full bucket, as locally.
local tok_tat = tonumber(redis.call('GET', KEYS[2]))
if tok_tat then
  local refunded = tok_tat - tonumber(ARGV[4]) * tonumber(ARGV[3])
  redis.call('SET', KEYS[2], string.format('%.0f', refunded), 'KEEPTTL')
end
if redis.call('EXISTS', KEYS[5]) == 0 then
  redis.call('SET', KEYS[5], ARGV[6], 'PX', ARGV[8])
end
redis.call('INCRBY', KEYS[5], ARGV[5])
return reply(1)
