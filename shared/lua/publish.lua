-- Append a request's events and count them as received, in one atomic step.
-- KEYS[1]: the stream; KEYS[2]: its received counter. ARGV[1]: the event field name;
-- ARGV[2..n]: the events, as JSON. Returns the number appended.
-- One script call carries the whole request: Redis parses one command instead of one per
-- event, and nothing else runs between the appends and the count.
local field = ARGV[1]
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', field, ARGV[i])
end
redis.call('INCRBY', KEYS[2], #ARGV - 1)
return #ARGV - 1
