//! [`KafkaSink`]: the [`EventSink`] on the `quiz-events` Kafka topic.
//!
//! Record format (see `docs/events.md`): key = quiz id, value = the event's
//! JSON, headers `event_id` and `type`. All events of a quiz share a key,
//! hence a partition, hence an order.
//!
//! Delivery: an idempotent producer (`enable.idempotence=true`, `acks=all`),
//! so librdkafka's own retries neither duplicate nor reorder within a
//! partition. `publish` awaits the delivery report; a failed delivery (after
//! librdkafka gave up at `message.timeout.ms`) is produced again a bounded
//! number of times with capped back-off, then reported as
//! `EventError::Delivery`. Retrying inside `publish` keeps the per-task order
//! the `EventSink` contract promises: a task's next event is only produced
//! once this one is delivered.
//!
//! Bound: librdkafka's queue holds at most `max_buffered_messages`; when it is
//! full `publish` fails at once with `EventError::Backpressure` (the caller
//! refuses the change with 503) instead of waiting or buffering without end.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::{Event, EventError, EventSink};
use reports::ReportingProducer;

mod reports;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Settings of [`KafkaSink`].
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    /// How long librdkafka waits to fill a batch (`linger.ms`).
    pub linger_ms: u32,
    /// Most messages per batch (`batch.num.messages`).
    pub batch_size: u32,
    pub compression: Compression,
    /// The bound of the producer queue (`queue.buffering.max.messages`);
    /// past it `publish` answers `Backpressure` and `ready()` is false.
    pub max_buffered_messages: u32,
    /// How long librdkafka keeps trying one delivery (`message.timeout.ms`).
    pub message_timeout_ms: u32,
    /// Times `publish` produces an event whose delivery failed, in all.
    pub delivery_attempts: u32,
    /// First pause between those attempts, doubled, capped at 2 s.
    pub retry_backoff: Duration,
    /// Consecutive failed deliveries after which `ready()` turns false
    /// (until a delivery or a metadata probe succeeds again).
    pub unhealthy_after_failures: u32,
    /// Extra librdkafka properties set after the ones above (TLS, SASL,
    /// tuning); `Config::validate` keeps the guarantee-carrying keys out.
    pub properties: Vec<(String, String)>,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            brokers: "127.0.0.1:9092".into(),
            topic: "quiz-events".into(),
            linger_ms: 5,
            batch_size: 10_000,
            compression: Compression::Lz4,
            max_buffered_messages: 100_000,
            message_timeout_ms: 10_000,
            delivery_attempts: 3,
            retry_backoff: Duration::from_millis(200),
            unhealthy_after_failures: 3,
            properties: Vec::new(),
        }
    }
}

const BACKOFF_CAP: Duration = Duration::from_secs(2);
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub struct KafkaSink {
    inner: Arc<Inner>,
}

struct Inner {
    producer: ReportingProducer,
    opts: KafkaOptions,
    /// Deliveries failed in a row; reset by any success.
    failures: AtomicU32,
    /// Events handed to librdkafka whose delivery report has not arrived.
    /// Counted here because `rd_kafka_outq_len` also counts protocol
    /// requests (metadata, producer id), which are not the bound's business.
    queued: AtomicUsize,
}

/// Decrements the queued count when a delivery is over, however it ends
/// (report, error, or the publishing future being dropped).
struct QueuedGuard<'a>(&'a AtomicUsize);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn config_error(e: impl std::fmt::Display) -> EventError {
    EventError::Delivery(format!("kafka producer configuration: {e}"))
}

/// The librdkafka configuration of the sink's producer: the delivery
/// guarantee (idempotence, all in-sync replicas), the batching and bound
/// from `opts`, then `opts.properties`. Public so a benchmark can drive a
/// bare producer exactly as the sink's (`examples/e2e_answers.rs`, its
/// Kafka floor).
pub fn producer_config(opts: &KafkaOptions) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &opts.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", opts.linger_ms.to_string())
        .set("batch.num.messages", opts.batch_size.max(1).to_string())
        .set("compression.type", opts.compression.as_str())
        .set(
            "queue.buffering.max.messages",
            opts.max_buffered_messages.max(1).to_string(),
        )
        .set("message.timeout.ms", opts.message_timeout_ms.to_string());
    for (key, value) in &opts.properties {
        config.set(key, value);
    }
    config
}

impl KafkaSink {
    /// Creates the producer (no network round trip yet: librdkafka connects
    /// in the background). Inside a tokio runtime it also starts the probe
    /// that turns `ready()` back on once the brokers answer again.
    pub fn new(opts: KafkaOptions) -> Result<Self, EventError> {
        if opts.brokers.trim().is_empty() {
            return Err(config_error("no brokers configured"));
        }
        if opts.topic.trim().is_empty() {
            return Err(config_error("no topic configured"));
        }
        // librdkafka checks every property here: an unknown key or a bad
        // value fails start-up with its own message naming the key.
        let producer = ReportingProducer::new(&producer_config(&opts)).map_err(config_error)?;
        let inner = Arc::new(Inner {
            producer,
            opts,
            failures: AtomicU32::new(0),
            queued: AtomicUsize::new(0),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(probe(Arc::downgrade(&inner)));
        }
        Ok(KafkaSink { inner })
    }

    /// Events handed to librdkafka and not yet delivered (or failed).
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }
}

/// While deliveries are failing, asks the brokers for metadata every second;
/// an answer makes the sink ready again. Without it a sink marked unhealthy
/// would stay so: callers stop publishing while it is not ready.
async fn probe(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.failures.load(Ordering::Relaxed) < inner.opts.unhealthy_after_failures {
            continue;
        }
        let probe = Arc::clone(&inner);
        let ok = tokio::task::spawn_blocking(move || {
            probe
                .producer
                .client()
                .fetch_metadata(Some(&probe.opts.topic), Duration::from_secs(1))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if ok {
            inner.failures.store(0, Ordering::Relaxed);
        } else {
            add_bootstrap_brokers(&inner);
        }
    }
}

/// Gives the producer its `bootstrap.servers` again while the metadata
/// probe fails.
///
/// Why: since librdkafka 2.10 a client forgets every broker a Metadata
/// response leaves out, and a broker in controlled shutdown can answer
/// without itself, so a full Kafka restart can leave the producer knowing
/// no broker at all. Its own re-bootstrap timer starts only when a Metadata
/// request is sent, which needs a broker, so it never fires and every
/// publish would fail until core restarts (the persister's consumer was seen
/// stuck that way: docs/persister.md). Adding brokers that are already
/// configured is a no-op in librdkafka, so calling this every probe is
/// harmless.
fn add_bootstrap_brokers(inner: &Inner) {
    let Ok(list) = std::ffi::CString::new(inner.opts.brokers.as_str()) else {
        return;
    };
    // SAFETY: the client handle lives as long as `inner.producer`, which is
    // borrowed for the call; `rd_kafka_brokers_add` is thread-safe and
    // copies the string.
    unsafe {
        rdkafka::bindings::rd_kafka_brokers_add(
            inner.producer.client().native_ptr(),
            list.as_ptr(),
        );
    }
}

#[async_trait]
impl EventSink for KafkaSink {
    async fn publish(&self, event: &Event) -> Result<(), EventError> {
        let inner = &self.inner;
        let payload = event
            .to_json()
            .map_err(|e| EventError::Delivery(format!("encoding event: {e}")))?;
        let headers: [(&str, &[u8]); 2] = [
            ("event_id", event.event_id.as_bytes()),
            ("type", event.type_name().as_bytes()),
        ];
        let mut backoff = inner.opts.retry_backoff;
        let attempts = inner.opts.delivery_attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            let (topic, key) = (&inner.opts.topic, event.quiz_id.as_str());
            match inner.producer.send(topic, key, &payload, &headers) {
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    return Err(EventError::Backpressure);
                }
                Err(e) => last = e.to_string(),
                Ok(delivery) => {
                    inner.queued.fetch_add(1, Ordering::Relaxed);
                    let report = {
                        let _guard = QueuedGuard(&inner.queued);
                        delivery.await
                    };
                    match report {
                        Ok(Ok(_)) => {
                            // Read first: every event of every worker passes
                            // here, and a store would take the line from the
                            // other cores each time.
                            if inner.failures.load(Ordering::Relaxed) != 0 {
                                inner.failures.store(0, Ordering::Relaxed);
                            }
                            return Ok(());
                        }
                        Ok(Err(e)) => {
                            inner.failures.fetch_add(1, Ordering::Relaxed);
                            last = e.to_string();
                        }
                        Err(_) => last = "producer dropped the delivery report".into(),
                    }
                }
            }
            tracing::warn!(
                event_id = %event.event_id,
                attempt,
                error = %last,
                "kafka delivery failed"
            );
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
        }
        Err(EventError::Delivery(last))
    }

    fn ready(&self) -> bool {
        let inner = &self.inner;
        self.queued() < inner.opts.max_buffered_messages as usize
            && inner.failures.load(Ordering::Relaxed) < inner.opts.unhealthy_after_failures
    }

    async fn flush(&self, timeout: Duration) -> Result<(), EventError> {
        let inner = Arc::clone(&self.inner);
        // rd_kafka_flush blocks the thread: keep it off the runtime workers.
        tokio::task::spawn_blocking(move || inner.producer.flush(timeout))
            .await
            .map_err(|e| EventError::Delivery(format!("flush task: {e}")))?
            .map_err(|e| EventError::Delivery(format!("flush: {e}")))
    }
}
