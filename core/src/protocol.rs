//! Every message in and out, in one place.
//!
//! Inbound WebSocket messages are parsed only by [`parse_client`]; outbound
//! ones are built by the `encode_*` helpers, which return `Bytes` so a frame
//! encoded once can be shared by every connection it goes to. HTTP request
//! and response bodies are here too.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::{LeaderboardEntry, Millis, Mode, Phase, Question, QuizDef, QuizState};

// ---------------------------------------------------------------- inbound WS

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    Answer { question_id: u32, choices: Vec<u32> },
    Ping,
}

/// Why an inbound message was refused; sent back as an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    pub code: &'static str,
    pub message: String,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "type_name")]
    ty: Option<Cow<'a, str>>,
}

/// The `type` field, borrowed from the frame unless it holds an escape.
/// serde's own `Option<Cow<str>>` always copies it: `borrow` reaches a
/// `Cow` field only when it is not inside an `Option`, so every frame paid
/// an allocation for its type's name.
fn type_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Name;
    impl<'de> serde::de::Visitor<'de> for Name {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(s)))
        }
        fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(s.to_owned())))
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    d.deserialize_option(Name)
}

#[derive(Deserialize)]
struct AnswerIn {
    question_id: u32,
    choices: Vec<u32>,
}

/// Parses one inbound text frame. Never panics, whatever the bytes.
pub fn parse_client(bytes: &[u8]) -> Result<ClientMsg, ProtoError> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| ProtoError {
        code: "malformed",
        message: format!("not a JSON object: {}", short_error(&e)),
    })?;
    match env.ty.as_deref() {
        Some("answer") => {
            let a: AnswerIn = serde_json::from_slice(bytes).map_err(|e| ProtoError {
                code: "malformed",
                message: format!("answer: {}", short_error(&e)),
            })?;
            Ok(ClientMsg::Answer {
                question_id: a.question_id,
                choices: a.choices,
            })
        }
        Some("ping") => Ok(ClientMsg::Ping),
        Some(other) => Err(ProtoError {
            code: "unknown_type",
            message: format!("unknown message type {:?}", truncate(other, 32)),
        }),
        None => Err(ProtoError {
            code: "malformed",
            message: "missing field `type`".into(),
        }),
    }
}

/// serde_json's message, cut to 160 bytes: it can quote the offending
/// string whole ("invalid type: string \"…\""), and the message goes back
/// to the client (found by `core/tests/parsers_random.rs`: a 4 KiB frame
/// echoed in full).
fn short_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    if full.len() <= 160 {
        return full;
    }
    let mut end = 160;
    while !full.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (line {} column {})",
        &full[..end],
        e.line(),
        e.column()
    )
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// --------------------------------------------------------------- outbound WS

/// A question as players see it: without the correct answers.
#[derive(Debug, Serialize)]
pub struct PublicQuestion<'a> {
    pub id: u32,
    pub index: u32,
    pub text: &'a str,
    pub options: &'a [String],
    pub time_limit_ms: u64,
    pub points: u32,
    /// True when more than one option is correct, so the client offers a
    /// multi-select ("choose all that apply"); an answer is correct only when
    /// the chosen set equals the correct set, which a single tap could never
    /// be. An extension of the contract's question object.
    pub multi: bool,
}

impl<'a> From<&'a Question> for PublicQuestion<'a> {
    fn from(q: &'a Question) -> Self {
        PublicQuestion {
            id: q.id,
            index: q.index,
            text: &q.text,
            options: &q.options,
            time_limit_ms: q.time_limit_ms,
            points: q.points,
            multi: q.correct.len() > 1,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct QuestionMsg<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub question: PublicQuestion<'a>,
    pub opens_at_ms: Millis,
    pub closes_at_ms: Millis,
}

impl<'a> QuestionMsg<'a> {
    pub fn new(q: &'a Question, opens_at_ms: Millis, closes_at_ms: Millis) -> Self {
        QuestionMsg {
            ty: "question",
            question: q.into(),
            opens_at_ms,
            closes_at_ms,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Welcome<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// `player` or `host` (an extension).
    pub role: &'static str,
    pub player_id: Option<&'a str>,
    pub score: u64,
    pub rank: u64,
    pub state: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub question: Option<QuestionMsg<'a>>,
    /// Extension: the player already answered the open question.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub answered: bool,
}

/// Why an answer was not accepted (`answer_result.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerReason {
    /// No such question, or choices empty or out of range: not recorded.
    Invalid,
    /// The question is not open to this player (yet): not recorded.
    NotOpen,
    /// Received at or after `closes_at`: recorded with 0 points.
    Late,
    /// The player had answered: the original's result.
    Duplicate,
}

impl AnswerReason {
    /// The wire string (also the `quiz_answers_total` outcome label).
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerReason::Invalid => "invalid",
            AnswerReason::NotOpen => "not_open",
            AnswerReason::Late => "late",
            AnswerReason::Duplicate => "duplicate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerResult {
    /// Always `answer_result`; a `Cow` so that building one allocates
    /// nothing (one is built per answer).
    #[serde(rename = "type")]
    pub ty: Cow<'static, str>,
    pub question_id: u32,
    pub accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<AnswerReason>,
    pub correct: bool,
    pub points: u32,
    pub score: u64,
    pub rank: u64,
}

impl AnswerResult {
    pub fn new(question_id: u32) -> AnswerResult {
        AnswerResult {
            ty: "answer_result".into(),
            question_id,
            accepted: false,
            reason: None,
            correct: false,
            points: 0,
            score: 0,
            rank: 0,
        }
    }

    /// A refusal with `reason`, nothing recorded (score and rank are
    /// filled in by the caller).
    pub fn rejected(question_id: u32, reason: AnswerReason) -> AnswerResult {
        AnswerResult {
            reason: Some(reason),
            ..AnswerResult::new(question_id)
        }
    }

    /// The answer was recorded just now (accepted or late): the scores
    /// changed.
    pub fn applied(&self) -> bool {
        self.accepted || self.reason == Some(AnswerReason::Late)
    }

    /// The player's answer to the question is recorded (now or before), so
    /// a self-paced player moves on.
    pub fn recorded(&self) -> bool {
        self.applied() || self.reason == Some(AnswerReason::Duplicate)
    }
}

#[derive(Debug, Serialize)]
struct QuestionClosed<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    question_id: u32,
    correct: &'a [u32],
    distribution: &'a [u64],
}

#[derive(Debug, Serialize)]
struct LeaderboardMsg<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    quiz_id: &'a str,
    version: u64,
    total_players: u64,
    top: &'a [LeaderboardEntry],
    /// Extension: the server clock (ms since the epoch) of the tick that
    /// produced this board, so clients can measure how stale it is.
    ts_ms: Millis,
}

#[derive(Debug, Serialize)]
struct QuizEnded<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    top: &'a [LeaderboardEntry],
}

#[derive(Debug, Serialize)]
struct ErrorMsg<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    code: &'a str,
    message: &'a str,
}

#[derive(Debug, Serialize)]
struct AnswerCount {
    #[serde(rename = "type")]
    ty: &'static str,
    question_id: u32,
    distribution: Vec<u64>,
}

fn to_bytes<T: Serialize>(v: &T) -> Bytes {
    // Serialising these plain structs cannot fail (string keys, no maps).
    // (Tried: a per-thread scratch buffer copied out at its exact length,
    // one allocation instead of two: 19 % slower in `hot_paths`'
    // `answer/result_frame`, so not kept.)
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

pub fn encode<T: Serialize>(v: &T) -> Bytes {
    to_bytes(v)
}

pub fn encode_pong() -> Bytes {
    Bytes::from_static(br#"{"type":"pong"}"#)
}

pub fn encode_error(code: &str, message: &str) -> Bytes {
    to_bytes(&ErrorMsg {
        ty: "error",
        code,
        message,
    })
}

/// A board is encoded once per tick and the same bytes go to every member,
/// so `ts_ms` is the tick's time (`room.rs` chooses it: for a quiz spread
/// over several nodes, the wall-clock tick every node shares).
pub fn encode_leaderboard(lb: &crate::model::Leaderboard, ts_ms: Millis) -> Bytes {
    to_bytes(&LeaderboardMsg {
        ty: "leaderboard",
        quiz_id: &lb.quiz_id,
        version: lb.version,
        total_players: lb.total_players,
        top: &lb.top,
        ts_ms,
    })
}

pub fn encode_question_closed(question_id: u32, correct: &[u32], distribution: &[u64]) -> Bytes {
    to_bytes(&QuestionClosed {
        ty: "question_closed",
        question_id,
        correct,
        distribution,
    })
}

pub fn encode_quiz_ended(top: &[LeaderboardEntry]) -> Bytes {
    to_bytes(&QuizEnded {
        ty: "quiz_ended",
        top,
    })
}

/// Hosts only (extension): live answer counts per option of the open question.
pub fn encode_answer_count(question_id: u32, distribution: Vec<u64>) -> Bytes {
    to_bytes(&AnswerCount {
        ty: "answer_count",
        question_id,
        distribution,
    })
}

// ---------------------------------------------------------------------- HTTP

#[derive(Debug, Deserialize)]
pub struct CreateQuizReq {
    pub title: String,
    pub mode: Mode,
    #[serde(default)]
    pub quiz_id: Option<String>,
    pub questions: Vec<QuestionReq>,
    /// A size hint: how many players the host expects. A quiz expecting
    /// more than one node's share is spread over several core nodes and
    /// its scoring over several Redis hash slots (see `rules::layout_for`).
    #[serde(default)]
    pub expected_players: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct QuestionReq {
    pub text: String,
    pub options: Vec<String>,
    pub correct: Vec<u32>,
    pub time_limit_ms: u64,
    pub points: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreateQuizResp {
    pub quiz_id: String,
    pub host_token: String,
}

#[derive(Debug, Deserialize)]
pub struct JoinReq {
    pub nickname: String,
}

/// `GET /v1/quizzes/{id}` and the host routes' response.
#[derive(Debug, Serialize)]
pub struct QuizView<'a> {
    pub quiz_id: &'a str,
    pub title: &'a str,
    pub mode: Mode,
    pub state: Phase,
    pub question_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_question: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_at_ms: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closes_at_ms: Option<Millis>,
}

impl<'a> QuizView<'a> {
    pub fn new(def: &'a QuizDef, state: &QuizState) -> Self {
        QuizView {
            quiz_id: &def.quiz_id,
            title: &def.title,
            mode: def.mode,
            state: state.phase,
            question_count: def.questions.len(),
            current_question: state.current_question,
            opens_at_ms: state.opens_at_ms,
            closes_at_ms: state.closes_at_ms,
        }
    }
}

/// The quiz as a newly joined player sees it.
#[derive(Debug, Serialize)]
pub struct JoinedQuiz<'a> {
    #[serde(flatten)]
    pub view: QuizView<'a>,
    pub questions: Vec<PublicQuestion<'a>>,
}

#[derive(Debug, Serialize)]
pub struct JoinResp<'a> {
    pub player_id: &'a str,
    pub player_token: &'a str,
    pub quiz: JoinedQuiz<'a>,
    pub leaderboard: &'a crate::model::Leaderboard,
}

#[derive(Debug, Serialize)]
pub struct PlayerView<'a> {
    pub player_id: &'a str,
    pub nickname: &'a str,
    pub score: u64,
    pub rank: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasons' wire strings are the contract's, and `as_str` agrees.
    #[test]
    fn answer_reasons_on_the_wire() {
        for (r, s) in [
            (AnswerReason::Invalid, "invalid"),
            (AnswerReason::NotOpen, "not_open"),
            (AnswerReason::Late, "late"),
            (AnswerReason::Duplicate, "duplicate"),
        ] {
            assert_eq!(r.as_str(), s);
            let res = AnswerResult::rejected(3, r);
            let wire = String::from_utf8(encode(&res).to_vec()).unwrap();
            assert_eq!(
                wire,
                format!(
                    r#"{{"type":"answer_result","question_id":3,"accepted":false,"reason":"{s}","correct":false,"points":0,"score":0,"rank":0}}"#
                )
            );
        }
        let ok = String::from_utf8(encode(&AnswerResult::new(1)).to_vec()).unwrap();
        assert!(!ok.contains("reason"), "{ok}");
    }

    #[test]
    fn parses_messages() {
        assert_eq!(parse_client(br#"{"type":"ping"}"#), Ok(ClientMsg::Ping));
        assert_eq!(
            parse_client(br#"{"type":"answer","question_id":2,"choices":[1,0],"x":1}"#),
            Ok(ClientMsg::Answer {
                question_id: 2,
                choices: vec![1, 0]
            })
        );
        assert_eq!(
            parse_client(br#"{"type":"nope"}"#).unwrap_err().code,
            "unknown_type"
        );
        for bad in [
            &b"{"[..],
            b"[]",
            b"null",
            b"{}",
            b"{\"type\":\"answer\"}",
            b"{\"type\":\"answer\",\"question_id\":-1,\"choices\":[]}",
            b"\xff\xfe",
            b"{\"type\":\"answer\",\"question_id\":1,\"choices\":[99999999999]}",
        ] {
            assert_eq!(parse_client(bad).unwrap_err().code, "malformed");
        }
        // Escaped type strings still parse.
        assert_eq!(
            parse_client(br#"{"type":"p\u0069ng"}"#),
            Ok(ClientMsg::Ping)
        );
        // A type that is not a string is malformed; null is as if missing.
        for bad in [
            &br#"{"type":5}"#[..],
            br#"{"type":["ping"]}"#,
            br#"{"type":{"a":1}}"#,
        ] {
            assert_eq!(parse_client(bad).unwrap_err().code, "malformed");
        }
        let missing = parse_client(br#"{"type":null}"#).unwrap_err();
        assert_eq!(
            (missing.code, missing.message.as_str()),
            ("malformed", "missing field `type`")
        );
    }

    /// Frames come out whole whatever their size and order.
    #[test]
    fn frames_of_any_size_come_out_whole() {
        let long = "x".repeat(40_000);
        for message in [long.as_str(), "short", &long[..20_000], "", "é"] {
            let frame = encode_error("e", message);
            let back: serde_json::Value = serde_json::from_slice(&frame).unwrap();
            assert_eq!(back["message"], message);
        }
    }
}
