-- Admit a request's topics, all or none, under MAX_TOPICS: the check and the additions in one
-- atomic step, so that ingest processes admitting at once never take the set past the limit.
-- KEYS[1]: the stream's set of admitted topics, whose member '' (never a topic: the schema
-- wants at least one character) says it was seeded with the topics the store counts.
-- ARGV[1]: MAX_TOPICS (at least 1); ARGV[2]: 'seeded' to require the seed, 'open' to count the
-- set as it is; ARGV[3..n]: distinct topics.
-- Returns {0} when the seed is required and missing (nothing done); {1, topics} when every
-- topic is admitted (the new ones added); {2, topics, new...} when the new topics would take
-- the set past the limit (nothing added). `topics`: the topics the set holds.
local key, limit = KEYS[1], tonumber(ARGV[1])
local seeded = redis.call('SISMEMBER', key, '') == 1
if ARGV[2] == 'seeded' and not seeded then
  return {0}
end
local new = {}
for i = 3, #ARGV do
  if redis.call('SISMEMBER', key, ARGV[i]) == 0 then
    new[#new + 1] = ARGV[i]
  end
end
local held = redis.call('SCARD', key) - (seeded and 1 or 0)
if held + #new > limit then
  local refused = {2, held}
  for i = 1, #new do
    refused[i + 2] = new[i]
  end
  return refused
end
-- In parts: unpack() stops at a few thousand values.
for i = 1, #new, 1000 do
  redis.call('SADD', key, unpack(new, i, math.min(i + 999, #new)))
end
return {1, held + #new}
