//! The correctness checker: the platform's answers against the tool's record.
//!
//! Each simulated player keeps a [`PlayerRecord`] of what it sent and what it
//! was told. After the run:
//! - [`check_player`] (in the worker): every acknowledged answer is consistent
//!   (accepted answers scored as the tool intended: correct when it chose the
//!   correct option, zero points when wrong or rejected), the running score in
//!   each `answer_result` equals the sum of points acknowledged so far, and the
//!   final score the platform reports (`GET /v1/quizzes/{id}/players/{pid}`)
//!   equals the sum of the points acknowledged to that player. Optionally the
//!   points are cross-checked against the scoring rule with the tool's own
//!   send/receive times as bounds for the server-measured response time.
//! - [`check_leaderboard`] (in the coordinator): a quiz's leaderboard has the
//!   tool's number of players, its entries carry exactly the scores the tool
//!   expects for those players, in non-increasing order, and its top scores are
//!   the tool's top scores.
//!
//! Any [`Mismatch`] fails the run.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::scenario::CrossCheck;

/// What the tool was told about one answer it sent.
///
/// This and [`AnswerRec`] are kept for every answer of every player for the
/// whole run, so their fields are as narrow as the contract allows (a
/// question's points and time limit fit in 32 bits; a value past that
/// saturates, and the checks then flag it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ResultRec {
    pub accepted: bool,
    /// Why it was refused (`late`, `duplicate`, ...), read with
    /// [`ResultRec::reason`]. Behind one thin pointer: most answers are
    /// accepted, and a `Box<str>`'s two words made every answer's record 80
    /// bytes rather than 72.
    #[allow(clippy::box_collection)]
    pub reason: Option<Box<String>>,
    pub correct: bool,
    pub points: u32,
    pub score: u64,
    /// Wall clock, µs, when the `answer_result` arrived.
    pub at_us: u64,
}

impl ResultRec {
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref().map(String::as_str)
    }
}

/// One answer the tool sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AnswerRec {
    pub question_id: u32,
    pub intended_correct: bool,
    /// Wall clock, µs, when it was written to the socket.
    pub sent_us: u64,
    /// How long after its scheduled time it was sent (µs, saturated): the
    /// answer's latency starts at the schedule (see `metrics.rs`). An
    /// offset in the record, in the 4 bytes the thin `reason` pointer
    /// freed, rather than a list of due times beside the records (an
    /// allocation per player).
    #[serde(default)]
    pub sent_late_us: u32,
    /// Server `opens_at_ms` of the question.
    pub opens_at_ms: u64,
    pub time_limit_ms: u32,
    pub max_points: u32,
    pub result: Option<ResultRec>,
    /// The ack was lost with a connection; its points were inferred from the
    /// score in the next `welcome`.
    pub inferred: bool,
    /// The option sent (the tool sends one), for a re-send. A byte: a
    /// scenario has 2–6 options, and with it the record is 72 bytes, not 80
    /// (five of them fit a 384-byte allocation instead of a 448-byte one).
    #[serde(default)]
    pub choice: u8,
    /// Sent again, identical, after a reconnect because its `answer_result`
    /// never came (the client rule of CONTRACT.md): a `duplicate` result is
    /// then the acknowledgement of this answer (see [`AnswerRec::acked`]).
    #[serde(default)]
    pub resent: bool,
}

impl AnswerRec {
    /// When it was scheduled to be sent (wall clock, µs).
    pub fn due_us(&self) -> u64 {
        self.sent_us.saturating_sub(u64::from(self.sent_late_us))
    }

    /// Sent, no result yet, and not resolved from a `welcome` either.
    pub fn is_open(&self) -> bool {
        self.result.is_none() && !self.inferred
    }

    /// The result if it acknowledges this answer as scored: accepted, or
    /// `duplicate` to the tool's re-send (the first attempt counted; the
    /// result carries that attempt's `correct` and `points`). Its points are
    /// in the player's acknowledged sum and it is checked like an accepted
    /// answer. `late` and other rejections are not acknowledgements.
    pub fn acked(&self) -> Option<&ResultRec> {
        self.result
            .as_ref()
            .filter(|r| r.accepted || (self.resent && r.reason() == Some("duplicate")))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlayerRecord {
    pub index: u64,
    pub quiz: u32,
    pub player_id: String,
    pub answers: Vec<AnswerRec>,
    /// Points attributed to answers whose ack was lost (from `welcome.score`).
    pub inferred_points: u64,
    /// Problems seen while running (e.g. an `answer_result.score` that is not
    /// the running sum of acknowledged points): see [`PlayerRecord::live_issues`].
    /// Boxed, like `failure` and `http_error`: a healthy player has none of
    /// them, and their full-size forms made every record 160 bytes, not 128.
    #[allow(clippy::box_collection)]
    pub live_issues: Option<Box<Vec<String>>>,
    pub ended: bool,
    /// Left on purpose before the end (`[[stages]]` ramp down): not expected
    /// to see later frames; its acknowledged answers count.
    pub left: bool,
    /// Why the player never got going (join failed, ...).
    pub failure: Option<Box<str>>,
    /// From `GET /v1/quizzes/{id}/players/{pid}` after the quiz.
    pub server_score: Option<u64>,
    pub http_error: Option<Box<str>>,
}

impl PlayerRecord {
    pub fn live_issues(&self) -> &[String] {
        self.live_issues.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Why the player never got going, or stopped (see `failure`).
    pub fn fail(&mut self, why: impl Into<Box<str>>) {
        self.failure = Some(why.into());
    }

    pub fn push_live_issue(&mut self, issue: String) {
        self.live_issues
            .get_or_insert_with(Default::default)
            .push(issue);
    }

    /// The sum of points acknowledged to this player (plus inferred ones).
    pub fn acknowledged_points(&self) -> u64 {
        self.answers
            .iter()
            .filter_map(AnswerRec::acked)
            .map(|r| u64::from(r.points))
            .sum::<u64>()
            + self.inferred_points
    }

    pub fn joined(&self) -> bool {
        !self.player_id.is_empty()
    }

    /// Answers sent whose result never arrived and were not resolved yet.
    pub fn has_open_answers(&self) -> bool {
        self.answers.iter().any(AnswerRec::is_open)
    }

    /// Resolve answers whose ack was lost and never reconciled by a later
    /// `welcome` (the connection died after the platform applied them, and
    /// the quiz ended first): the platform's final score may exceed the
    /// acknowledged sum by at most those answers' points. Within that bound
    /// the difference is attributed to them, as a `welcome` would have done;
    /// beyond it, or with nothing open, `final_score` stays a mismatch.
    /// Returns whether anything was inferred.
    pub fn reconcile_final_score(&mut self) -> bool {
        let Some(server) = self.server_score else {
            return false;
        };
        let acked = self.acknowledged_points();
        let open: Vec<usize> = (0..self.answers.len())
            .filter(|&i| self.answers[i].is_open())
            .collect();
        let room: u64 = open
            .iter()
            .map(|&i| u64::from(self.answers[i].max_points))
            .sum();
        if server <= acked || open.is_empty() || server - acked > room {
            return false;
        }
        self.inferred_points += server - acked;
        for i in open {
            self.answers[i].inferred = true;
        }
        true
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Mismatch {
    pub kind: String,
    pub quiz_id: String,
    #[serde(default)]
    pub player_id: Option<String>,
    pub detail: String,
}

fn mm(kind: &str, quiz_id: &str, player: Option<&str>, detail: String) -> Mismatch {
    Mismatch {
        kind: kind.to_string(),
        quiz_id: quiz_id.to_string(),
        player_id: player.map(str::to_string),
        detail,
    }
}

/// The contract's scoring rule: `round(P × (1 − (t / T) / 2))`, t = 0 when
/// t ≤ 500 ms, zero when late.
pub fn expected_points(p: u64, t_limit_ms: u64, t_ms: u64) -> u64 {
    if t_ms >= t_limit_ms {
        return 0;
    }
    let t = if t_ms <= 500 { 0.0 } else { t_ms as f64 };
    (p as f64 * (1.0 - (t / t_limit_ms as f64) / 2.0)).round() as u64
}

#[derive(Debug, Default)]
pub struct PlayerCheck {
    pub mismatches: Vec<Mismatch>,
    pub warnings: Vec<Mismatch>,
    pub unacknowledged: u64,
}

/// Check one player's record. `live` enables the points cross-check (in
/// self-paced mode the server's clock for t starts at a time the tool cannot
/// see).
pub fn check_player(
    quiz_id: &str,
    rec: &PlayerRecord,
    cross: CrossCheck,
    live: bool,
) -> PlayerCheck {
    let mut out = PlayerCheck::default();
    if !rec.joined() {
        return out;
    }
    let pid = Some(rec.player_id.as_str());
    for issue in rec.live_issues() {
        out.mismatches
            .push(mm("score_chain", quiz_id, pid, issue.clone()));
    }
    let mut seen = std::collections::HashSet::new();
    for a in &rec.answers {
        if !seen.insert(a.question_id) {
            out.mismatches.push(mm(
                "double_send",
                quiz_id,
                pid,
                format!("the tool sent question {} twice", a.question_id),
            ));
        }
        let Some(r) = &a.result else {
            if !a.inferred {
                out.unacknowledged += 1;
            }
            continue;
        };
        let q = a.question_id;
        if a.acked().is_some() {
            if r.correct != a.intended_correct {
                out.mismatches.push(mm(
                    "correctness",
                    quiz_id,
                    pid,
                    format!(
                        "question {q}: sent a {} answer, platform said correct={}",
                        if a.intended_correct {
                            "correct"
                        } else {
                            "wrong"
                        },
                        r.correct
                    ),
                ));
            }
            if !r.correct && r.points > 0 {
                out.mismatches.push(mm(
                    "points",
                    quiz_id,
                    pid,
                    format!("question {q}: wrong answer scored {} points", r.points),
                ));
            }
            if r.points > a.max_points {
                out.mismatches.push(mm(
                    "points",
                    quiz_id,
                    pid,
                    format!(
                        "question {q}: {} points above the question's {}",
                        r.points, a.max_points
                    ),
                ));
            }
            if live && r.correct && cross != CrossCheck::Off && a.opens_at_ms > 0 {
                // The server received the answer after we sent it and before
                // we got the result: t lies in [t_lo, t_hi], and the rule is
                // monotone, so the points lie in [f(t_hi), f(t_lo)].
                let t_lo = (a.sent_us / 1000).saturating_sub(a.opens_at_ms + 5);
                let t_hi = (r.at_us / 1000 + 5).saturating_sub(a.opens_at_ms);
                let (max, limit) = (u64::from(a.max_points), u64::from(a.time_limit_ms));
                let hi = expected_points(max, limit, t_lo) + 1;
                let lo = expected_points(max, limit, t_hi).saturating_sub(1);
                if u64::from(r.points) < lo || u64::from(r.points) > hi {
                    let m = mm(
                        "points_rule",
                        quiz_id,
                        pid,
                        format!(
                            "question {q}: {} points, rule gives {lo}..={hi} for t in {t_lo}..={t_hi} ms",
                            r.points
                        ),
                    );
                    if cross == CrossCheck::Fail {
                        out.mismatches.push(m);
                    } else {
                        out.warnings.push(m);
                    }
                }
            }
        } else {
            if r.points > 0 {
                out.mismatches.push(mm(
                    "points",
                    quiz_id,
                    pid,
                    format!(
                        "question {q}: rejected ({}) answer carried {} points",
                        r.reason().unwrap_or("?"),
                        r.points
                    ),
                ));
            }
            if r.reason() == Some("duplicate") && !a.inferred {
                out.mismatches.push(mm(
                    "duplicate",
                    quiz_id,
                    pid,
                    format!("question {q}: first answer the tool sent was called a duplicate"),
                ));
            }
        }
    }
    let expected = rec.acknowledged_points();
    match (rec.server_score, &rec.http_error) {
        (Some(s), _) if s != expected => out.mismatches.push(mm(
            "final_score",
            quiz_id,
            pid,
            format!("platform reports score {s}, acknowledged points sum to {expected}"),
        )),
        (None, Some(e)) => {
            out.warnings
                .push(mm("final_score_unavailable", quiz_id, pid, e.to_string()))
        }
        _ => {}
    }
    out
}

/// A leaderboard as the platform returns it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaderboardView {
    #[serde(default)]
    pub version: u64,
    pub total_players: u64,
    pub top: Vec<LeaderEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderEntry {
    pub rank: u64,
    pub player_id: String,
    #[serde(default)]
    pub nickname: String,
    pub score: u64,
}

/// Compare a quiz's leaderboard (fetched with `limit`) with the tool's record
/// `expected` (player_id -> acknowledged points, every joined player).
pub fn check_leaderboard(
    quiz_id: &str,
    expected: &HashMap<String, u64>,
    limit: usize,
    lb: &LeaderboardView,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let n = expected.len() as u64;
    if lb.total_players != n {
        out.push(mm(
            "leaderboard_total",
            quiz_id,
            None,
            format!(
                "total_players {} but the tool joined {n} players",
                lb.total_players
            ),
        ));
    }
    let want_len = limit.min(expected.len());
    if lb.top.len() != want_len {
        out.push(mm(
            "leaderboard_len",
            quiz_id,
            None,
            format!("top has {} entries, expected {want_len}", lb.top.len()),
        ));
    }
    let mut prev: Option<&LeaderEntry> = None;
    for (i, e) in lb.top.iter().enumerate() {
        match expected.get(&e.player_id) {
            None => out.push(mm(
                "leaderboard_unknown_player",
                quiz_id,
                Some(&e.player_id),
                format!("rank {} is a player the tool never joined", e.rank),
            )),
            Some(&s) if s != e.score => out.push(mm(
                "leaderboard_score",
                quiz_id,
                Some(&e.player_id),
                format!(
                    "rank {}: leaderboard says {}, acknowledged points sum to {s}",
                    e.rank, e.score
                ),
            )),
            _ => {}
        }
        if let Some(p) = prev {
            if p.score < e.score {
                out.push(mm(
                    "leaderboard_order",
                    quiz_id,
                    Some(&e.player_id),
                    format!(
                        "position {i}: score {} above {} at the previous position",
                        e.score, p.score
                    ),
                ));
            }
            if e.rank < p.rank || (e.score < p.score && e.rank == p.rank) {
                out.push(mm(
                    "leaderboard_rank",
                    quiz_id,
                    Some(&e.player_id),
                    format!("rank {} after rank {}", e.rank, p.rank),
                ));
            }
        }
        // 1-based rank by descending score: one more than the number of
        // players with a strictly higher score (ties share a rank or are
        // numbered in order; both are accepted).
        let higher = expected.values().filter(|&&s| s > e.score).count() as u64;
        if e.rank < higher + 1 || e.rank > i as u64 + 1 {
            out.push(mm(
                "leaderboard_rank",
                quiz_id,
                Some(&e.player_id),
                format!(
                    "rank {} at position {}, {higher} players score higher",
                    e.rank,
                    i + 1
                ),
            ));
        }
        prev = Some(e);
    }
    let mut want: Vec<u64> = expected.values().copied().collect();
    want.sort_unstable_by(|a, b| b.cmp(a));
    want.truncate(lb.top.len());
    let got: Vec<u64> = lb.top.iter().map(|e| e.score).collect();
    if got != want {
        out.push(mm(
            "leaderboard_top",
            quiz_id,
            None,
            format!("top scores {got:?}, the tool's top scores {want:?}"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(q: u32, correct: bool, points: u32, score: u64) -> AnswerRec {
        AnswerRec {
            question_id: q,
            intended_correct: correct,
            sent_us: 1_000_000_000 + 300_000,
            opens_at_ms: 1_000_000,
            time_limit_ms: 10_000,
            max_points: 1000,
            result: Some(ResultRec {
                accepted: true,
                reason: None,
                correct,
                points,
                score,
                at_us: 1_000_000_000 + 400_000,
            }),
            ..Default::default()
        }
    }

    fn player() -> PlayerRecord {
        PlayerRecord {
            player_id: "p1".into(),
            answers: vec![ans(0, true, 1000, 1000), ans(1, false, 0, 1000)],
            server_score: Some(1000),
            ended: true,
            ..Default::default()
        }
    }

    #[test]
    fn expected_points_rule() {
        assert_eq!(expected_points(1000, 10_000, 0), 1000);
        assert_eq!(expected_points(1000, 10_000, 500), 1000);
        assert_eq!(expected_points(1000, 10_000, 5000), 750);
        assert_eq!(expected_points(2000, 10_000, 9999), 1000);
        assert_eq!(expected_points(1000, 10_000, 10_000), 0);
        assert_eq!(expected_points(0, 10_000, 100), 0);
    }

    #[test]
    fn consistent_player_passes() {
        let c = check_player("q", &player(), CrossCheck::Fail, true);
        assert!(c.mismatches.is_empty(), "{:?}", c.mismatches);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn wrong_final_score_fails() {
        let mut p = player();
        p.server_score = Some(1500);
        let c = check_player("q", &p, CrossCheck::Off, true);
        assert_eq!(c.mismatches.len(), 1);
        assert_eq!(c.mismatches[0].kind, "final_score");
        assert!(c.mismatches[0].detail.contains("1500"));
    }

    #[test]
    fn correctness_and_points_mismatches_fail() {
        let mut p = player();
        p.answers[1].result.as_mut().unwrap().correct = true;
        p.answers[1].result.as_mut().unwrap().points = 500;
        p.server_score = Some(1500);
        let c = check_player("q", &p, CrossCheck::Off, true);
        let kinds: Vec<_> = c.mismatches.iter().map(|m| m.kind.as_str()).collect();
        assert!(kinds.contains(&"correctness"), "{kinds:?}");
        // 1500 == acknowledged sum, so no final_score mismatch
        assert!(!kinds.contains(&"final_score"), "{kinds:?}");
    }

    #[test]
    fn rejected_with_points_and_false_duplicate_fail() {
        let mut p = player();
        let r = p.answers[1].result.as_mut().unwrap();
        r.accepted = false;
        r.reason = Some(Box::new("duplicate".into()));
        r.points = 10;
        let c = check_player("q", &p, CrossCheck::Off, true);
        let kinds: Vec<_> = c.mismatches.iter().map(|m| m.kind.as_str()).collect();
        assert!(
            kinds.contains(&"points") && kinds.contains(&"duplicate"),
            "{kinds:?}"
        );
    }

    #[test]
    fn points_rule_cross_check() {
        let mut p = player();
        // sent 300 ms after open, result at 400 ms: the rule gives full points.
        p.answers[0].result.as_mut().unwrap().points = 400;
        p.answers[0].result.as_mut().unwrap().score = 400;
        p.server_score = Some(400);
        let warn = check_player("q", &p, CrossCheck::Warn, true);
        assert!(warn.mismatches.is_empty());
        assert_eq!(warn.warnings[0].kind, "points_rule");
        let fail = check_player("q", &p, CrossCheck::Fail, true);
        assert_eq!(fail.mismatches[0].kind, "points_rule");
        // 1000 within 400 ms (t <= 500 counts as full) is fine.
        assert!(check_player("q", &player(), CrossCheck::Fail, true)
            .mismatches
            .is_empty());
    }

    #[test]
    fn live_issue_and_unacked_are_reported() {
        let mut p = player();
        p.push_live_issue("answer_result score 7 after 1000 acknowledged".into());
        p.answers.push(AnswerRec {
            question_id: 2,
            result: None,
            ..Default::default()
        });
        let c = check_player("q", &p, CrossCheck::Off, true);
        assert_eq!(c.mismatches[0].kind, "score_chain");
        assert_eq!(c.unacknowledged, 1);
    }

    #[test]
    fn final_score_resolves_lost_acks_within_their_points_only() {
        let open = |max_points| AnswerRec {
            question_id: 1,
            max_points,
            ..Default::default()
        };
        let mut p = PlayerRecord {
            player_id: "p".into(),
            answers: vec![open(1000)],
            server_score: Some(700),
            ..Default::default()
        };
        assert!(p.reconcile_final_score());
        assert_eq!(p.acknowledged_points(), 700);
        assert!(!p.has_open_answers());
        // More than the open answers could have scored: still a mismatch.
        let mut q = PlayerRecord {
            player_id: "q".into(),
            answers: vec![open(1000)],
            server_score: Some(1001),
            ..Default::default()
        };
        assert!(!q.reconcile_final_score());
        let c = check_player("quiz", &q, CrossCheck::Warn, true);
        assert!(c.mismatches.iter().any(|m| m.kind == "final_score"));
        // Nothing open: a higher server score is a mismatch.
        let mut r = PlayerRecord {
            player_id: "r".into(),
            server_score: Some(5),
            ..Default::default()
        };
        assert!(!r.reconcile_final_score());
    }

    #[test]
    fn duplicate_to_a_resend_is_the_acknowledgement() {
        // Question 2's ack was lost; the tool re-sent it and got a duplicate
        // carrying the original's result.
        let mut p = player();
        let mut a = ans(2, true, 1000, 2000);
        a.resent = true;
        let r = a.result.as_mut().unwrap();
        r.accepted = false;
        r.reason = Some(Box::new("duplicate".into()));
        r.at_us += 3_000_000; // after the reconnect
        p.answers.push(a);
        p.server_score = Some(2000);
        assert_eq!(p.acknowledged_points(), 2000);
        let c = check_player("q", &p, CrossCheck::Fail, true);
        assert!(c.mismatches.is_empty(), "{:?}", c.mismatches);
        // Checked like an accepted answer: a wrong correctness fails.
        p.answers[2].result.as_mut().unwrap().correct = false;
        let c = check_player("q", &p, CrossCheck::Off, true);
        let kinds: Vec<_> = c.mismatches.iter().map(|m| m.kind.as_str()).collect();
        assert!(kinds.contains(&"correctness"), "{kinds:?}");
        // Not re-sent: the same duplicate is a false duplicate, no points.
        p.answers[2].resent = false;
        p.answers[2].result.as_mut().unwrap().correct = true;
        assert_eq!(p.acknowledged_points(), 1000);
        let c = check_player("q", &p, CrossCheck::Off, true);
        let kinds: Vec<_> = c.mismatches.iter().map(|m| m.kind.as_str()).collect();
        assert!(
            kinds.contains(&"duplicate") && kinds.contains(&"final_score"),
            "{kinds:?}"
        );
    }

    #[test]
    fn inferred_points_count_toward_expected() {
        let mut p = player();
        p.answers.push(AnswerRec {
            question_id: 2,
            result: None,
            inferred: true,
            ..Default::default()
        });
        p.inferred_points = 800;
        p.server_score = Some(1800);
        let c = check_player("q", &p, CrossCheck::Off, true);
        assert!(c.mismatches.is_empty(), "{:?}", c.mismatches);
        assert_eq!(c.unacknowledged, 0);
    }

    fn expected() -> HashMap<String, u64> {
        [("a", 3000), ("b", 2000), ("c", 2000), ("d", 0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn entry(rank: u64, id: &str, score: u64) -> LeaderEntry {
        LeaderEntry {
            rank,
            player_id: id.into(),
            nickname: String::new(),
            score,
        }
    }

    #[test]
    fn leaderboard_matching_passes_with_ties_either_way() {
        for top in [
            vec![
                entry(1, "a", 3000),
                entry(2, "b", 2000),
                entry(2, "c", 2000),
            ],
            vec![
                entry(1, "a", 3000),
                entry(2, "c", 2000),
                entry(3, "b", 2000),
            ],
        ] {
            let lb = LeaderboardView {
                version: 1,
                total_players: 4,
                top,
            };
            let m = check_leaderboard("q", &expected(), 3, &lb);
            assert!(m.is_empty(), "{m:?}");
        }
    }

    #[test]
    fn leaderboard_mismatches_fail() {
        let lb = LeaderboardView {
            version: 1,
            total_players: 5,
            top: vec![entry(1, "b", 2000), entry(2, "a", 3000), entry(3, "x", 10)],
        };
        let m = check_leaderboard("q", &expected(), 3, &lb);
        let kinds: Vec<_> = m.iter().map(|m| m.kind.as_str()).collect();
        for k in [
            "leaderboard_total",
            "leaderboard_order",
            "leaderboard_unknown_player",
            "leaderboard_top",
        ] {
            assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
        }
        let lb = LeaderboardView {
            version: 1,
            total_players: 4,
            top: vec![entry(1, "a", 2999)],
        };
        let m = check_leaderboard("q", &expected(), 1, &lb);
        assert!(m.iter().any(|m| m.kind == "leaderboard_score"), "{m:?}");
        let lb = LeaderboardView {
            version: 1,
            total_players: 4,
            top: vec![entry(1, "a", 3000)],
        };
        let m = check_leaderboard("q", &expected(), 3, &lb);
        assert!(m.iter().any(|m| m.kind == "leaderboard_len"), "{m:?}");
    }
}
