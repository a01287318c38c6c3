//! The nouns of a quiz, shared by every module and every backend.
//!
//! These are plain data: no I/O, no locking. A [`QuizDef`] never changes after
//! it is created, so nodes cache it freely; everything that changes (the live
//! [`QuizState`], players, scores) lives behind [`crate::store::QuizStore`].

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, on the server's clock.
pub type Millis = u64;

/// The server clock. Scoring only ever uses this, never a client's time.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Live,
    SelfPaced,
}

/// One question, as defined by the host. `id` equals `index` (0-based).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    pub id: u32,
    pub index: u32,
    pub text: String,
    pub options: Vec<String>,
    /// Sorted, deduplicated indices into `options`.
    pub correct: Vec<u32>,
    pub time_limit_ms: u64,
    pub points: u32,
}

/// A quiz definition: immutable once created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuizDef {
    pub quiz_id: String,
    pub title: String,
    pub mode: Mode,
    pub questions: Vec<Question>,
    pub created_at_ms: Millis,
    /// How the quiz is laid out over the cluster, fixed at creation from
    /// its `expected_players` hint. Absent (and not written) for an
    /// ordinary quiz, so their stored JSON and events are as before.
    #[serde(default, skip_serializing_if = "Layout::is_single")]
    pub layout: Layout,
}

/// Where a quiz's players and scores live (see docs/capacity.md, "One quiz
/// over several nodes"). Immutable like the rest of a [`QuizDef`], so
/// every node and every edge-lb process agrees on it without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Core nodes whose rooms serve the quiz's players: edge-lb spreads
    /// player WebSockets over the first `spread` nodes of the quiz's ring
    /// walk (player tokens carry it, see `token.rs`). 1: one node.
    pub spread: u32,
    /// Scoring shards: each player's answers and score live in one of
    /// `shards` hash slots (spread over the Redis masters), so one quiz's
    /// answer burst is not capped by one master. 1: one slot, as before.
    pub shards: u32,
}

impl Default for Layout {
    fn default() -> Self {
        Layout::SINGLE
    }
}

impl Layout {
    /// One node, one slot: every quiz without a size hint.
    pub const SINGLE: Layout = Layout {
        spread: 1,
        shards: 1,
    };

    pub fn is_single(&self) -> bool {
        *self == Layout::SINGLE
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Lobby,
    Running,
    Ended,
}

/// The mutable, shared part of a quiz. Every change bumps `version`; stores
/// apply changes with compare-and-set on it, so two nodes (or two host
/// requests) can never both move the quiz forward from the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuizState {
    pub version: u64,
    pub phase: Phase,
    /// Live mode: the question currently open or last opened.
    pub current_question: Option<u32>,
    pub opens_at_ms: Option<Millis>,
    pub closes_at_ms: Option<Millis>,
}

impl QuizState {
    pub fn new_lobby() -> Self {
        QuizState {
            version: 1,
            phase: Phase::Lobby,
            current_question: None,
            opens_at_ms: None,
            closes_at_ms: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Player {
    pub player_id: String,
    pub nickname: String,
    pub joined_at_ms: Millis,
}

/// One scored answer: what the store records (first one per player and
/// question wins) and what the `answer_scored` event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerRecord {
    pub player_id: String,
    pub nickname: String,
    pub question_id: u32,
    /// Sorted, deduplicated.
    pub choices: Vec<u32>,
    pub correct: bool,
    pub late: bool,
    pub points: u32,
    pub response_ms: u64,
    pub answered_at_ms: Millis,
}

/// What applying an answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// First answer of this player to this question: recorded, points added.
    Applied { score: u64, rank: u64 },
    /// The player had already answered: nothing changed. `original` is the
    /// answer that counted (so its event can be produced again, idempotently).
    /// `pending`: the original's `answer_scored` event is still in the
    /// quiz's pending events (not yet acknowledged by the event log), so a
    /// re-publish is useful; when false the event is known to be on the log
    /// and a re-publish would only cost a write.
    Duplicate {
        original: AnswerRecord,
        score: u64,
        rank: u64,
        pending: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderboardEntry {
    pub rank: u64,
    pub player_id: String,
    pub nickname: String,
    pub score: u64,
}

/// The top of a quiz's leaderboard. `version` grows with every applied answer
/// and every join, so "changed" is a version comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaderboard {
    pub quiz_id: String,
    pub version: u64,
    pub total_players: u64,
    pub top: Vec<LeaderboardEntry>,
}

/// A player's own place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    pub score: u64,
    /// 1-based; players with equal scores share a rank ("1224" ranking).
    pub rank: u64,
}
