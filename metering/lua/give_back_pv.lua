-- Return up to ARGV[2] PV to bucket ARGV[1] (a page the origin failed to deliver).
-- Only an active bucket takes PV back: a frozen (refunded) or void bucket's used was
-- final when it stopped.  Never below zero.
-- Reply: the PV actually given back.
local id = ARGV[1]
local k = positive_int(ARGV[2], 'k')
if type(k) == 'table' then
  return k
end
local b = load_bucket(id)
if not b or b.status ~= 'active' then
  return 0
end
local back = math.min(k, b.used)
if back > 0 then
  redis.call('HINCRBY', BUCKETS, id .. '|u', -back)
  b.used = b.used - back
  refresh(id, b, now_ms())
end
return back
