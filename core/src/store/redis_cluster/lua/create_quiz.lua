-- create_quiz: stores a new quiz's definition and initial state, and records
-- its `quiz_created` event as pending (the event outbox, see store.rs).
-- KEYS: def state pending. ARGV: def_json state_json retention_seconds
-- [event_id event_json].
-- The keys expire after `retention_seconds` (the quiz's lifetime until its
-- next state change; every key created later inherits what is left of it).
-- Returns 1 created (or this very definition already stored: a retried
-- create, nothing written), 0 id taken.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  if ARGV[5] then
    redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
    redis.call('EXPIRE', KEYS[3], ARGV[3])
  end
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
