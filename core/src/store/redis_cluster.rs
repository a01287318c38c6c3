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
//! | `quiz:{X}:answers` | hash | `player_id:question_id` → `attempt|record` (compact, see `codec.rs`) |
//! | `quiz:{X}:dist:Q` | hash | option index → count (on-time answers) |
//! | `quiz:{X}:lbver` | string | leaderboard version (INCR per join and answer) |
//! | `quiz:{X}:sent` | hash | `player_id:question_id` → ms the question was sent |
//! | `quiz:{X}:pending` | hash | event id → event JSON: pending events other than answers (the event outbox, see `store.rs`) |
//! | `quiz:{X}:pending_answers` | hash | `player_id:question_id` → the score the answer gave: pending `answer_scored` events (rebuilt from `answers` and `players`) |
//!
//! # Retention
//! Every key of a quiz expires ([`RedisOptions::retention_live`] after the
//! quiz's creation or last state change, [`RedisOptions::retention_ended`]
//! after its end): `create_quiz` and `set_state` set the lifetime of the
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
//! - `batcher.rs`: the hot path's queue and batcher (answers and self-paced
//!   presentations coalesced per quiz);
//! - `pipeline.rs`: the cluster client and one pipeline round trip (EVALSHA,
//!   NOSCRIPT → EVAL, WAIT);
//! - `codec.rs`: the compact answer record and the decoding of replies;
//! - `shared.rs`: what they all share: [`RedisOptions`], the connection,
//!   the naming of keys and failures.
//!
//! Imports run one way, from this file down: store → batcher → pipeline →
//! shared → scripts (and codec beside them).
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

mod batcher;
mod codec;
mod pipeline;
mod scripts;
mod shared;

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use redis::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};

use self::batcher::{batcher, Job, PreparedAnswer, Work};
use self::codec::{
    as_u64, bad_reply, decode_apply, decode_int, decode_leaderboard, decode_record,
    decode_standing, encode_record, parse_json, to_json,
};
use self::pipeline::{cluster_client, run_one, Call};
pub(crate) use self::pipeline::{node_url, tls_certificates};
use self::scripts::scripts;
pub use self::shared::RedisOptions;
use self::shared::{key, unavailable, Shared};
use super::memory::normalize_nickname;
use super::{pending_key, split_answer_field, PendingKey, QuizStore, StoreError};
use crate::events::{Event, EventKind};
use crate::model::{
    AnswerRecord, ApplyOutcome, Leaderboard, Millis, Phase, Player, QuizDef, QuizState, Standing,
};

/// The Redis Cluster store. Cheap to share behind an `Arc`; dropping it ends
/// its batcher task once queued answers are answered.
pub struct RedisClusterStore {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
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

    /// Runs `attempt` until it succeeds, fails with anything but
    /// `Unavailable`, or has run `max_attempts` times, with doubling
    /// back-off. Only for idempotent work.
    async fn retrying<F, Fut>(
        &self,
        what: &str,
        quiz_id: &str,
        mut attempt_once: F,
    ) -> Result<Value, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Value, StoreError>>,
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
        // Same token on every attempt: a re-run of an attempt that did land
        // answers `Applied` without adding points again.
        let v = self
            .retrying("apply_answer", quiz_id, || {
                let work = Work::Apply {
                    answer: prepared.clone(),
                    state_version,
                };
                self.through_batcher(quiz_id, work)
            })
            .await?;
        decode_apply(quiz_id, answer, &v)
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

/// Appends an event's id and JSON to a script's arguments (the pending
/// entry the script records with its write).
fn push_event(args: &mut Vec<String>, event: Option<&Event>) -> Result<(), StoreError> {
    if let Some(e) = event {
        args.push(e.event_id.clone());
        args.push(to_json(e)?);
    }
    Ok(())
}

/// The `pending_read` script's reply: the pending events, rebuilt. An
/// entry that cannot be read (an answer or player gone, corrupt JSON) is
/// skipped with a warning: the sweep must not stall on it.
fn decode_pending(quiz_id: &str, v: &Value, limit: usize) -> Result<Vec<Event>, StoreError> {
    let Value::Array(parts) = v else {
        return Err(bad_reply("pending_read", v));
    };
    let (Some(Value::Array(plain)), Some(Value::Array(answers))) = (parts.first(), parts.get(1))
    else {
        return Err(bad_reply("pending_read", v));
    };
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
    Ok(out)
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
        let mut args = vec![
            to_json(quiz)?,
            to_json(state)?,
            seconds(self.shared.opts.retention_live),
        ];
        push_event(&mut args, event)?;
        let call = Call {
            script: &self.shared.scripts.create,
            keys: vec![key(id, "def"), key(id, "state"), key(id, "pending")],
            args,
        };
        match decode_int("create_quiz", &self.write("create_quiz", id, call).await?)? {
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
        let questions: Vec<u32> = match self.get_quiz(quiz_id).await? {
            Some(def) => def.questions.iter().map(|q| q.id).collect(),
            None => Vec::new(),
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
        keys.extend(questions.iter().map(|q| key(quiz_id, &format!("dist:{q}"))));
        let retention = if next.phase == Phase::Ended {
            self.shared.opts.retention_ended
        } else {
            self.shared.opts.retention_live
        };
        let call = Call {
            script: &self.shared.scripts.set_state,
            keys,
            args: {
                let mut args = vec![
                    expected_version.to_string(),
                    to_json(next)?,
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
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
        }
    }

    async fn add_player_with_event(
        &self,
        quiz_id: &str,
        player: &Player,
        max_players: u64,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        let mut args = vec![
            normalize_nickname(&player.nickname),
            player.player_id.clone(),
            to_json(player)?,
            max_players.to_string(),
        ];
        push_event(&mut args, event)?;
        let call = Call {
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
        };
        match decode_int(
            "add_player",
            &self.write("add_player", quiz_id, call).await?,
        )? {
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
        let field = format!("{player_id}:{question_id}");
        // Idempotent (set once, then read), so re-runs are safe.
        let v = self
            .retrying("present_question", quiz_id, || {
                let work = Work::Present {
                    field: field.clone(),
                    now,
                };
                self.through_batcher(quiz_id, work)
            })
            .await?;
        match v {
            Value::Nil => Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
            Value::Int(-1) => Ok(None),
            v => as_u64(&v)
                .map(Some)
                .ok_or_else(|| bad_reply("present_question", &v)),
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
        let (stored, player): (Option<String>, Option<String>) = self
            .timed("redis command timed out", pipe.query_async(&mut conn))
            .await?;
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
        let call = Call {
            script: &self.shared.scripts.standing,
            keys: vec![key(quiz_id, "leaderboard")],
            args: vec![player_id.to_string()],
        };
        decode_standing(&self.read(call).await?)
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
        match self.write("question_sent_at", quiz_id, call).await? {
            Value::Nil => Err(StoreError::NotFound(format!("quiz {quiz_id}"))),
            v => as_u64(&v).ok_or_else(|| bad_reply("question_sent_at", &v)),
        }
    }

    async fn pending_events(&self, quiz_id: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
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
        decode_pending(quiz_id, &v, limit)
    }

    async fn clear_pending(&self, quiz_id: &str, event_ids: &[String]) -> Result<(), StoreError> {
        let mut plain = Vec::new();
        let mut answers = Vec::new();
        for id in event_ids {
            match pending_key(quiz_id, id) {
                PendingKey::Answer(field) => answers.push(field.to_string()),
                PendingKey::Other(id) => plain.push(id.to_string()),
            }
        }
        if plain.is_empty() && answers.is_empty() {
            return Ok(());
        }
        let mut args = Vec::with_capacity(1 + plain.len() + answers.len());
        args.push(plain.len().to_string());
        args.extend(plain);
        args.extend(answers);
        let call = Call {
            script: &self.shared.scripts.pending_clear,
            keys: vec![key(quiz_id, "pending"), key(quiz_id, "pending_answers")],
            args,
        };
        // No WAIT: a removal lost with a master only costs a re-publish.
        run_one(&self.shared, &call, false).await.map(|_| ())
    }

    async fn is_pending(&self, quiz_id: &str, event_id: &str) -> Result<bool, StoreError> {
        let (k, field) = match pending_key(quiz_id, event_id) {
            PendingKey::Answer(field) => (key(quiz_id, "pending_answers"), field),
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
