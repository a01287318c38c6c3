-- shard_top: one shard's share of a sharded quiz's leaderboard: its top
-- `limit` players with scores, its player count and its leaderboard
-- version (the store merges the shards, then reads the nicknames from the
-- main slot with `names`).
-- KEYS: leaderboard lbver. ARGV: limit.
-- Returns {zcard, version, {id, score, ...}} (ZREVRANGE order).
local limit = tonumber(ARGV[1])
local top = {}
if limit > 0 then
  top = redis.call('ZREVRANGE', KEYS[1], 0, limit - 1, 'WITHSCORES')
end
return {redis.call('ZCARD', KEYS[1]), redis.call('GET', KEYS[2]) or '0', top}
