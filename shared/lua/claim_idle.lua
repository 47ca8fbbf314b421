-- Take over the entries idle for longer than ARGV[3] ms on any consumer of group ARGV[1], for
-- consumer ARGV[2]: at most ARGV[5] of them, from the pending list position ARGV[4] on.
-- KEYS[1]: the stream. Returns {the position to go on from ('0-0' once the pass is over), the
-- entries claimed, the ids whose entries are no longer in the stream}.
-- Unlike XAUTOCLAIM, this leaves deleted ids pending. In Redis 7 XAUTOCLAIM and XCLAIM drop
-- them from the pending list at once, so a failure before their dead letters are written
-- would lose them; here the caller acks them only after it has written the letters.
local key, group, consumer, min_idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local count = tonumber(ARGV[5])
local idle = redis.call('XPENDING', key, group, 'IDLE', min_idle, ARGV[4], '+', count)
local claimed, deleted = {}, {}
for _, pending in ipairs(idle) do
  local id = pending[1]
  if #redis.call('XRANGE', key, id, id) == 0 then
    table.insert(deleted, id)  -- XCLAIM would drop it from the pending list
  else
    -- Still with the min idle time, as XAUTOCLAIM does: nothing is taken from a consumer that
    -- has just used it.
    for _, entry in ipairs(redis.call('XCLAIM', key, group, consumer, min_idle, id)) do
      table.insert(claimed, entry)
    end
  end
end
-- A short page ends the pass; otherwise go on after its last id (an exclusive start).
local next_start = '0-0'
if #idle == count then
  next_start = '(' .. idle[#idle][1]
end
return {next_start, claimed, deleted}
