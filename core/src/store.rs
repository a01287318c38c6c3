//! Shared quiz state: the [`QuizStore`] trait and its implementations.
//!
//! - [`memory::MemoryStore`]: in-process, the embedded mode's default.
//! - [`redis_cluster::RedisClusterStore`]: Redis Cluster, for several core
//!   nodes sharing quizzes. Every key of an ordinary quiz X carries the hash
//!   tag `{X}`, so a quiz lives in one slot and multi-key operations on it
//!   are atomic Lua; a quiz with `layout.shards` S > 1 keeps its per-player
//!   scoring in S slots of their own (see the module doc there).
//!
//! Both must pass the conformance suite in `core/tests/store_conformance.rs`.
//!
//! # Pending events (the event outbox)
//! Every write that produces an event records that event as *pending* in
//! the same atomic step: `create_quiz_with_event`, `add_player_with_event`,
//! `set_state_with_events` take the event(s), and an applied answer records
//! its own `answer_scored` (with the score it gave). An entry is keyed by the
//! event's deterministic `event_id`, written only when the write itself
//! applies (a replay writes nothing), and removed by
//! [`QuizStore::clear_pending`] once the event log acknowledged the event.
//! [`QuizStore::pending_events`] gives what is left, for the repair sweep
//! (`crate::event_outbox`). Pending entries are keys of the quiz: they
//! expire with it.

pub mod memory;
pub mod redis_cluster;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::events::Event;
use crate::model::{
    AnswerRecord, ApplyOutcome, Leaderboard, Millis, Phase, Player, QuizDef, QuizState, Standing,
};

/// How long a store keeps a quiz: the config keys `redis_retention_live_s`
/// and `redis_retention_ended_s`, for the Redis store's keys
/// (`RedisOptions`) and the memory store's quizzes alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// After the quiz's creation or last state change, while not ended.
    pub live: Duration,
    /// After the quiz's end.
    pub ended: Duration,
}

impl Retention {
    /// How long a quiz is kept after its state became one of `phase`.
    pub fn after(&self, phase: Phase) -> Duration {
        if phase == Phase::Ended {
            self.ended
        } else {
            self.live
        }
    }
}

impl Default for Retention {
    /// The config's defaults.
    fn default() -> Self {
        Retention {
            live: Duration::from_secs(crate::config::DEFAULT_RETENTION_LIVE_S),
            ended: Duration::from_secs(crate::config::DEFAULT_RETENTION_ENDED_S),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was hit (quiz id exists, nickname taken).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The quiz (or player) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend is unreachable or failed; the operation may or may not
    /// have been applied only where the method's doc says so. Maps to 503.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The quiz has as many players as the caller allows.
    #[error("full: {0}")]
    Full(String),
}

/// Where quizzes, players, answers and scores live.
///
/// Contract for every implementation:
/// - Methods are safe to call concurrently from any number of tasks and, for
///   distributed implementations, from any number of core nodes.
/// - [`QuizStore::apply_answer`] is atomic: the duplicate check, the answer
///   record, the score increment, the per-question distribution and the
///   leaderboard version bump happen together or not at all. Once it returns
///   `Ok`, the result survives the loss of any single backend server
///   (for Redis: acknowledged by a replica, or recoverable from the event log).
/// - `Err(Unavailable)` from `apply_answer` means the answer must not be
///   acknowledged to the player; retrying the same answer is safe (it will
///   come back `Applied` or `Duplicate`, never counted twice).
/// - Quiz definitions are immutable; callers may cache them.
#[async_trait]
pub trait QuizStore: Send + Sync + 'static {
    /// Stores a new quiz with its initial lobby state. `Conflict` if the id
    /// is taken.
    async fn create_quiz(&self, quiz: &QuizDef, state: &QuizState) -> Result<(), StoreError> {
        self.create_quiz_with_event(quiz, state, None).await
    }

    /// [`QuizStore::create_quiz`] that also records `event` as pending, in
    /// the same atomic step (only if the quiz is created now: the very same
    /// definition stored again is a retry and records nothing).
    async fn create_quiz_with_event(
        &self,
        quiz: &QuizDef,
        state: &QuizState,
        event: Option<&Event>,
    ) -> Result<(), StoreError>;

    async fn get_quiz(&self, quiz_id: &str) -> Result<Option<Arc<QuizDef>>, StoreError>;

    async fn get_state(&self, quiz_id: &str) -> Result<Option<QuizState>, StoreError>;

    /// Replaces the state if its current version is `expected_version`
    /// (`next.version` must be `expected_version + 1`). Returns false if
    /// another writer got there first.
    async fn set_state(
        &self,
        quiz_id: &str,
        expected_version: u64,
        next: &QuizState,
    ) -> Result<bool, StoreError> {
        self.set_state_with_events(quiz_id, expected_version, next, &[])
            .await
    }

    /// [`QuizStore::set_state`] that also records `events` as pending, in
    /// the same atomic step, only when the state is set (returns true).
    async fn set_state_with_events(
        &self,
        quiz_id: &str,
        expected_version: u64,
        next: &QuizState,
        events: &[Event],
    ) -> Result<bool, StoreError>;

    /// Adds a player with score 0 (so they count in `total_players` and have
    /// a rank). `Conflict` if the nickname (compared case-insensitively after
    /// trimming) is taken in this quiz. `Full` if the quiz already has
    /// `max_players` players: checked in the same atomic step as the insert,
    /// so concurrent joins on any number of nodes never exceed it. (The very
    /// same player again is a retried join and succeeds, full or not.)
    async fn add_player(
        &self,
        quiz_id: &str,
        player: &Player,
        max_players: u64,
    ) -> Result<(), StoreError> {
        self.add_player_with_event(quiz_id, player, max_players, None)
            .await
    }

    /// [`QuizStore::add_player`] that also records `event` as pending, in
    /// the same atomic step, only when the player is added now (the very
    /// same player again is a retry and records nothing).
    async fn add_player_with_event(
        &self,
        quiz_id: &str,
        player: &Player,
        max_players: u64,
        event: Option<&Event>,
    ) -> Result<(), StoreError>;

    async fn get_player(
        &self,
        quiz_id: &str,
        player_id: &str,
    ) -> Result<Option<Player>, StoreError>;

    /// Atomically records the first answer of a player to a question and
    /// adds its points, and records its `answer_scored` event (with the
    /// score it gave) as pending. See the trait doc.
    async fn apply_answer(
        &self,
        quiz_id: &str,
        answer: &AnswerRecord,
    ) -> Result<ApplyOutcome, StoreError>;

    /// [`QuizStore::apply_answer`] guarded by the quiz state the caller
    /// scored the answer against: in the same atomic step, the answer is
    /// applied only if the quiz's state is still at `state_version`.
    /// `Ok(None)` means it moved on (a host action this node has not seen
    /// yet): nothing was written, and the caller re-reads the state and
    /// scores the answer again. This is what lets a node score answers
    /// against a cached state without ever scoring one against a window
    /// that has already changed. Same retry rules as `apply_answer`.
    async fn apply_answer_at_state(
        &self,
        quiz_id: &str,
        answer: &AnswerRecord,
        state_version: u64,
    ) -> Result<Option<ApplyOutcome>, StoreError>;

    /// The answer a player gave to a question, if any (for reconnects).
    async fn get_answer(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
    ) -> Result<Option<AnswerRecord>, StoreError>;

    /// Top `limit` players by descending score, with nicknames, the total
    /// player count and the leaderboard version.
    async fn leaderboard(&self, quiz_id: &str, limit: usize) -> Result<Leaderboard, StoreError>;

    /// A player's score and rank; `None` if not a player of the quiz.
    async fn standing(
        &self,
        quiz_id: &str,
        player_id: &str,
    ) -> Result<Option<Standing>, StoreError>;

    /// Answer counts per option of a question (length = option count).
    async fn distribution(
        &self,
        quiz_id: &str,
        question_id: u32,
        option_count: usize,
    ) -> Result<Vec<u64>, StoreError>;

    /// Self-paced mode: the time the server first sent `question_id` to the
    /// player. Sets it to `now` if unset and returns the stored value, so a
    /// reconnect never restarts a player's clock.
    async fn question_sent_at(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
        now: Millis,
    ) -> Result<Millis, StoreError>;

    /// Self-paced mode: presents `question_id` to a player. `None` if the
    /// player already answered it (nothing written); otherwise
    /// [`QuizStore::question_sent_at`]'s value (set to `now` if unset). One
    /// call instead of `get_answer` + `question_sent_at`: the Redis store
    /// coalesces it with other writes of the quiz (one `WAIT` per batch).
    async fn present_question(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
        now: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        if self
            .get_answer(quiz_id, player_id, question_id)
            .await?
            .is_some()
        {
            return Ok(None);
        }
        self.question_sent_at(quiz_id, player_id, question_id, now)
            .await
            .map(Some)
    }

    /// Up to about `limit` pending events of the quiz (see the module doc),
    /// rebuilt exactly as they were recorded (same `event_id`, same JSON),
    /// in no particular order. Empty for an unknown quiz.
    async fn pending_events(&self, quiz_id: &str, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// Removes these events from the quiz's pending events (the event log
    /// acknowledged them). Unknown ids are ignored. Losing a removal is
    /// harmless: the sweep publishes the event again (same `event_id`).
    async fn clear_pending(&self, quiz_id: &str, event_ids: &[String]) -> Result<(), StoreError>;

    /// Whether the event `event_id` of the quiz is still pending.
    async fn is_pending(&self, quiz_id: &str, event_id: &str) -> Result<bool, StoreError>;

    /// Liveness of the backend, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The precondition of [`QuizStore::set_state`], shared by every store: a
/// state change moves the version forward by exactly one.
pub(crate) fn check_next_version(
    expected_version: u64,
    next: &QuizState,
) -> Result<(), StoreError> {
    if next.version != expected_version.wrapping_add(1) {
        return Err(StoreError::Conflict(format!(
            "next.version {} must be expected_version + 1 ({})",
            next.version,
            expected_version.wrapping_add(1)
        )));
    }
    Ok(())
}

/// Where a pending event lives: answers in their own map keyed by the
/// answer's field `player_id:question_id` (the event is rebuilt from the
/// stored answer and the score it gave), every other event by its id.
pub(crate) enum PendingKey<'a> {
    Answer(&'a str),
    Other(&'a str),
}

/// Splits an event id of quiz `quiz_id` into its [`PendingKey`].
pub(crate) fn pending_key<'a>(quiz_id: &str, event_id: &'a str) -> PendingKey<'a> {
    match event_id
        .strip_prefix(quiz_id)
        .and_then(|r| r.strip_prefix(":answer:"))
    {
        Some(field) => PendingKey::Answer(field),
        None => PendingKey::Other(event_id),
    }
}

/// Splits an answer field back into player id and question id (the player
/// id is everything up to the last `:`).
pub(crate) fn split_answer_field(field: &str) -> Option<(&str, u32)> {
    let (pid, q) = field.rsplit_once(':')?;
    Some((pid, q.parse().ok()?))
}
