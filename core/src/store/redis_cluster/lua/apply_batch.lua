-- apply_batch: dedupe, record, score, distribution, version bump, rank, for a
-- batch of answers to one quiz, in one atomic script (`apply_answer`,
-- `apply_answer_at_state`).
--
-- Why it is shaped this way (measured, see docs/core-backends.md): what a
-- script costs the Redis main thread is dominated by its *write commands*
-- (each one is propagated to the replica and the AOF as its own command
-- inside the script's MULTI/EXEC), then by the bytes written. So:
-- - one script per batch, not per answer (the EVALSHA call itself costs);
-- - reads in bulk: one HMGET of the batch's records (the dedupe) and one
--   ZMSCORE of its players' scores ("is a player", and the base of the new
--   score); the batch's own records and scores are tracked in Lua tables so
--   answers in the same batch see each other; per answer only the ZCOUNT of
--   its rank remains (one per distinct score);
-- - the writes issued once per batch: one HSET of every new record, one
--   ZADD XX of every changed score (absolute values, computed under the
--   script's atomicity), per question one HMGET and one HSET of its
--   options' new counts (not a HINCRBY write per option), one
--   INCRBY of the version;
-- - the record is a compact string (see `codec::write_record`), not JSON.
--
-- Ranks are computed after the batch's writes, so they are the ranks in the
-- state the script leaves (for an answer followed in the same batch by a
-- later answer of the same player, that player is counted at the score this
-- answer gave).
--
-- Retries: the record is stored as `<token>|<record>`, the token (16 hex
-- digits) drawn once per `apply_answer` call. A record with my token is my
-- own earlier attempt (`A`, nothing added), one with another token a
-- duplicate (`D`).
--
-- The state guard (`apply_answer_at_state`): when ARGV[2] is not empty, the
-- script first compares it with the `version` of the quiz's state (read with
-- a pattern, not a JSON decode: one GET and one match per batch) and returns
-- without writing anything if they differ: {'S'} when the state is newer
-- (the node scored the batch against a state that has moved on, and
-- re-scores it), {'L'} when it is older or missing. In a sharded quiz
-- `state` is the shard's copy of the state, and 'L' means the copy lags
-- behind the main slot's state (a push not done yet, or lost with its
-- writer): the store pushes the main state to the shard and runs the batch
-- again. An answer is never applied against a copy that differs from the
-- version it was scored at.
--
-- The event outbox (see store.rs): every applied answer's field is recorded
-- in `pending_answers` with the score it gave (one HSET per batch), so its
-- `answer_scored` event can be rebuilt and published again until the event
-- log acknowledged it. A duplicate says whether the original's event is
-- still pending (`D`) or already acknowledged (`E`): only the first is worth
-- publishing again (one HMGET per batch, only when it has duplicates).
--
-- KEYS: players answers leaderboard lbver state pending_answers dist_1 ..
-- dist_k (players is unused by the script but keeps the key list
-- self-describing). In a sharded quiz these are the player's shard's keys
-- (`state` its state copy), and the ranks count that shard only: the store
-- adds the other shards' counts (`count_higher`).
-- ARGV: n, the expected state version or '' (no guard), then ONE PACKED
-- ARGUMENT PER ANSWER (each argument costs Redis a RESP parse, an object and
-- a Lua string; one per answer instead of six cut ~1.6 us of Redis CPU per
-- answer, see docs/core-backends.md):
--   `<dist> <points> <choices> <token>|<record> <player_id>:<question_id>`
-- where `dist` is the index in KEYS of the question's distribution (0 for a
-- late answer: not counted), `choices` like `0,2`, the token 16 hex digits
-- and the record `write_record`'s (no spaces in any of the first four). The
-- player id is last and taken as everything up to the final `:<digits>`, so
-- any player id (spaces and colons included) round-trips.
-- Returns ONE bulk string, a line per answer in ARGV's order:
--   `A <score> <higher>` (applied, now or by an earlier attempt) |
--   `D <score> <higher> <len>:<original record>` (duplicate, event pending) |
--   `E <score> <higher> <len>:<original record>` (duplicate, event
--   delivered) | `N 0 0` (not a player: nothing written),
-- each ended by `\n`, the record length-prefixed (so any record, an older
-- JSON one included, frames safely); or {'S'} (state moved on) or {'L'}
-- (state older than the caller's, or missing). One string, not three
-- values per answer: every value of a reply costs the client a parse and
-- an allocation, and the node's client CPU per answer is what this path is
-- measured by (see docs/performance.md).
local n = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  local st = redis.call('GET', KEYS[5])
  local v = st and tonumber(string.match(st, '"version":(%d+)'))
  local want = tonumber(ARGV[2])
  if not v or v < want then return {'L'} end
  if v ~= want then return {'S'} end
end
-- One pattern match per answer unpacks its argument.
local pids, fields, vs, pts, dks, chs = {}, {}, {}, {}, {}, {}
for a = 1, n do
  local dk, pt, ch, v, field, pid =
    string.match(ARGV[a + 2], '^(%d+) (%d+) ([%d,]*) (%S+) ((.*):%d+)$')
  if not pid then return redis.error_reply('apply_batch: bad argument ' .. a) end
  pids[a], fields[a], vs[a], pts[a], dks[a], chs[a] = pid, field, v, pt, dk, ch
end
-- Two bulk reads for the whole batch: the stored records and the scores.
local prevs, zs = {}, {}
for j = 1, n, 400 do
  local k = math.min(j + 399, n)
  local r = redis.call('HMGET', KEYS[2], unpack(fields, j, k))
  local z = redis.call('ZMSCORE', KEYS[3], unpack(pids, j, k))
  for m = j, k do prevs[m] = r[m - j + 1]; zs[m] = z[m - j + 1] end
end
local out, who, ss = {}, {}, {}
local seen, score, changed, order = {}, {}, {}, {}
local recs, dist, dists = {}, {}, {}
local pend, dups = {}, {}
local applied = 0
for a = 1, n do
  local pid, field, v = pids[a], fields[a], vs[a]
  local s = score[pid]
  if s == nil and zs[a] then s = tonumber(zs[a]); score[pid] = s end
  local prev = seen[field] or prevs[a]
  local o = 3 * a - 2
  if prev then
    -- A record exists: my own earlier attempt (same token) or a duplicate.
    if string.sub(prev, 1, 17) == string.sub(v, 1, 17) then
      out[o] = 'A'
    else
      out[o] = 'D' .. string.sub(prev, 18)
      dups[#dups + 1] = a
    end
    s = s or 0
    who[a], ss[a], out[o + 1] = pid, s, s
  elseif not s then
    -- Not a player of this quiz: nothing is written.
    out[o], out[o + 1], out[o + 2] = 'N', 0, 0
  else
    s = s + tonumber(pts[a])
    score[pid] = s
    if not changed[pid] then changed[pid] = true; order[#order + 1] = pid end
    seen[field] = v
    recs[#recs + 1] = field
    recs[#recs + 1] = v
    pend[#pend + 1] = field
    pend[#pend + 1] = string.format('%d', s)
    local dk = tonumber(dks[a])
    if dk > 0 then
      local d = dist[dk]
      if not d then d = {}; dist[dk] = d; dists[#dists + 1] = dk end
      for c in string.gmatch(chs[a], '%d+') do d[c] = (d[c] or 0) + 1 end
    end
    applied = applied + 1
    out[o] = 'A'
    who[a], ss[a], out[o + 1] = pid, s, s
  end
end
-- The batch's writes: a few commands whatever its size (chunked to stay
-- far below Lua's stack limit for unpack).
for j = 1, #recs, 400 do
  redis.call('HSET', KEYS[2], unpack(recs, j, math.min(j + 399, #recs)))
  redis.call('HSET', KEYS[6], unpack(pend, j, math.min(j + 399, #pend)))
end
local z = {}
for j = 1, #order do
  local pid = order[j]
  z[#z + 1] = string.format('%d', score[pid])
  z[#z + 1] = pid
  if #z >= 400 then redis.call('ZADD', KEYS[3], 'XX', unpack(z)); z = {} end
end
if #z > 0 then redis.call('ZADD', KEYS[3], 'XX', unpack(z)) end
-- A question's counts: one HMGET of its options counted and one HSET of
-- their new totals (2 commands, 1 of them a write), not one HINCRBY write
-- per option: a write is what costs (propagated on its own), and in a
-- sharded quiz every shard's batch pays it.
for j = 1, #dists do
  local dk = dists[j]
  local cs, cnts = {}, {}
  for c, cnt in pairs(dist[dk]) do cs[#cs + 1] = c; cnts[#cnts + 1] = cnt end
  local old = redis.call('HMGET', KEYS[dk], unpack(cs))
  local kv = {}
  for m = 1, #cs do
    kv[#kv + 1] = cs[m]
    kv[#kv + 1] = string.format('%d', (tonumber(old[m]) or 0) + cnts[m])
  end
  redis.call('HSET', KEYS[dk], unpack(kv))
end
if applied > 0 then
  redis.call('INCRBY', KEYS[4], applied)
  -- Retention: the answers hash and a question's distribution are created
  -- by the first answers; they inherit the state's remaining lifetime (two
  -- reads per batch, a write only the first time).
  local ttl = redis.call('PTTL', KEYS[5])
  if ttl > 0 then
    if redis.call('PTTL', KEYS[2]) == -1 then redis.call('PEXPIRE', KEYS[2], ttl) end
    if redis.call('PTTL', KEYS[6]) == -1 then redis.call('PEXPIRE', KEYS[6], ttl) end
    for j = 1, #dists do
      local dk = tonumber(dists[j])
      if redis.call('PTTL', KEYS[dk]) == -1 then redis.call('PEXPIRE', KEYS[dk], ttl) end
    end
  end
end
-- Duplicates: is the original's event still pending (written above for an
-- original in this very batch)?
if #dups > 0 then
  local fs = {}
  for j = 1, #dups do fs[j] = fields[dups[j]] end
  for j = 1, #fs, 400 do
    local p = redis.call('HMGET', KEYS[6], unpack(fs, j, math.min(j + 399, #fs)))
    for m = j, math.min(j + 399, #fs) do
      if not p[m - j + 1] then
        local o = 3 * dups[m] - 2
        out[o] = 'E' .. string.sub(out[o], 2)
      end
    end
  end
end
-- Ranks, in the state just written (one ZCOUNT per distinct score).
local higher = {}
for a = 1, n do
  local pid = who[a]
  if pid then
    local s = ss[a]
    local h = higher[s]
    if not h then
      h = redis.call('ZCOUNT', KEYS[3], string.format('(%d', s), '+inf')
      higher[s] = h
    end
    if (score[pid] or 0) > s then h = h - 1 end
    out[3 * a] = h
  end
end
local lines = {}
for a = 1, n do
  local o = 3 * a - 2
  local t = out[o]
  local head = string.format(' %d %d', out[o + 1], out[o + 2])
  if #t == 1 then
    lines[a] = t .. head .. '\n'
  else
    -- `D`/`E` and the original record: concatenated, not formatted (`%s`
    -- stops at a zero byte).
    local rec = string.sub(t, 2)
    lines[a] = string.sub(t, 1, 1) .. head .. ' ' .. #rec .. ':' .. rec .. '\n'
  end
end
return table.concat(lines)
