//! The optional durable-record check: once the persister has drained, every
//! player's `scores.score` and the sum of their `answers.points` in MongoDB
//! equal the points acknowledged to that player, and every accepted answer
//! has its document.
//!
//! The MongoDB URI passes the same loopback guard as the target.

use std::collections::HashMap;
use std::time::Duration;

use bson::{doc, Bson, Document};
use futures::TryStreamExt;

use crate::target::{ensure_loopback, TargetError};
use crate::verify::Mismatch;

/// Refuse a MongoDB URI naming any host outside loopback.
pub fn ensure_loopback_uri(uri: &str) -> Result<(), TargetError> {
    let rest = uri
        .strip_prefix("mongodb://")
        .ok_or_else(|| TargetError::Scheme(uri.to_string()))?;
    let hosts = rest.split(['/', '?']).next().unwrap_or("");
    let hosts = hosts.rsplit_once('@').map(|(_, h)| h).unwrap_or(hosts);
    if hosts.is_empty() {
        return Err(TargetError::Malformed(uri.to_string()));
    }
    for h in hosts.split(',') {
        let host = if let Some(v6) = h.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            h.split(':').next().unwrap_or("")
        };
        if host.eq_ignore_ascii_case("localhost") {
            continue;
        }
        let ip: std::net::IpAddr = host
            .parse()
            .map_err(|_| TargetError::HostName(host.to_string()))?;
        ensure_loopback(ip).map_err(|_| TargetError::NotLoopback(uri.to_string()))?;
    }
    Ok(())
}

/// What the tool expects of one player in MongoDB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expect {
    pub score: u64,
    /// Accepted answers acknowledged to the player (a lower bound of the
    /// answer documents: rejected late answers may be stored too).
    pub accepted: u64,
}

/// What MongoDB holds for one player.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub score: Option<u64>,
    pub answers: u64,
    pub answer_points: u64,
}

/// Compare one quiz's durable record with the tool's.
pub fn check_quiz(
    quiz_id: &str,
    expected: &HashMap<String, Expect>,
    stored: &HashMap<String, Stored>,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut push = |kind: &str, pid: &str, detail: String| {
        out.push(Mismatch {
            kind: kind.to_string(),
            quiz_id: quiz_id.to_string(),
            player_id: Some(pid.to_string()),
            detail,
        })
    };
    let mut pids: Vec<&String> = expected.keys().collect();
    pids.sort();
    for pid in pids {
        let e = expected[pid];
        let s = stored.get(pid).copied().unwrap_or_default();
        match s.score {
            None => push("mongo_score_missing", pid, "no scores document".into()),
            Some(v) if v != e.score => push(
                "mongo_score",
                pid,
                format!("scores.score {v}, acknowledged points sum to {}", e.score),
            ),
            _ => {}
        }
        if s.answer_points != e.score {
            push(
                "mongo_answers_points",
                pid,
                format!(
                    "answers.points sum to {}, acknowledged points sum to {}",
                    s.answer_points, e.score
                ),
            );
        }
        if s.answers < e.accepted {
            push(
                "mongo_answer_missing",
                pid,
                format!(
                    "{} answer documents, {} accepted answers acknowledged",
                    s.answers, e.accepted
                ),
            );
        }
    }
    out
}

fn as_u64(b: Option<&Bson>) -> Option<u64> {
    match b? {
        Bson::Int32(v) => u64::try_from(*v).ok(),
        Bson::Int64(v) => u64::try_from(*v).ok(),
        Bson::Double(v) if *v >= 0.0 => Some(*v as u64),
        _ => None,
    }
}

async fn read_quiz(
    db: &mongodb::Database,
    quiz_id: &str,
) -> Result<HashMap<String, Stored>, mongodb::error::Error> {
    let mut out: HashMap<String, Stored> = HashMap::new();
    // By the `quiz_id` field, which every score and answer document carries
    // and the persister indexes on MongoDB. (A `$regex` on `_id` was used
    // before: FerretDB cannot push a regex down to PostgreSQL, so it decoded
    // every document of the collection in its own process for each quiz —
    // 360 000 answers × 20 quizzes per pass in the soak, many minutes.)
    let filter = doc! { "quiz_id": quiz_id };
    let mut scores = db
        .collection::<Document>("scores")
        .find(filter.clone())
        .await?;
    while let Some(d) = scores.try_next().await? {
        let Some(pid) = player_of(&d) else { continue };
        out.entry(pid).or_default().score = as_u64(d.get("score"));
    }
    let mut answers = db.collection::<Document>("answers").find(filter).await?;
    while let Some(d) = answers.try_next().await? {
        let Some(pid) = player_of(&d) else { continue };
        let e = out.entry(pid).or_default();
        e.answers += 1;
        e.answer_points += as_u64(d.get("points")).unwrap_or(0);
    }
    Ok(out)
}

/// `player_id` field, or the second part of `_id` ("quiz:player[:question]").
fn player_of(d: &Document) -> Option<String> {
    if let Ok(p) = d.get_str("player_id") {
        return Some(p.to_string());
    }
    d.get_str("_id").ok()?.split(':').nth(1).map(str::to_string)
}

/// Poll MongoDB until every quiz's record matches or `drain` has passed;
/// return the mismatches of the last poll.
///
/// A quiz that matched is not read again (its record is complete; redelivery
/// changes nothing), and the pause between polls grows from 1 s to 10 s:
/// each read scans a quiz's documents, and on the local FerretDB (SQLite)
/// polling everything every second slowed the very persister it waits for
/// to a fraction of its rate.
pub async fn check(
    uri: &str,
    database: &str,
    drain: Duration,
    quizzes: &[(String, HashMap<String, Expect>)],
) -> anyhow::Result<Vec<Mismatch>> {
    ensure_loopback_uri(uri)?;
    let client = mongodb::Client::with_uri_str(uri).await?;
    let db = client.database(database);
    let until = tokio::time::Instant::now() + drain;
    let mut pending: Vec<usize> = (0..quizzes.len()).collect();
    let mut last: Vec<Vec<Mismatch>> = vec![Vec::new(); quizzes.len()];
    let mut pause = Duration::from_secs(1);
    loop {
        let mut still = Vec::new();
        for i in pending {
            let (qid, expected) = &quizzes[i];
            let stored = read_quiz(&db, qid).await?;
            last[i] = check_quiz(qid, expected, &stored);
            if !last[i].is_empty() {
                still.push(i);
            }
        }
        pending = still;
        let now = tokio::time::Instant::now();
        if pending.is_empty() || now >= until {
            return Ok(last.into_iter().flatten().collect());
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_guard() {
        for ok in [
            "mongodb://127.0.0.1:27017/",
            "mongodb://localhost",
            "mongodb://u:p@127.0.0.1:27017,127.0.0.2:27018/quiz?replicaSet=x",
            "mongodb://[::1]:27017",
        ] {
            assert!(ensure_loopback_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "mongodb://10.1.1.1:27017",
            "mongodb://127.0.0.1,192.168.0.2",
            "mongodb+srv://cluster.example.com",
            "mongodb://db.example.com:27017",
        ] {
            assert!(ensure_loopback_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durable_record_comparison() {
        let exp: HashMap<String, Expect> = [
            (
                "a".to_string(),
                Expect {
                    score: 1500,
                    accepted: 2,
                },
            ),
            (
                "b".to_string(),
                Expect {
                    score: 0,
                    accepted: 1,
                },
            ),
            (
                "c".to_string(),
                Expect {
                    score: 800,
                    accepted: 1,
                },
            ),
        ]
        .into_iter()
        .collect();
        let mut st: HashMap<String, Stored> = [
            (
                "a".to_string(),
                Stored {
                    score: Some(1500),
                    answers: 2,
                    answer_points: 1500,
                },
            ),
            (
                "b".to_string(),
                Stored {
                    score: Some(0),
                    answers: 2,
                    answer_points: 0,
                },
            ),
            (
                "c".to_string(),
                Stored {
                    score: Some(800),
                    answers: 1,
                    answer_points: 800,
                },
            ),
        ]
        .into_iter()
        .collect();
        assert!(check_quiz("q", &exp, &st).is_empty());
        st.get_mut("a").unwrap().score = Some(1400);
        st.get_mut("c").unwrap().answers = 0;
        st.get_mut("c").unwrap().answer_points = 0;
        st.remove("b");
        let kinds: Vec<String> = check_quiz("q", &exp, &st)
            .into_iter()
            .map(|m| m.kind)
            .collect();
        for k in [
            "mongo_score",
            "mongo_score_missing",
            "mongo_answer_missing",
            "mongo_answers_points",
        ] {
            assert!(kinds.iter().any(|x| x == k), "{k} not in {kinds:?}");
        }
    }

    #[test]
    fn player_ids() {
        let d = doc! { "_id": "quiz-1:p7:3", "points": 500i64 };
        assert_eq!(player_of(&d).as_deref(), Some("p7"));
        assert_eq!(as_u64(d.get("points")), Some(500));
    }
}
