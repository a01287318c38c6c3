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
                // One per answer: appended by hand, not through `format!`'s
                // formatter machinery.
                let mut digits = itoa::Buffer::new();
                let question = digits.format(answer.question_id);
                let mut id = String::with_capacity(
                    quiz_id.len() + answer.player_id.len() + question.len() + 9,
                );
                id.push_str(quiz_id);
                id.push_str(":answer:");
                id.push_str(&answer.player_id);
                id.push(':');
                id.push_str(question);
                id
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

    /// The record's JSON (`docs/events.md`) in a buffer sized once for an
    /// answer's record, what both sinks send.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        // Room for an `answer_scored` record with a long nickname and
        // choices (~300 bytes usually); serde's `to_vec` starts at 128 and
        // grew twice per event, each time a copy. Larger events grow it.
        let mut out = Vec::with_capacity(512);
        self.write_json(&mut out)?;
        Ok(out)
    }

    /// Appends the record's JSON (`docs/events.md`) to `out`: the bytes
    /// `serde_json` writes for this event. `answer_scored`, one per answer,
    /// is written by hand: serde's path for the two flattened levels goes
    /// through a map serializer field by field, a third of a microsecond
    /// per answer. Every other kind goes through serde.
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let EventKind::AnswerScored {
            answer: a,
            score_after,
        } = &self.kind
        else {
            return serde_json::to_writer(out, self);
        };
        // Each field is `,"name":` (the first without the comma) then a
        // value: a number, a JSON string (serde's escaping), a bool.
        fn number(out: &mut Vec<u8>, field: &[u8], v: u64) {
            out.extend_from_slice(field);
            out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
        fn text(out: &mut Vec<u8>, field: &[u8], v: &str) -> Result<(), serde_json::Error> {
            out.extend_from_slice(field);
            serde_json::to_writer(out, v)
        }
        fn flag(out: &mut Vec<u8>, field: &[u8], v: bool) {
            out.extend_from_slice(field);
            out.extend_from_slice(if v { b"true" } else { b"false" });
        }
        number(out, b"{\"v\":", self.v.into());
        text(out, b",\"event_id\":", &self.event_id)?;
        text(out, b",\"quiz_id\":", &self.quiz_id)?;
        number(out, b",\"at_ms\":", self.at_ms);
        text(out, b",\"type\":", "answer_scored")?;
        text(out, b",\"player_id\":", &a.player_id)?;
        text(out, b",\"nickname\":", &a.nickname)?;
        number(out, b",\"question_id\":", a.question_id.into());
        out.extend_from_slice(b",\"choices\":[");
        for (i, c) in a.choices.iter().enumerate() {
            number(out, if i > 0 { b"," } else { b"" }, (*c).into());
        }
        out.push(b']');
        flag(out, b",\"correct\":", a.correct);
        flag(out, b",\"late\":", a.late);
        number(out, b",\"points\":", a.points.into());
        number(out, b",\"response_ms\":", a.response_ms);
        number(out, b",\"answered_at_ms\":", a.answered_at_ms);
        number(out, b",\"score_after\":", *score_after);
        out.push(b'}');
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(player_id: &str, nickname: &str, choices: Vec<u32>) -> AnswerRecord {
        AnswerRecord {
            player_id: player_id.into(),
            nickname: nickname.into(),
            question_id: 7,
            choices,
            correct: true,
            late: false,
            points: 870,
            response_ms: 2100,
            answered_at_ms: 1_764_201_234_567,
        }
    }

    /// The hand-written `answer_scored` is serde's output byte for byte,
    /// whatever the strings hold (quotes, escapes, control characters,
    /// non-ASCII) and at the integers' extremes.
    #[test]
    fn hand_written_answer_json_is_serdes() {
        let strings = [
            "p-1",
            "",
            "a \"quoted\" name",
            "back\\slash / slash",
            "tab\tnew\nline\rbell\u{7}nul\u{0}del\u{7f}",
            "ünïcødé 名前 🎉",
            "\u{2028}\u{2029}",
        ];
        let choices = [vec![], vec![0], vec![0, 2, 3], vec![u32::MAX]];
        for (i, s) in strings.iter().enumerate() {
            for c in &choices {
                let mut a = answer(s, strings[(i + 1) % strings.len()], c.clone());
                if i % 2 == 1 {
                    (a.correct, a.late, a.points) = (false, true, 0);
                    (a.response_ms, a.answered_at_ms) = (u64::MAX, 0);
                    a.question_id = u32::MAX;
                }
                let mut e = Event::new(
                    s,
                    u64::MAX - i as u64,
                    EventKind::AnswerScored {
                        answer: a,
                        score_after: i as u64 * 1000,
                    },
                );
                e.v = i as u32;
                let ours = e.to_json().unwrap();
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    serde_json::to_string(&e).unwrap()
                );
            }
        }
    }

    #[test]
    fn other_kinds_are_serdes_output() {
        let e = Event::new(
            "q",
            5,
            EventKind::PlayerJoined {
                player_id: "p".into(),
                nickname: "n\"x".into(),
            },
        );
        let ours = e.to_json().unwrap();
        assert_eq!(ours, serde_json::to_vec(&e).unwrap());
        // And the record reads back as the event.
        assert_eq!(serde_json::from_slice::<Event>(&ours).unwrap(), e);
    }

    #[test]
    fn answer_event_id_is_quiz_player_question() {
        let e = Event::new(
            "quiz",
            1,
            EventKind::AnswerScored {
                answer: answer("p-9", "n", vec![1]),
                score_after: 0,
            },
        );
        assert_eq!(e.event_id, "quiz:answer:p-9:7");
    }
}
