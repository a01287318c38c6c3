//! quiz-core: the quiz service.
//!
//! Map of the crate (requests flow top to bottom):
//!
//! - [`http`]: the TCP accept loop and the small hand router over hyper 1.
//!   Every HTTP route of the contract lives here; it parses a request, calls
//!   [`quiz::QuizService`] and renders JSON (or the contract's error shape).
//!   `GET /v1/quizzes/{id}/ws` is handed to [`connection`].
//! - [`connection`]: one WebSocket. A reader task (the read loop: frame
//!   limits, rate limit, message dispatch) and a writer task draining the
//!   connection's bounded [`room::Outbox`].
//! - [`room`]: one room per quiz with members on this node, in a `DashMap`.
//!   A room task encodes each leaderboard once and fans the same bytes out,
//!   and turns quiz state changes (seen on the [`bus`] or by periodic
//!   reconcile) into `question` / `question_closed` / `quiz_ended` messages.
//! - [`quiz`]: the rules: validation, the live / self-paced state machine,
//!   scoring, and the answer flow (store, then event, then acknowledgement).
//! - [`protocol`]: every message in and out, parsed in one place.
//! - [`token`]: HMAC-signed player and host tokens (any node verifies them).
//! - Backends, chosen by [`config::Config`]: [`store`] (`QuizStore`: memory
//!   or Redis Cluster), [`events`] (`EventSink`: file or Kafka), [`bus`]
//!   (`ControlBus`: memory or Redis pub/sub). [`model`] holds the shared nouns.
//! - [`metrics`] (Prometheus), [`shutdown`] (signal, task tracking, flush),
//!   [`web`] (the player and host pages, compiled in).
//!
//! The binary is `main.rs`; everything it does is [`run`].

pub mod bus;
pub mod events;
pub mod model;
pub mod store;

pub mod config;
pub mod connection;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod quiz;
pub mod room;
pub mod shutdown;
pub mod token;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::Config;
pub use shutdown::Shutdown;

/// Builds the backends the config selects (embedded or distributed), creates
/// the demo quiz in embedded mode, and serves `listener` until `shutdown`
/// fires; then closes WebSockets with 1001 and flushes the event sink.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let service = quiz::QuizService::build(Arc::clone(&config)).await?;
    if config.is_embedded() && config.demo_quiz {
        service.create_demo_quiz().await?;
    }
    http::serve(service, listener, shutdown).await
}

/// Structured logs to stderr (`log_format` = text | json; `RUST_LOG` filters,
/// default `info`).
pub fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}

type Backends = (
    Arc<dyn store::QuizStore>,
    Arc<dyn events::EventSink>,
    Arc<dyn bus::ControlBus>,
);

/// Embedded mode: memory store, memory bus, file sink. Distributed mode
/// (Redis and Kafka configured): Redis Cluster store, Redis pub/sub bus,
/// Kafka sink.
pub async fn backends(config: &Config) -> anyhow::Result<Backends> {
    if config.is_embedded() {
        let sink = events::file::FileSink::open(&config.event_log)
            .await
            .map_err(|e| anyhow::anyhow!("event_log {}: {e}", config.event_log.display()))?;
        tracing::info!(event_log = %config.event_log.display(), "embedded mode");
        return Ok((
            Arc::new(store::memory::MemoryStore::new()),
            Arc::new(sink),
            Arc::new(bus::memory::MemoryBus::new()),
        ));
    }
    distributed_backends(config).await
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
    Ok((Arc::new(store), Arc::new(sink), Arc::new(bus)))
}
