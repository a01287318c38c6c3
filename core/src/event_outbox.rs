//! The event outbox's node side: no event lost on any path, without the
//! client's help. (Not `outbox.rs`, which is a WebSocket's write queue.)
//!
//! Every store write that produces an event records it as pending in the
//! same atomic step (see "Pending events" in `store.rs`). This module:
//! - [`EventOutbox::delivered`]: after the event log acknowledged an event,
//!   queues its removal from the pending events. A bounded queue drained by
//!   one task that removes a batch per quiz in one store call, off the
//!   acknowledgement's critical path; the task lingers [`ACK_LINGER`] after
//!   the first removal of a batch so the acknowledgements of those moments
//!   leave in the same call; when the queue is full the removal is dropped
//!   (metric `event_acks_dropped_total`) and costs one re-publish.
//! - the repair sweep: every `event_repair_interval_ms` it visits the
//!   quizzes this node serves ([`EventOutbox::touch`]: a quiz read, a
//!   join, a host action, a failed publish) and publishes again each
//!   pending event older than `event_repair_grace_ms` (same `event_id`,
//!   same JSON: consumers deduplicate), at most `event_repair_batch` per
//!   quiz and pass, then removes the ones the log acknowledged. A quiz with
//!   nothing pending and no activity for [`IDLE`] leaves the sweep.
//!
//! Which node repairs which quiz: the one serving it. After a node dies, the
//! node that takes its quizzes over (edge-lb moves them, players reconnect
//! and read the quiz) sweeps them. What no node ever serves again keeps its
//! pending events until the quiz's keys expire (its retention).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::events::{Event, EventSink};
use crate::metrics::Metrics;
use crate::model::now_ms;
use crate::store::QuizStore;

/// A quiz with nothing pending and no activity for this long leaves the
/// sweep.
pub const IDLE: Duration = Duration::from_secs(300);
/// Bound of the removal queue.
const ACK_QUEUE: usize = 16_384;
/// Most removals taken from the queue for one round of store calls.
const ACK_BATCH: usize = 1024;
/// How long the removal task waits, after the first removal of a batch,
/// for more to join it. Without it the task took whatever was queued the
/// moment it woke: under a live question, one `pending_clear` script call
/// (a round trip from core, a script run on the quiz's master) per 34–108
/// answers, 0.3–1 times the calls of the answers' own scoring; with it, one
/// per ~315 (docs/performance.md). A removal is off every
/// acknowledgement's path and the sweep waits `event_repair_grace_ms`
/// (seconds) before it re-publishes a pending event, so the wait delays
/// nothing anyone sees; a node dying within it re-publishes those events
/// (same ids: consumers deduplicate), as any removal not yet made does.
pub const ACK_LINGER: Duration = Duration::from_millis(20);
/// Most quizzes the sweep follows; past it a new quiz is not followed (its
/// events are still repaired by the node that serves it next, or by this
/// one once the set has room: quizzes leave it when idle).
const MAX_QUIZZES: usize = 100_000;

/// Settings of the sweep (from `Config`'s `event_repair_*` keys).
#[derive(Debug, Clone, Copy)]
pub struct RepairOptions {
    pub grace: Duration,
    pub interval: Duration,
    pub batch: usize,
}

pub struct EventOutbox {
    store: Arc<dyn QuizStore>,
    sink: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
    opts: RepairOptions,
    /// (quiz id, event id) acknowledged by the event log, to remove.
    acks: mpsc::Sender<(String, String)>,
    /// The quizzes the sweep visits, with their last activity.
    quizzes: DashMap<String, Instant>,
}

impl EventOutbox {
    /// Starts the removal task and the sweep when called inside a tokio
    /// runtime (both end when the outbox is dropped).
    pub fn new(
        store: Arc<dyn QuizStore>,
        sink: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
        opts: RepairOptions,
    ) -> Arc<EventOutbox> {
        let (acks, rx) = mpsc::channel(ACK_QUEUE);
        let outbox = Arc::new(EventOutbox {
            store: Arc::clone(&store),
            sink,
            metrics,
            opts,
            acks,
            quizzes: DashMap::new(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(remove_acknowledged(store, rx));
            rt.spawn(sweep_loop(Arc::downgrade(&outbox)));
        }
        outbox
    }

    /// This node serves `quiz_id`: the sweep visits it.
    pub fn touch(&self, quiz_id: &str) {
        let now = Instant::now();
        if let Some(mut at) = self.quizzes.get_mut(quiz_id) {
            *at = now;
            return;
        }
        if self.quizzes.len() < MAX_QUIZZES {
            self.quizzes.insert(quiz_id.to_string(), now);
        }
    }

    /// The event log acknowledged `event`: remove it from the pending
    /// events (queued, never waits). Takes the event to move its ids into
    /// the queue instead of copying them.
    pub fn delivered(&self, event: Event) {
        let item = (event.quiz_id, event.event_id);
        if self.acks.try_send(item).is_err() {
            self.metrics.event_acks_dropped.inc();
        }
    }

    /// One pass of the sweep over every quiz it follows.
    pub async fn sweep(&self) {
        let quizzes: Vec<String> = self.quizzes.iter().map(|e| e.key().clone()).collect();
        for quiz_id in quizzes {
            match self.sweep_quiz(&quiz_id).await {
                Ok(0) => {
                    self.quizzes
                        .remove_if(&quiz_id, |_, at| at.elapsed() >= IDLE);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(quiz_id, error = %e, "event repair sweep failed");
                    // The sink or the store is down: the next pass retries.
                    return;
                }
            }
        }
    }

    /// Publishes again the quiz's pending events older than the grace
    /// period (at most `batch`), removes those the log acknowledged.
    /// Returns how many events are pending (young ones included); `Err` if
    /// the store or a publish failed.
    pub async fn sweep_quiz(&self, quiz_id: &str) -> Result<usize, String> {
        let pending = self
            .store
            .pending_events(quiz_id, self.opts.batch)
            .await
            .map_err(|e| e.to_string())?;
        let count = pending.len();
        let cutoff = now_ms().saturating_sub(self.opts.grace.as_millis() as u64);
        let due: Vec<Event> = pending.into_iter().filter(|e| e.at_ms <= cutoff).collect();
        if due.is_empty() {
            return Ok(count);
        }
        // Concurrently: a pass is bounded by `batch`, and the persister does
        // not depend on the order of a quiz's events (docs/persister.md).
        let results = futures::future::join_all(due.iter().map(|e| self.sink.publish(e))).await;
        let mut done = Vec::with_capacity(due.len());
        let mut failed = None;
        for (e, r) in due.into_iter().zip(results) {
            match r {
                Ok(()) => done.push(e.event_id),
                Err(err) => failed = Some(err.to_string()),
            }
        }
        self.metrics.events_repaired.inc_by(done.len() as u64);
        if !done.is_empty() {
            tracing::info!(
                quiz_id,
                repaired = done.len(),
                "pending events published again"
            );
            self.store
                .clear_pending(quiz_id, &done)
                .await
                .map_err(|e| e.to_string())?;
        }
        match failed {
            Some(e) => Err(format!("event log: {e}")),
            None => Ok(count),
        }
    }
}

/// The sweep's loop; ends when the outbox is dropped.
async fn sweep_loop(outbox: Weak<EventOutbox>) {
    let interval = match outbox.upgrade() {
        Some(o) => o.opts.interval,
        None => return,
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(outbox) = outbox.upgrade() else {
            return;
        };
        outbox.sweep().await;
    }
}

/// Drains the removal queue: what is queued within [`ACK_LINGER`] of a
/// batch's first removal (up to [`ACK_BATCH`]) leaves in one
/// `clear_pending` call per quiz. Ends when the outbox is dropped.
async fn remove_acknowledged(store: Arc<dyn QuizStore>, mut rx: mpsc::Receiver<(String, String)>) {
    let mut batch = Vec::with_capacity(64);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, ACK_BATCH).await == 0 {
            return;
        }
        // A full batch means the queue is backed up: no lingering then.
        if batch.len() < ACK_BATCH {
            tokio::time::sleep(ACK_LINGER).await;
            while batch.len() < ACK_BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        let mut by_quiz: std::collections::HashMap<&str, Vec<String>> =
            std::collections::HashMap::new();
        for (quiz, id) in batch.iter_mut() {
            by_quiz
                .entry(quiz.as_str())
                .or_default()
                .push(std::mem::take(id));
        }
        let clears = by_quiz
            .iter()
            .map(|(quiz, ids)| store.clear_pending(quiz, ids));
        for r in futures::future::join_all(clears).await {
            if let Err(e) = r {
                // Harmless: the sweep publishes those events again.
                tracing::debug!(error = %e, "removing acknowledged events failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::file::FileSink;
    use crate::events::EventKind;
    use crate::metrics::MeteredStore;
    use crate::store::memory::MemoryStore;

    /// Acknowledgements arriving one by one, each letting the removal task
    /// run, leave in one `clear_pending` call: the task lingers after the
    /// first. (Paused time: the linger ends only once the deliveries are
    /// done, so the count does not depend on the machine's speed.)
    #[tokio::test(start_paused = true)]
    async fn acknowledgements_of_a_moment_leave_in_one_call() {
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn QuizStore> = Arc::new(MeteredStore::new(
            Arc::new(MemoryStore::new()),
            Arc::clone(&metrics),
        ));
        let path = std::env::temp_dir().join(format!(
            "quiz-outbox-linger-{}-{}.jsonl",
            std::process::id(),
            now_ms()
        ));
        let sink = Arc::new(FileSink::open(&path).await.expect("file sink"));
        let opts = RepairOptions {
            grace: Duration::from_secs(10),
            interval: Duration::from_secs(2),
            batch: 256,
        };
        let outbox = EventOutbox::new(store, sink, Arc::clone(&metrics), opts);
        let calls = || {
            metrics
                .store_seconds
                .with_label_values(&["clear_pending"])
                .get_sample_count()
        };
        for i in 0..200 {
            let kind = EventKind::PlayerJoined {
                player_id: format!("p{i}"),
                nickname: format!("n{i}"),
            };
            outbox.delivered(Event::new("q", 1, kind));
            tokio::task::yield_now().await;
        }
        assert_eq!(calls(), 0, "removed before the linger ended");
        tokio::time::sleep(ACK_LINGER * 2).await;
        assert_eq!(calls(), 1);
        let _ = std::fs::remove_file(&path);
    }
}
