//! The persister's configuration: one typed struct, defaults for every key,
//! loaded in layers by the workspace's `settings` crate
//! (docs/configuration.md): defaults < TOML file (`--config`) < environment
//! (`PERSISTER_<SECTION>__<KEY>` for every key, and the older names kept as
//! aliases: `QUIZ_*` for settings shared with the rest of the platform,
//! `PERSISTER_*` for the persister's own) < command line (`--set`). Every key
//! is documented in `docs/persister.md` (checked by
//! `persister/tests/config_cli.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Why a configuration could not be loaded. The message always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid value for {key} (from {origin}): {message}")]
    Invalid {
        key: &'static str,
        origin: &'static str,
        message: String,
    },
    /// A key's value refused, naming the key and the layer it came from.
    #[error(transparent)]
    Layered(#[from] settings::Error),
}

/// How the persister's keys are named outside the file. The aliases are the
/// names the persister read before the derived ones existed (deploy/,
/// tests and scripts set them); they keep working.
pub static SCHEME: settings::Scheme = settings::Scheme {
    env_prefix: "PERSISTER",
    root: None,
    aliases: &[
        ("kafka.brokers", "QUIZ_KAFKA_BROKERS"),
        ("kafka.topic", "QUIZ_KAFKA_TOPIC"),
        ("kafka.group_id", "PERSISTER_GROUP_ID"),
        ("kafka.dlq_topic", "PERSISTER_DLQ_TOPIC"),
        ("kafka.session_timeout_ms", "PERSISTER_SESSION_TIMEOUT_MS"),
        (
            "kafka.max_poll_interval_ms",
            "PERSISTER_MAX_POLL_INTERVAL_MS",
        ),
        ("kafka.assignment_strategy", "PERSISTER_ASSIGNMENT_STRATEGY"),
        (
            "kafka.statistics_interval_ms",
            "PERSISTER_STATISTICS_INTERVAL_MS",
        ),
        ("kafka.create_dlq_topic", "PERSISTER_CREATE_DLQ_TOPIC"),
        (
            "kafka.dlq_replication_factor",
            "PERSISTER_DLQ_REPLICATION_FACTOR",
        ),
        ("kafka.properties", "QUIZ_KAFKA_PROPERTIES"),
        ("mongodb.uri", "QUIZ_MONGODB_URI"),
        ("mongodb.database", "QUIZ_MONGODB_DB"),
        ("mongodb.max_command_bytes", "PERSISTER_MAX_COMMAND_BYTES"),
        (
            "mongodb.parallel_collections",
            "PERSISTER_PARALLEL_COLLECTIONS",
        ),
        ("mongodb.command_timeout_ms", "PERSISTER_COMMAND_TIMEOUT_MS"),
        (
            "mongodb.max_statements_per_command",
            "PERSISTER_MAX_STATEMENTS_PER_COMMAND",
        ),
        ("mongodb.insert_immutable", "PERSISTER_INSERT_IMMUTABLE"),
        (
            "mongodb.max_documents_per_insert",
            "PERSISTER_MAX_DOCUMENTS_PER_INSERT",
        ),
        ("batch.max_events", "PERSISTER_BATCH_MAX_EVENTS"),
        ("batch.max_wait_ms", "PERSISTER_BATCH_MAX_WAIT_MS"),
        (
            "retry.initial_backoff_ms",
            "PERSISTER_RETRY_INITIAL_BACKOFF_MS",
        ),
        ("retry.max_backoff_ms", "PERSISTER_RETRY_MAX_BACKOFF_MS"),
        (
            "retry.revoke_flush_timeout_ms",
            "PERSISTER_REVOKE_FLUSH_TIMEOUT_MS",
        ),
        ("http.listen", "PERSISTER_HTTP_LISTEN"),
        ("log.format", "PERSISTER_LOG_FORMAT"),
        ("log.level", "PERSISTER_LOG_LEVEL"),
    ],
    maps: &["kafka.properties"],
    hidden: &[("kafka.sasl_password", "QUIZ_KAFKA_SASL_PASSWORD")],
    secrets: &[],
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub mongodb: MongoConfig,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    /// How long SIGTERM waits for the pending batch to be written before
    /// giving up on it (it is then not committed, so nothing is lost).
    pub shutdown_grace_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    /// Dead-letter topic; empty means `<topic>-dlq`.
    pub dlq_topic: String,
    pub session_timeout_ms: u64,
    pub max_poll_interval_ms: u64,
    pub assignment_strategy: String,
    pub statistics_interval_ms: u64,
    /// Create the dead-letter topic at start-up when missing.
    pub create_dlq_topic: bool,
    /// Replication factor of a dead-letter topic the persister creates
    /// (production: the cluster's, e.g. 3; the local stack has one broker).
    pub dlq_replication_factor: i32,
    /// Extra librdkafka properties for every Kafka client of the persister
    /// (consumer, dead-letter producer, admin): TLS and SASL
    /// (`security.protocol`, `ssl.ca.location`, `sasl.mechanism`,
    /// `sasl.username`, …) and tuning (`fetch.max.bytes`, …). Keys that
    /// carry the exactly-once and nothing-lost rules are refused
    /// ([`RESERVED_KAFKA_PROPERTIES`]).
    pub properties: BTreeMap<String, String>,
    /// SASL password: only from `QUIZ_KAFKA_SASL_PASSWORD` (a Secret,
    /// shared with core), never from the file.
    #[serde(skip)]
    pub sasl_password: String,
}

/// librdkafka properties `kafka.properties` may not set, and why.
pub const RESERVED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "use kafka.brokers"),
    ("group.id", "use kafka.group_id"),
    (
        "enable.auto.commit",
        "offsets are committed only after MongoDB has the batch",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only after MongoDB has the batch",
    ),
    (
        "enable.idempotence",
        "the dead-letter producer is always idempotent",
    ),
    (
        "acks",
        "the dead-letter producer always waits for all in-sync replicas",
    ),
    (
        "sasl.password",
        "use QUIZ_KAFKA_SASL_PASSWORD (a Secret, not a file)",
    ),
];

impl KafkaConfig {
    /// A librdkafka config with the brokers and the operator's properties
    /// (security first of all): the start of every client the persister
    /// makes, so none of them can miss the TLS/SASL settings.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        if !self.sasl_password.is_empty() {
            c.set("sasl.password", &self.sasl_password);
        }
        c
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MongoConfig {
    pub uri: String,
    pub database: String,
    /// Upper bound on the estimated size of one `update` command; larger
    /// batches are split into several commands.
    pub max_command_bytes: usize,
    /// Write the four collections of a batch concurrently, each one's
    /// commands in turn (1.9x on the local FerretDB/PostgreSQL). Off by
    /// default: four commands in flight can hold 4 x
    /// `max_statements_per_command` FerretDB backend connections, more than
    /// FerretDB/PostgreSQL's default pool of 50 (see `store/mongo.rs`).
    pub parallel_collections: bool,
    /// How long one write command may take before the batch is retried.
    pub command_timeout_ms: u64,
    /// Statements per `update` command (FerretDB 1.24 hangs when a command
    /// modifies more existing documents than its connection pool holds).
    pub max_statements_per_command: usize,
    /// Write documents that never change once written (answers, players, a
    /// join's score) as unordered inserts, a duplicate key counting as
    /// written, instead of upserts. `false` is the upsert-only path of
    /// before, kept to measure against.
    pub insert_immutable: bool,
    /// Documents per `insert` command.
    pub max_documents_per_insert: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    pub max_events: usize,
    pub max_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// How long a partition revocation may wait for the pending batch to be
    /// written before abandoning it (uncommitted, so the new owner redoes it).
    pub revoke_flush_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`; empty disables it.
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `json` or `text`.
    pub format: String,
    /// `tracing_subscriber::EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kafka: KafkaConfig::default(),
            mongodb: MongoConfig::default(),
            batch: BatchConfig::default(),
            retry: RetryConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            shutdown_grace_ms: 30_000,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "quiz-events".into(),
            group_id: "quiz-persister".into(),
            dlq_topic: String::new(),
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
            dlq_replication_factor: 1,
            properties: BTreeMap::new(),
            sasl_password: String::new(),
            assignment_strategy: "cooperative-sticky".into(),
            statistics_interval_ms: 5_000,
            create_dlq_topic: true,
        }
    }
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            uri: "mongodb://127.0.0.1:27017/".into(),
            database: "quiz".into(),
            max_command_bytes: 4 * 1024 * 1024,
            parallel_collections: false,
            command_timeout_ms: 30_000,
            max_statements_per_command: 25,
            insert_immutable: true,
            max_documents_per_insert: 1000,
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 1000,
            max_wait_ms: 100,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
            revoke_flush_timeout_ms: 10_000,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

impl Config {
    /// Every layer from the process's environment, no command-line overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(path, &|name| std::env::var(name).ok(), &[]).map(|(c, _)| c)
    }

    /// Defaults, then the file (if any), then the environment (`lookup`:
    /// `std::env::var` in the binary, a map in tests), then `cli` (`--set`),
    /// then validation. Also returns where each key came from.
    pub fn load_with(
        path: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
        cli: &[settings::Override],
    ) -> Result<(Config, settings::Layers), ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Some((path.display().to_string(), text))
            }
            None => None,
        };
        let file = file.as_ref().map(|(p, t)| (p.as_str(), t.as_str()));
        Config::layered(file, lookup, cli)
    }

    /// [`Config::load_with`] on a file's text (`(path, text)`) already read.
    pub fn layered(
        file: Option<(&str, &str)>,
        lookup: &dyn Fn(&str) -> Option<String>,
        cli: &[settings::Override],
    ) -> Result<(Config, settings::Layers), ConfigError> {
        let (base, file_tree) = match file {
            Some((path, text)) => {
                let (cfg, tree) = Config::parse_file(path, text)?;
                (cfg, Some((path, tree)))
            }
            None => (Config::default(), None),
        };
        let base =
            serde_json::to_value(&base).map_err(|e| settings::Error::Usage(e.to_string()))?;
        let mut overrides = SCHEME.env_overrides(&base, lookup);
        overrides.extend_from_slice(cli);
        let file = file_tree.as_ref().map(|(p, t)| (*p, t));
        let (mut cfg, mut layers): (Config, _) = SCHEME.load(base, file, &overrides)?;
        if let Some(p) = layers.hidden("kafka.sasl_password") {
            cfg.kafka.sasl_password = p.to_string();
        }
        cfg.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message, .. } => layers.error(key, message).into(),
            other => other,
        })?;
        if let Ok(tree) = serde_json::to_value(&cfg) {
            layers.set_tree(tree);
        }
        Ok((cfg, layers))
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse_file(&path.display().to_string(), &text).map(|(c, _)| c)
    }

    /// The file's text over the defaults (no environment), `*_ms` keys given
    /// as duration strings read as milliseconds.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::parse_file("(text)", text).map(|(c, _)| c)
    }

    /// The file over the defaults, and the keys it sets as a tree.
    fn parse_file(path: &str, text: &str) -> Result<(Config, serde_json::Value), ConfigError> {
        let parse_err = |e: String| ConfigError::Parse {
            path: path.to_string(),
            source: Box::new(<toml::de::Error as serde::de::Error>::custom(e)),
        };
        let raw: toml::Table = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_string(),
            source: Box::new(source),
        })?;
        let mut tree = serde_json::to_value(&raw).map_err(|e| parse_err(e.to_string()))?;
        // Duration strings in `*_ms` keys become integers first; the typed
        // parse then names any other bad key (with its line when the text
        // is parsed as it was written).
        let cfg = if SCHEME.normalize_file(&mut tree, path)? {
            let normalized = toml::to_string(&tree).map_err(|e| parse_err(e.to_string()))?;
            toml::from_str(&normalized)
        } else {
            toml::from_str(text)
        }
        .map_err(|source| ConfigError::Parse {
            path: path.to_string(),
            source: Box::new(source),
        })?;
        Ok((cfg, tree))
    }

    /// Every key with its environment names (docs/persister.md lists them).
    pub fn keys() -> Vec<settings::KeyInfo> {
        SCHEME.keys(&serde_json::to_value(Config::default()).unwrap_or_default())
    }

    /// The dead-letter topic actually used.
    pub fn dlq_topic(&self) -> String {
        if self.kafka.dlq_topic.is_empty() {
            format!("{}-dlq", self.kafka.topic)
        } else {
            self.kafka.dlq_topic.clone()
        }
    }

    /// Checks every key; the error names the first offending one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                origin: "configuration",
                message: message.into(),
            }
        }
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must not be empty"));
        }
        if !valid_topic(&self.kafka.topic) {
            return Err(invalid(
                "kafka.topic",
                "must be 1-249 chars of [A-Za-z0-9._-]",
            ));
        }
        if !self.kafka.dlq_topic.is_empty() && !valid_topic(&self.kafka.dlq_topic) {
            return Err(invalid(
                "kafka.dlq_topic",
                "must be 1-249 chars of [A-Za-z0-9._-]",
            ));
        }
        if self.dlq_topic() == self.kafka.topic {
            return Err(invalid("kafka.dlq_topic", "must differ from kafka.topic"));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        for (k, v) in &self.kafka.properties {
            if let Some((_, instead)) = RESERVED_KAFKA_PROPERTIES.iter().find(|(r, _)| r == k) {
                return Err(invalid(
                    "kafka.properties",
                    format!("{k:?} cannot be set here: {instead}"),
                ));
            }
            if k.trim().is_empty() || v.trim().is_empty() {
                return Err(invalid(
                    "kafka.properties",
                    format!("{k:?}: expected a non-empty key and value"),
                ));
            }
        }
        if self.kafka.dlq_replication_factor < 1 {
            return Err(invalid("kafka.dlq_replication_factor", "must be >= 1"));
        }
        if !matches!(
            self.kafka.assignment_strategy.as_str(),
            "cooperative-sticky" | "range" | "roundrobin" | "range,roundrobin"
        ) {
            return Err(invalid(
                "kafka.assignment_strategy",
                "must be cooperative-sticky, range, roundrobin or range,roundrobin",
            ));
        }
        if !(1_000..=3_600_000).contains(&self.kafka.session_timeout_ms) {
            return Err(invalid(
                "kafka.session_timeout_ms",
                "must be between 1000 and 3600000",
            ));
        }
        if self.kafka.max_poll_interval_ms < self.kafka.session_timeout_ms {
            return Err(invalid(
                "kafka.max_poll_interval_ms",
                "must be at least kafka.session_timeout_ms",
            ));
        }
        if !self.mongodb.uri.starts_with("mongodb://")
            && !self.mongodb.uri.starts_with("mongodb+srv://")
        {
            return Err(invalid(
                "mongodb.uri",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        if self.mongodb.database.is_empty()
            || self.mongodb.database.len() > 63
            || self
                .mongodb
                .database
                .chars()
                .any(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'))
        {
            return Err(invalid(
                "mongodb.database",
                "must be 1-63 chars without / \\ . space \" $",
            ));
        }
        if self.mongodb.max_command_bytes < 64 * 1024 {
            return Err(invalid(
                "mongodb.max_command_bytes",
                "must be at least 65536",
            ));
        }
        if self.mongodb.command_timeout_ms < 100 {
            return Err(invalid(
                "mongodb.command_timeout_ms",
                "must be at least 100",
            ));
        }
        if !(1..=100_000).contains(&self.mongodb.max_statements_per_command) {
            return Err(invalid(
                "mongodb.max_statements_per_command",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=100_000).contains(&self.mongodb.max_documents_per_insert) {
            return Err(invalid(
                "mongodb.max_documents_per_insert",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=100_000).contains(&self.batch.max_events) {
            return Err(invalid("batch.max_events", "must be between 1 and 100000"));
        }
        if !(1..=60_000).contains(&self.batch.max_wait_ms) {
            return Err(invalid("batch.max_wait_ms", "must be between 1 and 60000"));
        }
        if self.retry.initial_backoff_ms == 0 {
            return Err(invalid("retry.initial_backoff_ms", "must be positive"));
        }
        if self.retry.max_backoff_ms < self.retry.initial_backoff_ms {
            return Err(invalid(
                "retry.max_backoff_ms",
                "must be at least retry.initial_backoff_ms",
            ));
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9464",
                    self.http.listen
                ),
            ));
        }
        if !matches!(self.log.format.as_str(), "json" | "text") {
            return Err(invalid("log.format", "must be json or text"));
        }
        Ok(())
    }
}

fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
        assert_eq!(Config::default().dlq_topic(), "quiz-events-dlq");
    }

    /// The layers over `file` with `env` as the whole environment.
    fn layered(
        file: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<(Config, settings::Layers), ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::layered(file.map(|t| ("p.toml", t)), &|k| env.get(k).cloned(), &[])
    }

    #[test]
    fn kafka_properties_from_env_and_their_guard() {
        let (c, _) = layered(
            None,
            &[
                (
                    "QUIZ_KAFKA_PROPERTIES",
                    "security.protocol=SASL_SSL, sasl.mechanism=PLAIN",
                ),
                ("QUIZ_KAFKA_SASL_PASSWORD", "s3cret"),
            ],
        )
        .expect("valid");
        assert_eq!(
            c.kafka
                .properties
                .get("security.protocol")
                .map(String::as_str),
            Some("SASL_SSL")
        );
        assert_eq!(c.kafka.client_config().get("sasl.password"), Some("s3cret"));
        for (key, _) in RESERVED_KAFKA_PROPERTIES {
            let mut bad = Config::default();
            bad.kafka.properties.insert(key.to_string(), "x".into());
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("kafka.properties") && e.contains(key), "{e}");
        }
        let e = layered(None, &[("QUIZ_KAFKA_PROPERTIES", "linger.ms")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("QUIZ_KAFKA_PROPERTIES"), "{e}");
    }

    #[test]
    fn file_then_env() {
        let file =
            "[kafka]\ntopic = \"t1\"\n[batch]\nmax_events = 10\n[mongodb]\ndatabase = \"d\"\n";
        let config = Config::from_toml(file).expect("parses");
        assert_eq!(config.kafka.topic, "t1");
        assert_eq!(config.batch.max_events, 10);
        assert_eq!(config.batch.max_wait_ms, 100);
        let (config, layers) = layered(
            Some(file),
            &[
                ("QUIZ_KAFKA_TOPIC", "t2"),
                ("PERSISTER_BATCH_MAX_WAIT_MS", "7"),
                ("PERSISTER_RETRY__MAX_BACKOFF_MS", "2s"),
            ],
        )
        .expect("valid");
        assert_eq!(config.kafka.topic, "t2");
        assert_eq!(config.batch.max_wait_ms, 7);
        assert_eq!(config.retry.max_backoff_ms, 2000);
        assert_eq!(config.dlq_topic(), "t2-dlq");
        assert_eq!(
            layers.origin_of("batch.max_events"),
            settings::Origin::File("p.toml".into())
        );
        // A duration string in the file.
        let c = Config::from_toml("[batch]\nmax_wait_ms = \"250ms\"\n").expect("parses");
        assert_eq!(c.batch.max_wait_ms, 250);
    }

    #[test]
    fn errors_name_the_key() {
        let mut config = Config::default();
        config.batch.max_events = 0;
        let err = config.validate().expect_err("invalid").to_string();
        assert!(err.contains("batch.max_events"), "{err}");

        let err = layered(None, &[("PERSISTER_BATCH_MAX_EVENTS", "lots")])
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains("batch.max_events") && err.contains("PERSISTER_BATCH_MAX_EVENTS"),
            "{err}"
        );
        let err = layered(None, &[("PERSISTER_BATCH__MAX_EVENTS", "0")])
            .expect_err("invalid")
            .to_string();
        assert!(
            err.contains("batch.max_events") && err.contains("PERSISTER_BATCH__MAX_EVENTS"),
            "{err}"
        );

        assert!(Config::from_toml("[kafka]\nbrokerz = \"x\"\n").is_err());
        let err = Config::from_toml("[batch]\nmax_wait_ms = \"soon\"\n")
            .expect_err("invalid")
            .to_string();
        assert!(err.contains("batch.max_wait_ms"), "{err}");
    }
}
