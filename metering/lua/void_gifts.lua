-- Void gifts (a refund of their order started) and, when ARGV[1] == '1', charge the PV
-- each had given again to the live packages in deduction order, each package taking at
-- most the room it has left; what finds no room is dropped.
-- ARGV: recharge flag, gift bucket ids.
-- Idempotent with the same answer: each gift keeps what its voiding charged where
-- (fields r = "package=n,..." and d = dropped PV), and a gift void already is reported
-- from those fields, never charged again.  (Charging gift by gift fills the packages
-- exactly as charging their sum at once would.)
-- Reply: {{gift_1, used_1, ...}, {package_1, recharged_1, ...}, dropped}
local now = now_ms()
for i = 2, #ARGV do
  local kind = redis.call('HGET', BUCKETS, ARGV[i] .. '|k')
  if kind and kind ~= 'gift' then
    return redis.error_reply('ERR void: bucket ' .. ARGV[i] .. ' is a ' .. kind .. ', not a gift')
  end
end

local function recharge(owed)
  local parts, dropped = {}, owed
  for _, id in ipairs(redis.call('ZRANGE', ALL, 0, -1)) do
    if dropped == 0 then
      break
    end
    local b = load_bucket(id)
    if b.kind == 'package' and is_live(b, now) then
      local take = math.min(dropped, b.granted - b.used)
      redis.call('HINCRBY', BUCKETS, id .. '|u', take)
      b.used = b.used + take
      dropped = dropped - take
      refresh(id, b, now)
      parts[#parts + 1] = id .. '=' .. take
    end
  end
  return table.concat(parts, ','), dropped
end

local gifts, totals, order, dropped = {}, {}, {}, 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local b = load_bucket(id)
  if b then
    if b.status == 'active' then
      local charged, left = '', 0
      if ARGV[1] == '1' and b.used > 0 then
        charged, left = recharge(b.used)
      end
      redis.call('HSET', BUCKETS, id .. '|s', 'void', id .. '|r', charged, id .. '|d', left)
      b.status = 'void'
      refresh(id, b, now)
    end
    gifts[#gifts + 1] = id
    gifts[#gifts + 1] = b.used
    local stored = redis.call('HMGET', BUCKETS, id .. '|r', id .. '|d')
    for package, n in string.gmatch(stored[1] or '', '([^,=]+)=(%d+)') do
      if not totals[package] then
        order[#order + 1] = package
        totals[package] = 0
      end
      totals[package] = totals[package] + tonumber(n)
    end
    dropped = dropped + (tonumber(stored[2]) or 0)
  end
end

local charged = {}
for _, package in ipairs(order) do
  charged[#charged + 1] = package
  charged[#charged + 1] = totals[package]
end
return {gifts, charged, dropped}
