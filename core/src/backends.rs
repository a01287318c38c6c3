//! The engines this node runs on, chosen by [`Config`]: embedded (memory
//! store, memory bus, file sink) or distributed (Redis Cluster store, Redis
//! pub/sub bus, Kafka sink).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::metrics::{LaneCounts, LaneSource};
use crate::{bus, events, store};

/// The store, the sink, the bus, and the Redis store's direct lanes' counts
/// (for `/metrics`; none in embedded mode).
type Backends = (
    Arc<dyn store::QuizStore>,
    Arc<dyn events::EventSink>,
    Arc<dyn bus::ControlBus>,
    Option<LaneSource>,
);

/// Embedded mode: memory store, memory bus, file sink. Distributed mode
/// (Redis and Kafka configured): Redis Cluster store, Redis pub/sub bus,
/// Kafka sink.
pub async fn select(config: &Config) -> anyhow::Result<Backends> {
    if config.is_embedded() {
        let sink = events::file::FileSink::open(&config.event_log)
            .await
            .map_err(|e| anyhow::anyhow!("event_log {}: {e}", config.event_log.display()))?;
        tracing::info!(event_log = %config.event_log.display(), "embedded mode");
        return Ok((
            Arc::new(store::memory::MemoryStore::with_retention(retention(
                config,
            ))),
            Arc::new(sink),
            Arc::new(bus::memory::MemoryBus::new()),
            None,
        ));
    }
    distributed_backends(config).await
}

/// How long either store keeps a quiz (`redis_retention_*_s`).
fn retention(config: &Config) -> store::Retention {
    store::Retention {
        live: Duration::from_secs(config.redis_retention_live_s),
        ended: Duration::from_secs(config.redis_retention_ended_s),
    }
}

async fn distributed_backends(config: &Config) -> anyhow::Result<Backends> {
    let tls_ca = match &config.redis_tls_ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("redis_tls_ca_file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let urls = config.redis_urls();
    let store = store::redis_cluster::RedisClusterStore::connect(
        &urls,
        store::redis_cluster::RedisOptions {
            wait_replicas: config.redis_wait_replicas,
            wait_timeout: Duration::from_millis(config.redis_wait_timeout_ms),
            command_timeout: Duration::from_millis(config.redis_command_timeout_ms),
            max_batch: config.redis_max_batch,
            retention: retention(config),
            tls_ca: tls_ca.clone(),
            ..store::redis_cluster::RedisOptions::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("redis_nodes {:?}: {e}", config.redis_nodes))?;
    let bus = bus::redis::RedisBus::connect_with(&urls, tls_ca)
        .await
        .map_err(|e| anyhow::anyhow!("redis_nodes {:?} (control bus): {e}", config.redis_nodes))?;
    let sink = events::kafka::KafkaSink::new(events::kafka::KafkaOptions {
        brokers: config.kafka_brokers.clone(),
        topic: config.kafka_topic.clone(),
        max_buffered_messages: config.kafka_max_buffered_events,
        message_timeout_ms: config.kafka_message_timeout_ms,
        properties: config.kafka_client_properties(),
        ..events::kafka::KafkaOptions::default()
    })
    .map_err(|e| anyhow::anyhow!("kafka_brokers {:?}: {e}", config.kafka_brokers))?;
    tracing::info!(
        redis = ?config.redis_nodes,
        kafka = %config.kafka_brokers,
        topic = %config.kafka_topic,
        "distributed mode"
    );
    let store = Arc::new(store);
    let lanes = lane_counters(Arc::downgrade(&store));
    Ok((store, Arc::new(sink), Arc::new(bus), Some(lanes)))
}

/// The Redis store's direct lanes (`store/redis_cluster/lane.rs`), for
/// `/metrics`: which path carries the answers, and how often a lane's
/// connection failed (a failover, a moved slot, a sick master).
fn lane_counters(store: std::sync::Weak<store::redis_cluster::RedisClusterStore>) -> LaneSource {
    Arc::new(move || {
        let store = store.upgrade()?;
        Some(LaneCounts {
            answers: store.answers_on_lanes(),
            closures: store.lane_closures(),
        })
    })
}
