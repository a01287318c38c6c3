-- pending_read: the quiz's pending events (the event outbox, see store.rs),
-- for the repair sweep: one page of each pending hash.
-- KEYS: pending pending_answers answers [players]. ARGV: count.
-- A sharded quiz's shard has no `players` (they are in the main slot): it
-- is called with three keys and answers false for every player_json (the
-- store reads them from the main slot with `names`).
-- Returns {{event_json, ...}, {field, score_after, record, player_json, ...}}
-- where `field` is `player_id:question_id`, `record` the stored answer
-- (`<token>|<record>`, false if gone) and `player_json` the player (false
-- if gone). HSCAN's COUNT is a hint: a small hash comes back whole.
local n = tonumber(ARGV[1])
local plain = redis.call('HSCAN', KEYS[1], '0', 'COUNT', n)[2]
local events = {}
for i = 2, #plain, 2 do events[#events + 1] = plain[i] end
local pa = redis.call('HSCAN', KEYS[2], '0', 'COUNT', n)[2]
local out = {}
for i = 1, #pa, 2 do
  local field = pa[i]
  local pid = string.match(field, '^(.*):%d+$')
  out[#out + 1] = field
  out[#out + 1] = pa[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[3], field)
  out[#out + 1] = pid and KEYS[4] and redis.call('HGET', KEYS[4], pid) or false
end
return {events, out}
