//! What the store writes and how it reads Redis' replies: the compact answer
//! record, JSON values, and the decoding of the scripts' replies (replies
//! are remote data: never unwrap).

use redis::Value;

use crate::model::{AnswerRecord, ApplyOutcome, Leaderboard, LeaderboardEntry, Player, Standing};
use crate::store::StoreError;

pub(super) fn bad_reply(what: &str, v: &Value) -> StoreError {
    StoreError::Unavailable(format!("unexpected redis reply for {what}: {v:?}"))
}

pub(super) fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

pub(super) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        // Sorted-set scores come back as strings of doubles ("1500").
        other => as_str(other)
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.round() as u64),
    }
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Unavailable(format!("corrupt {what}: {e}")))
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Unavailable(format!("encoding: {e}")))
}

pub(super) fn decode_int(what: &str, v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(bad_reply(what, other)),
    }
}

/// One answer's verdict in an `apply_batch` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// `A`: applied, by this attempt or an earlier one of the same call.
    Applied { score: u64, higher: u64 },
    /// `D` (its event still pending) / `E` (delivered): another call's
    /// record for this question, kept.
    Duplicate {
        pending: bool,
        record: String,
        score: u64,
        higher: u64,
    },
    /// `N`: not a player of the quiz (or of its shard); nothing written.
    NotPlayer,
    /// `S`: the state moved on since the answer was scored; nothing written.
    Stale,
    /// `L`: the state (a shard's copy) is older than the caller's, or
    /// missing; nothing written.
    Lagging,
}

impl Verdict {
    /// The score of a verdict that carries a rank.
    pub(super) fn ranked_score(&self) -> Option<u64> {
        match self {
            Verdict::Applied { score, .. } | Verdict::Duplicate { score, .. } => Some(*score),
            _ => None,
        }
    }

    /// The players above it, for a verdict that carries a rank.
    pub(super) fn higher_mut(&mut self) -> Option<&mut u64> {
        match self {
            Verdict::Applied { higher, .. } | Verdict::Duplicate { higher, .. } => Some(higher),
            _ => None,
        }
    }
}

/// An `apply_batch` reply for `n` answers: one verdict per answer, or the
/// state guard's verdict (`S`, `L`) for every one of them. See
/// `lua/apply_batch.lua` for the format; anything else is an error.
pub(super) fn decode_verdicts(v: &Value, n: usize) -> Result<Vec<Verdict>, StoreError> {
    let bad = || bad_reply("apply_batch", v);
    let bytes = match v {
        Value::BulkString(b) => b.as_slice(),
        Value::Array(items) if items.len() == 1 => {
            let guard = items
                .first()
                .and_then(as_str)
                .and_then(|s| guard_verdict(s.as_bytes()))
                .ok_or_else(bad)?;
            return Ok(vec![guard; n]);
        }
        _ => return Err(bad()),
    };
    verdict_lines(bytes, n).ok_or_else(bad)
}

/// The state guard's whole-batch reply (`{'S'}` or `{'L'}`): its verdict
/// for every answer of the batch.
pub(super) fn guard_verdict(s: &[u8]) -> Option<Verdict> {
    match s {
        b"S" => Some(Verdict::Stale),
        b"L" => Some(Verdict::Lagging),
        _ => None,
    }
}

/// The lines of an `apply_batch` reply's string, one verdict per answer;
/// `None` unless there are exactly `n` well-formed lines.
pub(super) fn verdict_lines(bytes: &[u8], n: usize) -> Option<Vec<Verdict>> {
    let mut rest = bytes;
    let mut out = Vec::with_capacity(n);
    while !rest.is_empty() {
        let (verdict, after) = verdict_line(rest)?;
        out.push(verdict);
        rest = after;
    }
    (out.len() == n).then_some(out)
}

/// One line of an `apply_batch` reply and what follows it; `None` if it is
/// malformed.
fn verdict_line(s: &[u8]) -> Option<(Verdict, &[u8])> {
    let (&tag, s) = s.split_first()?;
    let s = s.strip_prefix(b" ")?;
    let (score, s) = leading_u64(s)?;
    let s = s.strip_prefix(b" ")?;
    let (higher, s) = leading_u64(s)?;
    let (verdict, s) = match tag {
        b'A' => (Verdict::Applied { score, higher }, s),
        b'N' => (Verdict::NotPlayer, s),
        b'D' | b'E' => {
            let s = s.strip_prefix(b" ")?;
            let (len, s) = leading_u64(s)?;
            let s = s.strip_prefix(b":")?;
            let len = usize::try_from(len).ok().filter(|l| *l <= s.len())?;
            let (record, s) = s.split_at(len);
            let record = std::str::from_utf8(record).ok()?.to_string();
            let duplicate = Verdict::Duplicate {
                pending: tag == b'D',
                record,
                score,
                higher,
            };
            (duplicate, s)
        }
        _ => return None,
    };
    Some((verdict, s.strip_prefix(b"\n")?))
}

/// The decimal number at the start of `s` (at least one digit, no
/// overflow) and what follows it.
fn leading_u64(s: &[u8]) -> Option<(u64, &[u8])> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    // ASCII digits only, so UTF-8; `parse` refuses none and overflow.
    let n = std::str::from_utf8(&s[..digits]).ok()?.parse().ok()?;
    Some((n, &s[digits..]))
}

/// What one answer's verdict means to its caller. `Ok(None)`: the state
/// guard failed (`S`, `L`): re-score.
pub(super) fn decode_apply(
    quiz_id: &str,
    answer: &AnswerRecord,
    verdict: Verdict,
) -> Result<Option<ApplyOutcome>, StoreError> {
    match verdict {
        Verdict::Applied { score, higher } => Ok(Some(ApplyOutcome::Applied {
            score,
            rank: higher + 1,
        })),
        // The state moved on, or (`L`, after the store's repair of a
        // sharded quiz's lagging copy) is not the caller's: re-score.
        Verdict::Stale | Verdict::Lagging => Ok(None),
        Verdict::Duplicate {
            pending,
            record,
            score,
            higher,
        } => Ok(Some(ApplyOutcome::Duplicate {
            pending,
            original: decode_record(
                &record,
                &answer.player_id,
                &answer.nickname,
                answer.question_id,
            )?,
            score,
            rank: higher + 1,
        })),
        Verdict::NotPlayer => Err(StoreError::NotFound(format!(
            "player {} in quiz {quiz_id}",
            answer.player_id
        ))),
    }
}

/// The `leaderboard` script's reply (`Nil` already handled by the caller):
/// `{zcard, version, {id, score, ...}, {player_json, ...}}`.
pub(super) fn decode_leaderboard(quiz_id: &str, v: &Value) -> Result<Leaderboard, StoreError> {
    let items = match v {
        Value::Array(items) if items.len() == 4 => items,
        other => return Err(bad_reply("leaderboard", other)),
    };
    let total = as_u64(&items[0]).ok_or_else(|| bad_reply("leaderboard", v))?;
    let version = as_u64(&items[1]).ok_or_else(|| bad_reply("leaderboard", v))?;
    let (Value::Array(flat), players) = (&items[2], &items[3]) else {
        return Err(bad_reply("leaderboard", v));
    };
    let players: &[Value] = match players {
        Value::Array(p) => p,
        _ => &[],
    };
    let mut top = Vec::with_capacity(flat.len() / 2);
    let mut rank = 0u64;
    let mut prev: Option<u64> = None;
    for (i, pair) in flat.chunks_exact(2).enumerate() {
        let pid = as_str(&pair[0]).ok_or_else(|| bad_reply("leaderboard", v))?;
        let score = as_u64(&pair[1]).ok_or_else(|| bad_reply("leaderboard", v))?;
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

/// The `standing` script's reply: nil or `{score, higher}`.
pub(super) fn decode_standing(v: &Value) -> Result<Option<Standing>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(items) if items.len() == 2 => match (as_u64(&items[0]), as_u64(&items[1])) {
            (Some(score), Some(higher)) => Ok(Some(Standing {
                score,
                rank: higher + 1,
            })),
            _ => Err(StoreError::Unavailable(format!(
                "unexpected redis reply for standing: {items:?}"
            ))),
        },
        other => Err(bad_reply("standing", other)),
    }
}

/// Appends an answer's part of `apply_batch`'s packed argument, after its
/// batch-dependent head (`<dist> `): `<points> <choices> <token>|<record>
/// <player_id>:<question_id>` (see `lua/apply_batch.lua`). `token`: the
/// attempt token, the same on every attempt of one `apply_answer` call (16
/// hex digits).
pub(super) fn write_packed(out: &mut String, answer: &AnswerRecord, token: u64) {
    use std::fmt::Write as _;
    let mut n = itoa::Buffer::new();
    out.push_str(n.format(answer.points));
    out.push(' ');
    write_choices(out, &answer.choices);
    out.push(' ');
    let _ = write!(out, "{token:016x}");
    out.push('|');
    write_record(out, answer);
    out.push(' ');
    out.push_str(&answer.player_id);
    out.push(':');
    out.push_str(n.format(answer.question_id));
}

/// Appends `choices` as `0,2` (the record's and `apply_batch`'s format).
pub(super) fn write_choices(out: &mut String, choices: &[u32]) {
    let mut n = itoa::Buffer::new();
    for (i, c) in choices.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(n.format(*c));
    }
}

/// The stored answer record, compact (it is written once per answer on the
/// hot path, and its bytes cost Redis CPU, replication and memory):
/// `c<correct 0|1><late 0|1>;<points>;<response_ms>;<answered_at_ms>;<choices,…>`,
/// e.g. `c10;870;2100;1764201234567;0,2`. Player id and question id are the
/// hash field, the nickname is the player's: neither is repeated here.
/// Appended to `out` (it runs once per answer: integers through `itoa`,
/// not the formatting machinery).
pub(super) fn write_record(out: &mut String, a: &AnswerRecord) {
    let mut n = itoa::Buffer::new();
    out.push('c');
    out.push(if a.correct { '1' } else { '0' });
    out.push(if a.late { '1' } else { '0' });
    for v in [u64::from(a.points), a.response_ms, a.answered_at_ms] {
        out.push(';');
        out.push_str(n.format(v));
    }
    out.push(';');
    write_choices(out, &a.choices);
}

/// Reads a record written by [`write_record`], or the JSON `AnswerRecord`
/// that versions before the compact format stored.
pub(super) fn decode_record(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_record(a: &AnswerRecord) -> String {
        let mut s = String::new();
        write_record(&mut s, a);
        s
    }

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

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn verdicts_decode_in_order_with_any_record() {
        // An older JSON record with spaces, a newline, a colon and digits
        // inside: the length prefix frames it.
        let odd = "{\"a\": \"1 2\n3:4\"}";
        let reply = format!(
            "A 870 3\nN 0 0\nD 1740 0 {}:{odd}\nE 5 12 4:c10;\n",
            odd.len()
        );
        let got = decode_verdicts(&bulk(reply.as_bytes()), 4).unwrap();
        assert_eq!(
            got,
            vec![
                Verdict::Applied {
                    score: 870,
                    higher: 3
                },
                Verdict::NotPlayer,
                Verdict::Duplicate {
                    pending: true,
                    record: odd.to_string(),
                    score: 1740,
                    higher: 0
                },
                Verdict::Duplicate {
                    pending: false,
                    record: "c10;".to_string(),
                    score: 5,
                    higher: 12
                },
            ]
        );
        assert_eq!(got[0].ranked_score(), Some(870));
        assert_eq!(got[1].ranked_score(), None);
        // The state guard answers for every answer of the call.
        let stale = Value::Array(vec![bulk(b"S")]);
        assert_eq!(decode_verdicts(&stale, 3).unwrap(), vec![Verdict::Stale; 3]);
        let lagging = Value::Array(vec![Value::SimpleString("L".into())]);
        assert_eq!(
            decode_verdicts(&lagging, 1).unwrap(),
            vec![Verdict::Lagging]
        );
    }

    #[test]
    fn malformed_verdicts_are_errors_not_panics() {
        for bad in [
            &b""[..],                      // no line for the one answer
            b"A 1 2",                      // no newline
            b"A 1 2\nA 1 2\n",             // one line too many
            b"X 1 2\n",                    // unknown tag
            b"A -1 2\n",                   // not a number
            b"A 1  2\n",                   // two spaces
            b"A 99999999999999999999 0\n", // overflow
            b"D 1 2 9:short\n",            // record shorter than its length
            b"D 1 2 5:c10;;x\n",           // record longer than its length
            b"D 1 2 :c\n",                 // no length
            b"D 1 2 2:\xff\xfe\n",         // not UTF-8
            b"A 1 2\r\n",                  // CR
        ] {
            assert!(
                decode_verdicts(&bulk(bad), 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode_verdicts(&Value::Array(vec![bulk(b"Q")]), 1).is_err());
        assert!(decode_verdicts(&Value::Int(3), 1).is_err());
        assert!(decode_verdicts(&Value::Nil, 1).is_err());
    }

    #[test]
    fn random_replies_never_panic() {
        // A cheap stand-in for a fuzzer: random bytes over the reply's
        // alphabet, and every prefix of a valid reply.
        let alphabet = b"ADENSL 0123456789:\n;c{}";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let len = (x % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = decode_verdicts(&bulk(&bytes), (x % 4) as usize);
        }
        let valid = b"A 870 3\nD 1 2 4:c10;\nN 0 0\n";
        for end in 0..valid.len() {
            assert!(decode_verdicts(&bulk(&valid[..end]), 3).is_err());
        }
        assert!(decode_verdicts(&bulk(valid), 3).is_ok());
    }
}
