//! After the load: the platform's view against the tool's record. Every quiz's leaderboard
//! over HTTP ([`check_leaderboard`]), and, when asked, the durable record in MongoDB once the
//! persister has drained ([`crate::mongo::check`]).

use std::collections::HashMap;
use std::time::Duration;

use crate::mongo::Expect;
use crate::net::http_request;
use crate::target::Target;
use crate::verify::{check_leaderboard, LeaderboardView, Mismatch};
use crate::worker::WorkerResult;

/// Check the top 100 of each quiz's leaderboard against the scores the players recorded; a
/// leaderboard that cannot be read is a host error.
pub(super) async fn leaderboards(
    target: &Target,
    quiz_ids: &[String],
    results: &[WorkerResult],
    host_errors: &mut Vec<String>,
) -> Vec<Mismatch> {
    let mut expected: Vec<HashMap<String, u64>> = vec![HashMap::new(); quiz_ids.len()];
    for r in results {
        for p in &r.players {
            expected[p.quiz as usize].insert(p.player_id.clone(), p.score);
        }
    }
    let mut mismatches = Vec::new();
    for (i, qid) in quiz_ids.iter().enumerate() {
        let path = format!("/v1/quizzes/{qid}/leaderboard?limit=100");
        match http_request(
            target,
            None,
            "GET",
            &path,
            &[],
            None,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(r) if r.status == 200 => match serde_json::from_slice::<LeaderboardView>(&r.body) {
                Ok(lb) => mismatches.extend(check_leaderboard(qid, &expected[i], 100, &lb)),
                Err(e) => host_errors.push(format!("GET {path}: bad body: {e}")),
            },
            Ok(r) => host_errors.push(format!("GET {path}: HTTP {}", r.status)),
            Err(e) => host_errors.push(format!("GET {path}: {e}")),
        }
    }
    mismatches
}

/// Check the durable record in MongoDB (`uri`, database `db`) against every player's score
/// and accepted answers, waiting up to `drain` for the persister. Err: the check could not
/// run.
pub(super) async fn durable_record(
    uri: &str,
    db: &str,
    drain: Duration,
    quiz_ids: &[String],
    results: &[WorkerResult],
) -> Result<Vec<Mismatch>, String> {
    let mut per_quiz: Vec<(String, HashMap<String, Expect>)> = quiz_ids
        .iter()
        .map(|q| (q.clone(), HashMap::new()))
        .collect();
    for r in results {
        for p in &r.players {
            per_quiz[p.quiz as usize].1.insert(
                p.player_id.clone(),
                Expect {
                    score: p.score,
                    accepted: p.accepted,
                },
            );
        }
    }
    crate::mongo::check(uri, db, drain, &per_quiz)
        .await
        .map_err(|e| format!("MongoDB check could not run: {e}"))
}
