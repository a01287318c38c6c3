-- add_player: a player joins with score 0 (so they count and have a rank);
-- the nickname (trimmed, lowercased by the caller) is unique in the quiz.
-- With an event, the `player_joined` event is recorded as pending (the
-- event outbox, see store.rs) in the same step.
-- KEYS: def nicks players leaderboard lbver pending.
-- ARGV: nick player_id player_json max_players [event_id event_json].
-- Retention: the keys it creates inherit the remaining lifetime of `def`
-- (set by create_quiz and every state change), so they expire with the quiz.
-- Returns 1 added (or this very player already added: a retry, nothing
-- written), 0 nickname taken, -1 no quiz, -2 player id taken, -3 the quiz
-- has max_players players (ZCARD of the leaderboard, where every player is:
-- O(1), same slot, so the cap holds under concurrent joins from any number
-- of nodes).
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local existing = redis.call('HGET', KEYS[3], ARGV[2])
if existing then
  if existing == ARGV[3] then return 1 end
  return -2
end
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[4]) then return -3 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[4], 'NX', 0, ARGV[2])
redis.call('INCR', KEYS[5])
if ARGV[6] then redis.call('HSET', KEYS[6], ARGV[5], ARGV[6]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  for i = 2, 6 do
    if redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
return 1
