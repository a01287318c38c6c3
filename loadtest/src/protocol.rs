//! The platform's messages as the tool reads and writes them (CONTRACT.md).
//!
//! Server frames are parsed into one flat [`ServerMsg`] with optional fields:
//! no buffering of an internally tagged enum, borrowed strings, and fields the
//! tool does not use (leaderboard `top`, option texts) are skipped by the
//! parser, which keeps the per-frame CPU cost to one pass over the bytes.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
pub struct ServerMsg<'a> {
    #[serde(rename = "type", borrow)]
    pub ty: Cow<'a, str>,
    // welcome
    #[serde(default)]
    pub score: Option<u64>,
    /// welcome: the open question, as a nested `question` message;
    /// question: the question itself.
    #[serde(default)]
    pub question: Option<QuestionField>,
    /// welcome extension: the player already answered the open question.
    #[serde(default)]
    pub answered: Option<bool>,
    // question
    #[serde(default)]
    pub opens_at_ms: Option<u64>,
    #[serde(default)]
    pub closes_at_ms: Option<u64>,
    // answer_result, question_closed
    #[serde(default)]
    pub question_id: Option<u32>,
    #[serde(default)]
    pub accepted: Option<bool>,
    #[serde(default, borrow)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(default)]
    pub correct: Option<Correct>,
    #[serde(default)]
    pub points: Option<u64>,
    // leaderboard
    #[serde(default)]
    pub version: Option<u64>,
    /// Server time the leaderboard was produced, when the server stamps it.
    #[serde(default, alias = "at_ms", alias = "generated_at_ms", alias = "tick_ms")]
    pub ts_ms: Option<u64>,
    // error
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
}

/// `correct` is a bool in `answer_result` and a list in `question_closed`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Correct {
    Flag(bool),
    List(Vec<u32>),
}

/// Either a bare question object or a nested `question` message (welcome).
#[derive(Debug, Deserialize)]
pub struct QuestionField {
    #[serde(default)]
    pub id: Option<u32>,
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub time_limit_ms: Option<u64>,
    #[serde(default)]
    pub points: Option<u64>,
    #[serde(default)]
    pub question: Option<Box<QuestionField>>,
    #[serde(default)]
    pub opens_at_ms: Option<u64>,
    #[serde(default)]
    pub closes_at_ms: Option<u64>,
}

/// An open question, however it was announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenQuestion {
    pub id: u32,
    pub index: u32,
    pub time_limit_ms: u64,
    pub points: u64,
    pub opens_at_ms: u64,
    pub closes_at_ms: u64,
}

impl ServerMsg<'_> {
    pub fn parse(bytes: &[u8]) -> Result<ServerMsg<'_>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The question carried by a `question` or `welcome` message.
    pub fn open_question(&self) -> Option<OpenQuestion> {
        let q = self.question.as_ref()?;
        // welcome nests a whole question message
        let (inner, opens, closes) = match &q.question {
            Some(inner) => (inner.as_ref(), q.opens_at_ms, q.closes_at_ms),
            None => (q, self.opens_at_ms, self.closes_at_ms),
        };
        let id = inner.id?;
        Some(OpenQuestion {
            id,
            index: inner.index.unwrap_or(id),
            time_limit_ms: inner.time_limit_ms.unwrap_or(0),
            points: inner.points.unwrap_or(0),
            opens_at_ms: opens.unwrap_or(0),
            closes_at_ms: closes.unwrap_or(0),
        })
    }

    pub fn correct_flag(&self) -> bool {
        matches!(self.correct, Some(Correct::Flag(true)))
    }
}

/// What the tool reads from a `leaderboard` frame: the version and the
/// server stamp, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoardHead {
    pub version: Option<u64>,
    pub ts_ms: Option<u64>,
}

const LB_PREFIX: &[u8] = br#"{"type":"leaderboard","#;

/// Fast path for the most frequent frame (every player gets a board every
/// 500 ms): read `version` (and a stamp) from the head of a `leaderboard`
/// frame without parsing the `top` list, which is most of its bytes and
/// which the tool does not check per frame (the final leaderboard is checked
/// over HTTP). `None` when the frame is not a leaderboard in core's field
/// order (`type` first, `version` before `top`; the stamp before `top` or
/// last): the caller then parses it fully. Quiz ids are `[A-Za-z0-9_-]`, so
/// a key cannot be faked inside the scalars before `top`.
pub fn scan_leaderboard(bytes: &[u8]) -> Option<BoardHead> {
    let rest = bytes.strip_prefix(LB_PREFIX)?;
    // One pass over `"key":value,` pairs up to the first array or object
    // (`top`); keys are compared only where one starts, no substring search.
    let mut head = BoardHead {
        version: None,
        ts_ms: None,
    };
    let mut i = 0;
    while i < rest.len() && rest[i] == b'"' {
        let key_start = i + 1;
        let key_len = rest[key_start..].iter().position(|&b| b == b'"')?;
        let key = &rest[key_start..key_start + key_len];
        i = key_start + key_len + 1;
        if rest.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        match rest.get(i)? {
            b'"' => {
                let len = rest[i + 1..]
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\')?;
                if rest[i + 1 + len] == b'\\' {
                    return None; // an escaped string: not core's scalars
                }
                i += len + 2;
            }
            b'0'..=b'9' => {
                let digits = rest[i..].iter().take_while(|b| b.is_ascii_digit()).count();
                let n = parse_u64(&rest[i..i + digits])?;
                match key {
                    b"version" => head.version = Some(n),
                    b"ts_ms" | b"at_ms" | b"generated_at_ms" | b"tick_ms" => head.ts_ms = Some(n),
                    _ => {}
                }
                i += digits;
            }
            _ => break, // `top` (or another array/object/literal): done
        }
        match rest.get(i) {
            Some(b',') => i += 1,
            _ => break,
        }
    }
    head.version?;
    if head.ts_ms.is_none() {
        // Core puts its stamp last (`…,"top":[…],"ts_ms":N}`): read it
        // backwards from the end instead of walking the list.
        head.ts_ms = trailing_number(bytes, br#","ts_ms":"#);
    }
    Some(head)
}

/// `N` when `bytes` ends with `key` N `}`.
fn trailing_number(bytes: &[u8], key: &[u8]) -> Option<u64> {
    let body = bytes.strip_suffix(b"}")?;
    let digits = body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let (before, number) = body.split_at(body.len() - digits);
    if before.ends_with(key) {
        parse_u64(number)
    } else {
        None
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// `POST /v1/quizzes` body.
#[derive(Debug, Serialize)]
pub struct CreateQuiz<'a> {
    pub title: &'a str,
    pub mode: &'a str,
    pub questions: Vec<NewQuestion>,
    /// The size hint that spreads a big quiz over several core nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_players: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct NewQuestion {
    pub text: String,
    pub options: Vec<String>,
    pub correct: Vec<u32>,
    pub time_limit_ms: u64,
    pub points: u32,
}

#[derive(Debug, Deserialize)]
pub struct Created {
    pub quiz_id: String,
    pub host_token: String,
}

#[derive(Debug, Deserialize)]
pub struct Joined {
    pub player_id: String,
    pub player_token: String,
}

#[derive(Debug, Deserialize)]
pub struct PlayerView {
    pub score: u64,
    #[serde(default)]
    pub rank: Option<u64>,
}

/// The answer message, encoded without a serializer on the hot path.
pub fn encode_answer(question_id: u32, choice: u32) -> Vec<u8> {
    format!(r#"{{"type":"answer","question_id":{question_id},"choices":[{choice}]}}"#).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_question_and_welcome_with_nested_question() {
        let q = br#"{"type":"question","question":{"id":3,"index":3,"text":"t","options":["a","b"],"time_limit_ms":5000,"points":1000},"opens_at_ms":10,"closes_at_ms":5010}"#;
        let m = ServerMsg::parse(q).unwrap();
        assert_eq!(m.ty, "question");
        let o = m.open_question().unwrap();
        assert_eq!(
            (o.id, o.opens_at_ms, o.closes_at_ms, o.points),
            (3, 10, 5010, 1000)
        );
        let w = br#"{"type":"welcome","role":"player","player_id":"p","score":5,"rank":1,"state":"running","question":{"type":"question","question":{"id":1,"index":1,"text":"t","options":["a"],"time_limit_ms":5000,"points":2000},"opens_at_ms":7,"closes_at_ms":5007},"answered":true}"#;
        let m = ServerMsg::parse(w).unwrap();
        assert_eq!(m.score, Some(5));
        assert_eq!(m.answered, Some(true));
        let o = m.open_question().unwrap();
        assert_eq!((o.id, o.opens_at_ms, o.points), (1, 7, 2000));
    }

    #[test]
    fn parses_results_and_closed() {
        let r = br#"{"type":"answer_result","question_id":2,"accepted":false,"reason":"late","correct":false,"points":0,"score":10,"rank":3}"#;
        let m = ServerMsg::parse(r).unwrap();
        assert_eq!(m.reason.as_deref(), Some("late"));
        assert!(!m.correct_flag());
        let c = br#"{"type":"question_closed","question_id":2,"correct":[1],"distribution":[0,4]}"#;
        let m = ServerMsg::parse(c).unwrap();
        assert!(matches!(m.correct, Some(Correct::List(_))));
        let l = br#"{"type":"leaderboard","quiz_id":"q","version":9,"total_players":2,"top":[{"rank":1,"player_id":"a","nickname":"n","score":1}]}"#;
        let m = ServerMsg::parse(l).unwrap();
        assert_eq!((m.version, m.ts_ms), (Some(9), None));
    }

    #[test]
    fn scans_leaderboard_heads_like_the_parser() {
        let l = br#"{"type":"leaderboard","quiz_id":"q-1","version":9,"total_players":2,"top":[{"rank":1,"player_id":"a","nickname":"version","score":1}]}"#;
        let h = scan_leaderboard(l).unwrap();
        let m = ServerMsg::parse(l).unwrap();
        assert_eq!((h.version, h.ts_ms), (m.version, m.ts_ms));
        assert_eq!(h.version, Some(9));
        let stamped = br#"{"type":"leaderboard","quiz_id":"q","version":12345678901,"ts_ms":1700000000123,"total_players":0,"top":[]}"#;
        assert_eq!(
            scan_leaderboard(stamped),
            Some(BoardHead {
                version: Some(12345678901),
                ts_ms: Some(1700000000123)
            })
        );
        // Core's layout since it stamps its boards: the stamp after `top`.
        let core = br#"{"type":"leaderboard","quiz_id":"q","version":4,"total_players":1,"top":[{"rank":1,"player_id":"a","nickname":"n","score":1}],"ts_ms":1700000000999}"#;
        let m = ServerMsg::parse(core).unwrap();
        assert_eq!(m.ts_ms, Some(1700000000999));
        assert_eq!(
            scan_leaderboard(core),
            Some(BoardHead {
                version: Some(4),
                ts_ms: Some(1700000000999)
            })
        );
        // Not core's layout, or not a board: the caller parses fully.
        assert_eq!(
            scan_leaderboard(br#"{"quiz_id":"q","type":"leaderboard","version":1}"#),
            None
        );
        assert_eq!(
            scan_leaderboard(br#"{"type":"leaderboard","top":[],"version":3}"#),
            None
        );
        assert_eq!(
            scan_leaderboard(br#"{"type":"question","version":1}"#),
            None
        );
    }

    #[test]
    fn answer_encoding() {
        assert_eq!(
            encode_answer(4, 2),
            br#"{"type":"answer","question_id":4,"choices":[2]}"#.to_vec()
        );
    }
}
