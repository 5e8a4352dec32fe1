-- A consistent snapshot of one enterprise's balance.
-- Reply: {now_ms, suspended (0/1), available, reason,
--         {id, kind, status, granted, used, expires_at, ordered_at, order_id}, ...}
-- available sums the PV left in active, unexpired buckets; reason is '' when a PV
-- could be debited now, else what a debit would answer.
local now = now_ms()
local suspended = redis.call('HGET', META, 'suspended') == '1'
local available = 0
local rows = {}
for _, id in ipairs(redis.call('ZRANGE', ALL, 0, -1)) do
  local v = redis.call('HMGET', BUCKETS, id .. '|k', id .. '|s', id .. '|g', id .. '|u',
                       id .. '|x', id .. '|t', id .. '|o')
  local b = {granted = tonumber(v[3]), used = tonumber(v[4]), expires_at = tonumber(v[5]),
             status = v[2]}
  if is_live(b, now) then
    available = available + b.granted - b.used
  end
  rows[#rows + 1] = {id, v[1], v[2], v[3], v[4], v[5], v[6], v[7]}
end
local reason = ''
if suspended then
  reason = 'suspended'
elseif available == 0 then
  reason = block_reason(now)
end
local reply = {now, suspended and 1 or 0, available, reason}
for _, row in ipairs(rows) do
  reply[#reply + 1] = row
end
return reply
