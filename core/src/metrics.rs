//! Prometheus metrics of one core instance (a registry per instance, so
//! several instances can live in one test process), and [`MeteredStore`],
//! which times every store call and counts its errors.
//!
//! No series carries the node's name: which pod or instance a series came
//! from is the scrape's own label (Prometheus's service discovery sets
//! `instance`, and `pod` by relabelling), so the dashboards and alerts
//! group by those, and two nodes that happened to share a `node_name`
//! cannot merge.
//!
//! The per-answer and per-request histograms are observed through handles
//! resolved ahead of the call ([`AnswerOutcome`] indexes an array built
//! here; the HTTP cells are resolved on their first use): an observation
//! is a few atomic adds, with no label hashing, no lock and no allocation
//! on the hot path.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::QuizError;
use crate::events::Event;
use crate::model::{
    AnswerRecord, ApplyOutcome, Leaderboard, Millis, Player, QuizDef, QuizState, Standing,
};
use crate::protocol::{AnswerReason, AnswerResult};
use crate::store::{QuizStore, StoreError};

/// Buckets of the request-scale histograms (an answer's acknowledgement,
/// an HTTP request): from half a millisecond (embedded store, memory sink)
/// through the tens of milliseconds of a Redis apply plus a Kafka publish,
/// to the seconds of a backend outage (`Unavailable` after retries).
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What became of one answer: the `outcome` of `quiz_answers_total` and
/// the `result` of `quiz_answer_ack_seconds` (the wire's `accepted` or
/// `reason`; `unavailable` when the client got an `error` message instead
/// of an `answer_result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerOutcome {
    Accepted,
    Late,
    Duplicate,
    NotOpen,
    Invalid,
    Unavailable,
}

impl AnswerOutcome {
    /// Every outcome, in index order (the arrays of pre-resolved handles).
    pub const ALL: [AnswerOutcome; 6] = [
        AnswerOutcome::Accepted,
        AnswerOutcome::Late,
        AnswerOutcome::Duplicate,
        AnswerOutcome::NotOpen,
        AnswerOutcome::Invalid,
        AnswerOutcome::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AnswerOutcome::Accepted => "accepted",
            AnswerOutcome::Late => "late",
            AnswerOutcome::Duplicate => "duplicate",
            AnswerOutcome::NotOpen => "not_open",
            AnswerOutcome::Invalid => "invalid",
            AnswerOutcome::Unavailable => "unavailable",
        }
    }

    /// The outcome of `QuizService::answer`'s result.
    pub fn of(r: &Result<AnswerResult, QuizError>) -> AnswerOutcome {
        match r {
            Ok(a) if a.accepted => AnswerOutcome::Accepted,
            Ok(a) => match a.reason {
                Some(AnswerReason::Late) => AnswerOutcome::Late,
                Some(AnswerReason::Duplicate) => AnswerOutcome::Duplicate,
                Some(AnswerReason::NotOpen) => AnswerOutcome::NotOpen,
                // Every refusal carries its reason; one without is counted
                // with the other refusals that recorded nothing.
                Some(AnswerReason::Invalid) | None => AnswerOutcome::Invalid,
            },
            Err(_) => AnswerOutcome::Unavailable,
        }
    }
}

/// An HTTP route as a metric label: the contract's path template
/// (`docs/api/openapi.yaml`), never the raw path, so the label's values
/// are this fixed set whatever paths clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRoute {
    Quizzes,
    Quiz,
    Players,
    Player,
    Leaderboard,
    Start,
    Next,
    End,
    Ws,
    Healthz,
    Readyz,
    Metrics,
    /// The player and host pages and their assets.
    Web,
    /// Any path that is none of the above (answered 404 or 405).
    Other,
}

impl HttpRoute {
    pub const ALL: [HttpRoute; 14] = [
        HttpRoute::Quizzes,
        HttpRoute::Quiz,
        HttpRoute::Players,
        HttpRoute::Player,
        HttpRoute::Leaderboard,
        HttpRoute::Start,
        HttpRoute::Next,
        HttpRoute::End,
        HttpRoute::Ws,
        HttpRoute::Healthz,
        HttpRoute::Readyz,
        HttpRoute::Metrics,
        HttpRoute::Web,
        HttpRoute::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HttpRoute::Quizzes => "/v1/quizzes",
            HttpRoute::Quiz => "/v1/quizzes/{quiz_id}",
            HttpRoute::Players => "/v1/quizzes/{quiz_id}/players",
            HttpRoute::Player => "/v1/quizzes/{quiz_id}/players/{player_id}",
            HttpRoute::Leaderboard => "/v1/quizzes/{quiz_id}/leaderboard",
            HttpRoute::Start => "/v1/quizzes/{quiz_id}/start",
            HttpRoute::Next => "/v1/quizzes/{quiz_id}/next",
            HttpRoute::End => "/v1/quizzes/{quiz_id}/end",
            HttpRoute::Ws => "/v1/quizzes/{quiz_id}/ws",
            HttpRoute::Healthz => "/healthz",
            HttpRoute::Readyz => "/readyz",
            HttpRoute::Metrics => "/metrics",
            HttpRoute::Web => "web",
            HttpRoute::Other => "other",
        }
    }
}

/// The status classes of `quiz_http_request_duration_seconds` (the exact
/// status is in `quiz_http_responses_total`).
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `quiz_http_request_duration_seconds`, with one lazily resolved handle
/// per route and status class: a cell is created on its first request
/// (so only the pairs that happened are exported, not 70 empty
/// histograms), then every request of that pair observes it directly.
struct HttpDurations {
    vec: HistogramVec,
    cells: [[OnceLock<Histogram>; STATUS_CLASSES.len()]; HttpRoute::ALL.len()],
}

impl HttpDurations {
    fn observe(&self, route: HttpRoute, status: u16, secs: f64) {
        // hyper's statuses are 100–999; 6xx–9xx (never sent) join 5xx.
        let class = usize::from(status / 100).clamp(1, STATUS_CLASSES.len()) - 1;
        self.cells[route as usize][class]
            .get_or_init(|| {
                self.vec
                    .with_label_values(&[route.as_str(), STATUS_CLASSES[class]])
            })
            .observe(secs);
    }
}

/// What the Redis store's direct lanes (`store/redis_cluster/lane.rs`)
/// have done so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct LaneCounts {
    /// Answers sent to Redis on a lane (the rest go through the batcher).
    pub answers: u64,
    /// Lane connections that failed.
    pub closures: u64,
}

/// Reads the lanes' counts at each scrape; `None` once the store is gone.
pub type LaneSource = Arc<dyn Fn() -> Option<LaneCounts> + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    /// The lanes' counters, registered (and kept up with `lane_source` at
    /// each scrape) only by [`Metrics::watch_lanes`]: distributed mode.
    lane_answers: IntCounter,
    lane_closures: IntCounter,
    lane_source: parking_lot::Mutex<Option<LaneSource>>,
    /// The process's own metrics (`process_*`, unprefixed as every
    /// exporter names them: a registry's prefix applies to every collector
    /// in it).
    process: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Rooms (quizzes with members on this node).
    pub rooms: IntGauge,
    /// Answers by outcome ([`AnswerOutcome`]), indexed by it.
    answers: [IntCounter; AnswerOutcome::ALL.len()],
    /// Answer frame read → its `answer_result` (or `error`) queued, by
    /// result, indexed by [`AnswerOutcome`].
    answer_ack: [Histogram; AnswerOutcome::ALL.len()],
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
    /// Request head read → response ready, by route template and status class.
    http_seconds: HttpDurations,
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
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("quiz".into()), None).unwrap_or_default();
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
        let answers = reg(
            &registry,
            cv("answers_total", "Answers by outcome", "outcome"),
        );
        let answer_ack = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "answer_ack_seconds",
                    "Answer frame read to its answer_result (or error) queued, by result",
                )
                .buckets(REQUEST_BUCKETS.to_vec()),
                &["result"],
            )
            .unwrap_or_else(|_| unreachable!()),
        );
        let http_seconds = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "HTTP request head read to response ready, by route template and status class",
                )
                .buckets(REQUEST_BUCKETS.to_vec()),
                &["route", "class"],
            )
            .unwrap_or_else(|_| unreachable!()),
        );
        let build_info = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "core_build_info",
                    "1, labelled with the version, git commit and rustc of this build",
                ),
                &["version", "commit", "rustc"],
            )
            .unwrap_or_else(|_| unreachable!()),
        );
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("QUIZ_BUILD_COMMIT"),
                env!("QUIZ_BUILD_RUSTC"),
            ])
            .set(1);
        Metrics {
            process: process_registry(),
            // Resolved once, here: the answer path indexes them.
            answers: AnswerOutcome::ALL.map(|o| answers.with_label_values(&[o.as_str()])),
            answer_ack: AnswerOutcome::ALL.map(|o| answer_ack.with_label_values(&[o.as_str()])),
            http_seconds: HttpDurations {
                vec: http_seconds,
                cells: Default::default(),
            },
            connections: reg(&registry, g("ws_connections", "Open WebSocket connections")),
            rooms: reg(&registry, g("rooms", "Rooms with members on this node")),
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
            lane_answers: c(
                "redis_lane_answers_total",
                "Answers sent to Redis on the store's direct lanes (the rest go through the batcher)",
            ),
            lane_closures: c(
                "redis_lane_closures_total",
                "Direct-lane connections to a Redis master that failed; their slots used the batcher for a while",
            ),
            lane_source: parking_lot::Mutex::new(None),
            registry,
        }
    }

    /// Counts one answer by what became of it.
    pub fn count_answer(&self, outcome: AnswerOutcome) {
        self.answers[outcome as usize].inc();
    }

    /// One answer acknowledged (or refused with an `error`) `secs` after
    /// its frame was read.
    pub fn observe_answer_ack(&self, outcome: AnswerOutcome, secs: f64) {
        self.answer_ack[outcome as usize].observe(secs);
    }

    /// One HTTP request answered with `status` after `secs`.
    pub fn observe_http(&self, route: HttpRoute, status: u16, secs: f64) {
        self.http_seconds.observe(route, status, secs);
    }

    /// Exports the Redis store's direct lanes (`quiz_redis_lane_*`), read
    /// from `source` at each scrape from now on. Once: a node has one store.
    pub fn watch_lanes(&self, source: LaneSource) {
        let mut slot = self.lane_source.lock();
        if slot.is_none() {
            *slot = Some(source);
            let _ = self.registry.register(Box::new(self.lane_answers.clone()));
            let _ = self.registry.register(Box::new(self.lane_closures.clone()));
        }
    }

    /// Brings the lanes' counters up to the store's counts (they only grow;
    /// under the lock, so two scrapes at once cannot both add the gap).
    fn catch_up_lanes(&self) {
        let slot = self.lane_source.lock();
        let Some(now) = slot.as_ref().and_then(|read| read()) else {
            return;
        };
        for (counter, count) in [
            (&self.lane_answers, now.answers),
            (&self.lane_closures, now.closures),
        ] {
            counter.inc_by(count.saturating_sub(counter.get()));
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        self.catch_up_lanes();
        let mut out = Vec::with_capacity(16384);
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A registry of the process's CPU, memory, open files (against the
/// `RLIMIT_NOFILE` it may reach: the platform's capacity limit per process),
/// threads and start time: `process_*`, read from `/proc` at each scrape
/// (Linux only; elsewhere it stays empty).
fn process_registry() -> Registry {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        // A fresh registry: nothing to collide with.
        let _ = r.register(Box::new(pc));
    }
    r
}

/// A [`QuizStore`] decorator recording latency per operation and counting
/// `Unavailable` errors. Conflicts and not-found are answers, not errors.
pub struct MeteredStore {
    inner: Arc<dyn QuizStore>,
    metrics: Arc<Metrics>,
    /// `apply_answer`'s latency series, looked up once: it is timed on
    /// every answer, and a look-up by label hashes the label and takes the
    /// vector's lock.
    apply_answer_seconds: Histogram,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn QuizStore>, metrics: Arc<Metrics>) -> Self {
        let apply_answer_seconds = metrics.store_seconds.with_label_values(&["apply_answer"]);
        MeteredStore {
            inner,
            metrics,
            apply_answer_seconds,
        }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let seconds = self.metrics.store_seconds.with_label_values(&[op]);
        self.timed_in(&seconds, op, fut).await
    }

    /// [`timed`](Self::timed) with `op`'s latency series already looked up.
    async fn timed_in<T>(
        &self,
        seconds: &Histogram,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let r = fut.await;
        seconds.observe(start.elapsed().as_secs_f64());
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
        self.timed_in(
            &self.apply_answer_seconds,
            "apply_answer",
            self.inner.apply_answer(quiz_id, answer),
        )
        .await
    }
    async fn apply_answer_at_state(
        &self,
        quiz_id: &str,
        answer: &AnswerRecord,
        state_version: u64,
    ) -> Result<Option<ApplyOutcome>, StoreError> {
        self.timed_in(
            &self.apply_answer_seconds,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The arrays of handles are indexed by the enums' discriminants: each
    /// `ALL` must list its variants in declaration order.
    #[test]
    fn handle_arrays_follow_the_enums() {
        for (i, o) in AnswerOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
        for (i, r) in HttpRoute::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn observations_land_under_their_labels() {
        let m = Metrics::new();
        m.count_answer(AnswerOutcome::Late);
        m.observe_answer_ack(AnswerOutcome::Late, 0.003);
        m.observe_http(HttpRoute::Players, 201, 0.002);
        m.observe_http(HttpRoute::Players, 409, 0.002);
        m.observe_http(HttpRoute::Ws, 101, 0.0001);
        m.observe_http(HttpRoute::Other, 404, 0.0001);
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            "quiz_answers_total{outcome=\"late\"} 1",
            "quiz_answers_total{outcome=\"accepted\"} 0",
            "quiz_answer_ack_seconds_count{result=\"late\"} 1",
            "quiz_answer_ack_seconds_bucket{result=\"late\",le=\"0.0025\"} 0",
            "quiz_answer_ack_seconds_bucket{result=\"late\",le=\"0.005\"} 1",
            "quiz_answer_ack_seconds_count{result=\"accepted\"} 0",
            "quiz_http_request_duration_seconds_count{class=\"2xx\",route=\"/v1/quizzes/{quiz_id}/players\"} 1",
            "quiz_http_request_duration_seconds_count{class=\"4xx\",route=\"/v1/quizzes/{quiz_id}/players\"} 1",
            "quiz_http_request_duration_seconds_count{class=\"1xx\",route=\"/v1/quizzes/{quiz_id}/ws\"} 1",
            "quiz_http_request_duration_seconds_count{class=\"4xx\",route=\"other\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        // Only the (route, class) pairs that happened are exported.
        assert!(!text.contains("route=\"/healthz\""), "{text}");
        assert!(!text.contains("node=\""), "{text}");
    }
}
