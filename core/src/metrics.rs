//! Prometheus metrics of one core instance (a registry per instance, so
//! several instances can live in one test process), and [`MeteredStore`],
//! which times every store call and counts its errors.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::events::Event;
use crate::model::{
    AnswerRecord, ApplyOutcome, Leaderboard, Millis, Player, QuizDef, QuizState, Standing,
};
use crate::store::{QuizStore, StoreError};

pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Rooms (quizzes with members on this node).
    pub rooms: IntGauge,
    /// Answers by outcome: accepted, late, duplicate, not_open, invalid, unavailable.
    pub answers: IntCounterVec,
    /// Time to encode one message and hand it to every member of a room.
    pub broadcast_seconds: Histogram,
    /// Leaderboards overwritten in a connection's slot before being sent.
    pub stale_boards_dropped: IntCounter,
    /// Answers scored again because the quiz's state changed between the
    /// node's (cached) read and the store's apply.
    pub stale_rescored: IntCounter,
    /// Connections closed as slow consumers (4008).
    pub slow_consumer_closes: IntCounter,
    /// WebSocket closes we initiated, by close code.
    pub ws_closes: IntCounterVec,
    /// HTTP responses by status.
    pub http_responses: IntCounterVec,
    pub store_seconds: HistogramVec,
    pub store_errors: IntCounterVec,
    pub sink_seconds: Histogram,
    pub sink_errors: IntCounter,
    /// TCP connections refused at the `max_connections` cap.
    pub connections_refused: IntCounter,
    /// Requests refused by admission control (`admission.rs`), by what
    /// (`join`, `upgrade`): 503 with `Retry-After`, nothing written.
    pub admission_refused: IntCounterVec,
    /// Joins answered as a replay of an earlier join with the same
    /// `Idempotency-Key` (its response was lost).
    pub joins_replayed: IntCounter,
    /// Pending events published again by the repair sweep (their first
    /// publish failed, or its node died before the event log had them).
    pub events_repaired: IntCounter,
    /// Acknowledged events whose removal from the pending events was
    /// dropped (the removal queue was full): each costs one re-publish.
    pub event_acks_dropped: IntCounter,
    /// Duplicate answers not published again: the original's event was
    /// already acknowledged.
    pub duplicates_not_republished: IntCounter,
    /// Room leaderboard ticks skipped under pressure (`room.rs`), by reason:
    /// `read_in_flight` (the previous tick's store read is still running),
    /// `late` (the tick fired more than `board_tick_late_ms` late).
    pub board_ticks_skipped: IntCounterVec,
}

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        let registry = Registry::new_custom(
            Some("quiz".into()),
            Some([("node".into(), node.into())].into()),
        )
        .unwrap_or_default();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            // Names are static and unique: registration cannot collide.
            let _ = r.register(Box::new(c.clone()));
            c
        }
        let buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ];
        let h = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.clone()))
                .unwrap_or_else(|_| unreachable!())
        };
        let cv = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).unwrap_or_else(|_| unreachable!())
        };
        let c =
            |name: &str, help: &str| IntCounter::new(name, help).unwrap_or_else(|_| unreachable!());
        let g =
            |name: &str, help: &str| IntGauge::new(name, help).unwrap_or_else(|_| unreachable!());
        Metrics {
            connections: reg(&registry, g("ws_connections", "Open WebSocket connections")),
            rooms: reg(&registry, g("rooms", "Rooms with members on this node")),
            answers: reg(
                &registry,
                cv("answers_total", "Answers by outcome", "outcome"),
            ),
            broadcast_seconds: reg(
                &registry,
                h("broadcast_seconds", "Encode + fan-out of one room message"),
            ),
            stale_boards_dropped: reg(
                &registry,
                c(
                    "stale_leaderboards_dropped_total",
                    "Leaderboards replaced by a newer one before a slow connection sent them",
                ),
            ),
            stale_rescored: reg(
                &registry,
                c(
                    "answers_rescored_stale_state_total",
                    "Answers scored again after the quiz state changed under them",
                ),
            ),
            slow_consumer_closes: reg(
                &registry,
                c(
                    "slow_consumer_closes_total",
                    "Connections closed as slow consumers (4008)",
                ),
            ),
            ws_closes: reg(
                &registry,
                cv("ws_closes_total", "Server-initiated closes by code", "code"),
            ),
            http_responses: reg(
                &registry,
                cv("http_responses_total", "HTTP responses by status", "status"),
            ),
            store_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("store_seconds", "Store call latency")
                        .buckets(buckets.clone()),
                    &["op"],
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            store_errors: reg(
                &registry,
                cv("store_errors_total", "Store errors (unavailable)", "op"),
            ),
            sink_seconds: reg(
                &registry,
                h("sink_publish_seconds", "Event publish latency"),
            ),
            sink_errors: reg(&registry, c("sink_errors_total", "Event publish failures")),
            connections_refused: reg(
                &registry,
                c(
                    "connections_refused_total",
                    "TCP connections refused at max_connections",
                ),
            ),
            admission_refused: reg(
                &registry,
                cv(
                    "admission_refused_total",
                    "Requests refused by admission control (503 + Retry-After, nothing written)",
                    "what",
                ),
            ),
            joins_replayed: reg(
                &registry,
                c(
                    "joins_replayed_total",
                    "Joins answered as a replay of an earlier join with the same Idempotency-Key",
                ),
            ),
            events_repaired: reg(
                &registry,
                c(
                    "events_repaired_total",
                    "Pending events published again by the repair sweep",
                ),
            ),
            event_acks_dropped: reg(
                &registry,
                c(
                    "event_acks_dropped_total",
                    "Acknowledged events left pending because the removal queue was full",
                ),
            ),
            duplicates_not_republished: reg(
                &registry,
                c(
                    "duplicates_not_republished_total",
                    "Duplicate answers whose original event was already acknowledged",
                ),
            ),
            board_ticks_skipped: reg(
                &registry,
                cv(
                    "board_ticks_skipped_total",
                    "Room leaderboard ticks skipped under pressure (boards are latest-value)",
                    "reason",
                ),
            ),
            registry,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// A [`QuizStore`] decorator recording latency per operation and counting
/// `Unavailable` errors. Conflicts and not-found are answers, not errors.
pub struct MeteredStore {
    inner: Arc<dyn QuizStore>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn QuizStore>, metrics: Arc<Metrics>) -> Self {
        MeteredStore { inner, metrics }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let r = fut.await;
        self.metrics
            .store_seconds
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        if let Err(StoreError::Unavailable(e)) = &r {
            self.metrics.store_errors.with_label_values(&[op]).inc();
            tracing::warn!(op, error = %e, "store unavailable");
        }
        r
    }
}

#[async_trait]
impl QuizStore for MeteredStore {
    async fn create_quiz_with_event(
        &self,
        quiz: &QuizDef,
        state: &QuizState,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        self.timed(
            "create_quiz",
            self.inner.create_quiz_with_event(quiz, state, event),
        )
        .await
    }
    async fn get_quiz(&self, quiz_id: &str) -> Result<Option<Arc<QuizDef>>, StoreError> {
        self.timed("get_quiz", self.inner.get_quiz(quiz_id)).await
    }
    async fn get_state(&self, quiz_id: &str) -> Result<Option<QuizState>, StoreError> {
        self.timed("get_state", self.inner.get_state(quiz_id)).await
    }
    async fn set_state_with_events(
        &self,
        quiz_id: &str,
        expected_version: u64,
        next: &QuizState,
        events: &[Event],
    ) -> Result<bool, StoreError> {
        self.timed(
            "set_state",
            self.inner
                .set_state_with_events(quiz_id, expected_version, next, events),
        )
        .await
    }
    async fn add_player_with_event(
        &self,
        quiz_id: &str,
        player: &Player,
        max_players: u64,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        self.timed(
            "add_player",
            self.inner
                .add_player_with_event(quiz_id, player, max_players, event),
        )
        .await
    }
    async fn pending_events(&self, quiz_id: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.timed("pending_events", self.inner.pending_events(quiz_id, limit))
            .await
    }
    async fn clear_pending(&self, quiz_id: &str, event_ids: &[String]) -> Result<(), StoreError> {
        self.timed(
            "clear_pending",
            self.inner.clear_pending(quiz_id, event_ids),
        )
        .await
    }
    async fn is_pending(&self, quiz_id: &str, event_id: &str) -> Result<bool, StoreError> {
        self.timed("is_pending", self.inner.is_pending(quiz_id, event_id))
            .await
    }
    async fn get_player(
        &self,
        quiz_id: &str,
        player_id: &str,
    ) -> Result<Option<Player>, StoreError> {
        self.timed("get_player", self.inner.get_player(quiz_id, player_id))
            .await
    }
    async fn apply_answer(
        &self,
        quiz_id: &str,
        answer: &AnswerRecord,
    ) -> Result<ApplyOutcome, StoreError> {
        self.timed("apply_answer", self.inner.apply_answer(quiz_id, answer))
            .await
    }
    async fn apply_answer_at_state(
        &self,
        quiz_id: &str,
        answer: &AnswerRecord,
        state_version: u64,
    ) -> Result<Option<ApplyOutcome>, StoreError> {
        self.timed(
            "apply_answer",
            self.inner
                .apply_answer_at_state(quiz_id, answer, state_version),
        )
        .await
    }
    async fn present_question(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
        now: Millis,
    ) -> Result<Option<Millis>, StoreError> {
        self.timed(
            "present_question",
            self.inner
                .present_question(quiz_id, player_id, question_id, now),
        )
        .await
    }
    async fn get_answer(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
    ) -> Result<Option<AnswerRecord>, StoreError> {
        self.timed(
            "get_answer",
            self.inner.get_answer(quiz_id, player_id, question_id),
        )
        .await
    }
    async fn leaderboard(&self, quiz_id: &str, limit: usize) -> Result<Leaderboard, StoreError> {
        self.timed("leaderboard", self.inner.leaderboard(quiz_id, limit))
            .await
    }
    async fn standing(
        &self,
        quiz_id: &str,
        player_id: &str,
    ) -> Result<Option<Standing>, StoreError> {
        self.timed("standing", self.inner.standing(quiz_id, player_id))
            .await
    }
    async fn distribution(
        &self,
        quiz_id: &str,
        question_id: u32,
        option_count: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.timed(
            "distribution",
            self.inner.distribution(quiz_id, question_id, option_count),
        )
        .await
    }
    async fn question_sent_at(
        &self,
        quiz_id: &str,
        player_id: &str,
        question_id: u32,
        now: Millis,
    ) -> Result<Millis, StoreError> {
        self.timed(
            "question_sent_at",
            self.inner
                .question_sent_at(quiz_id, player_id, question_id, now),
        )
        .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }
}
