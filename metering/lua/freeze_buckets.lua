-- Stop packages for a refund and read their final used in the same atomic step.
-- ARGV: package bucket ids.  Idempotent: a package refunded already answers its used
-- again, so a retried refund reads the same figures.
-- Reply: {used_1, used_2, ...}, -1 for an id that does not exist.
local now = now_ms()
for _, id in ipairs(ARGV) do
  local kind = redis.call('HGET', BUCKETS, id .. '|k')
  if kind and kind ~= 'package' then
    return redis.error_reply('ERR freeze: bucket ' .. id .. ' is a ' .. kind .. ', not a package')
  end
end
local reply = {}
for i, id in ipairs(ARGV) do
  local b = load_bucket(id)
  if not b then
    reply[i] = -1
  else
    if b.status == 'active' then
      redis.call('HSET', BUCKETS, id .. '|s', 'refunded')
      b.status = 'refunded'
      refresh(id, b, now)
    end
    reply[i] = b.used
  end
end
return reply
