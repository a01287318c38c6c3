//! [`RedisClusterStore`]: the [`QuizStore`] on Redis Cluster, for several core
//! nodes sharing quizzes.
//!
//! # Key layout
//! Every key of quiz X carries the hash tag `{X}`, so a quiz lives in one slot
//! (one master) and every multi-key operation on it is one atomic Lua script:
//!
//! | key | type | content |
//! |---|---|---|
//! | `quiz:{X}:def` | string | [`QuizDef`] JSON, immutable |
//! | `quiz:{X}:state` | string | [`QuizState`] JSON (with its `version`) |
//! | `quiz:{X}:players` | hash | player_id → [`Player`] JSON |
//! | `quiz:{X}:nicks` | hash | trimmed lowercased nickname → player_id |
//! | `quiz:{X}:leaderboard` | zset | player_id, score = total points (contract) |
//! | `quiz:{X}:answers` | hash | `player_id:question_id` → `attempt|record` (compact, see `encode_record`) |
//! | `quiz:{X}:dist:Q` | hash | option index → count (on-time answers) |
//! | `quiz:{X}:lbver` | string | leaderboard version (INCR per join and answer) |
//! | `quiz:{X}:sent` | hash | `player_id:question_id` → ms the question was sent |
//!
//! # The hot path: `apply_answer`
//! Answers from many connections are coalesced: each call sends a job into a
//! bounded channel; one batcher task takes what is queued (up to
//! `max_batch`), groups it by slot (a quiz is one slot, so one master) and
//! sends one pipeline per slot, up to `max_in_flight` batches at a time.
//! While batches are in flight, new answers queue up and leave together in the
//! next batch: under load the number of round trips per answer falls towards
//! `1 / max_batch`, with no timer adding latency when the load is light.
//!
//! Each pipeline is `EVALSHA apply ×n` then `WAIT <replicas> <ms>`; WAIT runs
//! on the same connection to the same master, so it covers the batch's writes.
//! A pipeline is answered only when the batch is on a replica as well:
//! otherwise a master dying right after answering would lose acknowledged
//! answers (Redis replicates asynchronously). WAIT reaching fewer replicas
//! than asked is reported as `Unavailable` and the store retries internally.
//!
//! # Why retries are safe: the attempt token
//! Every `apply_answer` call draws a random attempt token and stores it with
//! the answer record. The script treats "a record exists with my token" as my
//! own earlier attempt (answer `Applied`, nothing added) and "a record exists
//! with another token" as a real duplicate. So a pipeline re-sent whole by the
//! cluster client after `MOVED`/`ASK`/`TRYAGAIN`, a batch re-run after a WAIT
//! timeout, or an attempt re-run after a master failover can never count an
//! answer twice, and never turn the player's own first answer into a
//! "duplicate".

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::memory::normalize_nickname;
use super::{QuizStore, StoreError};
use crate::model::{
    AnswerRecord, ApplyOutcome, Leaderboard, LeaderboardEntry, Millis, Player, QuizDef, QuizState,
    Standing,
};

/// Tuning of [`RedisClusterStore`]. `Default` suits a 3-master, 3-replica
/// cluster on a local network.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Most answers in one pipeline.
    pub max_batch: usize,
    /// Bound of the answer queue in front of the batcher. A caller finding
    /// it full waits (up to `command_timeout`), then gets `Unavailable`.
    pub queue_capacity: usize,
    /// Batches in flight at once; while all are out, answers accumulate
    /// into bigger batches.
    pub max_in_flight: usize,
    /// Replicas that must acknowledge a write before it is answered
    /// (`WAIT n`). 0 disables WAIT (faster, but a master failure may lose
    /// acknowledged writes).
    pub wait_replicas: u32,
    /// How long WAIT may block.
    pub wait_timeout: Duration,
    /// Deadline of one round trip, the cluster client's retries included.
    pub command_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts of one write (`apply_answer` and the other writes) on
    /// `Unavailable` before giving up; each re-run is idempotent.
    pub max_attempts: u32,
    /// First back-off between attempts, doubled each time.
    pub retry_backoff: Duration,
    /// PEM of the CA that signed the servers' certificates, for `rediss://`
    /// nodes with a private CA (public CAs are trusted without it).
    pub tls_ca: Option<Vec<u8>>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            max_batch: 256,
            queue_capacity: 8192,
            max_in_flight: 8,
            wait_replicas: 1,
            wait_timeout: Duration::from_millis(200),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(50),
            tls_ca: None,
        }
    }
}

/// A Lua script with its SHA1, sent as EVALSHA and re-sent as EVAL when the
/// node answers NOSCRIPT (a freshly promoted replica, a restarted node).
struct Lua {
    body: &'static str,
    sha: String,
}

impl Lua {
    fn new(body: &'static str) -> Lua {
        Lua {
            body,
            sha: redis::Script::new(body).get_hash().to_string(),
        }
    }
}

/// Dedupe, record, score, distribution, version bump, rank — for a batch of
/// answers to one quiz, in one atomic script.
///
/// Why it is shaped this way (measured, see docs/core-backends.md): what a
/// script costs the Redis main thread is dominated by its *write commands*
/// (each one is propagated to the replica and the AOF as its own command
/// inside the script's MULTI/EXEC), then by the bytes written. So:
/// - one script per batch, not per answer (the EVALSHA call itself costs);
/// - reads in bulk: one `HMGET` of the batch's records (the dedupe) and one
///   `ZMSCORE` of its players' scores ("is a player", and the base of the new
///   score); the batch's own records and scores are tracked in Lua tables so
///   answers in the same batch see each other; per answer only the `ZCOUNT`
///   of its rank remains (one per distinct score);
/// - the writes issued once per batch: one `HSET` of every new record, one
///   `ZADD XX` of every changed score (absolute values, computed under the
///   script's atomicity), one `HINCRBY` per (question, option) counted, one
///   `INCRBY` of the version;
/// - the record is a compact string (see `encode_record`), not JSON.
///
/// Ranks are computed after the batch's writes, so they are the ranks in the
/// state the script leaves (for an answer followed in the same batch by a
/// later answer of the same player, that player is counted at the score this
/// answer gave).
///
/// The state guard (`apply_answer_at_state`): when ARGV[2] is not empty, the
/// script first compares it with the `version` of the quiz's state (read
/// with a pattern, not a JSON decode: one `GET` and one match per batch) and
/// returns `{'S'}` without writing anything if they differ — the node scored
/// the batch against a state that has moved on, and re-scores it.
///
/// KEYS: players answers leaderboard lbver state dist_1 .. dist_k (players
/// is unused by the script but keeps the key list self-describing).
/// ARGV: n, the expected state version or '' (no guard), then **one packed
/// argument per answer** (each argument costs Redis a RESP parse, an object
/// and a Lua string; one per answer instead of six cut ~1.6 µs of Redis CPU per
/// answer, see docs/core-backends.md):
/// `<dist> <points> <choices> <token>|<record> <player_id>:<question_id>`,
/// where `dist` is the index in KEYS of the question's distribution (0 for a
/// late answer: not counted), `choices` like `0,2`, the token 16 hex digits
/// and the record `encode_record`'s (no spaces in any of the first four). The
/// player id is last and taken as everything up to the final `:<digits>`, so
/// any player id (spaces and colons included) round-trips.
/// Returns a flat array, 3 entries per answer: `A` score higher |
/// `D<original record>` score higher | `N` 0 0; or `{'S'}` (stale state).
const APPLY_BATCH: &str = r#"
local n = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  local st = redis.call('GET', KEYS[5])
  if not st or string.match(st, '"version":(%d+)') ~= ARGV[2] then return {'S'} end
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
end
local z = {}
for j = 1, #order do
  local pid = order[j]
  z[#z + 1] = string.format('%d', score[pid])
  z[#z + 1] = pid
  if #z >= 400 then redis.call('ZADD', KEYS[3], 'XX', unpack(z)); z = {} end
end
if #z > 0 then redis.call('ZADD', KEYS[3], 'XX', unpack(z)) end
for j = 1, #dists do
  local dk = dists[j]
  for c, cnt in pairs(dist[dk]) do redis.call('HINCRBY', KEYS[dk], c, cnt) end
end
if applied > 0 then redis.call('INCRBY', KEYS[4], applied) end
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
return out
"#;

/// KEYS: def state. ARGV: def_json state_json. 1 created (or this very
/// definition already stored: a retried create), 0 id taken.
const CREATE_QUIZ: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"#;

/// KEYS: state. ARGV: expected_version next_json. -1 no quiz, 0 lost, 1 set.
const SET_STATE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if cjson.decode(cur)['version'] ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: def nicks players leaderboard lbver. ARGV: nick player_id player_json.
/// 1 added (or this very player already added: a retry), 0 nickname taken,
/// -1 no quiz, -2 player id taken.
const ADD_PLAYER: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local existing = redis.call('HGET', KEYS[3], ARGV[2])
if existing then
  if existing == ARGV[3] then return 1 end
  return -2
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[4], 'NX', 0, ARGV[2])
redis.call('INCR', KEYS[5])
return 1
"#;

/// KEYS: def leaderboard players lbver. ARGV: limit.
/// nil if no quiz, else {zcard, version, {id, score, ...}, {player_json...}}.
const LEADERBOARD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local limit = tonumber(ARGV[1])
local top = {}
if limit > 0 then
  top = redis.call('ZREVRANGE', KEYS[2], 0, limit - 1, 'WITHSCORES')
end
local players = {}
local ids = {}
for i = 1, #top, 2 do
  ids[#ids + 1] = top[i]
  if #ids == 500 then
    for _, p in ipairs(redis.call('HMGET', KEYS[3], unpack(ids))) do players[#players + 1] = p end
    ids = {}
  end
end
if #ids > 0 then
  for _, p in ipairs(redis.call('HMGET', KEYS[3], unpack(ids))) do players[#players + 1] = p end
end
return {redis.call('ZCARD', KEYS[2]), redis.call('GET', KEYS[4]) or '0', top, players}
"#;

/// KEYS: leaderboard. ARGV: player_id. nil or {score, higher}.
const STANDING: &str = r#"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s then return false end
return {s, redis.call('ZCOUNT', KEYS[1], '(' .. s, '+inf')}
"#;

/// KEYS: def dist. ARGV: option_count. nil if no quiz, else the counts.
const DISTRIBUTION: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local out = {}
for i = 0, tonumber(ARGV[1]) - 1 do
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[2], tostring(i)) or '0')
end
return out
"#;

/// KEYS: def sent. ARGV: field now. nil if no quiz, else the stored time.
const SENT_AT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[2], ARGV[1])
"#;

/// Self-paced: presents questions to players, a batch at a time.
/// KEYS: def answers sent. ARGV: pairs of field (`player_id:question_id`)
/// and now. Per pair: -1 if that answer exists (nothing written), else the
/// stored send time, set to its `now` if unset. nil if no quiz. Two bulk
/// reads and one `HSET` per batch (the fields found unset, under the
/// script's atomicity that is `HSETNX`).
const PRESENT_BATCH: &str = r#"
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
return out
"#;

struct Scripts {
    apply: Lua,
    create: Lua,
    set_state: Lua,
    add_player: Lua,
    leaderboard: Lua,
    standing: Lua,
    distribution: Lua,
    sent_at: Lua,
    present: Lua,
}

/// One script call, routed by the slot of its keys.
struct Call {
    script: &'static Lua,
    keys: Vec<String>,
    args: Vec<String>,
}

/// A write waiting for the batcher, with its reply channel.
struct Job {
    quiz_id: String,
    work: Work,
    reply: oneshot::Sender<Result<Value, StoreError>>,
}

/// What the batcher coalesces: the hot path's writes.
enum Work {
    /// An answer; with `Some(v)`, applied only if the state is at version v.
    Apply {
        answer: PreparedAnswer,
        state_version: Option<u64>,
    },
    /// Self-paced: a question presented to a player (`present_question`).
    Present { field: String, now: Millis },
}

/// An answer encoded once for all its attempts.
#[derive(Clone)]
struct PreparedAnswer {
    player_id: String,
    question_id: u32,
    /// Attempt token: the same on every attempt of one `apply_answer` call.
    token: String,
    record: String,
    points: u32,
    late: bool,
    choices: Vec<u32>,
}

/// The Redis Cluster store. Cheap to share behind an `Arc`; dropping it ends
/// its batcher task once queued answers are answered.
pub struct RedisClusterStore {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

struct Shared {
    conn: ClusterConnection,
    opts: RedisOptions,
    scripts: &'static Scripts,
    /// Bounds the batches in flight (see [`RedisOptions::max_in_flight`]).
    in_flight: Arc<Semaphore>,
}

fn key(quiz_id: &str, suffix: &str) -> String {
    format!("quiz:{{{quiz_id}}}:{suffix}")
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        apply: Lua::new(APPLY_BATCH),
        create: Lua::new(CREATE_QUIZ),
        set_state: Lua::new(SET_STATE),
        add_player: Lua::new(ADD_PLAYER),
        leaderboard: Lua::new(LEADERBOARD),
        standing: Lua::new(STANDING),
        distribution: Lua::new(DISTRIBUTION),
        sent_at: Lua::new(SENT_AT),
        present: Lua::new(PRESENT_BATCH),
    })
}

impl RedisClusterStore {
    /// Connects to the cluster through any of `nodes` (`host:port` or
    /// `redis://host:port`) and starts the answer batcher. Must be called
    /// inside a tokio runtime.
    pub async fn connect(nodes: &[String], opts: RedisOptions) -> Result<Self, StoreError> {
        let client = cluster_client(nodes, &opts)?;
        let conn = tokio::time::timeout(opts.connect_timeout, client.get_async_connection())
            .await
            .map_err(|_| unavailable("timed out connecting to the Redis cluster"))?
            .map_err(unavailable)?;
        let (jobs, rx) = mpsc::channel(opts.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            conn,
            in_flight: Arc::new(Semaphore::new(opts.max_in_flight.max(1))),
            opts,
            scripts: scripts(),
        });
        tokio::spawn(batcher(Arc::clone(&shared), rx));
        Ok(RedisClusterStore { shared, jobs })
    }

    /// Runs a single script call with the write durability rule (WAIT),
    /// retrying `Unavailable` with back-off. Only for idempotent scripts.
    async fn write(&self, call: Call) -> Result<Value, StoreError> {
        let route = Route::with_key(&call.keys[0], SlotAddr::Master);
        let mut backoff = self.shared.opts.retry_backoff;
        let mut attempt = 1;
        loop {
            let mut out = run_pipeline(&self.shared, route, vec![&call], true).await;
            match out.pop().unwrap_or_else(|| Err(unavailable("empty reply"))) {
                Err(StoreError::Unavailable(e)) if attempt < self.shared.opts.max_attempts => {
                    tracing::debug!(attempt, error = %e, "redis write failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A read-only script call (no WAIT, no retry beyond the client's).
    async fn read(&self, call: Call) -> Result<Value, StoreError> {
        let route = Route::with_key(&call.keys[0], SlotAddr::Master);
        run_pipeline(&self.shared, route, vec![&call], false)
            .await
            .pop()
            .unwrap_or_else(|| Err(unavailable("empty reply")))
    }

    async fn get_string(&self, cmd: redis::Cmd) -> Result<Option<String>, StoreError> {
        let mut conn = self.shared.conn.clone();
        let v: Option<String> =
            tokio::time::timeout(self.shared.opts.command_timeout, cmd.query_async(&mut conn))
                .await
                .map_err(|_| unavailable("redis command timed out"))?
                .map_err(unavailable)?;
        Ok(v)
    }

    /// `apply_answer`, with the state guard when `state_version` is set.
    /// `Ok(None)`: the state moved on, nothing written.
    async fn apply_guarded(
        &self,
        quiz_id: &str,
        answer: &AnswerRecord,
        state_version: Option<u64>,
    ) -> Result<Option<ApplyOutcome>, StoreError> {
        let prepared = PreparedAnswer {
            player_id: answer.player_id.clone(),
            question_id: answer.question_id,
            token: format!("{:016x}", rand::random::<u64>()),
            record: encode_record(answer),
            points: answer.points,
            late: answer.late,
            choices: answer.choices.clone(),
        };
        let mut backoff = self.shared.opts.retry_backoff;
        let mut attempt = 1;
        loop {
            let work = Work::Apply {
                answer: prepared.clone(),
                state_version,
            };
            match self.through_batcher(quiz_id, work).await {
                Ok(v) => return decode_apply(quiz_id, answer, &v),
                // Same token on every attempt: a re-run of an attempt that
                // did land answers `Applied` without adding points again.
                Err(StoreError::Unavailable(e)) if attempt < self.shared.opts.max_attempts => {
                    tracing::debug!(attempt, error = %e, quiz_id, "apply_answer retry");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt of a hot-path write through the batcher.
    async fn through_batcher(&self, quiz_id: &str, work: Work) -> Result<Value, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            quiz_id: quiz_id.to_string(),
            work,
            reply: tx,
        };
        let timeout = self.shared.opts.command_timeout;
        tokio::time::timeout(timeout, self.jobs.send(job))
            .await
            .map_err(|_| unavailable("answer queue full"))?
            .map_err(|_| unavailable("answer batcher stopped"))?;
        // The batcher answers every job it takes (its pipeline has its own
        // deadline); this outer deadline only guards against a bug there.
        tokio::time::timeout(
            timeout.saturating_mul(3) + self.shared.opts.wait_timeout,
            rx,
        )
        .await
        .map_err(|_| unavailable("answer batch timed out"))?
        .map_err(|_| unavailable("answer batcher dropped the answer"))?
    }
}

fn cluster_client(nodes: &[String], opts: &RedisOptions) -> Result<ClusterClient, StoreError> {
    if nodes.is_empty() {
        return Err(unavailable("no Redis nodes configured"));
    }
    let urls: Vec<String> = nodes.iter().map(|n| node_url(n)).collect();
    let mut builder = ClusterClientBuilder::new(urls);
    if let Some(ca) = &opts.tls_ca {
        builder = builder.certs(tls_certificates(ca));
    }
    builder
        .connection_timeout(opts.connect_timeout)
        .response_timeout(opts.command_timeout)
        // A failover takes a few seconds; the client re-routes (MOVED,
        // READONLY, CLUSTERDOWN) within this budget, the store's own attempts
        // cover the rest.
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(1000)
        .build()
        .map_err(unavailable)
}

/// Trust `ca_pem` (a private CA) for `rediss://` connections.
pub(crate) fn tls_certificates(ca_pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca_pem.to_vec()),
    }
}

/// Accepts `host:port` as well as full `redis://` URLs.
pub(crate) fn node_url(node: &str) -> String {
    if node.contains("://") {
        node.to_string()
    } else {
        format!("redis://{node}")
    }
}

/// The batcher: takes what is queued, one pipeline per slot, bounded in
/// flight. Ends when every sender (the store) is gone.
async fn batcher(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let max = shared.opts.max_batch.max(1);
    loop {
        // Take a permit before collecting: while all batches are out, jobs
        // pile up in the channel and leave together in the next one.
        let Ok(permit) = Arc::clone(&shared.in_flight).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max.min(64));
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // One script per quiz (hence per slot) and batch.
        let mut groups: HashMap<String, Vec<Job>> = HashMap::new();
        for job in batch {
            groups.entry(job.quiz_id.clone()).or_default().push(job);
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            let sends = groups.into_iter().map(|(quiz_id, jobs)| {
                let shared = Arc::clone(&shared);
                async move { run_batch(&shared, &quiz_id, jobs).await }
            });
            futures::future::join_all(sends).await;
        });
    }
}

/// Applies one quiz's share of a batch in ONE pipeline to its master:
/// one `EVALSHA apply_batch` per state version the answers were scored
/// against (normally one), one `EVALSHA present_batch` for the self-paced
/// presentations, then a single `WAIT` for all of them; then hands each
/// caller its own entry of the replies.
async fn run_batch(shared: &Shared, quiz_id: &str, jobs: Vec<Job>) {
    let mut applies: Vec<(Option<u64>, Vec<Waiting>)> = Vec::new();
    let mut presents: Vec<(String, Millis, Reply)> = Vec::new();
    for job in jobs {
        match job.work {
            Work::Apply {
                answer,
                state_version,
            } => match applies.iter_mut().find(|(v, _)| *v == state_version) {
                Some((_, group)) => group.push((answer, job.reply)),
                None => applies.push((state_version, vec![(answer, job.reply)])),
            },
            Work::Present { field, now } => presents.push((field, now, job.reply)),
        }
    }
    let mut calls = Vec::with_capacity(applies.len() + 1);
    for (version, group) in &applies {
        calls.push(apply_call(shared, quiz_id, *version, group));
    }
    if !presents.is_empty() {
        let mut args = Vec::with_capacity(2 * presents.len());
        for (field, now, _) in &presents {
            args.push(field.clone());
            args.push(now.to_string());
        }
        calls.push(Call {
            script: &shared.scripts.present,
            keys: vec![
                key(quiz_id, "def"),
                key(quiz_id, "answers"),
                key(quiz_id, "sent"),
            ],
            args,
        });
    }
    let route = Route::with_key(&calls[0].keys[0], SlotAddr::Master);
    let mut results = run_pipeline(shared, route, calls.iter().collect(), true)
        .await
        .into_iter();
    for (_, group) in applies {
        let n = group.len();
        match results
            .next()
            .unwrap_or_else(|| Err(unavailable("no reply")))
        {
            Ok(Value::Array(entries)) if entries.len() == 3 * n => {
                let mut entries = entries.into_iter();
                for (_, reply) in group {
                    let entry: Vec<Value> = entries.by_ref().take(3).collect();
                    // The caller may have given up; nothing to do then.
                    let _ = reply.send(Ok(Value::Array(entry)));
                }
            }
            // Stale state: every answer of the call gets the same verdict.
            Ok(Value::Array(entries)) if entries.len() == 1 => {
                for (_, reply) in group {
                    let _ = reply.send(Ok(Value::Array(entries.clone())));
                }
            }
            Ok(other) => fail_all(
                group.into_iter().map(|(_, r)| r),
                &bad_reply("apply_batch", &other),
            ),
            Err(e) => fail_all(group.into_iter().map(|(_, r)| r), &e),
        }
    }
    if !presents.is_empty() {
        let n = presents.len();
        match results
            .next()
            .unwrap_or_else(|| Err(unavailable("no reply")))
        {
            Ok(Value::Array(entries)) if entries.len() == n => {
                for ((_, _, reply), v) in presents.into_iter().zip(entries) {
                    let _ = reply.send(Ok(v));
                }
            }
            // No quiz: nil for every presentation.
            Ok(Value::Nil) => {
                for (_, _, reply) in presents {
                    let _ = reply.send(Ok(Value::Nil));
                }
            }
            Ok(other) => fail_all(
                presents.into_iter().map(|(_, _, r)| r),
                &bad_reply("present_batch", &other),
            ),
            Err(e) => fail_all(presents.into_iter().map(|(_, _, r)| r), &e),
        }
    }
}

type Reply = oneshot::Sender<Result<Value, StoreError>>;
/// An answer of a batch with the channel its caller waits on.
type Waiting = (PreparedAnswer, Reply);

fn fail_all(replies: impl Iterator<Item = Reply>, e: &StoreError) {
    for r in replies {
        let _ = r.send(Err(StoreError::Unavailable(e.to_string())));
    }
}

/// The `apply_batch` call of a group of answers scored against one state
/// version (see [`APPLY_BATCH`] for the arguments).
fn apply_call(
    shared: &Shared,
    quiz_id: &str,
    state_version: Option<u64>,
    group: &[Waiting],
) -> Call {
    let mut keys = vec![
        key(quiz_id, "players"),
        key(quiz_id, "answers"),
        key(quiz_id, "leaderboard"),
        key(quiz_id, "lbver"),
        key(quiz_id, "state"),
    ];
    let mut dist_index: HashMap<u32, usize> = HashMap::new();
    let mut args = Vec::with_capacity(2 + group.len());
    args.push(group.len().to_string());
    args.push(state_version.map(|v| v.to_string()).unwrap_or_default());
    for (a, _) in group {
        let dk = *dist_index.entry(a.question_id).or_insert_with(|| {
            keys.push(key(quiz_id, &format!("dist:{}", a.question_id)));
            keys.len() // 1-based index of the key just pushed
        });
        // One packed argument per answer (see APPLY_BATCH for the layout):
        // every separate argument costs the Redis main thread.
        let mut arg = String::with_capacity(48 + a.record.len() + 2 * a.player_id.len());
        let _ = write!(arg, "{} {} ", if a.late { 0 } else { dk }, a.points);
        for (i, c) in a.choices.iter().enumerate() {
            if i > 0 {
                arg.push(',');
            }
            let _ = write!(arg, "{c}");
        }
        let _ = write!(
            arg,
            " {}|{} {}:{}",
            a.token, a.record, a.player_id, a.question_id
        );
        args.push(arg);
    }
    Call {
        script: &shared.scripts.apply,
        keys,
        args,
    }
}

fn push_call(pipe: &mut redis::Pipeline, call: &Call, by_sha: bool) {
    let mut cmd = if by_sha {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&call.script.sha);
        c
    } else {
        let mut c = redis::cmd("EVAL");
        c.arg(call.script.body);
        c
    };
    cmd.arg(call.keys.len()).arg(&call.keys).arg(&call.args);
    pipe.add_command(cmd);
}

/// Sends `calls` (all in the slot of `route`) as one pipeline to that slot's
/// master, followed by WAIT when `durable`; returns one result per call.
/// Calls answered NOSCRIPT are re-sent once as EVAL.
async fn run_pipeline(
    shared: &Shared,
    route: Route,
    calls: Vec<&Call>,
    durable: bool,
) -> Vec<Result<Value, StoreError>> {
    let n = calls.len();
    let mut results: Vec<Option<Result<Value, StoreError>>> = (0..n).map(|_| None).collect();
    let mut pending: Vec<usize> = (0..n).collect();
    for by_sha in [true, false] {
        if pending.is_empty() {
            break;
        }
        let out = send_once(shared, route, &calls, &pending, by_sha, durable).await;
        let mut retry = Vec::new();
        match out {
            Err(e) => {
                for &i in &pending {
                    results[i] = Some(Err(unavailable(&e)));
                }
            }
            Ok(values) => {
                for (&i, v) in pending.iter().zip(values) {
                    match v {
                        Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
                            retry.push(i);
                            results[i] = Some(Err(unavailable("NOSCRIPT")));
                        }
                        Value::ServerError(e) => {
                            results[i] = Some(Err(unavailable(format!(
                                "{} {}",
                                e.code(),
                                e.details().unwrap_or("")
                            ))));
                        }
                        v => results[i] = Some(Ok(v)),
                    }
                }
            }
        }
        pending = retry;
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(unavailable("no reply"))))
        .collect()
}

/// One pipeline round trip: the calls at `idx`, then WAIT if `durable`.
/// A WAIT reaching fewer replicas than required fails every call (each is
/// idempotent, so the caller's retry is safe).
async fn send_once(
    shared: &Shared,
    route: Route,
    calls: &[&Call],
    idx: &[usize],
    by_sha: bool,
    durable: bool,
) -> Result<Vec<Value>, String> {
    let opts = &shared.opts;
    let wait = durable && opts.wait_replicas > 0;
    let mut pipe = redis::pipe();
    for &i in idx {
        push_call(&mut pipe, calls[i], by_sha);
    }
    if wait {
        // Keyless, so it does not affect routing: the pipeline goes to the
        // master of `route`'s slot and WAIT runs right after the scripts on
        // the same connection.
        pipe.add_command(
            redis::cmd("WAIT")
                .arg(opts.wait_replicas)
                .arg(opts.wait_timeout.as_millis() as u64)
                .clone(),
        );
    }
    let count = idx.len() + usize::from(wait);
    let mut conn = shared.conn.clone();
    let deadline = opts.command_timeout
        + if wait {
            opts.wait_timeout
        } else {
            Duration::ZERO
        };
    let mut values = tokio::time::timeout(
        deadline,
        conn.route_pipeline(pipe, 0, count, SingleNodeRoutingInfo::SpecificNode(route)),
    )
    .await
    .map_err(|_| "redis pipeline timed out".to_string())?
    .map_err(|e| e.to_string())?;
    if values.len() != count {
        return Err(format!(
            "pipeline returned {} replies for {count} commands",
            values.len()
        ));
    }
    if wait {
        match values.pop() {
            Some(Value::Int(acked)) if acked >= i64::from(opts.wait_replicas) => {}
            Some(Value::Int(acked)) => {
                return Err(format!(
                    "write reached {acked} of {} replicas within {:?}",
                    opts.wait_replicas, opts.wait_timeout
                ))
            }
            other => return Err(format!("unexpected WAIT reply {other:?}")),
        }
    }
    Ok(values)
}

// ---- reply decoding (replies are remote data: never unwrap) ----

fn bad_reply(what: &str, v: &Value) -> StoreError {
    StoreError::Unavailable(format!("unexpected redis reply for {what}: {v:?}"))
}

fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        // Sorted-set scores come back as strings of doubles ("1500").
        other => as_str(other)
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.round() as u64),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Unavailable(format!("corrupt {what}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Unavailable(format!("encoding: {e}")))
}

/// `Ok(None)`: the state guard failed (`S`).
fn decode_apply(
    quiz_id: &str,
    answer: &AnswerRecord,
    v: &Value,
) -> Result<Option<ApplyOutcome>, StoreError> {
    let Value::Array(items) = v else {
        return Err(bad_reply("apply_answer", v));
    };
    let tag = items.first().and_then(as_str);
    let score_rank = || -> Result<(u64, u64), StoreError> {
        let score = items.get(1).and_then(as_u64);
        let higher = items.get(2).and_then(as_u64);
        match (score, higher) {
            (Some(s), Some(h)) => Ok((s, h + 1)),
            _ => Err(bad_reply("apply_answer", v)),
        }
    };
    match tag {
        Some("A") => {
            let (score, rank) = score_rank()?;
            Ok(Some(ApplyOutcome::Applied { score, rank }))
        }
        Some("S") => Ok(None),
        Some(t) if t.starts_with('D') => {
            let (score, rank) = score_rank()?;
            let rec = &t[1..];
            Ok(Some(ApplyOutcome::Duplicate {
                original: decode_record(
                    rec,
                    &answer.player_id,
                    &answer.nickname,
                    answer.question_id,
                )?,
                score,
                rank,
            }))
        }
        Some("N") => Err(StoreError::NotFound(format!(
            "player {} in quiz {quiz_id}",
            answer.player_id
        ))),
        _ => Err(bad_reply("apply_answer", v)),
    }
}

/// The stored answer record, compact (it is written once per answer on the
/// hot path, and its bytes cost Redis CPU, replication and memory):
/// `c<correct 0|1><late 0|1>;<points>;<response_ms>;<answered_at_ms>;<choices,…>`,
/// e.g. `c10;870;2100;1764201234567;0,2`. Player id and question id are the
/// hash field, the nickname is the player's: neither is repeated here.
pub(crate) fn encode_record(a: &AnswerRecord) -> String {
    // Written straight into one buffer (it runs once per answer).
    let mut s = String::with_capacity(40 + 3 * a.choices.len());
    let _ = write!(
        s,
        "c{}{};{};{};{};",
        u8::from(a.correct),
        u8::from(a.late),
        a.points,
        a.response_ms,
        a.answered_at_ms
    );
    for (i, c) in a.choices.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{c}");
    }
    s
}

/// Reads a record written by [`encode_record`], or the JSON `AnswerRecord`
/// that versions before the compact format stored.
pub(crate) fn decode_record(
    rec: &str,
    player_id: &str,
    nickname: &str,
    question_id: u32,
) -> Result<AnswerRecord, StoreError> {
    if rec.starts_with('{') {
        return parse_json("answer record", rec);
    }
    let corrupt = || StoreError::Unavailable(format!("corrupt answer record {rec:?}"));
    let body = rec.strip_prefix('c').ok_or_else(corrupt)?;
    let mut parts = body.split(';');
    let flags = parts.next().ok_or_else(corrupt)?.as_bytes();
    let flag = |b: Option<&u8>| match b {
        Some(b'0') => Ok(false),
        Some(b'1') => Ok(true),
        _ => Err(corrupt()),
    };
    if flags.len() != 2 {
        return Err(corrupt());
    }
    let correct = flag(flags.first())?;
    let late = flag(flags.get(1))?;
    let mut num = || -> Result<u64, StoreError> {
        parts
            .next()
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or_else(corrupt)
    };
    let points = u32::try_from(num()?).map_err(|_| corrupt())?;
    let response_ms = num()?;
    let answered_at_ms = num()?;
    let choices = match parts.next() {
        Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|c| c.parse::<u32>().map_err(|_| corrupt()))
            .collect::<Result<Vec<u32>, StoreError>>()?,
        None => return Err(corrupt()),
    };
    if parts.next().is_some() {
        return Err(corrupt());
    }
    Ok(AnswerRecord {
        player_id: player_id.to_string(),
        nickname: nickname.to_string(),
        question_id,
        choices,
        correct,
        late,
        points,
        response_ms,
        answered_at_ms,
    })
}

fn decode_int(what: &str, v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(bad_reply(what, other)),
    }
}

#[async_trait]
impl QuizStore for RedisClusterStore {
    async fn create_quiz(&self, quiz: &QuizDef, state: &QuizState) -> Result<(), StoreError> {
        let id = &quiz.quiz_id;
        let call = Call {
            script: &self.shared.scripts.create,
            keys: vec![key(id, "def"), key(id, "state")],
            args: vec![to_json(quiz)?, to_json(state)?],
        };
        match decode_int("create_quiz", &self.write(call).await?)? {
            1 => Ok(()),
            _ => Err(StoreError::Conflict(format!("quiz_id {id} exists"))),
        }
    }

    async fn get_quiz(&self, quiz_id: &str) -> Result<Option<Arc<QuizDef>>, StoreError> {
        match self
            .get_string(redis::cmd("GET").arg(key(quiz_id, "def")).clone())
            .await?
        {
            Some(s) => Ok(Some(Arc::new(parse_json("quiz definition", &s)?))),
            None => Ok(None),
        }
    }

    async fn get_state(&self, quiz_id: &str) -> Result<Option<QuizState>, StoreError> {
        match self
            .get_string(redis::cmd("GET").arg(key(quiz_id, "state")).clone())
            .await?
        {
            Some(s) => Ok(Some(parse_json("quiz state", &s)?)),
            None => Ok(None),
        }
    }

    async fn set_state(
        &self,
        quiz_id: &str,
        expected_version: u64,
        next: &QuizState,
    ) -> Result<bool, StoreError> {
        super::check_next_version(expected_version, next)?;
        let call = Call {
            script: &self.shared.scripts.set_state,
            keys: vec![key(quiz_id, "state")],
            args: vec![expected_version.to_string(), to_json(next)?],
        };
        // Not retried internally: a re-run after an applied-but-unconfirmed
        // first run would report `false` for our own write. One attempt; the
        // caller re-reads the state on `Unavailable` or `false`.
        let route = Route::with_key(&call.keys[0], SlotAddr::Master);
        let v = run_pipeline(&self.shared, route, vec![&call], true)
            .await
            .pop()
            .unwrap_or_else(|| Err(unavailable("empty reply")))?;
        match decode_int("set_state", &v)? {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
        }
    }

    async fn add_player(&self, quiz_id: &str, player: &Player) -> Result<(), StoreError> {
        let call = Call {
            script: &self.shared.scripts.add_player,
            keys: vec![
                key(quiz_id, "def"),
                key(quiz_id, "nicks"),
                key(quiz_id, "players"),
                key(quiz_id, "leaderboard"),
                key(quiz_id, "lbver"),
            ],
            args: vec![
                normalize_nickname(&player.nickname),
                player.player_id.clone(),
                to_json(player)?,
            ],
        };
        match decode_int("add_player", &self.write(call).await?)? {
            1 => Ok(()),
            0 => Err(StoreError::Conflict(format!(
                "nickname {:?} is taken",
                player.nickname.trim()
            ))),
            -2 => Err(StoreError::Conflict(format!(
                "player_id {} exists",
                player.player_id
            ))),
            _ => Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
        }
    }

    async fn get_player(
        &self,
        quiz_id: &str,
        player_id: &str,
    ) -> Result<Option<Player>, StoreError> {
        match self
            .get_string(
                redis::cmd("HGET")
                    .arg(key(quiz_id, "players"))
                    .arg(player_id)
                    .clone(),
            )
            .await?
        {
            Some(s) => Ok(Some(parse_json("player", &s)?)),
            None => Ok(None),
        }
    }

    async fn apply_answer(
        &self,
        quiz_id: &str,
        answer: &AnswerRecord,
    ) -> Result<ApplyOutcome, StoreError> {
        self.apply_guarded(quiz_id, answer, None)
            .await?
            .ok_or_else(|| unavailable("stale-state reply to an unguarded apply"))
    }

    async fn apply_answer_at_state(
        &self,
        quiz_id: &str,
        answer: &AnswerRecord,
        state_version: u64,
    ) -> Result<Option<ApplyOutcome>, StoreError> {
        self.apply_guarded(quiz_id, answer, Some(state_version))
            .await
    }

    async fn present_question(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
        now: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        let mut backoff = self.shared.opts.retry_backoff;
        let mut attempt = 1;
        loop {
            let work = Work::Present {
                field: format!("{player_id}:{question_id}"),
                now,
            };
            // Idempotent (set once, then read), so re-runs are safe.
            match self.through_batcher(quiz_id, work).await {
                Ok(Value::Nil) => return Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
                Ok(Value::Int(-1)) => return Ok(None),
                Ok(v) => {
                    return as_u64(&v)
                        .map(Some)
                        .ok_or_else(|| bad_reply("present_question", &v))
                }
                Err(StoreError::Unavailable(e)) if attempt < self.shared.opts.max_attempts => {
                    tracing::debug!(attempt, error = %e, quiz_id, "present_question retry");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn get_answer(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
    ) -> Result<Option<AnswerRecord>, StoreError> {
        // The record and the player (for the nickname, which the compact
        // record leaves out), in one round trip to the quiz's slot.
        let mut conn = self.shared.conn.clone();
        let mut pipe = redis::pipe();
        pipe.hget(
            key(quiz_id, "answers"),
            format!("{player_id}:{question_id}"),
        )
        .hget(key(quiz_id, "players"), player_id);
        let (stored, player): (Option<String>, Option<String>) = tokio::time::timeout(
            self.shared.opts.command_timeout,
            pipe.query_async(&mut conn),
        )
        .await
        .map_err(|_| unavailable("redis command timed out"))?
        .map_err(unavailable)?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let nickname = match player {
            Some(p) => parse_json::<Player>("player", &p)?.nickname,
            None => String::new(),
        };
        let rec = stored.split_once('|').map(|(_, r)| r).unwrap_or(&stored);
        decode_record(rec, player_id, &nickname, question_id).map(Some)
    }

    async fn leaderboard(&self, quiz_id: &str, limit: usize) -> Result<Leaderboard, StoreError> {
        let call = Call {
            script: &self.shared.scripts.leaderboard,
            keys: vec![
                key(quiz_id, "def"),
                key(quiz_id, "leaderboard"),
                key(quiz_id, "players"),
                key(quiz_id, "lbver"),
            ],
            args: vec![limit.min(100_000).to_string()],
        };
        let v = self.read(call).await?;
        let items = match &v {
            Value::Nil => return Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
            Value::Array(items) if items.len() == 4 => items,
            other => return Err(bad_reply("leaderboard", other)),
        };
        let total = as_u64(&items[0]).ok_or_else(|| bad_reply("leaderboard", &v))?;
        let version = as_u64(&items[1]).ok_or_else(|| bad_reply("leaderboard", &v))?;
        let (Value::Array(flat), players) = (&items[2], &items[3]) else {
            return Err(bad_reply("leaderboard", &v));
        };
        let players: &[Value] = match players {
            Value::Array(p) => p,
            _ => &[],
        };
        let mut top = Vec::with_capacity(flat.len() / 2);
        let mut rank = 0u64;
        let mut prev: Option<u64> = None;
        for (i, pair) in flat.chunks_exact(2).enumerate() {
            let pid = as_str(&pair[0]).ok_or_else(|| bad_reply("leaderboard", &v))?;
            let score = as_u64(&pair[1]).ok_or_else(|| bad_reply("leaderboard", &v))?;
            // Competition rank: an entry shares the rank of the first entry
            // with its score; the top is sorted, so this is exact.
            if prev != Some(score) {
                rank = i as u64 + 1;
                prev = Some(score);
            }
            let nickname = players
                .get(i)
                .and_then(as_str)
                .and_then(|s| serde_json::from_str::<Player>(s).ok())
                .map(|p| p.nickname)
                .unwrap_or_default();
            top.push(LeaderboardEntry {
                rank,
                player_id: pid.to_string(),
                nickname,
                score,
            });
        }
        Ok(Leaderboard {
            quiz_id: quiz_id.to_string(),
            version,
            total_players: total,
            top,
        })
    }

    async fn standing(
        &self,
        quiz_id: &str,
        player_id: &str,
    ) -> Result<Option<Standing>, StoreError> {
        let call = Call {
            script: &self.shared.scripts.standing,
            keys: vec![key(quiz_id, "leaderboard")],
            args: vec![player_id.to_string()],
        };
        match self.read(call).await? {
            Value::Nil => Ok(None),
            Value::Array(items) if items.len() == 2 => {
                match (as_u64(&items[0]), as_u64(&items[1])) {
                    (Some(score), Some(higher)) => Ok(Some(Standing {
                        score,
                        rank: higher + 1,
                    })),
                    _ => Err(StoreError::Unavailable(format!(
                        "unexpected redis reply for standing: {items:?}"
                    ))),
                }
            }
            other => Err(bad_reply("standing", &other)),
        }
    }

    async fn distribution(
        &self,
        quiz_id: &str,
        question_id: u32,
        option_count: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let call = Call {
            script: &self.shared.scripts.distribution,
            keys: vec![
                key(quiz_id, "def"),
                key(quiz_id, &format!("dist:{question_id}")),
            ],
            args: vec![option_count.min(64).to_string()],
        };
        match self.read(call).await? {
            Value::Nil => Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
            Value::Array(items) => {
                let mut out: Vec<u64> = items.iter().map(|v| as_u64(v).unwrap_or(0)).collect();
                out.resize(option_count, 0);
                Ok(out)
            }
            other => Err(bad_reply("distribution", &other)),
        }
    }

    async fn question_sent_at(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
        now: Millis,
    ) -> Result<Millis, StoreError> {
        let call = Call {
            script: &self.shared.scripts.sent_at,
            keys: vec![key(quiz_id, "def"), key(quiz_id, "sent")],
            args: vec![format!("{player_id}:{question_id}"), now.to_string()],
        };
        // HSETNX then HGET is idempotent, so the write path's retries are
        // safe; it is durable like every other write.
        match self.write(call).await? {
            Value::Nil => Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
            v => as_u64(&v).ok_or_else(|| bad_reply("question_sent_at", &v)),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.shared.conn.clone();
        let pong: Result<Value, _> = tokio::time::timeout(
            self.shared.opts.command_timeout,
            redis::cmd("PING").query_async(&mut conn),
        )
        .await
        .map_err(|_| unavailable("redis ping timed out"))?;
        pong.map(|_| ()).map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(choices: Vec<u32>, correct: bool, late: bool) -> AnswerRecord {
        AnswerRecord {
            player_id: "p1".into(),
            nickname: "Ann".into(),
            question_id: 3,
            choices,
            correct,
            late,
            points: 870,
            response_ms: 2100,
            answered_at_ms: 1_764_201_234_567,
        }
    }

    #[test]
    fn compact_record_round_trips() {
        for a in [
            record(vec![0, 2], true, false),
            record(vec![5], false, true),
            record(Vec::new(), false, false),
        ] {
            let s = encode_record(&a);
            assert!(s.len() < 40, "{s}");
            assert_eq!(decode_record(&s, "p1", "Ann", 3).unwrap(), a);
        }
        assert_eq!(
            encode_record(&record(vec![0, 2], true, false)),
            "c10;870;2100;1764201234567;0,2"
        );
    }

    #[test]
    fn json_records_of_older_versions_still_decode() {
        let a = record(vec![1], true, false);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(decode_record(&json, "x", "y", 9).unwrap(), a);
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        for bad in [
            "",
            "c",
            "c1",
            "c12;1;2;3;",
            "c10;1;2;3",
            "c10;x;2;3;",
            "c10;1;2;3;4;5",
            "c10;1;2;3;a",
            "c10;99999999999;2;3;1",
            "{",
            "c10;1;2;3;1,,2",
        ] {
            assert!(decode_record(bad, "p", "n", 0).is_err(), "{bad:?}");
        }
    }
}
