//! The service's own tests: late answers on paused time, a sink that is
//! down, and [`test_service`] (an embedded-mode service for other modules'
//! tests).

use std::sync::Arc;

use super::*;
use crate::model::now_ms;
use crate::protocol::AnswerReason;

/// Late answers with deterministic time: the window is computed from
/// the state and the server clock at receipt.
#[tokio::test(start_paused = true)]
async fn late_answer_is_recorded_with_zero_points() {
    let svc = test_service();
    let def = test_quiz(&svc, "late1", "live", 1).await;
    let (_, caller) = test_player(&svc, "late1", "ann").await;
    let r = svc.answer(&def, &caller, 0, &[0], None).await.unwrap();
    assert_eq!(r.reason, Some(AnswerReason::NotOpen));
    // Open the question with a window already in the past.
    let s = svc.state("late1").await.unwrap();
    let mut next = transition(&def, &s, HostAction::Start, now_ms()).unwrap();
    next.opens_at_ms = Some(now_ms() - 6000);
    next.closes_at_ms = Some(now_ms() - 1000);
    assert!(svc
        .store
        .set_state("late1", s.version, &next)
        .await
        .unwrap());
    let r = svc.answer(&def, &caller, 0, &[0], None).await.unwrap();
    assert!(!r.accepted);
    assert_eq!(r.reason, Some(AnswerReason::Late));
    assert_eq!(r.points, 0);
    // The late answer counted as the one answer: now a duplicate.
    let r = svc.answer(&def, &caller, 0, &[0], None).await.unwrap();
    assert_eq!(r.reason, Some(AnswerReason::Duplicate));
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
}

/// An answer scored against a cached state that has since moved on is
/// scored again on a fresh read, with its own choices: the record takes
/// them by move, and the retry must get them back.
#[tokio::test]
async fn an_answer_against_a_moved_state_is_scored_again_with_its_choices() {
    let svc = test_service();
    let def = test_quiz(&svc, "stale1", "live", 1).await;
    let (_, caller) = test_player(&svc, "stale1", "ann").await;
    let s = svc.state("stale1").await.unwrap();
    let open = transition(&def, &s, HostAction::Start, now_ms()).unwrap();
    assert!(svc
        .store
        .set_state("stale1", s.version, &open)
        .await
        .unwrap());
    // The service caches the open question, then the store moves one
    // version on (same window) behind its back.
    let cached = svc.state("stale1").await.unwrap();
    let mut moved = cached.clone();
    moved.version += 1;
    assert!(svc
        .store
        .set_state("stale1", cached.version, &moved)
        .await
        .unwrap());
    let before = svc.metrics.stale_rescored.get();
    // Option 0 is the correct one.
    let r = svc.answer(&def, &caller, 0, &[0], None).await.unwrap();
    assert_eq!(
        svc.metrics.stale_rescored.get(),
        before + 1,
        "re-scored once"
    );
    assert!(r.accepted, "{r:?}");
    assert!(r.correct, "scored with its choices: {r:?}");
    assert!(r.points > 0, "{r:?}");
    let stored = svc
        .store
        .get_answer("stale1", &caller.claims.player_id, 0)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(stored.choices, vec![0]);
}

/// An event sink that is down: never ready, every publish fails.
struct DownSink;

#[async_trait::async_trait]
impl EventSink for DownSink {
    async fn publish(&self, _: &Event) -> Result<(), crate::events::EventError> {
        Err(crate::events::EventError::Backpressure)
    }
    fn ready(&self) -> bool {
        false
    }
    async fn flush(&self, _: std::time::Duration) -> Result<(), crate::events::EventError> {
        Ok(())
    }
}

/// Sink not ready: answers are refused with `unavailable` before the
/// store is touched, joins and host actions too, and readiness fails.
#[tokio::test]
async fn sink_down_refuses_before_the_store() {
    let ok = test_service();
    let def = test_quiz(&ok, "down1", "live", 1).await;
    let (p, caller) = test_player(&ok, "down1", "ann").await;
    ok.host_action("down1", HostAction::Start).await.unwrap();
    // The same store behind a service whose sink is down.
    let down = QuizService::with_backends(
        Arc::clone(&ok.config),
        Arc::clone(&ok.store),
        Arc::new(DownSink),
        Arc::clone(&ok.bus),
        Arc::new(Metrics::new()),
    );
    let e = down.answer(&def, &caller, 0, &[0], None).await.unwrap_err();
    assert_eq!(e.code(), "unavailable");
    assert!(down
        .store
        .get_answer("down1", &p.player_id, 0)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        down.join("down1", "bob").await.unwrap_err().code(),
        "unavailable"
    );
    assert_eq!(
        down.host_action("down1", HostAction::End)
            .await
            .unwrap_err()
            .code(),
        "unavailable"
    );
    assert!(down.ready().await.is_err());
    assert!(ok.ready().await.is_ok());
    // The working node still scores the answer.
    let r = ok.answer(&def, &caller, 0, &[0], None).await.unwrap();
    assert!(r.accepted);
}

/// Creates quiz `quiz_id` (`mode` as on the wire) with `questions`
/// questions: two options, the first correct, 5 s, 1000 points.
pub(crate) async fn test_quiz(
    svc: &QuizService,
    quiz_id: &str,
    mode: &str,
    questions: usize,
) -> Arc<QuizDef> {
    let q = |i| {
        serde_json::json!({"text": format!("q{i}"), "options": ["a","b"], "correct": [0],
                           "time_limit_ms": 5000, "points": 1000})
    };
    let req: CreateQuizReq = serde_json::from_value(serde_json::json!({
        "title": "t", "mode": mode, "quiz_id": quiz_id,
        "questions": (0..questions).map(q).collect::<Vec<_>>(),
    }))
    .unwrap();
    svc.create_quiz(req).await.unwrap().0
}

/// Joins `nickname` to `quiz_id`: the player, and the caller behind their
/// token.
pub(crate) async fn test_player(
    svc: &QuizService,
    quiz_id: &str,
    nickname: &str,
) -> (Player, Caller) {
    let (_, _, p, token, _) = svc.join(quiz_id, nickname).await.unwrap();
    let caller = Caller {
        claims: svc.tokens.verify(&token).unwrap(),
        nickname: p.nickname.clone(),
    };
    (p, caller)
}

pub(crate) fn test_service() -> Arc<QuizService> {
    let dir = std::env::temp_dir().join(format!("quiz-unit-{}", random_id(8)));
    let cfg = Arc::new(Config {
        event_log: dir.join("events.jsonl"),
        token_secret: "unit-test-secret-0123".into(),
        ..Config::default()
    });
    let sink = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(crate::events::file::FileSink::open(
                dir.join("events.jsonl"),
            ))
            .unwrap()
    })
    .join()
    .unwrap();
    QuizService::with_backends(
        Arc::clone(&cfg),
        Arc::new(crate::store::memory::MemoryStore::new()),
        Arc::new(sink),
        Arc::new(crate::bus::memory::MemoryBus::new()),
        Arc::new(Metrics::new()),
    )
}
