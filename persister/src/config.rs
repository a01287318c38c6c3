//! The persister's configuration: one typed struct, defaults for every key,
//! loaded from an optional TOML file (`--config`) and then overridden by
//! environment variables (`QUIZ_*` for settings shared with the rest of the
//! platform, `PERSISTER_*` for the persister's own). Every key is documented in
//! `docs/persister.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

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
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    pub max_events: usize,
    pub max_wait_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// How long a partition revocation may wait for the pending batch to be
    /// written before abandoning it (uncommitted, so the new owner redoes it).
    pub revoke_flush_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`; empty disables it.
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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
    /// Defaults, then the file (if any), then the environment, then validation.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// The dead-letter topic actually used.
    pub fn dlq_topic(&self) -> String {
        if self.kafka.dlq_topic.is_empty() {
            format!("{}-dlq", self.kafka.topic)
        } else {
            self.kafka.dlq_topic.clone()
        }
    }

    /// Applies environment overrides; `lookup` is `std::env::var` in
    /// production and a map in tests.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        fn string(lookup: &impl Fn(&str) -> Option<String>, name: &str, slot: &mut String) {
            if let Some(value) = lookup(name) {
                *slot = value;
            }
        }
        fn number<T: std::str::FromStr>(
            lookup: &impl Fn(&str) -> Option<String>,
            name: &'static str,
            slot: &mut T,
        ) -> Result<(), ConfigError> {
            if let Some(value) = lookup(name) {
                *slot = value.trim().parse().map_err(|_| ConfigError::Invalid {
                    key: name,
                    origin: "environment",
                    message: format!("{value:?} is not a valid number"),
                })?;
            }
            Ok(())
        }
        fn boolean(
            lookup: &impl Fn(&str) -> Option<String>,
            name: &'static str,
            slot: &mut bool,
        ) -> Result<(), ConfigError> {
            if let Some(value) = lookup(name) {
                *slot = match value.trim() {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    other => {
                        return Err(ConfigError::Invalid {
                            key: name,
                            origin: "environment",
                            message: format!("{other:?} is not a boolean"),
                        })
                    }
                };
            }
            Ok(())
        }

        string(&lookup, "QUIZ_KAFKA_BROKERS", &mut self.kafka.brokers);
        string(&lookup, "QUIZ_KAFKA_TOPIC", &mut self.kafka.topic);
        string(
            &lookup,
            "QUIZ_KAFKA_SASL_PASSWORD",
            &mut self.kafka.sasl_password,
        );
        if let Some(list) = lookup("QUIZ_KAFKA_PROPERTIES") {
            // Comma separated key=value, merged over the file's table.
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let Some((k, v)) = item.split_once('=') else {
                    return Err(ConfigError::Invalid {
                        key: "QUIZ_KAFKA_PROPERTIES",
                        origin: "environment",
                        message: format!("{item:?} is not key=value"),
                    });
                };
                self.kafka
                    .properties
                    .insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        number(
            &lookup,
            "PERSISTER_DLQ_REPLICATION_FACTOR",
            &mut self.kafka.dlq_replication_factor,
        )?;
        string(&lookup, "PERSISTER_GROUP_ID", &mut self.kafka.group_id);
        string(&lookup, "PERSISTER_DLQ_TOPIC", &mut self.kafka.dlq_topic);
        number(
            &lookup,
            "PERSISTER_SESSION_TIMEOUT_MS",
            &mut self.kafka.session_timeout_ms,
        )?;
        number(
            &lookup,
            "PERSISTER_MAX_POLL_INTERVAL_MS",
            &mut self.kafka.max_poll_interval_ms,
        )?;
        string(
            &lookup,
            "PERSISTER_ASSIGNMENT_STRATEGY",
            &mut self.kafka.assignment_strategy,
        );
        number(
            &lookup,
            "PERSISTER_STATISTICS_INTERVAL_MS",
            &mut self.kafka.statistics_interval_ms,
        )?;
        boolean(
            &lookup,
            "PERSISTER_CREATE_DLQ_TOPIC",
            &mut self.kafka.create_dlq_topic,
        )?;
        string(&lookup, "QUIZ_MONGODB_URI", &mut self.mongodb.uri);
        string(&lookup, "QUIZ_MONGODB_DB", &mut self.mongodb.database);
        number(
            &lookup,
            "PERSISTER_MAX_COMMAND_BYTES",
            &mut self.mongodb.max_command_bytes,
        )?;
        boolean(
            &lookup,
            "PERSISTER_PARALLEL_COLLECTIONS",
            &mut self.mongodb.parallel_collections,
        )?;
        number(
            &lookup,
            "PERSISTER_COMMAND_TIMEOUT_MS",
            &mut self.mongodb.command_timeout_ms,
        )?;
        number(
            &lookup,
            "PERSISTER_MAX_STATEMENTS_PER_COMMAND",
            &mut self.mongodb.max_statements_per_command,
        )?;
        boolean(
            &lookup,
            "PERSISTER_INSERT_IMMUTABLE",
            &mut self.mongodb.insert_immutable,
        )?;
        number(
            &lookup,
            "PERSISTER_MAX_DOCUMENTS_PER_INSERT",
            &mut self.mongodb.max_documents_per_insert,
        )?;
        number(
            &lookup,
            "PERSISTER_BATCH_MAX_EVENTS",
            &mut self.batch.max_events,
        )?;
        number(
            &lookup,
            "PERSISTER_BATCH_MAX_WAIT_MS",
            &mut self.batch.max_wait_ms,
        )?;
        number(
            &lookup,
            "PERSISTER_RETRY_INITIAL_BACKOFF_MS",
            &mut self.retry.initial_backoff_ms,
        )?;
        number(
            &lookup,
            "PERSISTER_RETRY_MAX_BACKOFF_MS",
            &mut self.retry.max_backoff_ms,
        )?;
        number(
            &lookup,
            "PERSISTER_REVOKE_FLUSH_TIMEOUT_MS",
            &mut self.retry.revoke_flush_timeout_ms,
        )?;
        string(&lookup, "PERSISTER_HTTP_LISTEN", &mut self.http.listen);
        string(&lookup, "PERSISTER_LOG_FORMAT", &mut self.log.format);
        string(&lookup, "PERSISTER_LOG_LEVEL", &mut self.log.level);
        number(
            &lookup,
            "PERSISTER_SHUTDOWN_GRACE_MS",
            &mut self.shutdown_grace_ms,
        )?;
        Ok(())
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

    #[test]
    fn kafka_properties_from_env_and_their_guard() {
        let mut c = Config::default();
        let env: HashMap<&str, &str> = [
            (
                "QUIZ_KAFKA_PROPERTIES",
                "security.protocol=SASL_SSL, sasl.mechanism=PLAIN",
            ),
            ("QUIZ_KAFKA_SASL_PASSWORD", "s3cret"),
        ]
        .into_iter()
        .collect();
        c.apply_env(|k| env.get(k).map(|v| v.to_string()))
            .expect("env applies");
        c.validate().expect("valid");
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
        let e = Config::default()
            .apply_env(|k| (k == "QUIZ_KAFKA_PROPERTIES").then(|| "linger.ms".to_string()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("QUIZ_KAFKA_PROPERTIES"), "{e}");
    }

    #[test]
    fn file_then_env() {
        let mut config = Config::from_toml(
            "[kafka]\ntopic = \"t1\"\n[batch]\nmax_events = 10\n[mongodb]\ndatabase = \"d\"\n",
        )
        .expect("parses");
        assert_eq!(config.kafka.topic, "t1");
        assert_eq!(config.batch.max_events, 10);
        assert_eq!(config.batch.max_wait_ms, 100);
        let env: HashMap<&str, &str> = [
            ("QUIZ_KAFKA_TOPIC", "t2"),
            ("PERSISTER_BATCH_MAX_WAIT_MS", "7"),
        ]
        .into();
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .expect("env applies");
        assert_eq!(config.kafka.topic, "t2");
        assert_eq!(config.batch.max_wait_ms, 7);
        assert_eq!(config.dlq_topic(), "t2-dlq");
        config.validate().expect("valid");
    }

    #[test]
    fn errors_name_the_key() {
        let mut config = Config::default();
        config.batch.max_events = 0;
        let err = config.validate().expect_err("invalid").to_string();
        assert!(err.contains("batch.max_events"), "{err}");

        let mut config = Config::default();
        let err = config
            .apply_env(|k| (k == "PERSISTER_BATCH_MAX_EVENTS").then(|| "lots".to_string()))
            .expect_err("invalid")
            .to_string();
        assert!(err.contains("PERSISTER_BATCH_MAX_EVENTS"), "{err}");

        assert!(Config::from_toml("[kafka]\nbrokerz = \"x\"\n").is_err());
    }
}
