-- An ops correction of a bucket's granted PV by ARGV[2] (may be negative), never below
-- what it has used already.  Only an active bucket can be adjusted.
-- ARGV: bucket id, delta, adjustment id.  Idempotent by adjustment id: the bucket keeps
-- each applied adjustment (field "a:<adjustment id>" = "before:after") and a repeat
-- answers from it without changing anything.
-- Reply: {granted_before, granted_after}.
local id, delta, adjustment = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if not delta or delta ~= math.floor(delta) or delta == 0 then
  return redis.error_reply('ERR adjust: delta must be a non-zero integer, got ' .. tostring(ARGV[2]))
end
if not adjustment or adjustment == '' then
  return redis.error_reply('ERR adjust: an adjustment id is required')
end
local done = redis.call('HGET', BUCKETS, id .. '|a:' .. adjustment)
if done then
  local before, after = string.match(done, '^(%d+):(%d+)$')
  return {tonumber(before), tonumber(after)}
end
local b = load_bucket(id)
if not b then
  return redis.error_reply('ERR adjust: no bucket ' .. id)
end
if b.status ~= 'active' then
  return redis.error_reply('ERR adjust: bucket ' .. id .. ' is ' .. b.status)
end
local after = b.granted + delta
if after < b.used or after < 1 then
  return redis.error_reply('ERR adjust: granted would fall below used (' .. b.used .. ')')
end
local before = b.granted
redis.call('HSET', BUCKETS, id .. '|g', after, id .. '|a:' .. adjustment, before .. ':' .. after)
b.granted = after
refresh(id, b, now_ms())
return {before, after}
