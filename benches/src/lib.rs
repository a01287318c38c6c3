//! Inputs shared by the benchmarks in `benches/`: a realistic answer frame,
//! a leaderboard, a room's worth of outboxes. Run with
//! `cargo bench -p quiz-benches`; results are recorded in docs/core.md.

use std::sync::Arc;

use quiz_core::model::{Leaderboard, LeaderboardEntry, Question};
use quiz_core::outbox::Outbox;
use tokio_util::sync::CancellationToken;

/// An inbound answer frame as a client sends it.
pub const ANSWER_FRAME: &[u8] = br#"{"type":"answer","question_id":3,"choices":[2,0]}"#;

pub fn question() -> Question {
    Question {
        id: 3,
        index: 3,
        text: "Which are prime?".into(),
        options: vec!["2".into(), "4".into(), "7".into(), "9".into()],
        correct: vec![0, 2],
        time_limit_ms: 20_000,
        points: 1000,
    }
}

/// A leaderboard of `n` entries with realistic nicknames and ids.
pub fn leaderboard(n: usize) -> Leaderboard {
    Leaderboard {
        quiz_id: "k3x9q2ab".into(),
        version: 123_456,
        total_players: 100_000,
        top: (0..n)
            .map(|i| LeaderboardEntry {
                rank: i as u64 + 1,
                player_id: format!("p{i:011}"),
                nickname: format!("player number {i}"),
                score: 20_000 - 37 * i as u64,
            })
            .collect(),
    }
}

/// `n` idle connections' outboxes.
pub fn outboxes(n: usize) -> Vec<Arc<Outbox>> {
    let parent = CancellationToken::new();
    (0..n)
        .map(|_| Arc::new(Outbox::new(64, parent.child_token())))
        .collect()
}
