-- distribution: answer counts per option of one question.
-- KEYS: def dist. ARGV: option_count.
-- Returns nil if no quiz, else the counts (0 for an option never chosen).
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local out = {}
for i = 0, tonumber(ARGV[1]) - 1 do
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[2], tostring(i)) or '0')
end
return out
