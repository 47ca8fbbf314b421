-- Raise the history mark to at least ARGV[1], never lower it (two consumers may raise it at
-- once). KEYS[1]: the mark. Returns the mark as it now stands.
local mark = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[1]))
redis.call('SET', KEYS[1], mark)
return mark
