//! The persister drains the event log (`quiz-events`, format in
//! `docs/events.md`) into MongoDB, idempotently. Operations and the
//! idempotence argument are in `docs/persister.md`.
//!
//! Map of the modules, in the order data flows through them:
//!
//! - [`config`]: the typed configuration (file + `QUIZ_*`/`PERSISTER_*` env).
//! - [`pipeline`]: the consumer thread. Reads records in batches bounded by
//!   size and time, hands them to the store, dead-letters poison, commits
//!   offsets after the write; flushes on revocation and on shutdown.
//! - [`event`]: parses and validates one record value into an [`event::Event`]
//!   or a [`event::Poison`] reason.
//! - [`writes`]: folds a batch of events into one idempotent upsert per
//!   document (`$setOnInsert`/`$max`/`$min`, never `$inc`), and says which
//!   of them can be plain inserts (documents that never change).
//! - [`store`]: `trait Store` and [`store::write_batch`]; `store/mongo.rs`
//!   sends unordered `insert` commands for immutable documents (a duplicate
//!   key counts as written) beside unordered `update` commands for the rest,
//!   `store/memory.rs` models it for tests.
//! - [`dlq`]: the dead-letter producer.
//! - [`rebootstrap`]: gives a Kafka client its bootstrap servers again when
//!   librdkafka has forgotten every broker (a full Kafka restart).
//! - [`metrics`] and [`http`]: Prometheus metrics, `/metrics`, `/healthz`,
//!   `/readyz`.
//! - [`replay`]: rebuilds MongoDB from the topic.
//!
//! [`start`]/[`run`] wire them together; `main.rs` only parses the command
//! line and installs the signal handlers.

pub mod config;
pub mod dlq;
pub mod event;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod rebootstrap;
pub mod replay;
pub mod store;
pub mod writes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
pub use metrics::Metrics;
use store::mongo::MongoStore;
use store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("http endpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
    #[error("persister task failed: {0}")]
    Task(String),
}

/// A started persister.
pub struct Running {
    /// Where `/metrics`, `/healthz`, `/readyz` listen (None when disabled).
    pub http_addr: Option<SocketAddr>,
    pub metrics: Metrics,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Waits until the persister stopped (after `shutdown` was cancelled, it
    /// finishes its batch and commits first).
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.map_err(|e| Error::Task(e.to_string()))?
    }
}

/// Starts the persister against MongoDB (`config.mongodb`) and returns as
/// soon as the HTTP endpoint is bound; the pipeline waits for its
/// dependencies in the background, reporting not-ready meanwhile.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    config.validate()?;
    let store = MongoStore::from_config(&config).await?;
    start_with_store(config, Arc::new(store), shutdown).await
}

/// Like [`start`], with any store (tests use the in-memory one).
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<Running, Error> {
    config.validate()?;
    let metrics = Metrics::new();
    let http_addr = match config.http.listen.parse::<SocketAddr>() {
        Ok(addr) => Some(http::serve(addr, metrics.clone(), shutdown.clone()).await?),
        Err(_) => None,
    };
    if let Some(addr) = http_addr {
        info!(%addr, "metrics endpoint listening");
    }
    let task = tokio::spawn(run_pipeline(config, store, metrics.clone(), shutdown));
    Ok(Running {
        http_addr,
        metrics,
        task,
    })
}

/// Starts and waits: the library entry point `main` calls.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    start(config, shutdown).await?.wait().await
}

async fn run_pipeline(
    config: Config,
    store: Arc<dyn Store>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // MongoDB first: collections and indexes, retried until it answers.
    if !retry_until(&config, &shutdown, "mongodb schema", || {
        store.ensure_schema()
    })
    .await
    {
        return Ok(());
    }
    metrics.set_mongo_ok(true);
    if config.kafka.create_dlq_topic {
        let topic = config.dlq_topic();
        let kafka = config.kafka.clone();
        let created = retry_until(&config, &shutdown, "dead-letter topic", || {
            ensure_topic(&kafka, &topic, 1)
        })
        .await;
        if !created {
            return Ok(());
        }
    }
    let dlq = dlq::DeadLetter::new(&config.kafka, config.dlq_topic())?;

    // Readiness between batches: a ping every 2 s.
    let pinger = {
        let (store, metrics, shutdown) = (store.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                let ok = tokio::time::timeout(Duration::from_secs(3), store.ping())
                    .await
                    .is_ok_and(|r| r.is_ok());
                metrics.set_mongo_ok(ok);
            }
        })
    };
    let runtime = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || {
        pipeline::consume(config, store, dlq, metrics, runtime, shutdown)
    })
    .await;
    pinger.abort();
    result.map_err(|e| Error::Task(e.to_string()))??;
    info!("persister stopped");
    Ok(())
}

/// Retries `op` with capped backoff until it succeeds (`true`) or shutdown
/// (`false`).
async fn retry_until<F, Fut, E>(
    config: &Config,
    shutdown: &CancellationToken,
    what: &str,
    mut op: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut backoff = Duration::from_millis(config.retry.initial_backoff_ms);
    let max = Duration::from_millis(config.retry.max_backoff_ms);
    loop {
        match op().await {
            Ok(()) => return true,
            Err(e) => warn!(error = %e, what, "not ready; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

/// Creates `topic` with `partitions` partitions (replication
/// `kafka.dlq_replication_factor`) unless it exists.
pub async fn ensure_topic(
    kafka: &config::KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(kafka.dlq_replication_factor),
    );
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    for result in admin.create_topics([&new], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    warn!(topic = %name, %code, "cannot create topic");
                })
            }
        }
    }
    Ok(())
}

/// Installs the `tracing` subscriber (JSON or text, `RUST_LOG` or
/// `log.level`).
pub fn init_logging(log: &config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
