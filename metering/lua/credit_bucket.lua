-- Create a bucket; idempotent by bucket id.
-- ARGV: id, kind (gift|package), granted, expires_at (ms), score, order_id, ordered_at (ms)
-- Reply: 1 created; 0 the same bucket exists already (nothing changed);
--        -1 a bucket with this id exists with other terms (nothing changed).
local id, kind = ARGV[1], ARGV[2]
local granted = positive_int(ARGV[3], 'granted')
if type(granted) == 'table' then
  return granted
end
if kind ~= 'gift' and kind ~= 'package' then
  return redis.error_reply('ERR kind must be gift or package, got ' .. tostring(kind))
end
local expires_at, score, order_id, ordered_at = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if not tonumber(expires_at) or not tonumber(score) or not tonumber(ordered_at) then
  return redis.error_reply('ERR expires_at, score and ordered_at must be numbers')
end

local existing = redis.call('HMGET', BUCKETS, id .. '|k', id .. '|i', id .. '|x', id .. '|o', id .. '|t')
if existing[1] then
  if existing[1] == kind and existing[2] == ARGV[3] and existing[3] == expires_at
      and existing[4] == order_id and existing[5] == ordered_at then
    return 0
  end
  return -1
end

redis.call('HSET', BUCKETS,
  id .. '|g', granted, id .. '|i', ARGV[3], id .. '|u', 0, id .. '|x', expires_at,
  id .. '|k', kind, id .. '|s', 'active', id .. '|o', order_id, id .. '|t', ordered_at)
redis.call('ZADD', ALL, score, id)
refresh(id, load_bucket(id), now_ms())
return 1
