-- names: the stored Player JSON of some players of a sharded quiz (their
-- nicknames, for a merged leaderboard and rebuilt pending answers), from
-- the main slot.
-- KEYS: def players. ARGV: player ids.
-- Returns nil if no quiz, else one player_json (false if unknown) per id.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local out = {}
for j = 1, #ARGV, 500 do
  local r = redis.call('HMGET', KEYS[2], unpack(ARGV, j, math.min(j + 499, #ARGV)))
  for _, p in ipairs(r) do out[#out + 1] = p end
end
return out
