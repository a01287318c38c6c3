//! Typed configuration: pingora's `ServerConf` keys at the top level of the YAML file, and
//! this crate's own section under `edge_lb:`, loaded in layers by the workspace's `settings`
//! crate (docs/configuration.md): the file < environment (`EDGE_LB_<SECTION>__<KEY>`, every
//! key of the section) < command line (`--set edge_lb.section.key=value`); a reload
//! (SIGHUP, `/admin/reload`) applies the same layers to the re-read file. Every key is
//! documented in `docs/edge-lb.md` (checked by `edge-lb/tests/config_cli.rs`).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::ring::{RingConfig, RingNode};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse configuration: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// A key's value refused, naming the key and the layer it came from.
    #[error(transparent)]
    Layered(#[from] settings::Error),
}

/// How edge-lb's keys are named outside the file: `EDGE_LB_` and the path under `edge_lb`.
pub static SCHEME: settings::Scheme = settings::Scheme {
    env_prefix: "EDGE_LB",
    root: Some("edge_lb"),
    aliases: &[],
    maps: &[],
    hidden: &[],
    secrets: &["edge_lb.admin_token"],
};

/// The command line's overrides (`--set`), kept for reloads: a reload re-reads the file and
/// applies the environment and these again, so it never silently drops them.
static COMMAND_LINE: OnceLock<Vec<settings::Override>> = OnceLock::new();

/// Record the command line's overrides (the binary, once, before building).
pub fn set_command_line(overrides: Vec<settings::Override>) {
    let _ = COMMAND_LINE.set(overrides);
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole file as this crate sees it (pingora reads the same file for its own keys).
#[derive(Debug, Deserialize)]
struct FileConf {
    edge_lb: EdgeConfig,
}

/// The `edge_lb:` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Plain HTTP/WebSocket listeners.
    #[serde(default = "d_listen")]
    pub listen: Vec<String>,
    /// Set SO_REUSEPORT on listeners so several edge-lb processes share a port.
    #[serde(default = "d_true")]
    pub reuse_port: bool,
    /// Optional TLS (https/wss) listeners.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Admin API and Prometheus `/metrics`.
    #[serde(default = "d_admin")]
    pub admin_listen: String,
    /// Bearer token the admin API's `/admin/…` routes require (`Authorization: Bearer …`).
    /// Unset: no token (keep `admin_listen` on loopback then).
    #[serde(default)]
    pub admin_token: Option<String>,
    /// File holding the admin token (a mounted Secret); read at start and on reload, trimmed.
    /// Exclusive with `admin_token`.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Bounded-load factor `c`; a node owns at most `ceil(c × average)` active quizzes.
    #[serde(default = "d_balance")]
    pub balance_factor: f64,
    /// Ring points per unit of backend weight.
    #[serde(default = "d_vnodes")]
    pub vnodes: u32,
    /// A quiz without tunnels stops counting as active this long after its last request.
    #[serde(default = "d_quiz_idle", with = "humantime_serde")]
    pub quiz_idle_ttl: Duration,
    pub pools: Vec<PoolConfig>,
    /// Local addresses the connections to backends (HTTP and tunnels) leave from, taken in
    /// turn; empty (the default): the kernel's choice. From one address, one backend takes at
    /// most the ephemeral port range's worth of tunnels, and connects cost ~80× more past half of
    /// it (`crate::upstream_bind`): give a host that carries more than ~14 000 tunnels to one
    /// node one address per ~14 000.
    #[serde(default)]
    pub source_addresses: Vec<IpAddr>,
    #[serde(default)]
    pub routes: RoutesConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub tunnel: TunnelConfig,
    #[serde(default)]
    pub drain: DrainConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// Format of the process's log lines (stdout): `text` (the default) or `json`, one object
    /// per line. Read at start only: the logger is installed once.
    #[serde(default)]
    pub log_format: LogFormat,
    /// The sampled access log (`crate::access`): one record per request and per tunnel.
    #[serde(default)]
    pub access_log: AccessLogConfig,
}

/// `edge_lb.log_format`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `edge_lb.access_log`: what the access log records (see `crate::access` and the *Logs*
/// section of `docs/edge-lb.md` for the fields and the reasoning behind the default).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Write access records at all (target `edge_lb::access` of the process's logger).
    pub enabled: bool,
    /// Share of successful requests and normally ended tunnels that are recorded, 0.0–1.0.
    /// Errors and refusals are always recorded.
    pub sample: f64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            sample: 0.01,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the certificate files are checked for changes (reloaded without restart).
    #[serde(default = "d_cert_check", with = "humantime_serde")]
    pub reload_check_interval: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// Static backends. Empty (or absent) when the pool is discovered: a pool has either a
    /// static list or `discovery`, never both, so there is one source of truth per pool.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Find the pool's backends at run time instead (`discovery.rs`).
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
}

/// `edge_lb.pools[].discovery`: where a pool's backends come from at run time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    pub dns: DnsDiscoveryConfig,
}

/// DNS SRV discovery (a Kubernetes headless Service): one SRV answer per pod, whose target's
/// first label is the node name (`core-0.core-headless.quiz.svc.cluster.local` → `core-0`)
/// and whose A/AAAA record is the address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscoveryConfig {
    /// SRV name, e.g. `_http._tcp.core-headless.quiz.svc.cluster.local`. A name with fewer
    /// dots than `ndots` goes through the resolv.conf search list, so `_http._tcp.core-headless`
    /// works in any namespace.
    pub name: String,
    /// Port to use instead of the SRV records' port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Time between resolutions.
    #[serde(default = "d_discovery_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Time allowed for one resolution (every query of it, retries included).
    #[serde(default = "d_discovery_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A backend missing from successful answers is removed only after this long, so a pod
    /// being recreated (briefly absent from DNS) keeps its state and quizzes.
    #[serde(default = "d_remove_after", with = "humantime_serde")]
    pub remove_after: Duration,
    /// DNS server (`ip:port`) to ask instead of the ones in /etc/resolv.conf.
    #[serde(default)]
    pub nameserver: Option<SocketAddr>,
    /// Weight of every discovered backend (SRV weights are for client-side load balancing,
    /// not ring shares, and Kubernetes sets them all equal).
    #[serde(default = "d_weight")]
    pub weight: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Stable node name: the ring key. Keep it across restarts and address changes.
    pub name: String,
    pub addr: SocketAddr,
    #[serde(default = "d_weight")]
    pub weight: u32,
    /// Start drained (or drain on reload).
    #[serde(default)]
    pub drain: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    /// Pool for WebSocket upgrades under `/v1/quizzes/{id}/…`.
    pub websocket: String,
    /// Pool for plain HTTP requests.
    pub http: String,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        RoutesConfig {
            websocket: "core".into(),
            http: "core".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes to mark a node healthy.
    pub success_threshold: u32,
    /// Consecutive failures to mark a node unhealthy. A check that times out is not a failure
    /// (busy is not dead): see `unresponsive_after`.
    pub failure_threshold: u32,
    /// A node whose checks time out (connected, no answer within `timeout`) keeps its quizzes
    /// and tunnels; it is lost only after this long without a ready answer. Long enough to
    /// ride out a CPU-starved machine, short enough that a hung process does not hold its
    /// quizzes for ever.
    #[serde(with = "humantime_serde")]
    pub unresponsive_after: Duration,
    /// A node that was lost must stay healthy this long before it gets quizzes again.
    #[serde(with = "humantime_serde")]
    pub hold_down: Duration,
    /// Panic threshold (Envoy's `healthy_panic_threshold`, as a share): a failing verdict that
    /// would leave fewer than this share of a pool's backends up is deferred, not acted on.
    /// When most of a pool fails its checks at once, the likelier cause is the checker's side
    /// (a starved machine, a partition near edge-lb) than every node dying together, and
    /// acting would close every tunnel of the pool at once. 0 turns it off.
    pub panic_threshold: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: "/readyz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            success_threshold: 2,
            failure_threshold: 2,
            unresponsive_after: Duration::from_secs(30),
            hold_down: Duration::from_secs(10),
            panic_threshold: 0.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    /// Close a WebSocket tunnel after this long without a byte in either direction.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for the backend's upgrade response.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// New tunnels per second admitted to one backend (token bucket per node; 0 = no limit).
    /// Past it the upgrade is answered 503 with a jittered `Retry-After`.
    pub new_per_node_per_sec: u32,
    /// Burst of that bucket.
    pub new_per_node_burst: u32,
    /// After one side closes, wait at most this long for the other to finish.
    #[serde(with = "humantime_serde")]
    pub close_linger: Duration,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            idle_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
            new_per_node_per_sec: 1_000,
            new_per_node_burst: 2_000,
            close_linger: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// Tunnels closed per second when draining a node or moving quizzes back.
    pub close_rate_per_sec: u32,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            close_rate_per_sec: 200,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Request head larger than this is answered 431.
    pub max_header_bytes: usize,
    /// Downstream connections held at once (each proxied one costs two sockets).
    pub max_connections: usize,
    /// Time allowed for a client to send a request head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Idle time allowed between keep-alive HTTP requests.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Whole-request deadline: from a request's first byte to the end of its body (head and
    /// body); a client still sending then is answered 408 and closed (slowloris).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Limits per client address.
    pub per_client: PerClientConfig,
}

/// `edge_lb.limits.per_client`: limits per client address (see `limits.rs` and the reasoning
/// for the defaults in `docs/edge-lb.md`). A limit of 0 is off.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerClientConfig {
    /// Connections one address holds open at once (429 past it).
    pub max_connections: u32,
    /// New connections per second from one address (token bucket), and its burst.
    pub connections_per_sec: u32,
    pub connections_burst: u32,
    /// Requests (plain HTTP and upgrades) per second from one address, and the burst.
    pub requests_per_sec: u32,
    pub requests_burst: u32,
    /// Authentication failures per second one address may cause (a token bucket drained by
    /// each backend 401 or 403, and each 101 core marks as a refused token), and its burst.
    /// Once it is empty the address's requests and upgrades are answered 429 before any
    /// backend is contacted, until a failure's worth has refilled.
    pub auth_failures_per_sec: u32,
    pub auth_failures_burst: u32,
    /// Addresses tracked at once (memory bound: about 100 bytes each).
    pub max_clients: usize,
    /// An address with no open connection is forgotten this long after its last request.
    #[serde(with = "humantime_serde")]
    pub idle_ttl: Duration,
    /// IPv6 clients are keyed by this prefix length (one subscriber gets a /64).
    pub ipv6_prefix: u8,
}

impl Default for PerClientConfig {
    fn default() -> Self {
        PerClientConfig {
            max_connections: 2_000,
            connections_per_sec: 200,
            connections_burst: 2_000,
            requests_per_sec: 400,
            requests_burst: 4_000,
            // A player with a stale token fails once or twice and asks for a new one: a
            // hundred failures at once (a classroom behind one NAT whose quiz expired), then
            // 5 a second, is far past what players cause and far below a forger's rate.
            auth_failures_per_sec: 5,
            auth_failures_burst: 100,
            max_clients: 200_000,
            idle_ttl: Duration::from_secs(60),
            ipv6_prefix: 64,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: 16 * 1024,
            max_connections: 9_900,
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            per_client: PerClientConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    #[serde(with = "humantime_serde")]
    pub upstream_read_timeout: Duration,
    /// Extra attempts on connect failure (to the next node of the walk for quiz-less requests,
    /// to the same owner otherwise).
    pub retries: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            upstream_read_timeout: Duration::from_secs(30),
            retries: 1,
        }
    }
}

fn d_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".into()]
}
fn d_true() -> bool {
    true
}
fn d_admin() -> String {
    "127.0.0.1:9090".into()
}
fn d_balance() -> f64 {
    1.25
}
fn d_vnodes() -> u32 {
    160
}
fn d_quiz_idle() -> Duration {
    Duration::from_secs(120)
}
fn d_cert_check() -> Duration {
    Duration::from_secs(5)
}
fn d_weight() -> u32 {
    1
}
fn d_discovery_interval() -> Duration {
    Duration::from_secs(5)
}
fn d_discovery_timeout() -> Duration {
    Duration::from_secs(2)
}
fn d_remove_after() -> Duration {
    Duration::from_secs(30)
}

/// The rule for backend names (the ring key), static or discovered.
pub fn valid_backend_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

impl EdgeConfig {
    /// Parse the `edge_lb:` section out of a whole configuration file's text (the file
    /// alone: no environment, no command line).
    pub fn from_yaml(text: &str) -> Result<EdgeConfig, ConfigError> {
        let f: FileConf = serde_yaml::from_str(text)?;
        f.edge_lb.validate()
    }

    /// The file's `edge_lb:` section (`path` names it in errors), then the environment
    /// (`lookup`), then `cli`; validated. Also returns where each key came from.
    pub fn layered(
        path: &str,
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
        cli: &[settings::Override],
    ) -> Result<(EdgeConfig, settings::Layers), ConfigError> {
        let file_tree: serde_json::Value = serde_yaml::from_str(text)?;
        let FileConf { edge_lb } = serde_yaml::from_str(text)?;
        let base =
            serde_json::to_value(&edge_lb).map_err(|e| settings::Error::Usage(e.to_string()))?;
        let mut overrides = SCHEME.env_overrides(&base, lookup);
        overrides.extend_from_slice(cli);
        let (cfg, mut layers): (EdgeConfig, _) =
            SCHEME.load(base, Some((path, &file_tree)), &overrides)?;
        let cfg = cfg.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message } => layers.error(&key, message).into(),
            other => other,
        })?;
        if let Ok(tree) = serde_json::to_value(&cfg) {
            layers.set_tree(tree);
        }
        Ok((cfg, layers))
    }

    /// Every key of the section with its environment name (docs/edge-lb.md lists them).
    pub fn keys() -> Vec<settings::KeyInfo> {
        let min = "edge_lb: {pools: [{name: core, backends: [{name: a, addr: '127.0.0.1:1'}]}]}";
        let tree = serde_yaml::from_str::<FileConf>(min)
            .ok()
            .and_then(|f| serde_json::to_value(f.edge_lb).ok())
            .unwrap_or_default();
        SCHEME.keys(&tree)
    }

    /// Resolve `admin_token_file` into `admin_token` (at start and on reload: parsing a
    /// configuration alone, as deploy-check does, reads no secret).
    pub fn read_admin_token(mut self) -> Result<EdgeConfig, ConfigError> {
        if let Some(path) = &self.admin_token_file {
            let t = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let t = t.trim();
            if t.is_empty() {
                return Err(invalid("edge_lb.admin_token_file", "the file is empty"));
            }
            self.admin_token = Some(t.to_string());
            self.admin_token_file = None;
        }
        Ok(self)
    }

    /// Check that this host can send from every `source_addresses` entry (at start and on
    /// reload, like the admin token: parsing a configuration alone, as deploy-check does,
    /// needs no particular host).
    pub fn check_source_addresses(self) -> Result<EdgeConfig, ConfigError> {
        crate::upstream_bind::check(&self.source_addresses).map_err(|e| {
            invalid(
                format!("edge_lb.source_addresses[{}]", e.index),
                e.to_string(),
            )
        })?;
        Ok(self)
    }

    /// The file at `path` with the process's environment and command line over it (the
    /// reload path).
    pub fn load(path: &Path) -> Result<EdgeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cli = COMMAND_LINE.get().map(Vec::as_slice).unwrap_or_default();
        Self::layered(
            &path.display().to_string(),
            &text,
            &|name| std::env::var(name).ok(),
            cli,
        )
        .map(|(c, _)| c)
    }

    pub fn validate(self) -> Result<EdgeConfig, ConfigError> {
        if !(self.balance_factor > 1.0 && self.balance_factor <= 10.0) {
            return Err(invalid(
                "edge_lb.balance_factor",
                "must be > 1.0 and <= 10.0",
            ));
        }
        if !(1..=10_000).contains(&self.vnodes) {
            return Err(invalid("edge_lb.vnodes", "must be 1..=10000"));
        }
        if self.listen.is_empty() && self.tls.is_none() {
            return Err(invalid("edge_lb.listen", "no listener configured"));
        }
        for (i, l) in self.listen.iter().enumerate() {
            l.parse::<SocketAddr>()
                .map_err(|e| invalid(format!("edge_lb.listen[{i}]"), e.to_string()))?;
        }
        self.admin_listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("edge_lb.admin_listen", e.to_string()))?;
        if let Some(t) = &self.tls {
            for (i, l) in t.listen.iter().enumerate() {
                l.parse::<SocketAddr>()
                    .map_err(|e| invalid(format!("edge_lb.tls.listen[{i}]"), e.to_string()))?;
            }
        }
        if self.pools.is_empty() {
            return Err(invalid("edge_lb.pools", "at least one pool is required"));
        }
        for (i, a) in self.source_addresses.iter().enumerate() {
            if a.is_unspecified() || a.is_multicast() {
                return Err(invalid(
                    format!("edge_lb.source_addresses[{i}]"),
                    format!("{a} is not an address to send from"),
                ));
            }
            if self.source_addresses[..i].contains(a) {
                return Err(invalid(
                    format!("edge_lb.source_addresses[{i}]"),
                    format!("{a} twice"),
                ));
            }
        }
        let mut pool_names = HashSet::new();
        let mut names = HashSet::new();
        for (p, pool) in self.pools.iter().enumerate() {
            if !pool_names.insert(pool.name.as_str()) {
                return Err(invalid(
                    format!("edge_lb.pools[{p}].name"),
                    format!("duplicate pool `{}`", pool.name),
                ));
            }
            match &pool.discovery {
                None if pool.backends.is_empty() => {
                    return Err(invalid(
                        format!("edge_lb.pools[{p}].backends"),
                        "at least one backend is required (or set discovery)",
                    ));
                }
                Some(_) if !pool.backends.is_empty() => {
                    return Err(invalid(
                        format!("edge_lb.pools[{p}].backends"),
                        "a pool with discovery takes no static backends",
                    ));
                }
                Some(d) => d
                    .dns
                    .validate(&format!("edge_lb.pools[{p}].discovery.dns"))?,
                None => {}
            }
            for (b, be) in pool.backends.iter().enumerate() {
                let key = format!("edge_lb.pools[{p}].backends[{b}]");
                if !valid_backend_name(&be.name) {
                    return Err(invalid(
                        format!("{key}.name"),
                        "1-64 chars of [A-Za-z0-9._-]",
                    ));
                }
                if !names.insert(be.name.as_str()) {
                    return Err(invalid(
                        format!("{key}.name"),
                        format!("duplicate backend name `{}`", be.name),
                    ));
                }
                if !(1..=1000).contains(&be.weight) {
                    return Err(invalid(format!("{key}.weight"), "must be 1..=1000"));
                }
            }
        }
        for (key, pool) in [
            ("edge_lb.routes.websocket", &self.routes.websocket),
            ("edge_lb.routes.http", &self.routes.http),
        ] {
            if !pool_names.contains(pool.as_str()) {
                return Err(invalid(key, format!("no pool named `{pool}`")));
            }
        }
        if self.health.success_threshold == 0 {
            return Err(invalid("edge_lb.health.success_threshold", "must be >= 1"));
        }
        if self.health.failure_threshold == 0 {
            return Err(invalid("edge_lb.health.failure_threshold", "must be >= 1"));
        }
        if self.health.interval.is_zero() {
            return Err(invalid("edge_lb.health.interval", "must be > 0"));
        }
        if self.health.unresponsive_after <= self.health.interval {
            return Err(invalid(
                "edge_lb.health.unresponsive_after",
                "must be longer than edge_lb.health.interval",
            ));
        }
        if !(0.0..=1.0).contains(&self.health.panic_threshold) {
            return Err(invalid(
                "edge_lb.health.panic_threshold",
                "must be between 0 and 1 (a share of the pool)",
            ));
        }
        if !self.health.path.starts_with('/') {
            return Err(invalid("edge_lb.health.path", "must start with /"));
        }
        if self.drain.close_rate_per_sec == 0 {
            return Err(invalid("edge_lb.drain.close_rate_per_sec", "must be >= 1"));
        }
        if self.limits.max_header_bytes < 1024 {
            return Err(invalid(
                "edge_lb.limits.max_header_bytes",
                "must be >= 1024",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid("edge_lb.limits.max_connections", "must be >= 1"));
        }
        if self.tunnel.idle_timeout.is_zero() {
            return Err(invalid("edge_lb.tunnel.idle_timeout", "must be > 0"));
        }
        if self.limits.request_timeout.is_zero() {
            return Err(invalid("edge_lb.limits.request_timeout", "must be > 0"));
        }
        if self.limits.per_client.max_clients == 0 {
            return Err(invalid(
                "edge_lb.limits.per_client.max_clients",
                "must be >= 1",
            ));
        }
        if self.limits.per_client.ipv6_prefix > 128 {
            return Err(invalid(
                "edge_lb.limits.per_client.ipv6_prefix",
                "must be 0..=128",
            ));
        }
        if !(0.0..=1.0).contains(&self.access_log.sample) {
            return Err(invalid(
                "edge_lb.access_log.sample",
                "must be between 0.0 and 1.0 (the share of successes recorded)",
            ));
        }
        match (&self.admin_token, &self.admin_token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "edge_lb.admin_token_file",
                    "set admin_token or admin_token_file, not both",
                ))
            }
            (Some(t), None) if t.trim().is_empty() => {
                return Err(invalid("edge_lb.admin_token", "must not be empty"))
            }
            _ => {}
        }
        Ok(self)
    }

    /// Pools whose backends are discovered, with their settings.
    pub fn discovered_pools(&self) -> impl Iterator<Item = (&str, &DnsDiscoveryConfig)> {
        self.pools
            .iter()
            .filter_map(|p| p.discovery.as_ref().map(|d| (p.name.as_str(), &d.dns)))
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn ring_config(&self, pool: &PoolConfig) -> RingConfig {
        RingConfig {
            nodes: pool
                .backends
                .iter()
                .map(|b| RingNode {
                    name: b.name.as_str().into(),
                    weight: b.weight,
                })
                .collect(),
            vnodes: self.vnodes,
            balance_factor: self.balance_factor,
        }
    }
}

impl DnsDiscoveryConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let name = self.name.trim_end_matches('.');
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(invalid(
                format!("{key}.name"),
                format!(
                    "`{}` is not a DNS name (dot-separated labels of [A-Za-z0-9_-])",
                    self.name
                ),
            ));
        }
        if self.port == Some(0) {
            return Err(invalid(format!("{key}.port"), "must be 1..=65535"));
        }
        if self.interval < Duration::from_millis(10) {
            return Err(invalid(format!("{key}.interval"), "must be >= 10ms"));
        }
        if self.timeout.is_zero() {
            return Err(invalid(format!("{key}.timeout"), "must be > 0"));
        }
        if !(1..=1000).contains(&self.weight) {
            return Err(invalid(format!("{key}.weight"), "must be 1..=1000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "
version: 1
threads: 2
edge_lb:
  listen: ['127.0.0.1:0']
  pools:
    - name: core
      backends:
        - {name: core-1, addr: '127.0.0.1:7001'}
";

    #[test]
    fn limit_keys_parse_and_errors_name_the_key() {
        let c = EdgeConfig::from_yaml(MIN).unwrap();
        assert_eq!(c.limits.per_client.max_connections, 2_000);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(30));
        assert_eq!(c.tunnel.new_per_node_per_sec, 1_000);
        assert_eq!(c.admin_token, None);
        let with = |extra: &str| MIN.replace("  pools:", &format!("{extra}\n  pools:"));
        let c = EdgeConfig::from_yaml(&with(
            "  limits: {request_timeout: 5s, per_client: {max_connections: 3, ipv6_prefix: 56}}",
        ))
        .unwrap();
        assert_eq!(c.limits.per_client.max_connections, 3);
        assert_eq!(c.limits.per_client.ipv6_prefix, 56);
        assert_eq!(c.limits.per_client.requests_per_sec, 400);
        for (bad, key) in [
            (
                "  limits: {request_timeout: 0s}",
                "edge_lb.limits.request_timeout",
            ),
            ("  limits: {per_client: {max_clients: 0}}", "max_clients"),
            ("  limits: {per_client: {ipv6_prefix: 129}}", "ipv6_prefix"),
            ("  admin_token: ' '", "edge_lb.admin_token"),
            (
                "  admin_token: a\n  admin_token_file: /x",
                "edge_lb.admin_token_file",
            ),
        ] {
            let e = EdgeConfig::from_yaml(&with(bad)).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        // The token file is read when the instance starts, not when a file is only parsed.
        let dir = std::env::temp_dir().join(format!("edge-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c =
            EdgeConfig::from_yaml(&with(&format!("  admin_token_file: {}", f.display()))).unwrap();
        assert_eq!(c.admin_token, None);
        assert_eq!(
            c.read_admin_token().unwrap().admin_token.as_deref(),
            Some("s3cret")
        );
        let c = EdgeConfig::from_yaml(&with("  admin_token_file: /nonexistent/token")).unwrap();
        assert!(c.read_admin_token().is_err());
    }

    #[test]
    fn unresponsive_after_defaults_parses_and_must_exceed_the_interval() {
        let c = EdgeConfig::from_yaml(MIN).unwrap();
        assert_eq!(c.health.unresponsive_after, Duration::from_secs(30));
        let with = |h: &str| MIN.replace("  pools:", &format!("  health: {h}\n  pools:"));
        let c = EdgeConfig::from_yaml(&with("{unresponsive_after: 3s, interval: 100ms}")).unwrap();
        assert_eq!(c.health.unresponsive_after, Duration::from_secs(3));
        for bad in [
            "{unresponsive_after: 1s}",
            "{unresponsive_after: 2s, interval: 5s}",
        ] {
            let e = EdgeConfig::from_yaml(&with(bad)).unwrap_err().to_string();
            assert!(
                e.contains("edge_lb.health.unresponsive_after"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn log_keys_parse_and_errors_name_the_key() {
        let c = EdgeConfig::from_yaml(MIN).unwrap();
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.access_log.enabled);
        assert_eq!(c.access_log.sample, 0.01);
        let with = |extra: &str| MIN.replace("  pools:", &format!("{extra}\n  pools:"));
        let c = EdgeConfig::from_yaml(&with(
            "  log_format: json\n  access_log: {enabled: false, sample: 1.0}",
        ))
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(!c.access_log.enabled);
        assert_eq!(c.access_log.sample, 1.0);
        for (bad, key) in [
            ("  access_log: {sample: 1.5}", "edge_lb.access_log.sample"),
            ("  access_log: {sample: -0.1}", "edge_lb.access_log.sample"),
            ("  access_log: {sample: .nan}", "edge_lb.access_log.sample"),
            ("  access_log: {bogus: 1}", "bogus"),
            ("  log_format: xml", "log_format"),
        ] {
            let e = EdgeConfig::from_yaml(&with(bad)).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = EdgeConfig::from_yaml(MIN).unwrap();
        assert_eq!(c.balance_factor, 1.25);
        assert_eq!(c.health.path, "/readyz");
        assert_eq!(c.routes.websocket, "core");
    }

    #[test]
    fn errors_name_the_key() {
        let bad = MIN.replace("listen: ['127.0.0.1:0']", "balance_factor: 0.5");
        let e = EdgeConfig::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("edge_lb.balance_factor"), "{e}");
        let bad = MIN.replace("core-1", "bad name!");
        let e = EdgeConfig::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("edge_lb.pools[0].backends[0].name"), "{e}");
        let bad = MIN.replace(
            "  pools:",
            "  routes: {websocket: ws, http: core}\n  pools:",
        );
        let e = EdgeConfig::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("edge_lb.routes.websocket"), "{e}");
        let bad = MIN.replace("  pools:", "  bogus: 1\n  pools:");
        assert!(EdgeConfig::from_yaml(&bad).is_err());
    }

    #[test]
    fn discovery_keys_parse_and_errors_name_the_key() {
        let disc = "edge_lb:
  pools:
    - name: core
      discovery:
        dns: {name: _http._tcp.core-headless, interval: 1s, nameserver: '127.0.0.1:5353'}
";
        let c = EdgeConfig::from_yaml(disc).unwrap();
        let (pool, d) = c.discovered_pools().next().unwrap();
        assert_eq!(pool, "core");
        assert_eq!(d.interval, Duration::from_secs(1));
        assert_eq!(d.remove_after, Duration::from_secs(30));
        assert_eq!(d.port, None);
        assert!(c.pools[0].backends.is_empty());
        for (bad, key) in [
            ("name: _http._tcp.core-headless,", "name: 'bad name',"),
            ("interval: 1s", "interval: 0s"),
            ("interval: 1s", "interval: 1s, port: 0"),
            ("interval: 1s", "interval: 1s, weight: 0"),
            ("interval: 1s", "interval: 1s, timeout: 0s"),
        ]
        .map(|(from, to)| (disc.replace(from, to), to))
        {
            let e = EdgeConfig::from_yaml(&bad).unwrap_err().to_string();
            assert!(e.contains("edge_lb.pools[0].discovery.dns."), "{key}: {e}");
        }
        let e = EdgeConfig::from_yaml(&disc.replace("interval: 1s,", "bogus: 1,"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        // Either static backends or discovery, not both.
        let both = disc.replace(
            "      discovery:",
            "      backends: [{name: core-1, addr: '127.0.0.1:7001'}]\n      discovery:",
        );
        let e = EdgeConfig::from_yaml(&both).unwrap_err().to_string();
        assert!(e.contains("edge_lb.pools[0].backends"), "{e}");
        // Neither: the pool would have no backends ever.
        let neither = MIN.replace(
            "      backends:\n        - {name: core-1, addr: '127.0.0.1:7001'}\n",
            "",
        );
        let e = EdgeConfig::from_yaml(&neither).unwrap_err().to_string();
        assert!(e.contains("edge_lb.pools[0].backends"), "{e}");
    }

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../edge-lb.example.yaml");
        EdgeConfig::from_yaml(text).unwrap();
        pingora_core::server::configuration::ServerConf::from_yaml(text).unwrap();
    }
}
