-- Remove from the group the consumers that hold nothing and have been idle longer than
-- ARGV[2] ms. Checked and removed in one script, so that a consumer cannot take an entry
-- between the check and the removal (XGROUP DELCONSUMER drops a consumer's pending entries).
-- KEYS[1]: stream; ARGV[1]: group; ARGV[2]: idle ms. Returns the names removed.
local removed = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    table.insert(removed, info['name'])
  end
end
return removed
