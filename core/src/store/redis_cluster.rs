//! [`RedisClusterStore`]: the [`QuizStore`] on Redis Cluster, for several core
//! nodes sharing quizzes.
//!
//! # Key layout
//! Every key of an ordinary quiz X carries the hash tag `{X}`, so a quiz
//! lives in one slot (one master) and every multi-key operation on it is
//! one atomic Lua script (a sharded quiz, `layout.shards > 1`, spreads its
//! scoring over several slots: see "Shards" below):
//!
//! | key | type | content |
//! |---|---|---|
//! | `quiz:{X}:def` | string | [`QuizDef`] JSON, immutable |
//! | `quiz:{X}:state` | string | [`QuizState`] JSON (with its `version`) |
//! | `quiz:{X}:players` | hash | player_id → [`Player`] JSON |
//! | `quiz:{X}:nicks` | hash | trimmed lowercased nickname → player_id |
//! | `quiz:{X}:leaderboard` | zset | player_id, score = total points (contract) |
//! | `quiz:{X}:answers` | hash | `player_id:question_id` → `attempt|record` (compact, see `codec.rs`) |
//! | `quiz:{X}:dist:Q` | hash | option index → count (on-time answers) |
//! | `quiz:{X}:lbver` | string | leaderboard version (INCR per join and answer) |
//! | `quiz:{X}:sent` | hash | `player_id:question_id` → ms the question was sent |
//! | `quiz:{X}:pending` | hash | event id → event JSON: pending events other than answers (the event outbox, see `store.rs`) |
//! | `quiz:{X}:pending_answers` | hash | `player_id:question_id` → the score the answer gave: pending `answer_scored` events (rebuilt from `answers` and `players`) |
//!
//! # Shards (one quiz's scoring over several masters)
//! A quiz whose [`QuizDef::layout`] has `shards = S > 1` keeps in its main
//! slot `{X}` what is quiz-wide: `def`, `state`, `players`, `nicks` (the
//! nickname is unique in the quiz), `pending` (events other than answers).
//! Each player's scoring lives in shard `s = shard_of(player_id, S)`
//! (FNV-1a of the id, mod S), whose keys carry the tag `{X:s<s>.<j>}`
//! (`shards.rs`: `j` is the first number putting the tag's slot in the
//! `s`-th of S equal parts of the slot space, so with S equal to the
//! masters of an evenly laid out cluster each shard is on its own master;
//! a pure function of (X, s, S), no cluster query). Per shard:
//! `leaderboard`, `answers`, `dist:Q`, `lbver`, `sent`,
//! `pending_answers`, and `state`: a copy of the main state, for
//! `apply_batch`'s guard and for the shard keys' lifetime. S = 1 is the
//! table above, unchanged (no key renamed). The store learns S from the
//! definition (remembered per quiz: definitions are immutable).
//!
//! - **Join**: `join_main` in the main slot (nickname, the `max_players`
//!   cap counted as `HLEN players`, the player, the pending event: atomic
//!   as before), then `join_shard` on the player's shard (`ZADD NX` score
//!   0, `INCR lbver`). A crash between the two leaves a player who joined
//!   but is missing from its shard. Repaired, idempotently: a retried join
//!   (the same player again is "added") runs `join_shard` again; an answer
//!   that comes back `N` (not in the shard) and a standing that finds no
//!   score check the main slot's `players`, the truth of who joined, and
//!   if the player is there run `join_shard`, then the answer again (same
//!   attempt token). So an answer of a joined player is never lost to the
//!   window; one of a non-player is still `NotFound`. Until repaired the
//!   player is missing from `total_players` and the board.
//! - **State**: `set_state` is the same compare-and-set in the main slot,
//!   then pushes the new state to every shard's copy (`state_copy`: set
//!   only if newer, so a late push never moves a copy back) and returns
//!   only after that. The guard on a shard compares the caller's version
//!   with the copy: equal applies, copy newer is `S` (re-score, as
//!   before), copy older or missing is `L`: the store pushes the main
//!   state to the shards and runs the batch again; an answer is never
//!   applied against a copy that differs from the version it was scored
//!   at.
//!
//!   Why no answer is scored against a window that has moved on: a state
//!   change is *visible* once someone acts on it. Here the only ways to
//!   read a sharded quiz's state are `get_state` and `pending_events` (the
//!   outbox sweep publishing the change's events), and both first bring
//!   every copy up to the main state (`sync_copies`: once per version per
//!   store, remembered; `set_state` records its own pushes). The writer's
//!   own `set_state` returns after its pushes. So whenever anyone has seen
//!   version v+1, every copy already is at v+1 or later, and from then on
//!   an answer scored at v is refused (`S`) on every shard, exactly like in
//!   one slot. An answer at v applied on a shard whose copy is still v
//!   landed before anyone could see v+1: it is ordered before the change
//!   (the change takes effect on a shard when its copy moves). If the
//!   writer dies between its compare-and-set and its pushes, the copies
//!   stay behind only until the next reader (every room re-reads the state
//!   periodically) or the next answer scored at v+1 (`L`) pushes them;
//!   until then nobody has seen v+1, so accepting v is the old order, not
//!   a stale one. Copies only move forward, so "every copy ≥ v" stays true.
//! - **Answers** go to the player's shard through the batcher (which
//!   groups by slot: a shard is a slot), same script, same dedupe, attempt
//!   tokens, WAIT and outbox entry. The script's rank counts the players
//!   above the answer in its own shard; the batcher then runs
//!   `count_higher` on every shard (one call per shard per round of the
//!   batcher, concurrently, with the distinct scores of every other
//!   shard's answers of the round) and adds them: rank =
//!   1 + players strictly higher in ALL shards ("1224" ranking), read after
//!   the write (exact when the quiz is quiet; under load, the rank of a
//!   state at least as new as the answer, as with one slot's batches). A
//!   failed count fails the batch's replies; the retries re-run them with
//!   their tokens (`A`, nothing added twice).
//! - **Leaderboard**: every shard's top `limit`, `ZCARD` and `lbver`
//!   (`shard_top`, concurrently), merged by score descending then player id
//!   descending (byte order: one `ZREVRANGE`'s order), cut to `limit`,
//!   nicknames from the main slot (`names`). Exact: every player above one
//!   in the merged top is in its shard's top `limit`. `total_players` is
//!   the sum of the `ZCARD`s, `version` the sum of the `lbver`s (each only
//!   grows, so the sum does). The same data gives the same bytes on every
//!   node. `standing`: `ZSCORE` and `ZCOUNT` in the player's shard plus
//!   `count_higher` on the others. `distribution`: the sum over shards.
//!   `get_answer`, `question_sent_at`, `present_question`: the player's
//!   shard.
//! - **Pending events**: `pending` in the main slot plus every shard's
//!   `pending_answers` (nicknames from the main slot); an answer's event id
//!   names its player, so `clear_pending` and `is_pending` find its shard.
//! - **Retention**: `create_quiz` and every state push set the shard keys'
//!   lifetime (the main state's, in ms); keys created later on a shard
//!   inherit the remaining lifetime of the shard's state copy.
//!
//! # Retention
//! Every key of a quiz expires ([`RedisOptions::retention`]: `live` after
//! the quiz's creation or last state change, `ended` after its end): `create_quiz` and `set_state` set the lifetime of the
//! quiz's keys, and a key created later (players, answers, a question's
//! distribution, sent times) inherits what is left of it in the script that
//! creates it. Nothing of a quiz stays in Redis for ever, also when its host
//! abandons it.
//!
//! # Where things are
//! - this file: the key layout, [`RedisClusterStore`] and its [`QuizStore`]
//!   methods (which script, which keys, retry or not);
//! - `scripts.rs` and `lua/*.lua`: the Lua scripts, one file each, each
//!   opening with what it does and its KEYS / ARGV / reply;
//! - `lane.rs`: the direct lanes: an ordinary quiz's answers appended to
//!   their slot's next pipeline on the store's own connection to its
//!   master, in the steady state (anything else steps aside to the
//!   batcher);
//! - `batcher.rs`: the hot path's queue and batcher (answers and self-paced
//!   presentations coalesced per quiz);
//! - `pipeline.rs`: the cluster client and one pipeline round trip (EVALSHA,
//!   NOSCRIPT → EVAL, WAIT);
//! - `codec.rs`: the compact answer record and the decoding of replies;
//! - `shared.rs`: what they all share: [`RedisOptions`], the connection,
//!   the naming of keys and failures.
//!
//! Imports run one way, from this file down: store → lane and batcher →
//! pipeline → shared → scripts (and codec beside them).
//!
//! # The hot path: `apply_answer`
//! Answers from many connections are coalesced: each call sends a job into a
//! bounded channel; one batcher task takes what is queued (up to
//! `max_batch`), groups it by slot (a quiz is one slot, so one master) and
//! sends one pipeline per slot, up to `max_in_flight` batches at a time.
//! While batches are in flight, new answers queue up and leave together in the
//! next batch: under load the number of round trips per answer falls towards
//! `1 / max_batch`, with no timer adding latency when the load is light.
//! An ordinary quiz's answers normally take the direct lane instead
//! (`lane.rs`): the same batches, pipelines and `WAIT`, with no job, queue,
//! task or redis-rs in between; the batcher carries what the lane steps
//! aside from.
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

mod batcher;
mod codec;
mod lane;
mod pipeline;
mod score_cache;
mod scripts;
mod shards;
mod shared;

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use redis::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};

use self::batcher::{batcher, Job, PreparedAnswer, Work};
use self::codec::{
    as_u64, bad_reply, decode_apply, decode_int, decode_leaderboard, decode_record,
    decode_standing, parse_json, to_json, Verdict,
};
use self::lane::Lanes;
pub use self::lane::CLIENT_NAME as LANE_CLIENT_NAME;
use self::pipeline::{cluster_client, run_one, Call};
pub(crate) use self::pipeline::{node_url, tls_certificates};
use self::scripts::scripts;
pub use self::shards::{shard_of, shard_tag};
use self::shards::{CopiesSeen, LayoutCache, Shards};
pub use self::shared::RedisOptions;
use self::shared::{dist_key, key, unavailable, Shared};
use super::memory::normalize_nickname;
use super::{pending_key, split_answer_field, PendingKey, QuizStore, StoreError};
use crate::events::{Event, EventKind};
use crate::model::{
    AnswerRecord, ApplyOutcome, Leaderboard, Millis, Player, QuizDef, QuizState, Standing,
};

/// The Redis Cluster store. Cheap to share behind an `Arc`; dropping it ends
/// its batcher task once queued answers are answered.
pub struct RedisClusterStore {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
    /// The one-slot quizzes' answers' own connections to their masters
    /// (`lane.rs`); the batcher carries everything else.
    lanes: Arc<Lanes>,
    /// Each quiz's shards, from its definition.
    layouts: LayoutCache,
    /// Per sharded quiz, the state version known to be on every shard.
    copies: CopiesSeen,
}

/// Every key of one shard of a sharded quiz, its state copy first (the
/// `state_copy` script's KEYS).
fn shard_keys(tag: &str, questions: &[u32]) -> Vec<String> {
    let mut keys: Vec<String> = [
        "state",
        "leaderboard",
        "answers",
        "lbver",
        "sent",
        "pending_answers",
    ]
    .iter()
    .map(|suffix| key(tag, suffix))
    .collect();
    keys.extend(questions.iter().map(|q| dist_key(tag, *q)));
    keys
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
        let lanes = Arc::new(Lanes::new(conn.clone(), nodes, &opts));
        let shared = Arc::new(Shared {
            conn,
            in_flight: Arc::new(Semaphore::new(opts.max_in_flight.max(1))),
            opts,
            scripts: scripts(),
        });
        tokio::spawn(batcher(Arc::clone(&shared), rx));
        lanes.start().await;
        Ok(RedisClusterStore {
            shared,
            jobs,
            lanes,
            layouts: LayoutCache::default(),
            copies: CopiesSeen::default(),
        })
    }

    /// Answers this store sent on its direct lanes (`lane.rs`) rather
    /// than through the batcher, so far: for benchmarks and tests, which
    /// path carried a run's answers.
    pub fn answers_on_lanes(&self) -> u64 {
        self.lanes.carried()
    }

    /// Direct-lane connections that have failed so far (each left its
    /// slots to the batcher for a while): a failover, a moved slot, a sick
    /// master. Exported as `quiz_redis_lane_closures_total`.
    pub fn lane_closures(&self) -> u64 {
        self.lanes.closures()
    }

    /// Runs `attempt` until it succeeds, fails with anything but
    /// `Unavailable`, or has run `max_attempts` times, with doubling
    /// back-off. Only for idempotent work.
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        quiz_id: &str,
        mut attempt_once: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = self.shared.opts.retry_backoff;
        let mut attempt = 1;
        loop {
            match attempt_once().await {
                Err(StoreError::Unavailable(e)) if attempt < self.shared.opts.max_attempts => {
                    tracing::debug!(attempt, error = %e, quiz_id, "redis {what} failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Runs a single script call with the write durability rule (WAIT),
    /// retrying `Unavailable` with back-off. Only for idempotent scripts.
    async fn write(&self, what: &str, quiz_id: &str, call: Call) -> Result<Value, StoreError> {
        self.retrying(what, quiz_id, || run_one(&self.shared, &call, true))
            .await
    }

    /// A read-only script call (no WAIT, no retry beyond the client's).
    async fn read(&self, call: Call) -> Result<Value, StoreError> {
        run_one(&self.shared, &call, false).await
    }

    /// A plain command or pipeline on the cluster connection, under the
    /// command deadline.
    async fn timed<T>(
        &self,
        on_timeout: &str,
        query: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.shared.opts.command_timeout, query)
            .await
            .map_err(|_| unavailable(on_timeout))?
            .map_err(unavailable)
    }

    async fn get_string(&self, cmd: redis::Cmd) -> Result<Option<String>, StoreError> {
        let mut conn = self.shared.conn.clone();
        self.timed("redis command timed out", cmd.query_async(&mut conn))
            .await
    }

    /// The quiz's definition, read from Redis (its layout is remembered).
    async fn read_def(&self, quiz_id: &str) -> Result<Option<QuizDef>, StoreError> {
        match self
            .get_string(redis::cmd("GET").arg(key(quiz_id, "def")).clone())
            .await?
        {
            Some(s) => {
                let def: QuizDef = parse_json("quiz definition", &s)?;
                self.layouts.insert(&def);
                Ok(Some(def))
            }
            None => Ok(None),
        }
    }

    /// The shards of a quiz: remembered, else from its definition (read
    /// once: definitions are immutable). An unknown quiz is handled as an
    /// ordinary one (and not remembered), so every method gives its usual
    /// answer for a missing quiz.
    async fn shards(&self, quiz_id: &str) -> Result<Arc<Shards>, StoreError> {
        if let Some(s) = self.layouts.get(quiz_id) {
            return Ok(s);
        }
        Ok(match self.read_def(quiz_id).await? {
            Some(def) => self.layouts.insert(&def),
            None => Arc::new(Shards::single(quiz_id)),
        })
    }

    /// The main slot's state of a quiz, its JSON and its remaining
    /// lifetime in ms (PTTL).
    async fn main_state(
        &self,
        quiz_id: &str,
    ) -> Result<Option<(QuizState, String, i64)>, StoreError> {
        let mut conn = self.shared.conn.clone();
        let mut pipe = redis::pipe();
        pipe.get(key(quiz_id, "state")).pttl(key(quiz_id, "state"));
        let (json, pttl): (Option<String>, i64) = self
            .timed("redis command timed out", pipe.query_async(&mut conn))
            .await?;
        match json {
            Some(json) => Ok(Some((parse_json("quiz state", &json)?, json, pttl))),
            None => Ok(None),
        }
    }

    /// Sharded quiz: sets every shard's state copy to `state_json` where it
    /// is older (`state_copy`, durable), and the lifetime of the shard's
    /// keys to `ttl_ms`. Concurrent over the shards.
    async fn push_copies(
        &self,
        quiz_id: &str,
        shards: &Shards,
        state_json: &str,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let pushes = shards.tags.iter().map(|tag| {
            let call = Call {
                script: &self.shared.scripts.state_copy,
                keys: shard_keys(tag, &shards.questions),
                args: vec![state_json.to_string(), ttl_ms.max(1).to_string()],
            };
            self.write("state_copy", quiz_id, call)
        });
        for r in futures::future::join_all(pushes).await {
            r?;
        }
        Ok(())
    }

    /// Sharded quiz: the main state, after making sure every shard's copy
    /// is at least as new (pushing it where it is older). Checked once per
    /// state version per store (`copies`), or always when `force` (a shard
    /// reported a lagging copy). `None`: no quiz.
    ///
    /// Every reader of a sharded quiz's state goes through here (and
    /// `set_state` returns only after its own pushes), so no one acts on a
    /// state that some shard's copy does not have yet: see "Shards" in the
    /// module doc for why this keeps the state guard exact.
    async fn sync_copies(
        &self,
        quiz_id: &str,
        shards: &Shards,
        force: bool,
    ) -> Result<Option<QuizState>, StoreError> {
        let Some((state, json, pttl)) = self.main_state(quiz_id).await? else {
            return Ok(None);
        };
        if force || !self.copies.covers(quiz_id, state.version) {
            let ttl_ms = if pttl > 0 {
                pttl as u64
            } else {
                self.shared.opts.retention.live.as_millis() as u64
            };
            self.push_copies(quiz_id, shards, &json, ttl_ms).await?;
            self.copies.record(quiz_id, state.version);
        }
        Ok(Some(state))
    }

    /// Sharded quiz: a joined player's score 0 in its shard (`join_shard`,
    /// idempotent). A shard without a state copy gets the main state first.
    async fn join_shard(
        &self,
        quiz_id: &str,
        shards: &Shards,
        player_id: &str,
    ) -> Result<(), StoreError> {
        let tag = shards.tag_of(player_id);
        for first in [true, false] {
            let call = Call {
                script: &self.shared.scripts.join_shard,
                keys: vec![
                    key(tag, "state"),
                    key(tag, "leaderboard"),
                    key(tag, "lbver"),
                ],
                args: vec![player_id.to_string()],
            };
            if decode_int(
                "join_shard",
                &self.write("join_shard", quiz_id, call).await?,
            )? == 1
            {
                return Ok(());
            }
            if first && self.sync_copies(quiz_id, shards, true).await?.is_none() {
                break;
            }
        }
        Err(StoreError::NotFound(format!("quiz {quiz_id}")))
    }

    /// Sharded quiz, the repair of a join whose shard step was lost: if the
    /// player is in the main slot (the truth of who joined), puts them in
    /// their shard. `false`: not a player.
    async fn repair_join(
        &self,
        quiz_id: &str,
        shards: &Shards,
        player_id: &str,
    ) -> Result<bool, StoreError> {
        if self.get_player(quiz_id, player_id).await?.is_none() {
            return Ok(false);
        }
        tracing::info!(
            quiz_id,
            player_id,
            "player missing from its shard: join repaired"
        );
        self.join_shard(quiz_id, shards, player_id).await?;
        Ok(true)
    }

    /// `apply_answer`, with the state guard when `state_version` is set.
    /// `Ok(None)`: the state moved on, nothing written.
    async fn apply_guarded(
        &self,
        quiz_id: &str,
        answer: &AnswerRecord,
        state_version: Option<u64>,
    ) -> Result<Option<ApplyOutcome>, StoreError> {
        let shards = self.shards(quiz_id).await?;
        let shard = shards.index_of(&answer.player_id);
        // Same token on every attempt: a re-run of an attempt that did land
        // answers `Applied` without adding points again.
        let token = rand::random::<u64>();
        // The batcher's copy of the answer, made only if an attempt takes
        // that path.
        let prepared = std::sync::OnceLock::new();
        let mut repaired = false;
        loop {
            let v = self
                .retrying("apply_answer", quiz_id, || async {
                    // A one-slot quiz's answer goes straight into its slot's
                    // next pipeline when the lane can take it.
                    if !shards.is_sharded() {
                        let lane =
                            self.lanes
                                .submit(&shards.tags[shard], answer, token, state_version);
                        if let Some(verdict) = lane {
                            return verdict
                                .await
                                .map_err(|_| unavailable("redis lane dropped the answer"))?;
                        }
                    }
                    let (reply, verdict) = oneshot::channel();
                    let prepared =
                        prepared.get_or_init(|| Arc::new(PreparedAnswer::new(answer, token)));
                    let work = Work::Apply {
                        answer: Arc::clone(prepared),
                        state_version,
                        reply,
                    };
                    self.through_batcher(quiz_id, &shards, shard, work, verdict)
                        .await
                })
                .await?;
            if shards.is_sharded() && !repaired {
                repaired = true;
                // The shard's state copy lags behind the main state: push
                // it, then score against it again.
                // The repairs are boxed: they are rare, and inline their
                // futures would make every answer's future (moved into its
                // box on every call) several times larger.
                if v == Verdict::Lagging {
                    Box::pin(self.sync_copies(quiz_id, &shards, true)).await?;
                    continue;
                }
                // Not in the shard: a join whose shard step was lost?
                if v == Verdict::NotPlayer
                    && Box::pin(self.repair_join(quiz_id, &shards, &answer.player_id)).await?
                {
                    continue;
                }
            }
            return decode_apply(quiz_id, answer, v);
        }
    }

    /// One attempt of a hot-path write through the batcher: `work`
    /// carries the sender of `reply`.
    async fn through_batcher<T>(
        &self,
        quiz_id: &str,
        shards: &Arc<Shards>,
        shard: usize,
        work: Work,
        reply: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let job = Job {
            quiz_id: quiz_id.to_string(),
            shards: Arc::clone(shards),
            shard,
            work,
        };
        // Queued at once when there is room (nearly always); the wait for
        // room, under the command deadline, only when the queue is full:
        // its timer and future are the overload's, not every answer's.
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                let timeout = self.shared.opts.command_timeout;
                Box::pin(tokio::time::timeout(timeout, self.jobs.send(job)))
                    .await
                    .map_err(|_| unavailable("answer queue full"))?
                    .map_err(|_| unavailable("answer batcher stopped"))?;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(unavailable("answer batcher stopped"))
            }
        }
        // No deadline of its own: every await of the batcher is bounded
        // (each pipeline under `command_timeout` + `wait_timeout`, a queued
        // job waits for in-flight batches only), and a job it drops, by a
        // bug or a panic, drops its sender: the error below. A timer here
        // cost every answer a registration in the runtime's timer wheel
        // and a removal.
        reply
            .await
            .map_err(|_| unavailable("answer batcher dropped the answer"))?
    }

    /// Sharded quiz: players strictly above `score` in every shard but
    /// `except` (one `count_higher` per shard, concurrent).
    async fn higher_elsewhere(
        &self,
        shards: &Shards,
        except: usize,
        score: u64,
    ) -> Result<u64, StoreError> {
        let calls: Vec<Call> = shards
            .tags
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != except)
            .map(|(_, tag)| Call {
                script: &self.shared.scripts.count_higher,
                keys: vec![key(tag, "leaderboard")],
                // `count_higher` takes exclusive bounds (see its header).
                args: vec![format!("({score}")],
            })
            .collect();
        let mut higher = 0;
        for r in
            futures::future::join_all(calls.iter().map(|c| run_one(&self.shared, c, false))).await
        {
            match r? {
                Value::Array(c) if c.len() == 1 => higher += as_u64(&c[0]).unwrap_or(0),
                other => return Err(bad_reply("count_higher", &other)),
            }
        }
        Ok(higher)
    }

    /// Sharded quiz: the merged leaderboard (see "Shards" in the module
    /// doc).
    async fn sharded_leaderboard(
        &self,
        quiz_id: &str,
        shards: &Shards,
        limit: usize,
    ) -> Result<Leaderboard, StoreError> {
        let calls: Vec<Call> = shards
            .tags
            .iter()
            .map(|tag| Call {
                script: &self.shared.scripts.shard_top,
                keys: vec![key(tag, "leaderboard"), key(tag, "lbver")],
                args: vec![limit.to_string()],
            })
            .collect();
        let (mut total, mut version) = (0u64, 0u64);
        let mut entries: Vec<(String, u64)> = Vec::new();
        for r in futures::future::join_all(calls.iter().map(|c| self.read(clone_call(c)))).await {
            let v = r?;
            let Value::Array(items) = &v else {
                return Err(bad_reply("shard_top", &v));
            };
            let (Some(zcard), Some(ver), Some(Value::Array(top))) = (
                items.first().and_then(as_u64),
                items.get(1).and_then(as_u64),
                items.get(2),
            ) else {
                return Err(bad_reply("shard_top", &v));
            };
            total += zcard;
            version += ver;
            for pair in top.chunks_exact(2) {
                match (codec::as_str(&pair[0]), as_u64(&pair[1])) {
                    (Some(id), Some(score)) => entries.push((id.to_string(), score)),
                    _ => return Err(bad_reply("shard_top", &v)),
                }
            }
        }
        // One ZREVRANGE's order: score descending, then member descending
        // (byte order). Each shard's top `limit` holds every one of its
        // players that can be in the merged top `limit`, so the merge (and
        // the competition ranks over it) is exact.
        entries.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| b.0.as_bytes().cmp(a.0.as_bytes()))
        });
        entries.truncate(limit);
        let names = self
            .read(Call {
                script: &self.shared.scripts.names,
                keys: vec![key(quiz_id, "def"), key(quiz_id, "players")],
                args: entries.iter().map(|(id, _)| id.clone()).collect(),
            })
            .await?;
        if names == Value::Nil {
            return Err(StoreError::NotFound(format!("quiz {quiz_id}")));
        }
        let flat: Vec<Value> = entries
            .into_iter()
            .flat_map(|(id, score)| [Value::BulkString(id.into_bytes()), Value::Int(score as i64)])
            .collect();
        decode_leaderboard(
            quiz_id,
            &Value::Array(vec![
                Value::Int(total as i64),
                Value::Int(version as i64),
                Value::Array(flat),
                names,
            ]),
        )
    }

    /// Sharded quiz: the pending answers of every shard, with their
    /// players' JSON from the main slot (4 values per entry, as
    /// `pending_read` gives them for an ordinary quiz).
    async fn sharded_pending_answers(
        &self,
        quiz_id: &str,
        shards: &Shards,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let calls: Vec<Call> = shards
            .tags
            .iter()
            .map(|tag| Call {
                script: &self.shared.scripts.pending_read,
                keys: vec![
                    key(tag, "pending"),
                    key(tag, "pending_answers"),
                    key(tag, "answers"),
                ],
                args: vec![limit.max(1).to_string()],
            })
            .collect();
        let mut entries: Vec<Value> = Vec::new();
        for r in futures::future::join_all(calls.iter().map(|c| self.read(clone_call(c)))).await {
            let v = r?;
            match &v {
                Value::Array(parts) => match parts.get(1) {
                    Some(Value::Array(a)) => entries.extend(a.iter().cloned()),
                    _ => return Err(bad_reply("pending_read", &v)),
                },
                _ => return Err(bad_reply("pending_read", &v)),
            }
            if entries.len() >= 4 * limit {
                break;
            }
        }
        entries.truncate(4 * limit);
        let pids: Vec<String> = entries
            .chunks_exact(4)
            .map(|e| {
                codec::as_str(&e[0])
                    .and_then(split_answer_field)
                    .map(|(pid, _)| pid.to_string())
                    .unwrap_or_default()
            })
            .collect();
        if pids.is_empty() {
            return Ok(entries);
        }
        let names = self
            .read(Call {
                script: &self.shared.scripts.names,
                keys: vec![key(quiz_id, "def"), key(quiz_id, "players")],
                args: pids,
            })
            .await?;
        if let Value::Array(names) = names {
            for (entry, name) in entries.chunks_exact_mut(4).zip(names) {
                entry[3] = name;
            }
        }
        Ok(entries)
    }
}

/// A copy of a script call (calls are cheap: a few short strings).
fn clone_call(c: &Call) -> Call {
    Call {
        script: c.script,
        keys: c.keys.clone(),
        args: c.args.clone(),
    }
}

/// Appends an event's id and JSON to a script's arguments (the pending
/// entry the script records with its write).
fn push_event(args: &mut Vec<String>, event: Option<&Event>) -> Result<(), StoreError> {
    if let Some(e) = event {
        args.push(e.event_id.clone());
        args.push(to_json(e)?);
    }
    Ok(())
}

/// The `pending_read` script's reply split in its two lists: the plain
/// events' JSON and the pending answers (4 values each).
fn pending_parts(v: &Value) -> Result<(&[Value], &[Value]), StoreError> {
    let Value::Array(parts) = v else {
        return Err(bad_reply("pending_read", v));
    };
    let (Some(Value::Array(plain)), Some(Value::Array(answers))) = (parts.first(), parts.get(1))
    else {
        return Err(bad_reply("pending_read", v));
    };
    Ok((plain, answers))
}

/// The pending events, rebuilt from the plain events' JSON and the pending
/// answers (`field, score_after, record, player_json` each). An entry that
/// cannot be read (an answer or player gone, corrupt JSON) is skipped with
/// a warning: the sweep must not stall on it.
fn decode_pending(quiz_id: &str, plain: &[Value], answers: &[Value], limit: usize) -> Vec<Event> {
    let mut out = Vec::new();
    for e in plain {
        match codec::as_str(e).map(|s| parse_json::<Event>("pending event", s)) {
            Some(Ok(e)) => out.push(e),
            _ => tracing::warn!(quiz_id, "unreadable pending event skipped"),
        }
    }
    for entry in answers.chunks_exact(4) {
        let field = codec::as_str(&entry[0]).unwrap_or_default();
        let rebuilt = (|| {
            let (pid, q) = split_answer_field(field)?;
            let score = as_u64(&entry[1])?;
            let stored = codec::as_str(&entry[2])?;
            let nickname = codec::as_str(&entry[3])
                .and_then(|p| parse_json::<Player>("player", p).ok())
                .map(|p| p.nickname)
                .unwrap_or_default();
            let rec = stored.split_once('|').map_or(stored, |(_, r)| r);
            let answer = decode_record(rec, pid, &nickname, q).ok()?;
            Some(Event::new(
                quiz_id,
                answer.answered_at_ms,
                EventKind::AnswerScored {
                    answer,
                    score_after: score,
                },
            ))
        })();
        match rebuilt {
            Some(e) => out.push(e),
            None => tracing::warn!(quiz_id, field, "unreadable pending answer skipped"),
        }
    }
    out.truncate(limit);
    out
}

/// A retention as the whole seconds `EX`/`EXPIRE` take (at least 1).
fn seconds(d: std::time::Duration) -> String {
    d.as_secs().max(1).to_string()
}

#[async_trait]
impl QuizStore for RedisClusterStore {
    async fn create_quiz_with_event(
        &self,
        quiz: &QuizDef,
        state: &QuizState,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        let id = &quiz.quiz_id;
        let state_json = to_json(state)?;
        let mut args = vec![
            to_json(quiz)?,
            state_json.clone(),
            seconds(self.shared.opts.retention.live),
        ];
        push_event(&mut args, event)?;
        let call = Call {
            script: &self.shared.scripts.create,
            keys: vec![key(id, "def"), key(id, "state"), key(id, "pending")],
            args,
        };
        match decode_int("create_quiz", &self.write("create_quiz", id, call).await?)? {
            1 => {}
            _ => return Err(StoreError::Conflict(format!("quiz_id {id} exists"))),
        }
        let shards = self.layouts.insert(quiz);
        if shards.is_sharded() {
            // The shards' state copies (also on a retried create: a copy
            // only moves forward). A crash before this leaves shards
            // without a copy: readers push it (`sync_copies`).
            let ttl_ms = self.shared.opts.retention.live.as_millis() as u64;
            self.push_copies(id, &shards, &state_json, ttl_ms).await?;
            self.copies.record(id, state.version);
        }
        Ok(())
    }

    async fn get_quiz(&self, quiz_id: &str) -> Result<Option<Arc<QuizDef>>, StoreError> {
        Ok(self.read_def(quiz_id).await?.map(Arc::new))
    }

    async fn get_state(&self, quiz_id: &str) -> Result<Option<QuizState>, StoreError> {
        let shards = self.shards(quiz_id).await?;
        if shards.is_sharded() {
            return self.sync_copies(quiz_id, &shards, false).await;
        }
        match self
            .get_string(redis::cmd("GET").arg(key(quiz_id, "state")).clone())
            .await?
        {
            Some(s) => Ok(Some(parse_json("quiz state", &s)?)),
            None => Ok(None),
        }
    }

    async fn set_state_with_events(
        &self,
        quiz_id: &str,
        expected_version: u64,
        next: &QuizState,
        events: &[Event],
    ) -> Result<bool, StoreError> {
        super::check_next_version(expected_version, next)?;
        // Every key of the quiz, for its retention: the distributions are
        // named after the question ids, which only the definition knows.
        let def = self.get_quiz(quiz_id).await?;
        let questions: Vec<u32> = match &def {
            Some(def) => def.questions.iter().map(|q| q.id).collect(),
            None => Vec::new(),
        };
        let shards = match &def {
            Some(def) => self.layouts.insert(def),
            None => Arc::new(Shards::single(quiz_id)),
        };
        let mut keys = vec![key(quiz_id, "state"), key(quiz_id, "pending")];
        keys.extend(
            [
                "def",
                "players",
                "nicks",
                "leaderboard",
                "answers",
                "lbver",
                "sent",
                "pending_answers",
            ]
            .iter()
            .map(|suffix| key(quiz_id, suffix)),
        );
        keys.extend(questions.iter().map(|q| dist_key(quiz_id, *q)));
        let retention = self.shared.opts.retention.after(next.phase);
        let next_json = to_json(next)?;
        let call = Call {
            script: &self.shared.scripts.set_state,
            keys,
            args: {
                let mut args = vec![
                    expected_version.to_string(),
                    next_json.clone(),
                    seconds(retention),
                ];
                for e in events {
                    push_event(&mut args, Some(e))?;
                }
                args
            },
        };
        // Not retried internally: a re-run after an applied-but-unconfirmed
        // first run would report `false` for our own write. One attempt; the
        // caller re-reads the state on `Unavailable` or `false`.
        let v = run_one(&self.shared, &call, true).await?;
        match decode_int("set_state", &v)? {
            1 => {}
            0 => return Ok(false),
            _ => return Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
        }
        if shards.is_sharded() {
            // The copies, before returning (see "Shards" in the module doc).
            // If this fails the state is set but the caller hears
            // `Unavailable` and re-reads it; readers finish the pushes.
            let ttl_ms = retention.as_secs().max(1) * 1000;
            self.push_copies(quiz_id, &shards, &next_json, ttl_ms)
                .await
                .map_err(|e| {
                    unavailable(format!("state set, its copies to the shards failed: {e}"))
                })?;
            self.copies.record(quiz_id, next.version);
        }
        Ok(true)
    }

    async fn add_player_with_event(
        &self,
        quiz_id: &str,
        player: &Player,
        max_players: u64,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        let shards = self.shards(quiz_id).await?;
        let mut args = vec![
            normalize_nickname(&player.nickname),
            player.player_id.clone(),
            to_json(player)?,
            max_players.to_string(),
        ];
        push_event(&mut args, event)?;
        let call = if shards.is_sharded() {
            Call {
                script: &self.shared.scripts.join_main,
                keys: vec![
                    key(quiz_id, "def"),
                    key(quiz_id, "nicks"),
                    key(quiz_id, "players"),
                    key(quiz_id, "pending"),
                ],
                args,
            }
        } else {
            Call {
                script: &self.shared.scripts.add_player,
                keys: vec![
                    key(quiz_id, "def"),
                    key(quiz_id, "nicks"),
                    key(quiz_id, "players"),
                    key(quiz_id, "leaderboard"),
                    key(quiz_id, "lbver"),
                    key(quiz_id, "pending"),
                ],
                args,
            }
        };
        match decode_int(
            "add_player",
            &self.write("add_player", quiz_id, call).await?,
        )? {
            // Sharded: the shard step, also on a retried join (1 for the
            // very same player again), which is what repairs a join whose
            // shard step was lost.
            1 if shards.is_sharded() => self.join_shard(quiz_id, &shards, &player.player_id).await,
            1 => Ok(()),
            0 => Err(StoreError::Conflict(format!(
                "nickname {:?} is taken",
                player.nickname.trim()
            ))),
            -2 => Err(StoreError::Conflict(format!(
                "player_id {} exists",
                player.player_id
            ))),
            -3 => Err(StoreError::Full(format!(
                "quiz {quiz_id} has {max_players} players"
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
        let shards = self.shards(quiz_id).await?;
        let shard = shards.index_of(player_id);
        let field = format!("{player_id}:{question_id}");
        for first in [true, false] {
            // Idempotent (set once, then read), so re-runs are safe.
            let v = self
                .retrying("present_question", quiz_id, || {
                    let (reply, entry) = oneshot::channel();
                    let work = Work::Present {
                        field: field.clone(),
                        now,
                        reply,
                    };
                    self.through_batcher(quiz_id, &shards, shard, work, entry)
                })
                .await?;
            return match v {
                // A shard without a state copy (a create whose pushes were
                // lost): push it, then again.
                Value::Nil
                    if first
                        && shards.is_sharded()
                        && self.sync_copies(quiz_id, &shards, true).await?.is_some() =>
                {
                    continue
                }
                Value::Nil => Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
                Value::Int(-1) => Ok(None),
                v => as_u64(&v)
                    .map(Some)
                    .ok_or_else(|| bad_reply("present_question", &v)),
            };
        }
        Err(StoreError::NotFound(format!("quiz {quiz_id}")))
    }

    async fn get_answer(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
    ) -> Result<Option<AnswerRecord>, StoreError> {
        let shards = self.shards(quiz_id).await?;
        let field = format!("{player_id}:{question_id}");
        let (stored, player): (Option<String>, Option<String>) = if shards.is_sharded() {
            // The record in the player's shard, the player (for the
            // nickname) in the main slot: two reads at once.
            futures::future::try_join(
                self.get_string(
                    redis::cmd("HGET")
                        .arg(key(shards.tag_of(player_id), "answers"))
                        .arg(&field)
                        .clone(),
                ),
                self.get_string(
                    redis::cmd("HGET")
                        .arg(key(quiz_id, "players"))
                        .arg(player_id)
                        .clone(),
                ),
            )
            .await?
        } else {
            // The record and the player (for the nickname, which the
            // compact record leaves out), in one round trip to the quiz's
            // slot.
            let mut conn = self.shared.conn.clone();
            let mut pipe = redis::pipe();
            pipe.hget(key(quiz_id, "answers"), &field)
                .hget(key(quiz_id, "players"), player_id);
            self.timed("redis command timed out", pipe.query_async(&mut conn))
                .await?
        };
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
        let limit = limit.min(100_000);
        let shards = self.shards(quiz_id).await?;
        if shards.is_sharded() {
            return self.sharded_leaderboard(quiz_id, &shards, limit).await;
        }
        let call = Call {
            script: &self.shared.scripts.leaderboard,
            keys: vec![
                key(quiz_id, "def"),
                key(quiz_id, "leaderboard"),
                key(quiz_id, "players"),
                key(quiz_id, "lbver"),
            ],
            args: vec![limit.to_string()],
        };
        match self.read(call).await? {
            Value::Nil => Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
            v => decode_leaderboard(quiz_id, &v),
        }
    }

    async fn standing(
        &self,
        quiz_id: &str,
        player_id: &str,
    ) -> Result<Option<Standing>, StoreError> {
        let shards = self.shards(quiz_id).await?;
        let shard = shards.index_of(player_id);
        let call = || Call {
            script: &self.shared.scripts.standing,
            keys: vec![key(&shards.tags[shard], "leaderboard")],
            args: vec![player_id.to_string()],
        };
        let mut own = decode_standing(&self.read(call()).await?)?;
        if !shards.is_sharded() {
            return Ok(own);
        }
        if own.is_none() && self.repair_join(quiz_id, &shards, player_id).await? {
            own = decode_standing(&self.read(call()).await?)?;
        }
        let Some(own) = own else {
            return Ok(None);
        };
        let higher = self.higher_elsewhere(&shards, shard, own.score).await?;
        Ok(Some(Standing {
            score: own.score,
            rank: own.rank + higher,
        }))
    }

    async fn distribution(
        &self,
        quiz_id: &str,
        question_id: u32,
        option_count: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let shards = self.shards(quiz_id).await?;
        // An ordinary quiz checks its definition; a shard its state copy.
        let calls: Vec<Call> = shards
            .tags
            .iter()
            .map(|tag| Call {
                script: &self.shared.scripts.distribution,
                keys: vec![
                    if shards.is_sharded() {
                        key(tag, "state")
                    } else {
                        key(quiz_id, "def")
                    },
                    dist_key(tag, question_id),
                ],
                args: vec![option_count.min(64).to_string()],
            })
            .collect();
        let mut out = vec![0u64; option_count];
        let mut found = false;
        for r in futures::future::join_all(calls.iter().map(|c| self.read(clone_call(c)))).await {
            match r? {
                Value::Nil => {}
                Value::Array(items) => {
                    found = true;
                    for (o, v) in out.iter_mut().zip(&items) {
                        *o += as_u64(v).unwrap_or(0);
                    }
                }
                other => return Err(bad_reply("distribution", &other)),
            }
        }
        if !found {
            return Err(StoreError::NotFound(format!("quiz {quiz_id}")));
        }
        Ok(out)
    }

    async fn question_sent_at(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
        now: Millis,
    ) -> Result<Millis, StoreError> {
        let shards = self.shards(quiz_id).await?;
        let tag = shards.tag_of(player_id);
        let exists = if shards.is_sharded() {
            key(tag, "state")
        } else {
            key(quiz_id, "def")
        };
        for first in [true, false] {
            let call = Call {
                script: &self.shared.scripts.sent_at,
                keys: vec![exists.clone(), key(tag, "sent")],
                args: vec![format!("{player_id}:{question_id}"), now.to_string()],
            };
            // HSETNX then HGET is idempotent, so the write path's retries
            // are safe; it is durable like every other write.
            return match self.write("question_sent_at", quiz_id, call).await? {
                Value::Nil
                    if first
                        && shards.is_sharded()
                        && self.sync_copies(quiz_id, &shards, true).await?.is_some() =>
                {
                    continue
                }
                Value::Nil => Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
                v => as_u64(&v).ok_or_else(|| bad_reply("question_sent_at", &v)),
            };
        }
        Err(StoreError::NotFound(format!("quiz {quiz_id}")))
    }

    async fn pending_events(&self, quiz_id: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
        let shards = self.shards(quiz_id).await?;
        if shards.is_sharded() {
            // The state changes' events tell the world about a state:
            // the shards' copies first.
            self.sync_copies(quiz_id, &shards, false).await?;
        }
        let call = Call {
            script: &self.shared.scripts.pending_read,
            keys: vec![
                key(quiz_id, "pending"),
                key(quiz_id, "pending_answers"),
                key(quiz_id, "answers"),
                key(quiz_id, "players"),
            ],
            args: vec![limit.max(1).to_string()],
        };
        let v = self.read(call).await?;
        let (plain, answers) = pending_parts(&v)?;
        if !shards.is_sharded() {
            return Ok(decode_pending(quiz_id, plain, answers, limit));
        }
        let answers = self
            .sharded_pending_answers(quiz_id, &shards, limit)
            .await?;
        Ok(decode_pending(quiz_id, plain, &answers, limit))
    }

    async fn clear_pending(&self, quiz_id: &str, event_ids: &[String]) -> Result<(), StoreError> {
        let shards = self.shards(quiz_id).await?;
        // Plain event ids go to the main slot, answer fields to their
        // player's shard (the main slot for an ordinary quiz).
        let mut plain = Vec::new();
        let mut answers: Vec<Vec<String>> = vec![Vec::new(); shards.len()];
        for id in event_ids {
            match pending_key(quiz_id, id) {
                PendingKey::Answer(field) => {
                    let shard =
                        split_answer_field(field).map_or(0, |(pid, _)| shards.index_of(pid));
                    answers[shard].push(field.to_string());
                }
                PendingKey::Other(id) => plain.push(id.to_string()),
            }
        }
        let clear = |tag: &str, plain: Vec<String>, fields: Vec<String>| {
            let mut args = Vec::with_capacity(1 + plain.len() + fields.len());
            args.push(plain.len().to_string());
            args.extend(plain);
            args.extend(fields);
            Call {
                script: &self.shared.scripts.pending_clear,
                keys: vec![key(tag, "pending"), key(tag, "pending_answers")],
                args,
            }
        };
        let mut calls = Vec::new();
        for (shard, fields) in answers.into_iter().enumerate() {
            // An ordinary quiz: one call with both kinds.
            let here = if shards.is_sharded() {
                Vec::new()
            } else {
                std::mem::take(&mut plain)
            };
            if !(here.is_empty() && fields.is_empty()) {
                calls.push(clear(&shards.tags[shard], here, fields));
            }
        }
        if !plain.is_empty() {
            calls.push(clear(quiz_id, plain, Vec::new()));
        }
        // No WAIT: a removal lost with a master only costs a re-publish.
        for r in
            futures::future::join_all(calls.iter().map(|c| run_one(&self.shared, c, false))).await
        {
            r?;
        }
        Ok(())
    }

    async fn is_pending(&self, quiz_id: &str, event_id: &str) -> Result<bool, StoreError> {
        let shards = self.shards(quiz_id).await?;
        let (k, field) = match pending_key(quiz_id, event_id) {
            PendingKey::Answer(field) => {
                let tag = split_answer_field(field).map_or(quiz_id, |(pid, _)| shards.tag_of(pid));
                (key(tag, "pending_answers"), field)
            }
            PendingKey::Other(id) => (key(quiz_id, "pending"), id),
        };
        let mut conn = self.shared.conn.clone();
        let exists: bool = self
            .timed(
                "redis command timed out",
                redis::cmd("HEXISTS")
                    .arg(k)
                    .arg(field)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(exists)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.shared.conn.clone();
        let _pong: Value = self
            .timed(
                "redis ping timed out",
                redis::cmd("PING").query_async(&mut conn),
            )
            .await?;
        Ok(())
    }
}
