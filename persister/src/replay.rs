//! `persister replay [--quiz ID]`: rebuilds the MongoDB state of one quiz
//! (or of all) from the topic alone, proving the event log is the durable
//! record. It deletes the quiz's documents, then reads every partition from
//! its low watermark to the high watermark taken at start (bounded: it
//! stops there even if core keeps producing) and applies the events through
//! the same `write_batch` as the live pipeline. It joins no consumer group
//! and commits nothing, so it does not disturb running persisters; whatever
//! they write meanwhile is idempotent with what replay writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::config::Config;
use crate::event::Event;
use crate::store::{write_batch, BatchEvent, Store, StoreError};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records read from the topic.
    pub read: u64,
    /// Events of the selected quiz (or all) that were applied.
    pub applied: u64,
    /// Poison records skipped (they are in the dead-letter topic already).
    pub poison: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("topic {0} not found or has no partitions")]
    NoTopic(String),
    #[error("replay task failed: {0}")]
    Task(String),
}

/// Rebuilds `quiz` (or everything) from the topic.
pub async fn replay(
    config: &Config,
    store: Arc<dyn Store>,
    quiz: Option<&str>,
) -> Result<ReplayReport, ReplayError> {
    store.ensure_schema().await?;
    let config = config.clone();
    let quiz = quiz.map(str::to_string);
    let runtime = Handle::current();
    tokio::task::spawn_blocking(move || replay_blocking(&config, store, quiz.as_deref(), runtime))
        .await
        .map_err(|e| ReplayError::Task(e.to_string()))?
}

fn replay_blocking(
    config: &Config,
    store: Arc<dyn Store>,
    quiz: Option<&str>,
    runtime: Handle,
) -> Result<ReplayReport, ReplayError> {
    let topic = config.kafka.topic.as_str();
    let consumer: BaseConsumer = config
        .kafka
        .client_config()
        .set("group.id", format!("{}-replay", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ReplayError::NoTopic(topic.to_string()));
    }
    // The end of the replay: the high watermarks now.
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            remaining.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
        }
    }
    runtime.block_on(store.clear(quiz))?;
    info!(
        topic,
        quiz = quiz.unwrap_or("*"),
        partitions = partitions.len(),
        "replaying"
    );
    let mut report = ReplayReport::default();
    if remaining.is_empty() {
        return Ok(report);
    }
    consumer.assign(&tpl)?;
    let highs = remaining.clone();

    let max = config.batch.max_events;
    let mut events: Vec<(Event, usize)> = Vec::with_capacity(max);
    let mut idle_since = Instant::now();
    while !remaining.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle_since = Instant::now();
                use rdkafka::Message;
                report.read += 1;
                let partition = m.partition();
                let offset = m.offset();
                let high = highs.get(&partition).copied().unwrap_or(0);
                if offset + 1 >= high {
                    remaining.remove(&partition);
                }
                if offset >= high {
                    // Produced after the replay started: not part of it.
                    continue;
                }
                let selected = match (quiz, m.key()) {
                    (Some(q), Some(k)) => k == q.as_bytes(),
                    _ => true,
                };
                if !selected {
                    continue;
                }
                match m.payload().map(Event::parse) {
                    Some(Ok(e)) if quiz.is_none_or(|q| e.quiz_id == q) => {
                        let bytes = m.payload().map_or(0, <[u8]>::len);
                        events.push((e, bytes));
                    }
                    Some(Ok(_)) => {}
                    _ => report.poison += 1,
                }
            }
            Some(Err(e)) => warn!(error = %e, "replay consume error"),
            None => {
                if idle_since.elapsed() > Duration::from_secs(60) {
                    warn!("no progress for 60 s; stopping the replay early");
                    break;
                }
            }
        }
        if events.len() >= max || (remaining.is_empty() && !events.is_empty()) {
            report.applied += apply(&runtime, store.as_ref(), &events)?;
            events.clear();
        }
    }
    if !events.is_empty() {
        report.applied += apply(&runtime, store.as_ref(), &events)?;
    }
    info!(?report, "replay done");
    Ok(report)
}

fn apply(
    runtime: &Handle,
    store: &dyn Store,
    events: &[(Event, usize)],
) -> Result<u64, StoreError> {
    let batch: Vec<BatchEvent<'_>> = events
        .iter()
        .map(|(event, bytes)| BatchEvent {
            event,
            bytes: *bytes,
        })
        .collect();
    let rejected = runtime.block_on(write_batch(store, &batch))?;
    for (i, reason) in &rejected {
        warn!(index = i, %reason, "replay: event rejected by MongoDB");
    }
    Ok((batch.len() - rejected.len()) as u64)
}
