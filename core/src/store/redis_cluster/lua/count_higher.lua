-- count_higher: how many players of one shard score strictly higher than
-- each given score: the other shards' part of a rank in a sharded quiz
-- (rank = 1 + players strictly higher in every shard). One call per other
-- shard per batch of answers, with the batch's distinct scores.
-- KEYS: leaderboard. ARGV: scores (integers).
-- Returns one count per score, in order.
local out = {}
for i = 1, #ARGV do
  out[i] = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[i], '+inf')
end
return out
