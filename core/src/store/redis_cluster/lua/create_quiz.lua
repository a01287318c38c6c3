-- create_quiz: stores a new quiz's definition and initial state.
-- KEYS: def state. ARGV: def_json state_json retention_seconds.
-- Both keys expire after `retention_seconds` (the quiz's lifetime until its
-- next state change; every key created later inherits what is left of it).
-- Returns 1 created (or this very definition already stored: a retried
-- create), 0 id taken.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
