-- join_main: a sharded quiz's join, its main-slot step (`add_player` when
-- the quiz's layout has shards > 1): the nickname (trimmed, lowercased by
-- the caller) is unique in the quiz, the player is stored, the
-- `player_joined` event recorded as pending (the event outbox, see
-- store.rs). The player's score 0 is added to its shard by `join_shard`,
-- a second script on another slot, run by the store right after (and
-- again on a retried join: see "Shards" in redis_cluster.rs).
-- KEYS: def nicks players pending.
-- ARGV: nick player_id player_json max_players [event_id event_json].
-- Retention: the keys it creates inherit the remaining lifetime of `def`.
-- Returns 1 added (or this very player already added: a retry, nothing
-- written), 0 nickname taken, -1 no quiz, -2 player id taken, -3 the quiz
-- has max_players players (HLEN of `players`: the leaderboard is split over
-- the shards, every player is in `players`, same slot, so the cap holds
-- under concurrent joins from any number of nodes).
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local existing = redis.call('HGET', KEYS[3], ARGV[2])
if existing then
  if existing == ARGV[3] then return 1 end
  return -2
end
if redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[4]) then return -3 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
if ARGV[6] then redis.call('HSET', KEYS[4], ARGV[5], ARGV[6]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  for i = 2, 4 do
    if redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
return 1
