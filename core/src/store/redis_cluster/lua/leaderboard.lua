-- leaderboard: the top `limit` players with their stored Player JSON (for
-- the nicknames), the player count and the leaderboard version, in one
-- round trip.
-- KEYS: def leaderboard players lbver. ARGV: limit.
-- Returns nil if no quiz, else {zcard, version, {id, score, ...},
-- {player_json, ...}}.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local limit = tonumber(ARGV[1])
local top = {}
if limit > 0 then
  top = redis.call('ZREVRANGE', KEYS[2], 0, limit - 1, 'WITHSCORES')
end
local players = {}
local ids = {}
for i = 1, #top, 2 do
  ids[#ids + 1] = top[i]
  if #ids == 500 then
    for _, p in ipairs(redis.call('HMGET', KEYS[3], unpack(ids))) do players[#players + 1] = p end
    ids = {}
  end
end
if #ids > 0 then
  for _, p in ipairs(redis.call('HMGET', KEYS[3], unpack(ids))) do players[#players + 1] = p end
end
return {redis.call('ZCARD', KEYS[2]), redis.call('GET', KEYS[4]) or '0', top, players}
