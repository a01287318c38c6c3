-- pending_clear: removes events the event log acknowledged from the quiz's
-- pending events (the event outbox, see store.rs).
-- KEYS: pending pending_answers. ARGV: k, then k event ids (of `pending`),
-- then answer fields `player_id:question_id` (of `pending_answers`).
-- Returns the number of entries removed.
local k = tonumber(ARGV[1])
local removed = 0
for j = 2, k + 1, 400 do
  removed = removed + redis.call('HDEL', KEYS[1], unpack(ARGV, j, math.min(j + 399, k + 1)))
end
for j = k + 2, #ARGV, 400 do
  removed = removed + redis.call('HDEL', KEYS[2], unpack(ARGV, j, math.min(j + 399, #ARGV)))
end
return removed
