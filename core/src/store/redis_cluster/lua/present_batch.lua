-- present_batch: self-paced, presents questions to players, a batch at a
-- time (`present_question`, coalesced by the batcher like answers).
-- KEYS: def answers sent. ARGV: pairs of field (`player_id:question_id`) and
-- now.
-- Per pair: -1 if that answer exists (nothing written), else the stored send
-- time, set to its `now` if unset. nil if no quiz. Two bulk reads and one
-- HSET per batch (of the fields found unset: under the script's atomicity
-- that is HSETNX).
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local m = #ARGV / 2
local fields = {}
for i = 1, m do fields[i] = ARGV[2 * i - 1] end
local out, set, fresh = {}, {}, {}
for j = 1, m, 400 do
  local k = math.min(j + 399, m)
  local ans = redis.call('HMGET', KEYS[2], unpack(fields, j, k))
  local snt = redis.call('HMGET', KEYS[3], unpack(fields, j, k))
  for i = j, k do
    local f = fields[i]
    if ans[i - j + 1] then
      out[i] = -1
    elseif snt[i - j + 1] then
      out[i] = tonumber(snt[i - j + 1])
    elseif fresh[f] then
      out[i] = fresh[f]
    else
      local now = ARGV[2 * i]
      fresh[f] = tonumber(now)
      set[#set + 1] = f
      set[#set + 1] = now
      out[i] = fresh[f]
    end
  end
end
for j = 1, #set, 400 do
  redis.call('HSET', KEYS[3], unpack(set, j, math.min(j + 399, #set)))
end
-- Retention: the sent hash inherits the remaining lifetime of `def`.
if #set > 0 and redis.call('PTTL', KEYS[3]) == -1 then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
end
return out
