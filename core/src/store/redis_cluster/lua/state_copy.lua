-- state_copy: a shard's copy of the quiz state (sharded quizzes), set only
-- if the given state is newer than the copy, so a late or repeated push
-- never moves a copy backwards. The copy is what `apply_batch`'s state
-- guard reads on the shard, and what the shard's keys take their lifetime
-- from; pushed by create_quiz and set_state after the main slot's write,
-- and by the store's repair when a reader meets a main state the copies
-- may lack (see "Shards" in redis_cluster.rs).
-- KEYS: state (the copy), then every other key of the shard (leaderboard
-- answers lbver sent pending_answers dist:Q…).
-- ARGV: state_json ttl_ms.
-- On a push every key of the shard expires after ttl_ms (the main slot's
-- lifetime); keys that do not exist yet inherit it when created.
-- Returns 1 set, 0 the copy is as new or newer (nothing written).
local new = tonumber(string.match(ARGV[1], '"version":(%d+)'))
if not new then return redis.error_reply('state_copy: no version') end
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '"version":(%d+)'))
  if v and v >= new then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 2, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return 1
