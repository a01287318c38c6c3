//! The last score the batcher saw for each player of a sharded quiz, to
//! guess an answer's new score before its shard has applied it (the score
//! it had plus the answer's points). The guesses let the other shards count
//! the players above an answer in the SAME round trip that applies their
//! own batches (see `batcher.rs`). A guess is only a hint: the counts are
//! keyed by score, and an answer whose real score was not guessed (a first
//! answer, a score moved by another node, a duplicate) is counted in a
//! second round trip. So a stale or missing entry costs time, never
//! correctness.

use std::collections::HashMap;
use std::sync::Mutex;

/// Bound on the players remembered (all quizzes): past it the cache starts
/// over (~100 bytes an entry: ~20 MB at most).
const PLAYERS_MAX: usize = 200_000;

#[derive(Default)]
pub(super) struct ScoreCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// quiz id → player id → last score seen.
    quizzes: HashMap<String, HashMap<String, u64>>,
    players: usize,
}

impl ScoreCache {
    /// The guessed score after each answer `(player, points)` of one quiz:
    /// the last score seen plus the points; `None` for a player not seen.
    pub(super) fn guess<'a>(
        &self,
        quiz_id: &str,
        answers: impl Iterator<Item = (&'a str, u32)>,
    ) -> Vec<Option<u64>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(players) = inner.quizzes.get(quiz_id) else {
            return answers.map(|_| None).collect();
        };
        answers
            .map(|(p, points)| players.get(p).map(|s| s + u64::from(points)))
            .collect()
    }

    /// Remembers the scores replied for one quiz's answers.
    pub(super) fn record<'a>(&self, quiz_id: &str, scores: impl Iterator<Item = (&'a str, u64)>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.players >= PLAYERS_MAX {
            inner.quizzes.clear();
            inner.players = 0;
        }
        let Inner { quizzes, players } = &mut *inner;
        let map = match quizzes.get_mut(quiz_id) {
            Some(m) => m,
            None => quizzes.entry(quiz_id.to_string()).or_default(),
        };
        for (p, s) in scores {
            match map.get_mut(p) {
                Some(v) => *v = s,
                None => {
                    map.insert(p.to_string(), s);
                    *players += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_last_score_plus_points() {
        let c = ScoreCache::default();
        assert_eq!(c.guess("q", [("a", 5)].into_iter()), vec![None]);
        c.record("q", [("a", 100), ("b", 0)].into_iter());
        c.record("q", [("a", 300)].into_iter());
        assert_eq!(
            c.guess("q", [("a", 5), ("b", 0), ("c", 1)].into_iter()),
            vec![Some(305), Some(0), None]
        );
        // Quizzes are apart.
        assert_eq!(c.guess("other", [("a", 5)].into_iter()), vec![None]);
    }

    #[test]
    fn starts_over_past_its_bound() {
        let c = ScoreCache::default();
        let ids: Vec<String> = (0..PLAYERS_MAX).map(|i| format!("p{i}")).collect();
        c.record("q", ids.iter().map(|p| (p.as_str(), 1)));
        c.record("q2", [("x", 7)].into_iter());
        assert_eq!(c.guess("q", [("p0", 0)].into_iter()), vec![None]);
        assert_eq!(c.guess("q2", [("x", 0)].into_iter()), vec![Some(7)]);
    }
}
