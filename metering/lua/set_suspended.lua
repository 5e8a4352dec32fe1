-- Suspend (ARGV[1] == '1') or resume (ARGV[1] == '0') an enterprise: a suspended
-- enterprise is refused every debit whatever its balance.
-- Reply: the previous state, 1 or 0.
if ARGV[1] ~= '1' and ARGV[1] ~= '0' then
  return redis.error_reply('ERR suspended must be 1 or 0, got ' .. tostring(ARGV[1]))
end
local before = redis.call('HGET', META, 'suspended') == '1' and 1 or 0
redis.call('HSET', META, 'suspended', ARGV[1])
return before
