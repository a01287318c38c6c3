-- count_higher: how many players of one shard score strictly higher than
-- each given score: the other shards' part of a rank in a sharded quiz
-- (rank = 1 + players strictly higher in every shard). The batcher calls
-- it once per shard per round, with the distinct scores of every other
-- shard's answers of the round (`standing` with one score).
-- KEYS: leaderboard. ARGV: exclusive lower bounds `(<score>` (integers),
-- ascending: `ZCOUNT`'s own syntax, so no string is built per score here.
-- Returns one count per score, in order.
-- Cost: one `ZCOUNT` per score (~0.8 us of the master's main thread each,
-- measured: a scan of the set with scores costs more per member than a
-- `ZCOUNT` per score unless nearly every member is asked about). Once a
-- count is 0 every higher score's is 0 too (ascending): no more calls.
local out, n = {}, #ARGV
local i = 1
while i <= n do
  local c = redis.call('ZCOUNT', KEYS[1], ARGV[i], '+inf')
  out[i] = c
  i = i + 1
  if c == 0 then
    while i <= n do out[i] = 0; i = i + 1 end
  end
end
return out
