-- Void gifts (a refund of their order started) and, when ARGV[1] == '1', charge the PV
-- they had given again to the live packages in deduction order, each package taking at
-- most the room it has left; what finds no room is dropped.
-- ARGV: recharge flag, gift bucket ids.  Idempotent: a gift void already is reported
-- with its used but charged again no second time.
-- Reply: {{gift_1, used_1, ...}, {package_1, recharged_1, ...}, dropped}
local now = now_ms()
for i = 2, #ARGV do
  local kind = redis.call('HGET', BUCKETS, ARGV[i] .. '|k')
  if kind and kind ~= 'gift' then
    return redis.error_reply('ERR void: bucket ' .. ARGV[i] .. ' is a ' .. kind .. ', not a gift')
  end
end

local gifts, owed = {}, 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local b = load_bucket(id)
  if b then
    if b.status == 'active' then
      redis.call('HSET', BUCKETS, id .. '|s', 'void')
      b.status = 'void'
      refresh(id, b, now)
      owed = owed + b.used
    end
    gifts[#gifts + 1] = id
    gifts[#gifts + 1] = b.used
  end
end

local charged = {}
if ARGV[1] == '1' then
  for _, id in ipairs(redis.call('ZRANGE', ALL, 0, -1)) do
    if owed == 0 then
      break
    end
    local b = load_bucket(id)
    if b.kind == 'package' and is_live(b, now) then
      local take = math.min(owed, b.granted - b.used)
      redis.call('HINCRBY', BUCKETS, id .. '|u', take)
      b.used = b.used + take
      owed = owed - take
      refresh(id, b, now)
      charged[#charged + 1] = id
      charged[#charged + 1] = take
    end
  end
end
return {gifts, charged, owed}
