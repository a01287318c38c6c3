//! What the store writes and how it reads Redis' replies: the compact answer
//! record, JSON values, and the decoding of the scripts' replies (replies
//! are remote data: never unwrap).

use std::fmt::Write as _;

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

/// One answer's entry of an `apply_batch` reply. `Ok(None)`: the state
/// guard failed (`S`, `L`).
pub(super) fn decode_apply(
    quiz_id: &str,
    answer: &AnswerRecord,
    v: &Value,
) -> Result<Option<ApplyOutcome>, StoreError> {
    let Value::Array(items) = v else {
        return Err(bad_reply("apply_answer", v));
    };
    let tag = items.first().and_then(as_str);
    let score_rank = || -> Result<(u64, u64), StoreError> {
        let score = items.get(1).and_then(as_u64);
        let higher = items.get(2).and_then(as_u64);
        match (score, higher) {
            (Some(s), Some(h)) => Ok((s, h + 1)),
            _ => Err(bad_reply("apply_answer", v)),
        }
    };
    match tag {
        Some("A") => {
            let (score, rank) = score_rank()?;
            Ok(Some(ApplyOutcome::Applied { score, rank }))
        }
        // The state moved on, or (`L`, after the store's repair of a
        // sharded quiz's lagging copy) is not the caller's: re-score.
        Some("S") | Some("L") => Ok(None),
        Some(t) if t.starts_with('D') || t.starts_with('E') => {
            let (score, rank) = score_rank()?;
            let rec = &t[1..];
            Ok(Some(ApplyOutcome::Duplicate {
                pending: t.starts_with('D'),
                original: decode_record(
                    rec,
                    &answer.player_id,
                    &answer.nickname,
                    answer.question_id,
                )?,
                score,
                rank,
            }))
        }
        Some("N") => Err(StoreError::NotFound(format!(
            "player {} in quiz {quiz_id}",
            answer.player_id
        ))),
        _ => Err(bad_reply("apply_answer", v)),
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

/// Appends `choices` as `0,2` (the record's and `apply_batch`'s format).
pub(super) fn write_choices(out: &mut String, choices: &[u32]) {
    for (i, c) in choices.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{c}");
    }
}

/// The stored answer record, compact (it is written once per answer on the
/// hot path, and its bytes cost Redis CPU, replication and memory):
/// `c<correct 0|1><late 0|1>;<points>;<response_ms>;<answered_at_ms>;<choices,…>`,
/// e.g. `c10;870;2100;1764201234567;0,2`. Player id and question id are the
/// hash field, the nickname is the player's: neither is repeated here.
pub(super) fn encode_record(a: &AnswerRecord) -> String {
    // Written straight into one buffer (it runs once per answer).
    let mut s = String::with_capacity(40 + 3 * a.choices.len());
    let _ = write!(
        s,
        "c{}{};{};{};{};",
        u8::from(a.correct),
        u8::from(a.late),
        a.points,
        a.response_ms,
        a.answered_at_ms
    );
    write_choices(&mut s, &a.choices);
    s
}

/// Reads a record written by [`encode_record`], or the JSON `AnswerRecord`
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
}
