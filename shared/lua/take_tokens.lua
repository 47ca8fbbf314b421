-- A token bucket shared by every ingest process: a key's rate limit (SPEC §3a).
-- KEYS[1]: the key's bucket (a hash of `tokens` and `at`, microseconds).
-- ARGV[1]: rate, events/s; ARGV[2]: burst, events; ARGV[3]: events in this request.
-- Returns {1, tokens left} when admitted, {0, seconds to wait} when not.
-- Time is Redis's own clock (TIME), the one clock every ingest shares; a clock that went back
-- refills nothing, one that jumped ahead refills at most the burst. A request larger than the
-- burst is admitted when the bucket is full, leaving it in debt, so no request is refused for
-- good while the average still holds.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or burst
local at = tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000000)
local need = math.min(cost, burst)
if tokens < need then
  return {0, string.format('%.6f', (need - tokens) / rate)}
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at',
           string.format('%.0f', now))
-- Once full again the bucket is the same as no bucket: let it go.
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {1, string.format('%.6f', tokens)}
