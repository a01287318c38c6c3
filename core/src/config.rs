//! Configuration: one typed struct, loaded in layers by the workspace's
//! `settings` crate (docs/configuration.md).
//!
//! Precedence, lowest first: built-in defaults < TOML file (`--config`) <
//! environment (`QUIZ_<KEY>`, every key) < command line (the named flags,
//! then `--set key=value`). [`Config::validate`] names the offending key;
//! [`Config::load_with`] adds the layer it came from. Every key is documented
//! in `docs/core.md` (checked by `core/tests/config_cli.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

/// Which routes a node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// HTTP API only: the WebSocket route answers 404 `not_found`.
    Api,
    /// WebSocket route (plus health, readiness, metrics) only.
    Ws,
    /// Everything.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// This node's name, in logs and metrics.
    pub node_name: String,
    pub tier: Tier,
    /// HMAC key for tokens, shared by all nodes. Empty in embedded mode: a
    /// random one is generated at start (tokens then die with the process).
    pub token_secret: String,
    /// Redis Cluster seed nodes (`host:port`, or full `redis://` /
    /// `rediss://` URLs). Empty = embedded mode.
    pub redis_nodes: Vec<String>,
    /// Connect to `host:port` nodes over TLS (`rediss://`).
    pub redis_tls: bool,
    /// PEM file of the CA that signed the Redis servers' certificates
    /// (managed services signed by a public CA need none).
    pub redis_tls_ca_file: Option<PathBuf>,
    /// Redis ACL user (`AUTH user password`); empty = the default user.
    pub redis_username: String,
    /// Redis AUTH password. Only from `QUIZ_REDIS_PASSWORD` (a Secret), never
    /// from the file, never serialized.
    #[serde(skip)]
    pub redis_password: String,
    /// Replicas that must acknowledge an answer before it is acknowledged
    /// to the player (`WAIT n`); 0 trades durability across a master
    /// failover for latency (see `docs/core-backends.md`, *Durability*).
    pub redis_wait_replicas: u32,
    pub redis_wait_timeout_ms: u64,
    /// Deadline of one Redis round trip, the cluster client's retries included.
    pub redis_command_timeout_ms: u64,
    /// Most answers in one pipeline to one cluster node.
    pub redis_max_batch: usize,
    /// A quiz's Redis keys expire this long after its creation or last
    /// state change while it has not ended (an abandoned quiz goes away).
    pub redis_retention_live_s: u64,
    /// An ended quiz's Redis keys expire this long after the end.
    pub redis_retention_ended_s: u64,
    /// Kafka bootstrap servers, comma separated. Empty = embedded mode.
    pub kafka_brokers: String,
    pub kafka_topic: String,
    /// Extra librdkafka producer properties, applied after core's own:
    /// TLS and SASL (`security.protocol`, `ssl.ca.location`,
    /// `sasl.mechanism`, `sasl.username`, …) and tuning (`linger.ms`,
    /// `batch.num.messages`, `compression.type`). The keys that carry the
    /// delivery guarantee or are set elsewhere are refused (see
    /// [`RESERVED_KAFKA_PROPERTIES`]).
    pub kafka_properties: BTreeMap<String, String>,
    /// SASL password. Only from `QUIZ_KAFKA_SASL_PASSWORD` (a Secret),
    /// never from the file, never serialized; becomes `sasl.password`.
    #[serde(skip)]
    pub kafka_sasl_password: String,
    /// Events buffered while Kafka is slow or away; past it new answers are
    /// refused (`unavailable`) and `/readyz` turns not ready.
    pub kafka_max_buffered_events: u32,
    /// How long one event's delivery is retried by librdkafka.
    pub kafka_message_timeout_ms: u32,
    /// Embedded mode's append-only JSON-lines event log.
    pub event_log: PathBuf,
    /// Embedded mode: create the quiz `demo` at start.
    pub demo_quiz: bool,
    /// Operators may require `X-Admin-Key` on `POST /v1/quizzes`. Required
    /// in distributed mode unless `admin_open` says otherwise.
    pub admin_key: Option<String>,
    /// Distributed mode without an admin key: anyone may create quizzes.
    /// Must be said explicitly (a public deployment would otherwise be open
    /// by omission).
    pub admin_open: bool,
    /// Players one quiz may have; past it, joins answer 409 `quiz_full`
    /// (checked atomically with the join in the store).
    pub max_players_per_quiz: u64,
    /// A quiz created with `expected_players` is spread over
    /// `ceil(expected_players / players_per_node)` core nodes (at most
    /// `max_spread`): edge-lb sends each player's WebSocket to one of them.
    pub players_per_node: u64,
    /// Admission control (`admission.rs`): joins running at once on this
    /// node; past them a join waits up to `join_queue_ms` for a place,
    /// then is refused with 503 and `Retry-After` before any write.
    pub join_max_in_flight: usize,
    pub join_queue_ms: u64,
    /// Admission control of WebSocket upgrades (`admission.rs`): upgrades
    /// authenticating and being welcomed at once on this node; past them
    /// an upgrade waits up to `upgrade_queue_ms` for a place, then is
    /// refused with 503 and `Retry-After` before the 101 is written.
    pub upgrade_max_in_flight: usize,
    pub upgrade_queue_ms: u64,
    /// A room's leaderboard tick that fires later than this past its
    /// instant (the node is overloaded) is skipped (`room.rs`).
    pub board_tick_late_ms: u64,
    pub max_spread: u32,
    /// ... and its scoring over `ceil(expected_players / players_per_shard)`
    /// Redis hash slots (at most `max_shards`).
    pub players_per_shard: u64,
    pub max_shards: u32,
    /// Largest quiz definition (its JSON, as stored and as carried by the
    /// `quiz_created` event) accepted by `POST /v1/quizzes` (413 past it).
    /// Must stay below Kafka's message size limit.
    pub max_quiz_bytes: usize,
    /// Leaderboard entries in the `leaderboard` message.
    pub leaderboard_top: usize,
    /// The event outbox's repair sweep (`event_outbox.rs`): a pending event
    /// older than this is published again by the sweep.
    pub event_repair_grace_ms: u64,
    /// How often the sweep visits the quizzes this node serves.
    pub event_repair_interval_ms: u64,
    /// Most pending events one quiz's sweep reads and publishes per pass.
    pub event_repair_batch: usize,
    /// Minimum time between two `leaderboard` messages of one quiz.
    pub leaderboard_interval_ms: u64,
    /// Rooms re-read their quiz state at least this often (bus messages
    /// trigger it sooner).
    pub reconcile_interval_ms: u64,
    /// Inbound WebSocket frames larger than this close the socket with 1009.
    pub ws_max_frame_bytes: usize,
    /// Per-connection inbound message rate (token bucket) before close 1008.
    pub ws_rate_per_sec: u32,
    pub ws_rate_burst: u32,
    /// Must-deliver messages queued per connection before it is closed as a
    /// slow consumer (4008).
    pub ws_queue_capacity: usize,
    /// A single frame write taking longer than this closes the connection as
    /// a slow consumer.
    pub ws_write_timeout_ms: u64,
    /// The server pings every WebSocket this often (one sweep per room).
    pub ws_ping_interval_ms: u64,
    /// A WebSocket with no inbound frame (pongs included) for this long is
    /// closed with 4010 (checked at each ping sweep).
    pub ws_idle_timeout_ms: u64,
    /// Cap on concurrently open TCP connections, upgraded WebSockets
    /// included (the permit moves to the socket at the upgrade); past it,
    /// new ones are
    /// closed at once.
    pub max_connections: usize,
    pub http_max_body_bytes: usize,
    /// Per-client-IP rate of HTTP POSTs before 429.
    pub http_post_rate_per_sec: u32,
    pub http_post_burst: u32,
    /// Peers whose `X-Forwarded-For` names the client (edge-lb's addresses or
    /// networks: `10.0.0.0/8`, `fd00::/8`, `127.0.0.1`), for the per-IP POST
    /// limiter and the logs. Empty (the default): never trust the header.
    pub trusted_proxies: Vec<String>,
    /// Drain phase on SIGTERM before the sockets close: `/readyz` answers
    /// 503 meanwhile so edge-lb moves this node's quizzes first (set it to
    /// edge-lb's `health.interval × failure_threshold` plus a margin).
    pub shutdown_drain_ms: u64,
    /// Grace period for closing sockets and flushing events on shutdown.
    pub shutdown_grace_ms: u64,
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            node_name: "core-1".into(),
            tier: Tier::Both,
            token_secret: String::new(),
            redis_nodes: Vec::new(),
            redis_tls: false,
            redis_tls_ca_file: None,
            redis_username: String::new(),
            redis_password: String::new(),
            redis_wait_replicas: 1,
            redis_wait_timeout_ms: 200,
            redis_command_timeout_ms: 2_000,
            redis_max_batch: 256,
            redis_retention_live_s: DEFAULT_RETENTION_LIVE_S,
            redis_retention_ended_s: DEFAULT_RETENTION_ENDED_S,
            kafka_brokers: String::new(),
            kafka_topic: "quiz-events".into(),
            kafka_properties: BTreeMap::new(),
            kafka_sasl_password: String::new(),
            kafka_max_buffered_events: 100_000,
            kafka_message_timeout_ms: 10_000,
            event_log: PathBuf::from("quiz-events.jsonl"),
            demo_quiz: true,
            admin_key: None,
            admin_open: false,
            max_players_per_quiz: 1_000_000,
            players_per_node: 5000,
            join_max_in_flight: 128,
            join_queue_ms: 1000,
            upgrade_max_in_flight: 256,
            upgrade_queue_ms: 1000,
            board_tick_late_ms: 250,
            max_spread: 64,
            players_per_shard: 50_000,
            max_shards: 64,
            max_quiz_bytes: 512 * 1024,
            leaderboard_top: 10,
            event_repair_grace_ms: 10_000,
            event_repair_interval_ms: 2_000,
            event_repair_batch: 256,
            leaderboard_interval_ms: 500,
            reconcile_interval_ms: 1000,
            ws_max_frame_bytes: 4096,
            ws_rate_per_sec: 20,
            ws_rate_burst: 40,
            ws_queue_capacity: 64,
            ws_write_timeout_ms: 10_000,
            ws_ping_interval_ms: 20_000,
            ws_idle_timeout_ms: 60_000,
            max_connections: 19_000,
            http_max_body_bytes: 1 << 20,
            http_post_rate_per_sec: 200,
            http_post_burst: 400,
            trusted_proxies: Vec::new(),
            shutdown_drain_ms: 0,
            shutdown_grace_ms: 10_000,
            log_format: LogFormat::Text,
        }
    }
}

/// The default of `redis_retention_live_s` (48 h), also the store layer's
/// default ([`crate::store::Retention`]).
pub const DEFAULT_RETENTION_LIVE_S: u64 = 48 * 3600;

/// The default of `redis_retention_ended_s` (24 h): by then an ended quiz's
/// events are on Kafka and its record in MongoDB.
pub const DEFAULT_RETENTION_ENDED_S: u64 = 24 * 3600;

/// librdkafka's default `message.max.bytes` (the producer refuses a larger
/// record; brokers default to about the same).
pub const KAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room left in a Kafka message for the `quiz_created` event around the
/// quiz definition (ids, title, times; JSON escaping may grow the text).
pub const EVENT_ENVELOPE_BYTES: usize = 64 * 1024;

/// librdkafka properties `kafka_properties` may not set, and why: the
/// producer's delivery guarantee (idempotence, all replicas) is what "an
/// acknowledged answer is never lost" rests on, and the others have keys of
/// their own.
pub const RESERVED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "use kafka_brokers"),
    (
        "enable.idempotence",
        "always true: delivery is exactly once per event",
    ),
    (
        "acks",
        "always all: an event is acknowledged by every in-sync replica",
    ),
    (
        "queue.buffering.max.messages",
        "use kafka_max_buffered_events",
    ),
    ("message.timeout.ms", "use kafka_message_timeout_ms"),
    (
        "sasl.password",
        "use QUIZ_KAFKA_SASL_PASSWORD (a Secret, not a file)",
    ),
];

/// Percent-encodes a URL userinfo part (RFC 3986 unreserved characters
/// pass), so a password with `@` or `:` survives.
fn userinfo_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    /// A key's value refused, naming the key and the layer it came from.
    #[error(transparent)]
    Layered(#[from] settings::Error),
}

/// How core's keys are named outside the file (docs/configuration.md): the
/// environment names `QUIZ_<KEY>` are the ones core always read.
pub static SCHEME: settings::Scheme = settings::Scheme {
    env_prefix: "QUIZ",
    root: None,
    aliases: &[],
    maps: &["kafka_properties"],
    hidden: &[
        ("redis_password", "QUIZ_REDIS_PASSWORD"),
        ("kafka_sasl_password", "QUIZ_KAFKA_SASL_PASSWORD"),
    ],
    secrets: &["admin_key", "token_secret"],
};

/// Command line of the `quiz-core` binary: the named flags below (each
/// equivalent to `--set <key>=…`), `--set`, `--check-config`, `--version`.
/// Every key is also read from the environment as `QUIZ_<KEY>` (the
/// command line wins).
#[derive(Debug, Default, Parser)]
#[command(name = "quiz-core", about = "The quiz service", version = settings::version!())]
pub struct Cli {
    /// TOML config file.
    #[arg(long, env = "QUIZ_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: settings::ConfigArgs,
    #[arg(long)]
    pub listen: Option<String>,
    #[arg(long)]
    pub node_name: Option<String>,
    #[arg(long, value_enum)]
    pub tier: Option<Tier>,
    #[arg(long)]
    pub token_secret: Option<String>,
    /// Comma separated `host:port` list.
    #[arg(long)]
    pub redis_nodes: Option<String>,
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    #[arg(long)]
    pub kafka_topic: Option<String>,
    /// Comma separated `key=value` librdkafka properties, merged over the
    /// file's `kafka_properties`.
    #[arg(long)]
    pub kafka_properties: Option<String>,
    #[arg(long)]
    pub kafka_sasl_password: Option<String>,
    #[arg(long)]
    pub redis_tls: Option<bool>,
    #[arg(long)]
    pub redis_username: Option<String>,
    #[arg(long)]
    pub redis_password: Option<String>,
    #[arg(long)]
    pub event_log: Option<PathBuf>,
    #[arg(long)]
    pub demo_quiz: Option<bool>,
    #[arg(long)]
    pub admin_key: Option<String>,
    #[arg(long)]
    pub admin_open: Option<bool>,
    #[arg(long)]
    pub max_players_per_quiz: Option<u64>,
    #[arg(long)]
    pub players_per_node: Option<u64>,
    #[arg(long)]
    pub players_per_shard: Option<u64>,
    #[arg(long)]
    pub max_connections: Option<usize>,
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Comma-separated `trusted_proxies`.
    #[arg(long, value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
}

impl Cli {
    /// The named flags as overrides, in the order of the keys (applied after the
    /// environment, before `--set`).
    fn named_overrides(&self) -> Vec<settings::Override> {
        fn name<T: Serialize>(v: &T) -> String {
            serde_json::to_value(v)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        }
        let flags: [(&str, Option<String>); 22] = [
            ("listen", self.listen.clone()),
            ("node_name", self.node_name.clone()),
            ("tier", self.tier.as_ref().map(name)),
            ("token_secret", self.token_secret.clone()),
            ("redis_nodes", self.redis_nodes.clone()),
            ("redis_tls", self.redis_tls.map(|b| b.to_string())),
            ("redis_username", self.redis_username.clone()),
            ("redis_password", self.redis_password.clone()),
            ("kafka_brokers", self.kafka_brokers.clone()),
            ("kafka_topic", self.kafka_topic.clone()),
            ("kafka_properties", self.kafka_properties.clone()),
            ("kafka_sasl_password", self.kafka_sasl_password.clone()),
            (
                "event_log",
                self.event_log.as_ref().map(|p| p.display().to_string()),
            ),
            ("demo_quiz", self.demo_quiz.map(|b| b.to_string())),
            ("admin_key", self.admin_key.clone()),
            ("admin_open", self.admin_open.map(|b| b.to_string())),
            (
                "max_players_per_quiz",
                self.max_players_per_quiz.map(|n| n.to_string()),
            ),
            (
                "players_per_node",
                self.players_per_node.map(|n| n.to_string()),
            ),
            (
                "players_per_shard",
                self.players_per_shard.map(|n| n.to_string()),
            ),
            (
                "max_connections",
                self.max_connections.map(|n| n.to_string()),
            ),
            ("log_format", self.log_format.as_ref().map(name)),
            (
                "trusted_proxies",
                self.trusted_proxies.as_ref().map(|v| v.join(",")),
            ),
        ];
        flags
            .into_iter()
            .filter_map(|(key, v)| {
                let flag = format!("--{}", key.replace('_', "-"));
                v.map(|v| settings::Override::flag(key, &flag, v))
            })
            .collect()
    }
}

impl Config {
    /// Every layer from the process's environment; see [`Config::load_with`].
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        Config::load_with(cli, &|name| std::env::var(name).ok()).map(|(c, _)| c)
    }

    /// Defaults, then the file named by `cli.config`, then the environment
    /// (`lookup`: `std::env::var` in the binary, a map in tests), then the
    /// named flags, then `--set`; validated. Also returns where each key came
    /// from (for `--check-config` and the errors).
    pub fn load_with(
        cli: &Cli,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, settings::Layers), ConfigError> {
        let (base, file_tree) = match &cli.config {
            Some(path) => {
                let (cfg, tree) = Config::read_file(path)?;
                (cfg, Some((path.display().to_string(), tree)))
            }
            None => (Config::default(), None),
        };
        let base =
            serde_json::to_value(&base).map_err(|e| settings::Error::Usage(e.to_string()))?;
        let mut overrides = SCHEME.env_overrides(&base, lookup);
        overrides.extend(cli.named_overrides());
        overrides.extend(cli.settings.overrides()?);
        let file = file_tree.as_ref().map(|(p, t)| (p.as_str(), t));
        let (mut cfg, mut layers): (Config, _) = SCHEME.load(base, file, &overrides)?;
        if let Some(p) = layers.hidden("redis_password") {
            cfg.redis_password = p.to_string();
        }
        if let Some(p) = layers.hidden("kafka_sasl_password") {
            cfg.kafka_sasl_password = p.to_string();
        }
        cfg.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message } => layers.error(key, message).into(),
            other => other,
        })?;
        if let Ok(tree) = serde_json::to_value(&cfg) {
            layers.set_tree(tree);
        }
        Ok((cfg, layers))
    }

    /// The file alone over the defaults (durations given as strings read as
    /// their key's unit), and the keys it sets.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        Config::read_file(path).map(|(c, _)| c)
    }

    fn read_file(path: &std::path::Path) -> Result<(Config, serde_json::Value), ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: toml::Table = toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?;
        let mut tree = serde_json::to_value(&raw).map_err(|e| parse_err(e.to_string()))?;
        // `*_ms` / `*_s` keys may be duration strings: read them as their
        // unit's integer, then parse the typed struct from that (its errors
        // name the key); untouched text is parsed as it is (its errors also
        // carry the line).
        let cfg = if SCHEME.normalize_file(&mut tree, &path.display().to_string())? {
            let normalized = toml::to_string(&tree).map_err(|e| parse_err(e.to_string()))?;
            toml::from_str(&normalized)
        } else {
            toml::from_str(&text)
        }
        .map_err(|e| parse_err(e.to_string()))?;
        Ok((cfg, tree))
    }

    /// Every key with its environment names (docs/core.md's table lists them).
    pub fn keys() -> Vec<settings::KeyInfo> {
        SCHEME.keys(&serde_json::to_value(Config::default()).unwrap_or_default())
    }

    /// The Redis nodes as URLs: the scheme from `redis_tls` and the
    /// credentials from `redis_username`/`redis_password` added to every
    /// `host:port` entry (entries given as URLs are taken as they are).
    pub fn redis_urls(&self) -> Vec<String> {
        let scheme = if self.redis_tls { "rediss" } else { "redis" };
        let auth = match (self.redis_username.as_str(), self.redis_password.as_str()) {
            (_, "") => String::new(),
            (user, pass) => format!("{}:{}@", userinfo_escape(user), userinfo_escape(pass)),
        };
        self.redis_nodes
            .iter()
            .map(|n| {
                if n.contains("://") {
                    n.clone()
                } else {
                    format!("{scheme}://{auth}{n}")
                }
            })
            .collect()
    }

    /// librdkafka properties for the producer, after core's own: the file's
    /// and environment's `kafka_properties`, then the SASL password.
    pub fn kafka_client_properties(&self) -> Vec<(String, String)> {
        let mut props: Vec<(String, String)> = self
            .kafka_properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !self.kafka_sasl_password.is_empty() {
            props.push(("sasl.password".into(), self.kafka_sasl_password.clone()));
        }
        props
    }

    /// Embedded mode: neither Redis nor Kafka configured.
    pub fn is_embedded(&self) -> bool {
        self.redis_nodes.is_empty() && self.kafka_brokers.trim().is_empty()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("listen", format!("{:?} is not an ip:port", self.listen));
        }
        if self.node_name.trim().is_empty() {
            return bad("node_name", "must not be empty");
        }
        if let Err(e) = crate::client_addr::TrustedProxies::parse(&self.trusted_proxies) {
            return bad("trusted_proxies", e);
        }
        let redis = !self.redis_nodes.is_empty();
        let kafka = !self.kafka_brokers.trim().is_empty();
        if redis != kafka {
            return bad(
                if redis { "kafka_brokers" } else { "redis_nodes" },
                "distributed mode needs both redis_nodes and kafka_brokers (embedded mode: neither)",
            );
        }
        if redis && self.token_secret.len() < 16 {
            return bad(
                "token_secret",
                "distributed mode needs a secret of at least 16 bytes shared by all nodes",
            );
        }
        if redis && self.admin_key.is_none() && !self.admin_open {
            return bad(
                "admin_key",
                "distributed mode needs an admin key (QUIZ_ADMIN_KEY) for POST /v1/quizzes, \
                 or admin_open = true (QUIZ_ADMIN_OPEN=true) to let anyone create quizzes",
            );
        }
        if self.admin_key.as_deref().is_some_and(|k| k.len() < 16) {
            return bad("admin_key", "must be at least 16 bytes");
        }
        if self.max_players_per_quiz == 0 {
            return bad("max_players_per_quiz", "must be > 0");
        }
        for (key, v) in [
            ("players_per_node", self.players_per_node),
            ("players_per_shard", self.players_per_shard),
        ] {
            if v == 0 {
                return bad(key, "must be > 0");
            }
        }
        // A token carries the spread as 1–64 (edge-lb's reading of it).
        if self.join_max_in_flight == 0 {
            return bad("join_max_in_flight", "must be > 0");
        }
        if self.upgrade_max_in_flight == 0 {
            return bad("upgrade_max_in_flight", "must be > 0");
        }
        if !(1..=64).contains(&self.max_spread) {
            return bad("max_spread", "must be 1–64");
        }
        if !(1..=1024).contains(&self.max_shards) {
            return bad("max_shards", "must be 1–1024");
        }
        let kafka_max = self
            .kafka_properties
            .get("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(KAFKA_MESSAGE_MAX_BYTES);
        if self.max_quiz_bytes == 0
            || self.max_quiz_bytes.saturating_add(EVENT_ENVELOPE_BYTES) > kafka_max
        {
            return bad(
                "max_quiz_bytes",
                format!(
                    "must be > 0 and leave {EVENT_ENVELOPE_BYTES} bytes of the Kafka message \
                     limit ({kafka_max}, message.max.bytes) for the event's envelope"
                ),
            );
        }
        if kafka && self.kafka_topic.trim().is_empty() {
            return bad("kafka_topic", "must not be empty");
        }
        for (k, v) in &self.kafka_properties {
            if let Some((_, instead)) = RESERVED_KAFKA_PROPERTIES.iter().find(|(r, _)| r == k) {
                return bad(
                    "kafka_properties",
                    format!("{k:?} cannot be set here: {instead}"),
                );
            }
            if k.is_empty() || v.is_empty() {
                return bad(
                    "kafka_properties",
                    format!("{k:?}: expected a non-empty key=value"),
                );
            }
        }
        if self.kafka_max_buffered_events == 0 {
            return bad("kafka_max_buffered_events", "must be > 0");
        }
        if self.kafka_message_timeout_ms == 0 {
            return bad("kafka_message_timeout_ms", "must be > 0");
        }
        if self.redis_command_timeout_ms == 0 {
            return bad("redis_command_timeout_ms", "must be > 0");
        }
        if self.redis_max_batch == 0 {
            return bad("redis_max_batch", "must be > 0");
        }
        if self.redis_retention_live_s == 0 {
            return bad("redis_retention_live_s", "must be > 0");
        }
        if self.redis_retention_ended_s == 0 {
            return bad("redis_retention_ended_s", "must be > 0");
        }
        if self.redis_password.is_empty() && !self.redis_username.is_empty() {
            return bad("redis_username", "needs a password (QUIZ_REDIS_PASSWORD)");
        }
        if let Some(ca) = &self.redis_tls_ca_file {
            if !ca.is_file() {
                return bad(
                    "redis_tls_ca_file",
                    format!("{} is not a readable file", ca.display()),
                );
            }
        }
        if !(1..=100).contains(&self.leaderboard_top) {
            return bad("leaderboard_top", "must be 1..=100");
        }
        if self.event_repair_interval_ms == 0 {
            return bad("event_repair_interval_ms", "must be > 0");
        }
        if !(1..=10_000).contains(&self.event_repair_batch) {
            return bad("event_repair_batch", "must be 1..=10000");
        }
        if self.leaderboard_interval_ms == 0 {
            return bad("leaderboard_interval_ms", "must be > 0");
        }
        if self.reconcile_interval_ms == 0 {
            return bad("reconcile_interval_ms", "must be > 0");
        }
        if !(64..=1 << 20).contains(&self.ws_max_frame_bytes) {
            return bad("ws_max_frame_bytes", "must be 64..=1048576");
        }
        if self.ws_rate_per_sec == 0 || self.ws_rate_burst == 0 {
            return bad("ws_rate_per_sec", "rate and burst must be > 0");
        }
        if self.ws_queue_capacity == 0 {
            return bad("ws_queue_capacity", "must be > 0");
        }
        if self.ws_ping_interval_ms < 100 {
            return bad("ws_ping_interval_ms", "must be >= 100");
        }
        if self.ws_idle_timeout_ms <= self.ws_ping_interval_ms {
            return bad(
                "ws_idle_timeout_ms",
                "must be longer than ws_ping_interval_ms (a pong needs a ping first)",
            );
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be > 0");
        }
        if self.http_max_body_bytes == 0 {
            return bad("http_max_body_bytes", "must be > 0");
        }
        if self.http_post_rate_per_sec == 0 || self.http_post_burst == 0 {
            return bad("http_post_rate_per_sec", "rate and burst must be > 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_carry_scheme_and_escaped_credentials() {
        let c = Config {
            redis_nodes: vec!["10.0.0.1:6379".into(), "redis://other:1".into()],
            redis_tls: true,
            redis_username: "quiz".into(),
            redis_password: "p@ss:w/rd".into(),
            ..Config::default()
        };
        assert_eq!(
            c.redis_urls(),
            vec![
                "rediss://quiz:p%40ss%3Aw%2Frd@10.0.0.1:6379",
                "redis://other:1"
            ]
        );
        let plain = Config {
            redis_nodes: vec!["h:1".into()],
            ..Config::default()
        };
        assert_eq!(plain.redis_urls(), vec!["redis://h:1"]);
    }

    /// The layers with `env` as the whole environment (the test process's
    /// own `QUIZ_*` variables, e.g. from `stack env`, must not leak in).
    fn load(cli: &Cli, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with(cli, &|n| env.get(n).cloned()).map(|(c, _)| c)
    }

    const DISTRIBUTED: [(&str, &str); 4] = [
        ("QUIZ_REDIS_NODES", "127.0.0.1:7000"),
        ("QUIZ_KAFKA_BROKERS", "k:9092"),
        ("QUIZ_TOKEN_SECRET", "0123456789abcdef"),
        ("QUIZ_ADMIN_OPEN", "true"),
    ];

    #[test]
    fn kafka_properties_merge_and_guard_the_delivery_guarantee() {
        let base = Config {
            redis_nodes: vec!["127.0.0.1:7000".into()],
            kafka_brokers: "k:9092".into(),
            token_secret: "0123456789abcdef".into(),
            admin_open: true,
            ..Config::default()
        };
        let c = load(
            &Cli {
                kafka_properties: Some(
                    "security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512".into(),
                ),
                kafka_sasl_password: Some("s3cret".into()),
                ..Cli::default()
            },
            &DISTRIBUTED,
        )
        .unwrap();
        let props = c.kafka_client_properties();
        assert!(props.contains(&("security.protocol".into(), "SASL_SSL".into())));
        assert!(props.contains(&("sasl.password".into(), "s3cret".into())));
        for (key, _) in RESERVED_KAFKA_PROPERTIES {
            let mut bad = base.clone();
            bad.kafka_properties.insert(key.to_string(), "x".into());
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("kafka_properties") && e.contains(key), "{e}");
        }
        let no_value = load(
            &Cli {
                kafka_properties: Some("linger.ms".into()),
                ..Cli::default()
            },
            &DISTRIBUTED,
        )
        .unwrap_err()
        .to_string();
        assert!(
            no_value.contains("kafka_properties") && no_value.contains("--kafka-properties"),
            "{no_value}"
        );
        // The passwords never reach a serialized config.
        let text = toml::to_string(&c).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn defaults_are_valid_and_embedded() {
        let c = Config::default();
        c.validate().unwrap();
        assert!(c.is_embedded());
    }

    #[test]
    fn validation_names_the_key() {
        let c = Config {
            redis_nodes: vec!["127.0.0.1:7000".into()],
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("kafka_brokers"), "{e}");
        let c = Config {
            leaderboard_top: 0,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("leaderboard_top"));
    }

    #[test]
    fn file_then_cli_overrides() {
        let dir = std::env::temp_dir().join(format!("quizcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nnode_name = \"a\"\n").unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            node_name: Some("b".into()),
            redis_nodes: Some("x:1, y:2".into()),
            kafka_brokers: Some("k:9092".into()),
            token_secret: Some("0123456789abcdef".into()),
            admin_open: Some(true),
            ..Cli::default()
        };
        let c = load(&cli, &[("QUIZ_NODE_NAME", "from-env")]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert_eq!(c.node_name, "b");
        assert_eq!(c.redis_nodes, vec!["x:1", "y:2"]);
        assert!(!c.is_embedded());
        // Durations: a `*_ms` key takes a duration string too, an integer as
        // before; a `*_s` key counts seconds.
        std::fs::write(
            &path,
            "join_queue_ms = \"2s\"\nws_write_timeout_ms = 1500\nredis_retention_ended_s = \"12h\"\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(path),
            ..Cli::default()
        };
        let c = load(&cli, &[("QUIZ_LEADERBOARD_INTERVAL_MS", "1s")]).unwrap();
        assert_eq!(c.join_queue_ms, 2000);
        assert_eq!(c.ws_write_timeout_ms, 1500);
        assert_eq!(c.redis_retention_ended_s, 12 * 3600);
        assert_eq!(c.leaderboard_interval_ms, 1000);
    }

    /// Distributed mode is closed by default: an admin key, or an explicit
    /// `admin_open`.
    #[test]
    fn distributed_mode_needs_an_admin_key_or_admin_open() {
        let base = Config {
            redis_nodes: vec!["127.0.0.1:7000".into()],
            kafka_brokers: "k:9092".into(),
            token_secret: "0123456789abcdef".into(),
            ..Config::default()
        };
        let e = base.validate().unwrap_err().to_string();
        assert!(e.contains("admin_key") && e.contains("admin_open"), "{e}");
        let keyed = Config {
            admin_key: Some("an-admin-key-of-16+".into()),
            ..base.clone()
        };
        keyed.validate().unwrap();
        let short = Config {
            admin_key: Some("short".into()),
            ..base.clone()
        };
        assert!(short
            .validate()
            .unwrap_err()
            .to_string()
            .contains("admin_key"));
        let open = Config {
            admin_open: true,
            ..base.clone()
        };
        open.validate().unwrap();
        // Embedded mode stays open by default (the local demo).
        Config::default().validate().unwrap();
    }

    /// A quiz definition must fit a Kafka message with its event envelope.
    #[test]
    fn max_quiz_bytes_stays_below_the_kafka_message_limit() {
        let c = Config {
            max_quiz_bytes: 1 << 20,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_quiz_bytes"));
        let mut raised = c.clone();
        raised
            .kafka_properties
            .insert("message.max.bytes".into(), "4000000".into());
        raised.validate().unwrap();
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let e = toml::from_str::<Config>("lisen = \"x\"").unwrap_err();
        assert!(e.to_string().contains("lisen"));
    }
}
