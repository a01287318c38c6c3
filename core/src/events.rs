//! The event log: the [`EventSink`] trait, the [`Event`] record and its
//! implementations. The record format is documented in `docs/events.md`.
//!
//! - [`file::FileSink`]: a local append-only JSON-lines file, the embedded
//!   mode's default.
//! - [`kafka::KafkaSink`]: the `quiz-events` Kafka topic, keyed by quiz id.
//!
//! Both must pass the conformance suite in
//! `core/tests/event_sink_conformance.rs`, which checks [`EventSink`]'s contract.

pub mod file;
pub mod kafka;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{AnswerRecord, LeaderboardEntry, Millis, Mode, Question};

/// One state change. Serialises to the JSON of `docs/events.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    pub event_id: String,
    pub quiz_id: String,
    pub at_ms: Millis,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    QuizCreated {
        title: String,
        mode: Mode,
        questions: Vec<Question>,
    },
    PlayerJoined {
        player_id: String,
        nickname: String,
    },
    AnswerScored {
        #[serde(flatten)]
        answer: AnswerRecord,
        score_after: u64,
    },
    QuestionOpened {
        question_id: u32,
        opens_at_ms: Millis,
        closes_at_ms: Millis,
    },
    QuizStarted,
    QuizEnded {
        top: Vec<LeaderboardEntry>,
    },
}

impl Event {
    /// Builds an event with its deterministic id (see `docs/events.md`).
    pub fn new(quiz_id: &str, at_ms: Millis, kind: EventKind) -> Event {
        let event_id = match &kind {
            EventKind::QuizCreated { .. } => format!("{quiz_id}:created"),
            EventKind::PlayerJoined { player_id, .. } => format!("{quiz_id}:joined:{player_id}"),
            EventKind::AnswerScored { answer, .. } => {
                format!(
                    "{quiz_id}:answer:{}:{}",
                    answer.player_id, answer.question_id
                )
            }
            EventKind::QuestionOpened { question_id, .. } => {
                format!("{quiz_id}:question:{question_id}")
            }
            EventKind::QuizStarted => format!("{quiz_id}:started"),
            EventKind::QuizEnded { .. } => format!("{quiz_id}:ended"),
        };
        Event {
            v: 1,
            event_id,
            quiz_id: quiz_id.to_string(),
            at_ms,
            kind,
        }
    }

    /// The `type` field's value.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            EventKind::QuizCreated { .. } => "quiz_created",
            EventKind::PlayerJoined { .. } => "player_joined",
            EventKind::AnswerScored { .. } => "answer_scored",
            EventKind::QuestionOpened { .. } => "question_opened",
            EventKind::QuizStarted => "quiz_started",
            EventKind::QuizEnded { .. } => "quiz_ended",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The sink's buffer is full (the broker has been unreachable for a
    /// while): the caller must refuse the change (503), not accept and lose it.
    #[error("event buffer full")]
    Backpressure,
    /// Delivery failed after the sink's own retries.
    #[error("event delivery failed: {0}")]
    Delivery(String),
}

/// Where events go.
///
/// Contract: `publish` resolves `Ok` only once the event is durable (Kafka:
/// acknowledged by the broker with acks=all; file: written and flushed).
/// Events of one quiz are delivered in the order `publish` was called for
/// them from one task. Publishing the same event twice is allowed (consumers
/// deduplicate on `event_id`). `Err` means the event may not be durable and
/// the caller must not acknowledge the change it records; the sink never
/// drops an event silently.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn publish(&self, event: &Event) -> Result<(), EventError>;

    /// False while the sink cannot accept events (buffer over its bound, or
    /// the broker unreachable past the configured grace): `/readyz` reports
    /// not ready and new answers are refused with 503 / `unavailable`.
    fn ready(&self) -> bool;

    /// Waits (up to `timeout`) until every event handed to `publish` is
    /// delivered. Used on shutdown.
    async fn flush(&self, timeout: std::time::Duration) -> Result<(), EventError>;
}
