-- Take up to ARGV[1] PV: gifts first, then packages, each oldest first; expired
-- buckets (now >= expires_at) are skipped and dropped from the live set.
-- O(1) in the common case: the head of the live set pays, or the cached refusal answers.
-- Reply: {granted, reason, now_ms, bucket_1, n_1, bucket_2, n_2, ...};
-- reason is '' when all were granted, else why the rest were refused.
local want = positive_int(ARGV[1], 'n')
if type(want) == 'table' then
  return want
end
local now = now_ms()
local state = redis.call('HMGET', META, 'suspended', 'blocked')
if state[1] == '1' then
  return {0, 'suspended', now}
end
if state[2] then
  return {0, state[2], now}
end

local reply = {0, '', now}
local left = want
while left > 0 do
  local id = redis.call('ZRANGE', LIVE, 0, 0)[1]
  if not id then
    break
  end
  local v = redis.call('HMGET', BUCKETS, id .. '|g', id .. '|u', id .. '|x')
  local granted, used, expires_at = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  if now < expires_at and used < granted then
    local take = math.min(left, granted - used)
    redis.call('HINCRBY', BUCKETS, id .. '|u', take)
    reply[#reply + 1] = id
    reply[#reply + 1] = take
    left = left - take
    used = used + take
  end
  if used >= granted or now >= expires_at then
    redis.call('ZREM', LIVE, id)
  end
end

reply[1] = want - left
if left > 0 then
  local reason = block_reason(now)
  reply[2] = reason
  redis.call('HSET', META, 'blocked', reason)
end
return reply
