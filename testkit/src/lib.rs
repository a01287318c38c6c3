//! # testkit: the local stack, seen from a test
//!
//! Integration tests of every crate reach the real Redis Cluster, Kafka and
//! MongoDB (FerretDB) started by `deploy/local/stack up`. This crate is the one
//! place that knows where they are and how a test fails when they are not.
//!
//! - [`Settings`]: the connection variables (`QUIZ_REDIS_NODES`,
//!   `QUIZ_KAFKA_BROKERS`, `QUIZ_KAFKA_TOPIC`, `QUIZ_MONGODB_URI`,
//!   `QUIZ_MONGODB_DB`), read by [`Settings::from_env`] with defaults that
//!   match the local stack. `docs/local-stack.md` documents them.
//! - [`require_redis_cluster`], [`require_kafka`], [`require_mongodb`]: connect
//!   with a short timeout, check the service is healthy, and **panic** with a
//!   message naming the address and the fix (`deploy/local/stack up`). An
//!   integration test never skips silently: a missing service is a failure.
//! - [`Kafka`]: what [`require_kafka`] returns: a client config with the
//!   brokers set, and topic creation/deletion for tests.
//! - [`unique_name`], [`unique_topic`], [`unique_db`], [`unique_quiz_id`]:
//!   names that no other test, test binary or earlier run uses, so tests run
//!   in parallel against one shared stack without seeing each other's data.
//! - [`api`]: the wire contract of `docs/api/` (OpenAPI, AsyncAPI, JSON
//!   Schemas) as a test oracle: validate live responses, WebSocket messages
//!   and event records, so a drift between server and documents fails.
//! - [`eventually`]: poll until a condition holds or panic after a timeout,
//!   for effects that arrive asynchronously (a consumer draining a topic).
//!
//! Plain unit tests must not use this crate's `require_*` helpers: they need
//! no service. Tests that do are integration tests (`tests/*.rs`).

pub mod api;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// Default of `QUIZ_REDIS_NODES`: the six nodes of the local Redis Cluster.
pub const DEFAULT_REDIS_NODES: &str =
    "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,127.0.0.1:7004,127.0.0.1:7005";
/// Default of `QUIZ_KAFKA_BROKERS`.
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
/// Default of `QUIZ_KAFKA_SASL_BROKERS`.
pub const DEFAULT_KAFKA_SASL_BROKERS: &str = "127.0.0.1:9094";
/// The SASL/PLAIN credentials of the local stack's SASL listener (`deploy/local/stack`).
pub const KAFKA_SASL_USER: &str = "quiz";
pub const KAFKA_SASL_PASSWORD: &str = "quiz-local-sasl";
/// Default of `QUIZ_REDIS_TLS_NODE`.
pub const DEFAULT_REDIS_TLS_NODE: &str = "127.0.0.1:7010";
/// The ACL user of the local stack's `redis-tls` node (`deploy/local/stack`).
pub const REDIS_TLS_USER: &str = "quiz";
pub const REDIS_TLS_PASSWORD: &str = "quiz-local-redis";

/// Default of `QUIZ_REDIS_TLS_CA`: where `deploy/local/stack` of this
/// checkout writes it (`<repo>/.stack/data/redis-tls/ca.crt`, or under
/// `QUIZ_STACK_DIR`).
pub fn default_redis_tls_ca() -> String {
    let stack = std::env::var("QUIZ_STACK_DIR")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../.stack").to_owned());
    format!("{stack}/data/redis-tls/ca.crt")
}
/// Default of `QUIZ_KAFKA_TOPIC`.
pub const DEFAULT_KAFKA_TOPIC: &str = "quiz-events";
/// Default of `QUIZ_MONGODB_URI`.
pub const DEFAULT_MONGODB_URI: &str = "mongodb://127.0.0.1:27017/";
/// Default of `QUIZ_MONGODB_DB`.
pub const DEFAULT_MONGODB_DB: &str = "quiz";

/// How long a `require_*` helper waits for a service before it panics.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the services are. Built from the environment by [`Settings::from_env`];
/// an unset or empty variable takes the local stack's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `QUIZ_REDIS_NODES`: comma-separated `host:port` seed nodes of the cluster.
    pub redis_nodes: Vec<String>,
    /// `QUIZ_KAFKA_BROKERS`: the `bootstrap.servers` list, comma-separated.
    pub kafka_brokers: String,
    /// `QUIZ_KAFKA_TOPIC`: the event topic (its dead-letter topic is `<topic>-dlq`).
    pub kafka_topic: String,
    /// `QUIZ_KAFKA_SASL_BROKERS`: the same broker's SASL_PLAINTEXT listener
    /// (mechanism PLAIN, user [`KAFKA_SASL_USER`], password
    /// [`KAFKA_SASL_PASSWORD`]), for the security settings' tests.
    pub kafka_sasl_brokers: String,
    /// `QUIZ_REDIS_TLS_NODE`: the local stack's `redis-tls` node (TLS only,
    /// ACL user [`REDIS_TLS_USER`] / [`REDIS_TLS_PASSWORD`], a one-node
    /// cluster), for the Redis security settings' tests.
    pub redis_tls_node: String,
    /// `QUIZ_REDIS_TLS_CA`: the PEM of the CA that signed its certificate.
    pub redis_tls_ca: String,
    /// `QUIZ_MONGODB_URI`: a MongoDB connection string.
    pub mongodb_uri: String,
    /// `QUIZ_MONGODB_DB`: the database of the durable record.
    pub mongodb_db: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            redis_nodes: split_list(DEFAULT_REDIS_NODES),
            kafka_brokers: DEFAULT_KAFKA_BROKERS.to_owned(),
            kafka_topic: DEFAULT_KAFKA_TOPIC.to_owned(),
            kafka_sasl_brokers: DEFAULT_KAFKA_SASL_BROKERS.to_owned(),
            redis_tls_node: DEFAULT_REDIS_TLS_NODE.to_owned(),
            redis_tls_ca: default_redis_tls_ca(),
            mongodb_uri: DEFAULT_MONGODB_URI.to_owned(),
            mongodb_db: DEFAULT_MONGODB_DB.to_owned(),
        }
    }
}

impl Settings {
    /// Reads the `QUIZ_*` connection variables; unset or empty ones take the defaults.
    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Like [`Settings::from_env`], with variables looked up by `get` (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |key: &str, default: &str| {
            get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Settings {
            redis_nodes: split_list(&var("QUIZ_REDIS_NODES", DEFAULT_REDIS_NODES)),
            kafka_brokers: var("QUIZ_KAFKA_BROKERS", DEFAULT_KAFKA_BROKERS),
            kafka_topic: var("QUIZ_KAFKA_TOPIC", DEFAULT_KAFKA_TOPIC),
            kafka_sasl_brokers: var("QUIZ_KAFKA_SASL_BROKERS", DEFAULT_KAFKA_SASL_BROKERS),
            redis_tls_node: var("QUIZ_REDIS_TLS_NODE", DEFAULT_REDIS_TLS_NODE),
            redis_tls_ca: var("QUIZ_REDIS_TLS_CA", &default_redis_tls_ca()),
            mongodb_uri: var("QUIZ_MONGODB_URI", DEFAULT_MONGODB_URI),
            mongodb_db: var("QUIZ_MONGODB_DB", DEFAULT_MONGODB_DB),
        }
    }

    /// The Redis nodes as `redis://host:port` URLs, for [`ClusterClient`].
    pub fn redis_urls(&self) -> Vec<String> {
        self.redis_nodes
            .iter()
            .map(|n| {
                if n.contains("://") {
                    n.clone()
                } else {
                    format!("redis://{n}")
                }
            })
            .collect()
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Panics with the loud, uniform message of a missing service.
#[track_caller]
fn unreachable_service(service: &str, at: &str, why: impl std::fmt::Display) -> ! {
    panic!(
        "\n\n{service} not reachable at {at}: {why}\n\
         => run deploy/local/stack up (see docs/local-stack.md); integration tests need the local stack\n"
    )
}

// ------------------------------------------------------------------ Redis

/// A cluster client for the configured nodes, with short connect and response timeouts.
/// Does not connect; see [`require_redis_cluster`].
pub fn redis_cluster_client(settings: &Settings) -> redis::RedisResult<ClusterClient> {
    ClusterClient::builder(settings.redis_urls())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(CONNECT_TIMEOUT)
        .build()
}

/// Connects to the Redis Cluster of [`Settings::from_env`] and checks that it
/// reports `cluster_state:ok`. Panics with a clear message otherwise.
///
/// The connection is cheap to clone; clones share the node connections.
#[track_caller]
pub fn require_redis_cluster() -> impl Future<Output = ClusterConnection> {
    let settings = Settings::from_env();
    let at = settings.redis_nodes.join(",");
    let caller = std::panic::Location::caller();
    async move {
        let attempt = async {
            let client = redis_cluster_client(&settings)?;
            let mut conn = client.get_async_connection().await?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>((conn, info))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt).await {
            Ok(Ok((conn, info))) if info.contains("cluster_state:ok") => conn,
            Ok(Ok((_, info))) => unreachable_service(
                "Redis Cluster",
                &at,
                format!(
                    "the cluster is not healthy ({}) (required at {caller})",
                    info.lines()
                        .find(|l| l.starts_with("cluster_state"))
                        .unwrap_or("no cluster_state")
                        .trim()
                ),
            ),
            Ok(Err(e)) => {
                unreachable_service("Redis Cluster", &at, format!("{e} (required at {caller})"))
            }
            Err(_) => unreachable_service(
                "Redis Cluster",
                &at,
                format!(
                    "no answer within {:?} (required at {caller})",
                    CONNECT_TIMEOUT * 2
                ),
            ),
        }
    }
}

// ------------------------------------------------------------------ Kafka

/// The reachable Kafka of the local stack, returned by [`require_kafka`].
#[derive(Debug, Clone)]
pub struct Kafka {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The configured event topic (`QUIZ_KAFKA_TOPIC`).
    pub topic: String,
}

impl Kafka {
    /// A client config with `bootstrap.servers` set; add the producer or
    /// consumer keys the test needs.
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// Creates `name` with `partitions` partitions (replication factor 1).
    /// Panics when the broker refuses; an existing topic is not an error.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self
            .config()
            .create()
            .unwrap_or_else(|e| panic!("creating a Kafka admin client for {}: {e}", self.brokers));
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .unwrap_or_else(|e| panic!("creating Kafka topic {name} at {}: {e}", self.brokers));
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    panic!("creating Kafka topic {topic} at {}: {code}", self.brokers)
                }
            }
        }
    }

    /// Deletes `name`, ignoring failures (cleanup after a test).
    pub async fn delete_topic(&self, name: &str) {
        if let Ok(admin) = self.config().create::<AdminClient<DefaultClientContext>>() {
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let _ = admin.delete_topics(&[name], &options).await;
        }
    }
}

/// Checks that the Kafka brokers of [`Settings::from_env`] answer a metadata
/// request within a short timeout. Panics with a clear message otherwise.
#[track_caller]
pub fn require_kafka() -> impl Future<Output = Kafka> {
    let settings = Settings::from_env();
    let caller = std::panic::Location::caller();
    async move {
        let kafka = Kafka {
            brokers: settings.kafka_brokers.clone(),
            topic: settings.kafka_topic.clone(),
        };
        let config = kafka.config();
        // librdkafka's metadata call blocks: keep it off the async workers.
        let probe = tokio::task::spawn_blocking(move || {
            let producer: BaseProducer = config.create()?;
            producer.client().fetch_metadata(None, CONNECT_TIMEOUT)
        })
        .await
        .expect("the Kafka probe task panicked");
        match probe {
            Ok(metadata) if !metadata.brokers().is_empty() => kafka,
            Ok(_) => unreachable_service(
                "Kafka",
                &kafka.brokers,
                format!("the metadata lists no broker (required at {caller})"),
            ),
            Err(e) => unreachable_service(
                "Kafka",
                &kafka.brokers,
                format!("{e} (required at {caller})"),
            ),
        }
    }
}

// ------------------------------------------------------------------ MongoDB

/// Connects to the MongoDB of [`Settings::from_env`] and runs `ping`, with
/// short server-selection and connect timeouts. Panics with a clear message
/// otherwise. Pair it with [`unique_db`] for a database of the test's own.
#[track_caller]
pub fn require_mongodb() -> impl Future<Output = mongodb::Client> {
    let settings = Settings::from_env();
    let caller = std::panic::Location::caller();
    async move {
        let uri = settings.mongodb_uri.clone();
        let attempt = async {
            let mut options = mongodb::options::ClientOptions::parse(&uri).await?;
            options.server_selection_timeout = Some(CONNECT_TIMEOUT);
            options.connect_timeout = Some(CONNECT_TIMEOUT);
            options.app_name.get_or_insert_with(|| "testkit".to_owned());
            let client = mongodb::Client::with_options(options)?;
            client
                .database("admin")
                .run_command(bson::doc! { "ping": 1 })
                .await?;
            Ok::<_, mongodb::error::Error>(client)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                unreachable_service("MongoDB", &uri, format!("{e} (required at {caller})"))
            }
            Err(_) => unreachable_service(
                "MongoDB",
                &uri,
                format!(
                    "no answer within {:?} (required at {caller})",
                    CONNECT_TIMEOUT * 2
                ),
            ),
        }
    }
}

// ------------------------------------------------------------------ names

/// A name no other test uses: `<prefix>-<time><pid><counter>`, all in
/// `[a-z0-9-]` plus the prefix, short enough for a quiz id, a Kafka topic, a
/// consumer group or (with [`unique_db`]) a database. Unique across threads,
/// test binaries running at once, and earlier runs on the same stack.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!(
        "{prefix}-{}{}{}",
        base36(millis),
        base36(u64::from(std::process::id())),
        base36(n)
    )
}

/// A Kafka topic name of the test's own (`t-<…>`).
pub fn unique_topic(prefix: &str) -> String {
    unique_name(&format!("t-{prefix}"))
}

/// A MongoDB database name of the test's own: like [`unique_name`] with `_`
/// instead of `-`, at most 63 characters.
pub fn unique_db(prefix: &str) -> String {
    let mut name = unique_name(prefix).replace('-', "_");
    name.truncate(63);
    name
}

/// A quiz id of the test's own: valid for the contract (`[A-Za-z0-9_-]`, 1–64 chars).
pub fn unique_quiz_id() -> String {
    unique_name("q")
}

fn base36(mut v: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

// ------------------------------------------------------------------ waiting

/// Calls `probe` every 100 ms until it returns `Some`, and returns that value.
/// Panics naming `what` when `timeout` passes first.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_local_stack() {
        let s = Settings::from_lookup(|_| None);
        assert_eq!(s.redis_nodes.len(), 6);
        assert_eq!(s.redis_nodes[0], "127.0.0.1:7000");
        assert_eq!(s.redis_urls()[5], "redis://127.0.0.1:7005");
        assert_eq!(s.kafka_brokers, "127.0.0.1:9092");
        assert_eq!(s.kafka_topic, "quiz-events");
        assert_eq!(s.mongodb_uri, "mongodb://127.0.0.1:27017/");
        assert_eq!(s.mongodb_db, "quiz");
    }

    #[test]
    fn variables_override_and_empty_means_default() {
        let s = Settings::from_lookup(|k| match k {
            "QUIZ_REDIS_NODES" => Some(" 10.0.0.1:1 , redis://h:2 ,".into()),
            "QUIZ_KAFKA_TOPIC" => Some("other".into()),
            "QUIZ_MONGODB_DB" => Some("  ".into()),
            _ => None,
        });
        assert_eq!(s.redis_nodes, vec!["10.0.0.1:1", "redis://h:2"]);
        assert_eq!(s.redis_urls(), vec!["redis://10.0.0.1:1", "redis://h:2"]);
        assert_eq!(s.kafka_topic, "other");
        assert_eq!(s.mongodb_db, "quiz");
    }

    #[test]
    fn unique_names_differ_and_are_valid_everywhere() {
        let a = unique_name("x");
        let b = unique_name("x");
        assert_ne!(a, b);
        let quiz = unique_quiz_id();
        assert!(quiz.len() <= 64);
        assert!(quiz
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        let db = unique_db("some-test");
        assert!(db.len() <= 63 && !db.contains('-'), "{db}");
        assert!(unique_topic("events").starts_with("t-events-"));
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
