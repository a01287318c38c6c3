//! Events and settings for the tests of the event sinks (`kafka_sink.rs`,
//! `event_sink_conformance.rs`).

use std::time::Duration;

use quiz_core::events::kafka::KafkaOptions;
use quiz_core::events::{Event, EventKind};
use quiz_core::model::{AnswerRecord, Millis, Mode, Question};

/// The creation of `quiz` at `at`: one question, and text that JSON must
/// escape (quotes, a line break, non-ASCII).
pub fn quiz_created(quiz: &str, at: Millis) -> Event {
    Event::new(
        quiz,
        at,
        EventKind::QuizCreated {
            title: "Capitals — «ünïcode» \"quoted\"".into(),
            mode: Mode::Live,
            questions: vec![Question {
                id: 0,
                index: 0,
                text: "Capital of France?\nOne line more.".into(),
                options: vec!["Paris".into(), "Lyon".into()],
                correct: vec![0],
                time_limit_ms: 20_000,
                points: 1000,
            }],
        },
    )
}

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

/// A Kafka sink's settings for brokers that never answer (nothing listens
/// on port 1), with short timeouts so that its failures come quickly: a
/// delivery fails after 2 attempts of 800 ms, and one failure makes it not
/// ready.
pub fn unreachable_kafka() -> KafkaOptions {
    KafkaOptions {
        brokers: "127.0.0.1:1".into(),
        topic: "nowhere".into(),
        message_timeout_ms: 800,
        delivery_attempts: 2,
        retry_backoff: Duration::from_millis(50),
        unhealthy_after_failures: 1,
        ..KafkaOptions::default()
    }
}
