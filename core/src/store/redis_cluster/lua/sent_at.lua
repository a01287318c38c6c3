-- sent_at: self-paced, the time a question was first sent to a player; set
-- once (HSETNX), so a reconnect never restarts the player's clock.
-- KEYS: def sent. ARGV: field (`player_id:question_id`) now.
-- Returns nil if no quiz, else the stored time.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[2], ARGV[1])
