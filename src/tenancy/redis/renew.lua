-- Pushes the expiry of the leases this gateway still runs; a lease that already expired (and
-- was reclaimed by an admission) is not brought back.
--
-- KEYS: 1 leases, 2 holds. ARGV: 1 now ('' = Redis TIME), 2 lease ttl, 3... ids.
-- Reply: how many leases were renewed.

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local ttl = tonumber(ARGV[2])
local expiry = string.format('%.0f', now + ttl)
local renewed = 0
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
    renewed = renewed + 1
  end
end
local keep = math.floor(ttl / 1000) * 2 + 1000
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return renewed
