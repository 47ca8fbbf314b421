-- Reset the idle time of the entries ARGV[3..n] that consumer ARGV[2] still holds in group
-- ARGV[1], so that no other consumer claims them while it is still settling them.
-- KEYS[1]: the stream. Returns how many were kept.
-- XCLAIM with JUSTID does not count a delivery. Left alone: entries acked already, entries
-- another consumer claimed meanwhile (never taken back), and entries deleted from the stream
-- (XCLAIM would drop them from the pending list; recovery dead-letters them instead).
local key, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local kept = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local held = redis.call('XPENDING', key, group, id, id, 1, consumer)
  if #held == 1 and #redis.call('XRANGE', key, id, id) == 1 then
    redis.call('XCLAIM', key, group, consumer, 0, id, 'JUSTID')
    kept = kept + 1
  end
end
return kept
