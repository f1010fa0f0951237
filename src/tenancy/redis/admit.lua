-- One admission, all-or-nothing: the same checks as LocalLimiter::admit_now (requests, tokens,
-- concurrency, budget), then the same writes, in one script so that no other gateway can
-- interleave. Times are integer microseconds (exact in Lua's doubles up to 2^53).
--
-- KEYS: 1 requests TAT, 2 tokens TAT, 3 leases (zset id -> expiry), 4 holds (hash id -> hold),
--       5 spent this month, 6 admitted record of this id, 7 settled marker of this id.
-- ARGV: 1 now ('' = Redis TIME), 2 id, 3 request interval, 4 request burst, 5 token interval,
--       6 token burst, 7 tokens asked, 8 max concurrent, 9 budget (-1 = none), 10 worst charge,
--       11 spent seed (the ledger's month-to-date), 12 lease ttl, 13 record ttl ms,
--       14 spent ttl ms.
-- Reply: {code, wait, requests ahead, tokens ahead, leases}; code 0 admitted, 1 requests,
--        2 tokens, 3 too large, 4 concurrency, 5 budget, 6 already settled (a late retry).

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local id = ARGV[2]

-- A lease whose gateway stopped renewing it is gone, and so is its budget hold.
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, gone in ipairs(expired) do
  redis.call('HDEL', KEYS[4], gone)
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
end

local function ahead(tat)
  if tat and tat > now then return tat - now end
  return 0
end
local req_tat = tonumber(redis.call('GET', KEYS[1]))
local tok_tat = tonumber(redis.call('GET', KEYS[2]))
local leases = redis.call('ZCARD', KEYS[3])
local function reply(code, wait)
  return {code, wait, ahead(req_tat), ahead(tok_tat), leases}
end

if redis.call('EXISTS', KEYS[7]) == 1 then
  return reply(6, 0)
end

-- GCRA: admit n cells iff max(TAT, now) + n*t - now <= burst*t.
local function check(tat, n, t, burst)
  if n > burst then return 3, 0 end
  local start = now
  if tat and tat > now then start = tat end
  local next_tat = start + n * t
  local over = next_tat - now - burst * t
  if over <= 0 then return 0, next_tat end
  return 1, over
end

local code, req_next = check(req_tat, 1, tonumber(ARGV[3]), tonumber(ARGV[4]))
if code == 3 then return reply(3, 0) end
if code == 1 then return reply(1, req_next) end
local tok_next
code, tok_next = check(tok_tat, tonumber(ARGV[7]), tonumber(ARGV[5]), tonumber(ARGV[6]))
if code == 3 then return reply(3, 0) end
if code == 1 then return reply(2, tok_next) end
if leases >= tonumber(ARGV[8]) then return reply(4, 0) end

local budget = tonumber(ARGV[9])
local worst = tonumber(ARGV[10])
if redis.call('EXISTS', KEYS[5]) == 0 then
  redis.call('SET', KEYS[5], ARGV[11], 'PX', ARGV[14])
end
if budget >= 0 then
  local held = 0
  for _, h in ipairs(redis.call('HVALS', KEYS[4])) do held = held + tonumber(h) end
  if tonumber(redis.call('GET', KEYS[5])) + held + worst > budget then
    return reply(5, 0)
  end
end

-- Every check passed: write. A TAT key outlives its TAT by a second, after which an absent
-- key means the same (a full bucket).
local function store(key, tat)
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
end
store(KEYS[1], req_next)
store(KEYS[2], tok_next)
req_tat, tok_tat = req_next, tok_next
local lease_ttl = tonumber(ARGV[12])
redis.call('ZADD', KEYS[3], string.format('%.0f', now + lease_ttl), id)
redis.call('HSET', KEYS[4], id, ARGV[10])
local keep = math.floor(lease_ttl / 1000) * 2 + 1000
redis.call('PEXPIRE', KEYS[3], keep)
redis.call('PEXPIRE', KEYS[4], keep)
redis.call('SET', KEYS[6], '1', 'PX', ARGV[13])
leases = leases + 1
return reply(0, 0)
