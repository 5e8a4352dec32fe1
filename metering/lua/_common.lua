-- Shared prologue of every metering script: it is prepended to each script when the
-- scripts are loaded, so each script is still one self-contained EVAL body.
--
-- KEYS (always these four, one enterprise, one hash tag):
--   KEYS[1] meta     hash: suspended, blocked (cached refusal reason)
--   KEYS[2] live     zset: buckets that can still be debited, scored in deduction order
--   KEYS[3] all      zset: every bucket, same scores
--   KEYS[4] buckets  hash: "<id>|<f>" fields, f in
--                    g granted, u used, x expires_at (ms), k kind, s status,
--                    o order_id, t ordered_at (ms), i granted at credit time
-- Time is Redis TIME; never the caller's clock.  Large numbers (scores) travel as the
-- strings they arrived as, because Lua would print them with 14 significant digits.
local META, LIVE, ALL, BUCKETS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function load_bucket(id)
  local v = redis.call('HMGET', BUCKETS, id .. '|g', id .. '|u', id .. '|x', id .. '|k', id .. '|s')
  if not v[1] then
    return nil
  end
  return {granted = tonumber(v[1]), used = tonumber(v[2]), expires_at = tonumber(v[3]),
          kind = v[4], status = v[5]}
end

local function is_live(b, now)
  return b.status == 'active' and b.used < b.granted and now < b.expires_at
end

-- After any change to a bucket outside the debit path: put it in or out of the live set
-- and drop the cached refusal, which the next debit recomputes if still refused.
local function refresh(id, b, now)
  if is_live(b, now) then
    redis.call('ZADD', LIVE, redis.call('ZSCORE', ALL, id), id)
  else
    redis.call('ZREM', LIVE, id)
  end
  redis.call('HDEL', META, 'blocked')
end

-- Why no PV can be taken, given that no bucket is live: an active bucket that still
-- holds PV but has expired makes it 'expired'; any other active bucket 'exhausted';
-- no active bucket at all 'no_balance'.
local function block_reason(now)
  local reason = 'no_balance'
  for _, id in ipairs(redis.call('ZRANGE', ALL, 0, -1)) do
    local b = load_bucket(id)
    if b.status == 'active' then
      if b.used < b.granted and now >= b.expires_at then
        return 'expired'
      end
      reason = 'exhausted'
    end
  end
  return reason
end

local function positive_int(value, name)
  local n = tonumber(value)
  if not n or n < 1 or n ~= math.floor(n) then
    return redis.error_reply('ERR ' .. name .. ' must be a positive integer, got ' .. tostring(value))
  end
  return n
end
