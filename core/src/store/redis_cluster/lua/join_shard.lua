-- join_shard: a sharded quiz's join, its shard step: the player gets score
-- 0 in its shard's leaderboard (ZADD NX: a re-run never resets a score) and
-- the shard's leaderboard version moves when the player is new there.
-- Idempotent: run after `join_main`, again on a retried join, and by the
-- store's repair when an answer or a standing finds a joined player missing
-- from its shard (a join whose second step was lost).
-- KEYS: state (the shard's state copy) leaderboard lbver. ARGV: player_id.
-- Retention: the keys it creates inherit the state copy's remaining lifetime.
-- Returns 1 added or already there, -1 no state copy on the shard (the
-- store pushes the main state there, then runs it again).
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return -1 end
if redis.call('ZADD', KEYS[2], 'NX', 0, ARGV[1]) == 1 then
  redis.call('INCR', KEYS[3])
end
if ttl > 0 then
  for i = 2, 3 do
    if redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
return 1
