//! The records of `quiz-events` (see `docs/events.md`): the one place that
//! parses and validates them. Anything that does not parse or validate is a
//! [`Poison`] with a reason, never a panic: the bytes come from the network.

use serde::{Deserialize, Serialize};

/// A parsed, validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub quiz_id: String,
    pub at_ms: i64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    QuizCreated(QuizCreated),
    PlayerJoined(PlayerJoined),
    AnswerScored(AnswerScored),
    QuestionOpened(QuestionOpened),
    QuizStarted,
    QuizEnded(QuizEnded),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QuizCreated {
    pub title: String,
    pub mode: String,
    pub questions: Vec<Question>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Question {
    pub id: i64,
    pub index: i64,
    pub text: String,
    pub options: Vec<String>,
    pub correct: Vec<i64>,
    pub time_limit_ms: i64,
    pub points: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PlayerJoined {
    pub player_id: String,
    pub nickname: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AnswerScored {
    pub player_id: String,
    pub nickname: String,
    pub question_id: i64,
    pub choices: Vec<i64>,
    pub correct: bool,
    pub late: bool,
    pub points: i64,
    pub response_ms: i64,
    pub answered_at_ms: i64,
    pub score_after: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QuestionOpened {
    pub question_id: i64,
    pub opens_at_ms: i64,
    pub closes_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QuizEnded {
    pub top: Vec<TopEntry>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TopEntry {
    pub rank: i64,
    pub player_id: String,
    pub nickname: String,
    pub score: i64,
}

/// Why a record is a poison event. `label()` is the metric label and the
/// `dlq_reason_kind` header; `Display` is the human reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Poison {
    #[error("unparsable: {0}")]
    Unparsable(String),
    #[error("unsupported version {0}")]
    UnsupportedVersion(i64),
    #[error("unknown type {0:?}")]
    UnknownType(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("rejected by MongoDB: {0}")]
    Rejected(String),
}

impl Poison {
    pub fn label(&self) -> &'static str {
        match self {
            Poison::Unparsable(_) => "unparsable",
            Poison::UnsupportedVersion(_) => "unsupported_version",
            Poison::UnknownType(_) => "unknown_type",
            Poison::Invalid(_) => "invalid",
            Poison::Rejected(_) => "rejected_by_mongodb",
        }
    }
}

#[derive(Deserialize)]
struct Head {
    v: i64,
    event_id: String,
    #[serde(rename = "type")]
    kind: String,
    quiz_id: String,
    at_ms: i64,
}

impl Event {
    /// Parses and validates one record value.
    pub fn parse(payload: &[u8]) -> Result<Event, Poison> {
        let head: Head =
            serde_json::from_slice(payload).map_err(|e| Poison::Unparsable(e.to_string()))?;
        if head.v != 1 {
            return Err(Poison::UnsupportedVersion(head.v));
        }
        if !valid_quiz_id(&head.quiz_id) {
            return Err(Poison::Invalid(format!(
                "quiz_id {:?} is not 1-64 chars of [A-Za-z0-9_-]",
                head.quiz_id
            )));
        }
        if head.at_ms < 0 {
            return Err(Poison::Invalid("at_ms is negative".into()));
        }
        fn body<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, Poison> {
            serde_json::from_slice(payload).map_err(|e| Poison::Invalid(e.to_string()))
        }
        let kind = match head.kind.as_str() {
            "quiz_created" => EventKind::QuizCreated(body(payload)?),
            "player_joined" => EventKind::PlayerJoined(body(payload)?),
            "answer_scored" => EventKind::AnswerScored(body(payload)?),
            "question_opened" => EventKind::QuestionOpened(body(payload)?),
            "quiz_started" => EventKind::QuizStarted,
            "quiz_ended" => EventKind::QuizEnded(body(payload)?),
            other => return Err(Poison::UnknownType(other.to_string())),
        };
        let event = Event {
            event_id: head.event_id,
            quiz_id: head.quiz_id,
            at_ms: head.at_ms,
            kind,
        };
        event.validate()?;
        Ok(event)
    }

    /// The deterministic id `docs/events.md` prescribes for this event.
    pub fn expected_id(&self) -> String {
        let q = &self.quiz_id;
        match &self.kind {
            EventKind::QuizCreated(_) => format!("{q}:created"),
            EventKind::PlayerJoined(e) => format!("{q}:joined:{}", e.player_id),
            EventKind::AnswerScored(e) => format!("{q}:answer:{}:{}", e.player_id, e.question_id),
            EventKind::QuestionOpened(e) => format!("{q}:question:{}", e.question_id),
            EventKind::QuizStarted => format!("{q}:started"),
            EventKind::QuizEnded(_) => format!("{q}:ended"),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            EventKind::QuizCreated(_) => "quiz_created",
            EventKind::PlayerJoined(_) => "player_joined",
            EventKind::AnswerScored(_) => "answer_scored",
            EventKind::QuestionOpened(_) => "question_opened",
            EventKind::QuizStarted => "quiz_started",
            EventKind::QuizEnded(_) => "quiz_ended",
        }
    }

    fn validate(&self) -> Result<(), Poison> {
        let invalid = |m: String| Err(Poison::Invalid(m));
        match &self.kind {
            EventKind::QuizCreated(e) => {
                if !matches!(e.mode.as_str(), "live" | "self_paced") {
                    return invalid(format!("mode {:?} is not live or self_paced", e.mode));
                }
            }
            EventKind::PlayerJoined(e) => {
                check_player_id(&e.player_id)?;
                if e.nickname.is_empty() {
                    return invalid("nickname is empty".into());
                }
            }
            EventKind::AnswerScored(e) => {
                check_player_id(&e.player_id)?;
                if e.question_id < 0 {
                    return invalid("question_id is negative".into());
                }
                if e.points < 0 {
                    return invalid("points is negative".into());
                }
                if e.score_after < e.points {
                    return invalid("score_after is less than points".into());
                }
            }
            EventKind::QuestionOpened(e) => {
                if e.question_id < 0 {
                    return invalid("question_id is negative".into());
                }
            }
            EventKind::QuizStarted | EventKind::QuizEnded(_) => {}
        }
        let expected = self.expected_id();
        if self.event_id != expected {
            return invalid(format!(
                "event_id {:?} is not the deterministic id {expected:?}",
                self.event_id
            ));
        }
        Ok(())
    }
}

pub fn valid_quiz_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Player ids are server-generated; they end up inside `_id`s joined by `:`,
/// so a `:` would make two different keys collide.
fn check_player_id(id: &str) -> Result<(), Poison> {
    if id.is_empty() || id.len() > 128 || id.contains(':') {
        return Err(Poison::Invalid(format!(
            "player_id {id:?} is empty, longer than 128 bytes or contains ':'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        let records = [
            r#"{"v":1,"event_id":"q1:created","type":"quiz_created","quiz_id":"q1","at_ms":1,"title":"T","mode":"live","questions":[{"id":0,"index":0,"text":"?","options":["a","b"],"correct":[1],"time_limit_ms":5000,"points":1000}],"extra":true}"#,
            r#"{"v":1,"event_id":"q1:joined:p1","type":"player_joined","quiz_id":"q1","at_ms":2,"player_id":"p1","nickname":"n"}"#,
            r#"{"v":1,"event_id":"q1:answer:p1:0","type":"answer_scored","quiz_id":"q1","at_ms":3,"player_id":"p1","nickname":"n","question_id":0,"choices":[1],"correct":true,"late":false,"points":900,"response_ms":1000,"answered_at_ms":3,"score_after":900}"#,
            r#"{"v":1,"event_id":"q1:question:0","type":"question_opened","quiz_id":"q1","at_ms":4,"question_id":0,"opens_at_ms":4,"closes_at_ms":9}"#,
            r#"{"v":1,"event_id":"q1:started","type":"quiz_started","quiz_id":"q1","at_ms":5}"#,
            r#"{"v":1,"event_id":"q1:ended","type":"quiz_ended","quiz_id":"q1","at_ms":6,"top":[{"rank":1,"player_id":"p1","nickname":"n","score":900}]}"#,
        ];
        for r in records {
            let e = Event::parse(r.as_bytes()).unwrap_or_else(|p| panic!("{r}: {p}"));
            assert_eq!(e.event_id, e.expected_id());
        }
    }

    #[test]
    fn poison_has_reasons() {
        let cases: [(&str, &str); 6] = [
            ("not json", "unparsable"),
            (
                r#"{"v":2,"event_id":"q:started","type":"quiz_started","quiz_id":"q","at_ms":1}"#,
                "unsupported_version",
            ),
            (
                r#"{"v":1,"event_id":"q:x","type":"quiz_exploded","quiz_id":"q","at_ms":1}"#,
                "unknown_type",
            ),
            (
                r#"{"v":1,"event_id":"q:joined:p","type":"player_joined","quiz_id":"q","at_ms":1}"#,
                "invalid",
            ),
            (
                r#"{"v":1,"event_id":"wrong","type":"quiz_started","quiz_id":"q","at_ms":1}"#,
                "invalid",
            ),
            (
                r#"{"v":1,"event_id":"q q:started","type":"quiz_started","quiz_id":"q q","at_ms":1}"#,
                "invalid",
            ),
        ];
        for (record, label) in cases {
            let p = Event::parse(record.as_bytes()).expect_err(record);
            assert_eq!(p.label(), label, "{record}: {p}");
        }
    }
}
