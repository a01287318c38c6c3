-- create_quiz: stores a new quiz's definition and initial state.
-- KEYS: def state. ARGV: def_json state_json.
-- Returns 1 created (or this very definition already stored: a retried
-- create), 0 id taken.
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
