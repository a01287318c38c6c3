//! The consume → write → commit loop: the persister's hot path, in one file.
//!
//! Why a dedicated thread with a `BaseConsumer` instead of an async
//! `StreamConsumer`: librdkafka runs the rebalance callback *inside* `poll`,
//! on the polling thread, and a revocation must flush the pending batch to
//! MongoDB and commit before it returns. On a plain thread that callback can
//! simply block on the write (`Handle::block_on`); inside an async task it
//! would be blocking the very runtime the MongoDB driver needs.
//!
//! The order of effects for every batch, which is the at-least-once
//! argument:
//! 1. records are read and parsed (poison ones set aside with a reason);
//! 2. the good ones are written to MongoDB, retried with capped backoff
//!    while MongoDB is down (no `poll` meanwhile: consumption stops);
//! 3. the poison ones are produced to the dead-letter topic and acknowledged;
//! 4. only then are the batch's offsets committed.
//!
//! A crash anywhere before 4 means the batch is read again, and re-applying
//! it changes nothing (`writes.rs`). A crash after 4 loses nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::dlq::{DeadLetter, DeadRecord};
use crate::event::{Event, Poison};
use crate::metrics::Metrics;
use crate::rebootstrap::add_bootstrap_brokers;
use crate::store::{write_batch, BatchEvent, Store};

/// One record read from the topic, owned, parsed once.
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub parsed: Result<Event, Poison>,
}

impl Record {
    pub fn from_message(m: &BorrowedMessage<'_>) -> Record {
        let payload = m.payload().map(<[u8]>::to_vec);
        let parsed = match &payload {
            Some(p) => Event::parse(p),
            None => Err(Poison::Unparsable("record has no value".into())),
        };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload,
            headers,
            parsed,
        }
    }
}

/// Read but not yet written.
#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    started: Option<Instant>,
}

type Partition = (String, i32);

/// What the loop and the rebalance callback share. The loop never holds a
/// lock across `poll`, so the callback (which runs inside `poll`, on the same
/// thread) can always take them.
pub struct Shared {
    config: Config,
    store: Arc<dyn Store>,
    dlq: DeadLetter,
    metrics: Metrics,
    runtime: Handle,
    shutdown: CancellationToken,
    pending: Mutex<Pending>,
    /// Written to MongoDB, not yet known committed: next offset per partition.
    uncommitted: Mutex<HashMap<Partition, i64>>,
    /// Set by the statistics callback when the client knows no broker at
    /// all (only its logical coordinator handle); see `rebootstrap.rs`.
    brokerless: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind;
    // carrying on with it is safe (at worst a batch is re-read).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {
    fn stats(&self, stats: Statistics) {
        let metrics = &self.shared.metrics;
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                let labels = [topic.as_str(), &partition.to_string()];
                if p.consumer_lag >= 0 {
                    metrics
                        .consumer_lag
                        .with_label_values(&labels)
                        .set(p.consumer_lag);
                } else {
                    let _ = metrics.consumer_lag.remove_label_values(&labels);
                }
            }
        }
        let up = stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        metrics.set_kafka_ok(up);
        let known = stats
            .brokers
            .values()
            .any(|b| b.source != "logical" && b.source != "internal");
        self.shared.brokerless.store(!known, Ordering::Relaxed);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            self.shared.metrics.set_kafka_ok(false);
        }
        warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let shared = &self.shared;
        match rebalance {
            Rebalance::Revoke(tpl) => {
                shared
                    .metrics
                    .rebalances
                    .with_label_values(&["revoke"])
                    .inc();
                let revoked: Vec<Partition> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                info!(partitions = ?revoked, "partitions revoked: flushing the pending batch");
                let deadline = Instant::now()
                    + Duration::from_millis(shared.config.retry.revoke_flush_timeout_ms);
                if let Err(unwritten) = shared.try_flush(deadline) {
                    shared.requeue_kept(unwritten, &revoked);
                }
                shared.commit(consumer, CommitMode::Sync);
                // Whatever is still uncommitted for revoked partitions now
                // belongs to their new owner, who re-reads from the last
                // committed offset.
                let mut uncommitted = lock(&shared.uncommitted);
                for p in &revoked {
                    uncommitted.remove(p);
                }
            }
            Rebalance::Assign(tpl) => {
                shared
                    .metrics
                    .rebalances
                    .with_label_values(&["assign"])
                    .inc();
                info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        if let Ok(a) = consumer.assignment() {
            self.shared
                .metrics
                .assigned_partitions
                .set(a.count() as i64);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let mut uncommitted = lock(&self.shared.uncommitted);
                for e in offsets.elements() {
                    let key = (e.topic().to_string(), e.partition());
                    if let (Some(&pending), Offset::Offset(done)) =
                        (uncommitted.get(&key), e.offset())
                    {
                        if pending <= done {
                            uncommitted.remove(&key);
                        }
                    }
                }
            }
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.shared.metrics.commit_failures.inc();
                warn!(error = %e, "offset commit failed; retried with the next commit");
            }
        }
    }
}

impl Shared {
    /// Writes the pending batch, retrying until it is written or, on
    /// shutdown, until the grace period ends. `true` when written (its
    /// offsets are then in `uncommitted`); `false` when the grace period
    /// ended first: the batch is dropped uncommitted and read again by
    /// whoever consumes the partitions next.
    fn flush(&self) -> bool {
        let records = self.take_pending();
        records.is_empty() || self.write_and_track(records, None).is_ok()
    }

    /// Like [`Shared::flush`], but gives up at `deadline` and hands the
    /// records back unwritten instead of dropping them.
    fn try_flush(&self, deadline: Instant) -> Result<(), Vec<Record>> {
        let records = self.take_pending();
        if records.is_empty() {
            return Ok(());
        }
        self.write_and_track(records, Some(deadline))
    }

    /// After a revocation whose flush missed its deadline: the records of
    /// revoked partitions are dropped (their new owner re-reads them from
    /// the last committed offset), those of partitions this process keeps go
    /// back in front of the pending batch. Dropping those too would lose
    /// them: this process goes on reading the kept partitions after them
    /// and commits the later offsets once it writes the later records.
    fn requeue_kept(&self, unwritten: Vec<Record>, revoked: &[Partition]) {
        let revoked_now = |r: &Record| {
            revoked
                .iter()
                .any(|(topic, partition)| *partition == r.partition && *topic == r.topic)
        };
        let (dropped, kept): (Vec<Record>, Vec<Record>) =
            unwritten.into_iter().partition(revoked_now);
        warn!(
            dropped = dropped.len(),
            kept = kept.len(),
            "pending batch not written before the revocation deadline; \
             revoked partitions are re-read by their new owner, kept ones stay pending"
        );
        if kept.is_empty() {
            return;
        }
        let mut pending = lock(&self.pending);
        let newer = std::mem::replace(&mut pending.records, kept);
        pending.records.extend(newer);
        pending.started.get_or_insert_with(Instant::now);
    }

    fn take_pending(&self) -> Vec<Record> {
        let mut pending = lock(&self.pending);
        pending.started = None;
        std::mem::take(&mut pending.records)
    }

    /// Writes `records` and records their offsets as written, not yet
    /// committed; hands them back if `write` gave up.
    fn write_and_track(
        &self,
        records: Vec<Record>,
        deadline: Option<Instant>,
    ) -> Result<(), Vec<Record>> {
        if !self.write(&records, deadline) {
            return Err(records);
        }
        let mut uncommitted = lock(&self.uncommitted);
        for r in &records {
            let next = uncommitted
                .entry((r.topic.clone(), r.partition))
                .or_insert(r.offset + 1);
            *next = (*next).max(r.offset + 1);
        }
        Ok(())
    }

    /// Writes records to MongoDB and poison to the dead-letter topic,
    /// retrying with capped exponential backoff. Without a deadline it
    /// retries until it succeeds, or until the shutdown grace period ends.
    fn write(&self, records: &[Record], mut deadline: Option<Instant>) -> bool {
        let retry = &self.config.retry;
        let mut backoff = Duration::from_millis(retry.initial_backoff_ms);
        let max_backoff = Duration::from_millis(retry.max_backoff_ms);
        loop {
            let started = Instant::now();
            match self.runtime.block_on(self.attempt(records)) {
                Ok((persisted, poison)) => {
                    self.metrics
                        .write_latency
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.batch_size.observe(records.len() as f64);
                    self.metrics.events_persisted.inc_by(persisted as u64);
                    for label in poison {
                        self.metrics.dead_lettered.with_label_values(&[label]).inc();
                    }
                    self.metrics.set_mongo_ok(true);
                    return true;
                }
                Err(e) => {
                    self.metrics.write_retries.inc();
                    self.metrics.set_mongo_ok(false);
                    warn!(error = %e, events = records.len(), backoff_ms = backoff.as_millis() as u64,
                        "batch write failed; retrying");
                }
            }
            if deadline.is_none() && self.shutdown.is_cancelled() {
                deadline =
                    Some(Instant::now() + Duration::from_millis(self.config.shutdown_grace_ms));
            }
            let wake = Instant::now() + backoff;
            while Instant::now() < wake {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return false;
                }
                if deadline.is_none() && self.shutdown.is_cancelled() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50).min(wake - Instant::now()));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    /// One attempt: MongoDB, then the dead-letter topic. Returns the number
    /// of events persisted and the labels of the dead-lettered ones.
    async fn attempt(&self, records: &[Record]) -> Result<(usize, Vec<&'static str>), String> {
        let mut positions = Vec::with_capacity(records.len());
        let mut batch = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if let Ok(event) = &r.parsed {
                positions.push(i);
                batch.push(BatchEvent {
                    event,
                    bytes: r.payload.as_ref().map_or(0, Vec::len),
                });
            }
        }
        let rejected = write_batch(self.store.as_ref(), &batch)
            .await
            .map_err(|e| e.to_string())?;
        let persisted = batch.len() - rejected.len();
        let mut poison: Vec<(usize, Poison)> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.parsed.as_ref().err().map(|p| (i, p.clone())))
            .collect();
        for (b, p) in rejected {
            if let Some(&i) = positions.get(b) {
                poison.push((i, p));
            }
        }
        if poison.is_empty() {
            return Ok((persisted, Vec::new()));
        }
        let dead: Vec<DeadRecord<'_>> = poison
            .iter()
            .filter_map(|(i, reason)| {
                let r = records.get(*i)?;
                Some(DeadRecord {
                    topic: &r.topic,
                    partition: r.partition,
                    offset: r.offset,
                    key: r.key.as_deref(),
                    payload: r.payload.as_deref(),
                    headers: &r.headers,
                    reason,
                })
            })
            .collect();
        for d in &dead {
            warn!(topic = d.topic, partition = d.partition, offset = d.offset,
                reason = %d.reason, dlq = self.dlq.topic(), "dead-lettering poison event");
        }
        self.dlq
            .send_all(&dead)
            .await
            .map_err(|e| format!("dead-letter topic: {e}"))?;
        Ok((persisted, poison.iter().map(|(_, p)| p.label()).collect()))
    }

    /// Commits every written offset. Async in the steady state (the result
    /// arrives in `commit_callback`), sync on revocation and shutdown.
    fn commit(&self, consumer: &BaseConsumer<Context>, mode: CommitMode) {
        let offsets: Vec<(Partition, i64)> = lock(&self.uncommitted)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for ((topic, partition), offset) in &offsets {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                error!(error = %e, "cannot build commit list");
                return;
            }
        }
        self.metrics.commits.inc();
        match consumer.commit(&tpl, mode) {
            Ok(()) if matches!(mode, CommitMode::Sync) => {
                let mut uncommitted = lock(&self.uncommitted);
                for (key, offset) in offsets {
                    if uncommitted.get(&key).is_some_and(|&o| o <= offset) {
                        uncommitted.remove(&key);
                    }
                }
            }
            Ok(()) => {}
            Err(e) => {
                self.metrics.commit_failures.inc();
                warn!(error = %e, "offset commit failed; retried later");
            }
        }
    }
}

pub fn consumer_config(config: &Config) -> ClientConfig {
    let k = &config.kafka;
    let mut c = k.client_config();
    c.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .set("max.poll.interval.ms", k.max_poll_interval_ms.to_string())
        .set("partition.assignment.strategy", &k.assignment_strategy)
        .set(
            "statistics.interval.ms",
            k.statistics_interval_ms.to_string(),
        )
        .set("client.id", "quiz-persister");
    c
}

/// How often a consumer that knows no broker is given its bootstrap servers
/// again while it stays that way (see `rebootstrap.rs`).
const REBOOTSTRAP_EVERY: Duration = Duration::from_secs(5);

/// Runs the loop on the current (blocking) thread until `shutdown`.
pub fn consume(
    config: Config,
    store: Arc<dyn Store>,
    dlq: DeadLetter,
    metrics: Metrics,
    runtime: Handle,
    shutdown: CancellationToken,
) -> Result<(), KafkaError> {
    let shared = Arc::new(Shared {
        config: config.clone(),
        store,
        dlq,
        metrics: metrics.clone(),
        runtime,
        shutdown: shutdown.clone(),
        pending: Mutex::new(Pending::default()),
        uncommitted: Mutex::new(HashMap::new()),
        brokerless: AtomicBool::new(false),
    });
    let consumer: BaseConsumer<Context> =
        consumer_config(&config).create_with_context(Context {
            shared: shared.clone(),
        })?;
    consumer.subscribe(&[config.kafka.topic.as_str()])?;
    info!(topic = %config.kafka.topic, group = %config.kafka.group_id, "consuming");

    let max_wait = Duration::from_millis(config.batch.max_wait_ms);
    let max_events = config.batch.max_events;
    let mut last_commit = Instant::now();
    let mut last_poll_error: Option<Instant> = None;
    let mut last_rebootstrap: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        if shared.brokerless.load(Ordering::Relaxed)
            && last_rebootstrap.is_none_or(|t| t.elapsed() >= REBOOTSTRAP_EVERY)
        {
            add_bootstrap_brokers(consumer.client(), &config.kafka.brokers);
            metrics.kafka_rebootstraps.inc();
            last_rebootstrap = Some(Instant::now());
        }
        let timeout = match lock(&shared.pending).started {
            Some(t) => max_wait.saturating_sub(t.elapsed()),
            None => Duration::from_millis(100),
        }
        .min(Duration::from_millis(100));
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
                let record = Record::from_message(&message);
                drop(message);
                metrics.events_consumed.inc();
                let mut pending = lock(&shared.pending);
                pending.started.get_or_insert_with(Instant::now);
                pending.records.push(record);
            }
            // Broker outages surface here and in `error`; librdkafka
            // reconnects by itself, so waiting is all there is to do.
            Some(Err(e))
                if last_poll_error.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) =>
            {
                warn!(error = %e, "consume error");
                last_poll_error = Some(Instant::now());
            }
            Some(Err(_)) | None => {}
        }
        let due = {
            let pending = lock(&shared.pending);
            !pending.records.is_empty()
                && (pending.records.len() >= max_events
                    || pending.started.is_some_and(|t| t.elapsed() >= max_wait))
        };
        if due {
            if shared.flush() {
                shared.commit(&consumer, CommitMode::Async);
                last_commit = Instant::now();
            }
        } else if last_commit.elapsed() > Duration::from_secs(1)
            && !lock(&shared.uncommitted).is_empty()
        {
            shared.commit(&consumer, CommitMode::Async);
            last_commit = Instant::now();
        }
    }

    info!("shutting down: finishing the pending batch");
    if !shared.flush() {
        warn!("pending batch not written within the grace period; it will be read again");
    }
    shared.commit(&consumer, CommitMode::Sync);
    close(consumer, Duration::from_millis(config.shutdown_grace_ms));
    Ok(())
}

/// Leaves the group and closes the consumer, waiting at most `limit`.
///
/// Why not simply drop it here: `BaseConsumer`'s `Drop` polls until
/// librdkafka says the consumer is closed, with no time limit, and a consumer
/// that lost its brokers or its group coordinator (Kafka down at shutdown)
/// may never get there, which hung the process (and a test's teardown with
/// it). So the drop runs on a thread of its own: the normal close (leave the
/// group, serve the revocation) is unchanged, and past `limit` that thread is
/// left behind while the process exits; the broker then expires the
/// membership after `session.timeout.ms`.
fn close(consumer: BaseConsumer<Context>, limit: Duration) {
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let closing = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = closed_tx.send(());
        });
    if let Err(e) = closing {
        warn!(error = %e, "cannot start the closing thread; the consumer was closed in place");
        return;
    }
    match closed_rx.recv_timeout(limit) {
        Ok(()) => debug!("consumer closed"),
        Err(_) => warn!(
            limit_ms = limit.as_millis() as u64,
            "consumer not closed in time (Kafka unreachable?); leaving the group by session timeout"
        ),
    }
}
