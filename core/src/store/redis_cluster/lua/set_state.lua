-- set_state: compare-and-set of the quiz state on its `version`, the
-- quiz's retention from now on, and the change's events recorded as
-- pending (the event outbox, see store.rs) in the same step.
-- KEYS: state, pending, then every other key of the quiz (def players nicks
-- leaderboard answers lbver sent pending_answers dist:Q…).
-- ARGV: expected_version next_json retention_seconds, then pairs of
-- event_id event_json.
-- On success every key of the quiz expires after `retention_seconds` (the
-- caller passes the ended quiz's retention when `next` is the end); keys
-- that do not exist yet are skipped and inherit the lifetime when created.
-- Returns -1 no quiz, 0 lost (another writer got there first), 1 set.
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if cjson.decode(cur)['version'] ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if #ARGV > 3 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 4))
end
for i = 2, #KEYS do
  redis.call('EXPIRE', KEYS[i], ARGV[3])
end
return 1
