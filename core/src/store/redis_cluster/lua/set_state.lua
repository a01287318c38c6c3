-- set_state: compare-and-set of the quiz state on its `version`.
-- KEYS: state. ARGV: expected_version next_json.
-- Returns -1 no quiz, 0 lost (another writer got there first), 1 set.
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if cjson.decode(cur)['version'] ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
