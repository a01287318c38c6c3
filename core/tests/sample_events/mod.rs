//! Events for the tests of the event sinks (`kafka_sink.rs`,
//! `event_sink_conformance.rs`).

use quiz_core::events::{Event, EventKind};
use quiz_core::model::AnswerRecord;

/// The `n`-th answer event of `quiz`: player `p<n>` answering question `n`,
/// so every `n` has its own `event_id`, and `at_ms` grows with `n`.
pub fn answer_event(quiz: &str, n: u32) -> Event {
    Event::new(
        quiz,
        1_700_000_000_000 + u64::from(n),
        EventKind::AnswerScored {
            answer: AnswerRecord {
                player_id: format!("p{n}"),
                nickname: format!("nick {n}"),
                question_id: n,
                choices: vec![0, 2],
                correct: true,
                late: false,
                points: 900,
                response_ms: 1500,
                answered_at_ms: 1_700_000_000_000 + u64::from(n),
            },
            score_after: 900 * u64::from(n + 1),
        },
    )
}
