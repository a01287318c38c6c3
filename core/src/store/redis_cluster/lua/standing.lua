-- standing: a player's score and how many players score strictly higher
-- (rank = higher + 1).
-- KEYS: leaderboard. ARGV: player_id.
-- Returns nil (not a player) or {score, higher}.
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s then return false end
return {s, redis.call('ZCOUNT', KEYS[1], '(' .. s, '+inf')}
