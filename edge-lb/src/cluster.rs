//! The shared state of one edge-lb instance: backends with their health and drain state, one
//! [`Placement`] per pool, quiz activity, and the registry of open tunnels per backend. Every
//! routing decision goes through it.
//!
//! The state is defined here; what changes it lives in one module per concern:
//!
//! - `sources`: where backends come from (the configuration merged with discovery) and
//!   installing them into the routing state (start, reload, discovery round).
//! - `routing`: route a quiz, route any request, explain a route (the hot read path).
//! - `verdicts`: health-check verdicts (thresholds, hold-down, panic threshold), drain, and
//!   the rebalance toward a returning node.
//! - `tunnels`: the per-backend registry of open tunnels and their closing (pingora issue
//!   #571), which ties each tunnel to its quiz's activity and, for a spread quiz, to the
//!   spread book's per-node count.
//!
//! One `parking_lot::Mutex` guards the routing state; it is never held across an `.await`
//! (every method here is synchronous), and a routing decision holds it for a ring walk only.
//! The spread book (`crate::spread::Book`: k as last seen per quiz, open tunnels per node) has
//! its own lock, a leaf: nothing else is locked while it is held.

mod routing;
mod sources;
mod tunnels;
mod verdicts;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

pub use routing::Target;
pub use sources::{Discovered, DiscoveryDiff};
pub use tunnels::{CloseReason, Closing, TunnelGuard};

use crate::access::AccessLog;
use crate::config::{EdgeConfig, HealthConfig};
use crate::limits::{ClientTable, NodeRate};
use crate::metrics::Metrics;
use crate::probe::Outcome;
use crate::ring::Placement;
use crate::spread::{Book, BOOK_CAP, BOOK_TTL};
use crate::upstream_bind::SourceAddresses;
use sources::Sources;
use tunnels::Tunnels;

#[derive(Clone, Debug, Serialize)]
pub struct BackendView {
    pub name: String,
    pub pool: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// `up` (passing checks), `down`, `unknown` before the first verdict, or `failing`: failing
    /// its checks with the verdict deferred by `health.panic_threshold`.
    pub health: &'static str,
    /// Receives new quizzes: up, held down long enough, not draining.
    pub eligible: bool,
    pub draining: bool,
    pub active_quizzes: usize,
    pub tunnels: usize,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    /// The latest probe's outcome (`ready`, `not_ready`, `gone`, `slow`); none before the first.
    pub last_outcome: Option<Outcome>,
    /// The latest probe timed out: busy, kept up (with its quizzes and tunnels) until it has
    /// not answered ready for `health.unresponsive_after`.
    pub slow: bool,
    /// Milliseconds since the node last answered ready; none if it never has.
    pub last_ready_ms_ago: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Backend {
    pool: Arc<str>,
    addr: SocketAddr,
    weight: u32,
    draining: bool,
    /// None before the first verdict.
    up: Option<bool>,
    consecutive_ok: u32,
    consecutive_fail: u32,
    /// When the node turned up after having been lost; eligibility waits for hold-down.
    up_since: Option<Instant>,
    /// Lost at least once: returns are held down.
    was_lost: bool,
    /// Discovered after start and not yet seen up: not eligible until it passes
    /// `success_threshold` checks, and failures before that are not a "loss" (a pod that is
    /// still starting must not be held down once it is ready).
    unverified: bool,
    eligible: bool,
    last_error: Option<String>,
    last_outcome: Option<Outcome>,
    /// When the node last answered ready; None if it never has (since `watched_since`).
    last_ready: Option<Instant>,
    /// When this edge-lb began checking the node: the slowness clock of a node that has not
    /// answered ready yet starts here.
    watched_since: Instant,
}

impl Backend {
    /// The latest probe timed out (see [`Outcome::Slow`]).
    fn slow(&self) -> bool {
        self.last_outcome == Some(Outcome::Slow)
    }

    /// No ready answer for `health.unresponsive_after`: a slow node is lost after this.
    fn unresponsive(&self, h: &HealthConfig) -> bool {
        self.last_ready.unwrap_or(self.watched_since).elapsed() >= h.unresponsive_after
    }

    /// Lost by its checks (`failure_threshold` failures in a row, or slow past
    /// `unresponsive_after`) but not marked down: the verdict was deferred by
    /// `health.panic_threshold`.
    fn deferred(&self, h: &HealthConfig) -> bool {
        self.up != Some(false)
            && (self.consecutive_fail >= h.failure_threshold
                || (self.slow() && self.unresponsive(h)))
    }

    /// `up`, `down`, `unknown` or `failing` (see [`BackendView::health`]).
    fn health(&self, h: &HealthConfig) -> &'static str {
        match self.up {
            // Failing its checks, but the verdict is deferred (panic threshold).
            _ if self.deferred(h) => "failing",
            None => "unknown",
            Some(true) => "up",
            Some(false) => "down",
        }
    }
}

/// When a quiz was last routed or had a tunnel end, and its open tunnels: the idle-quiz
/// sweep releases a quiz's placement once both say it is gone.
#[derive(Debug, Default)]
struct Activity {
    tunnels: usize,
    last_seen: Option<Instant>,
}

struct Pool {
    placement: Placement,
    activity: HashMap<String, Activity>,
}

/// The routing state.
struct Inner {
    backends: HashMap<Arc<str>, Backend>,
    pools: HashMap<Arc<str>, Pool>,
}

pub struct Cluster {
    /// The effective configuration (discovered backends filled in).
    config: RwLock<Arc<EdgeConfig>>,
    /// Serialises updates (reload, discovery) and remembers both sources of backends.
    sources: Mutex<Sources>,
    inner: Mutex<Inner>,
    tunnels: Tunnels,
    /// Spread quizzes seen in tokens, with their open tunnels per node (the admin view).
    book: Mutex<Book>,
    /// Round-robin position of `route_any`.
    rr: AtomicUsize,
    pub metrics: Metrics,
    pub connections: AtomicUsize,
    /// Per-client-address limits (`limits.per_client`; set at start, not reloaded).
    pub clients: Arc<ClientTable>,
    /// New tunnels per backend per second (`tunnel.new_per_node_per_sec`; set at start).
    pub node_rate: NodeRate,
    /// The access log's switch and sampling share (`access_log`; reloaded).
    pub access: AccessLog,
    /// Whose turn it is among `source_addresses`.
    pub source_addresses: SourceAddresses,
}

impl Cluster {
    pub fn new(config: EdgeConfig) -> Arc<Cluster> {
        let c = Arc::new(Cluster {
            config: RwLock::new(Arc::new(config.clone())),
            sources: Mutex::new(Sources::new(config.clone())),
            inner: Mutex::new(Inner {
                backends: HashMap::new(),
                pools: HashMap::new(),
            }),
            tunnels: Tunnels::new(),
            book: Mutex::new(Book::new(BOOK_CAP, BOOK_TTL)),
            rr: AtomicUsize::new(0),
            metrics: Metrics::new(),
            connections: AtomicUsize::new(0),
            clients: ClientTable::new(&config.limits.per_client),
            node_rate: NodeRate::new(&config.tunnel),
            access: AccessLog::new(&config.access_log),
            source_addresses: SourceAddresses::default(),
        });
        c.apply_config(config);
        c
    }

    pub fn config(&self) -> Arc<EdgeConfig> {
        self.config.read().clone()
    }

    /// The configuration as loaded, without discovered backends (what discovery reads its
    /// settings from).
    pub fn base_config(&self) -> EdgeConfig {
        self.sources.lock().base.clone()
    }

    pub fn backends(&self) -> Vec<BackendView> {
        let tunnels = self.tunnels.counts();
        let cfg = self.config();
        let inner = self.inner.lock();
        let mut v: Vec<BackendView> = inner
            .backends
            .iter()
            .map(|(n, b)| BackendView {
                name: n.to_string(),
                pool: b.pool.to_string(),
                addr: b.addr,
                weight: b.weight,
                health: b.health(&cfg.health),
                eligible: b.eligible,
                draining: b.draining,
                active_quizzes: inner
                    .pools
                    .get(&b.pool)
                    .map(|p| p.placement.load(n))
                    .unwrap_or(0),
                tunnels: tunnels.get(n).copied().unwrap_or(0),
                consecutive_ok: b.consecutive_ok,
                consecutive_fail: b.consecutive_fail,
                last_outcome: b.last_outcome,
                slow: b.slow(),
                last_ready_ms_ago: b.last_ready.map(|t| t.elapsed().as_millis() as u64),
                last_error: b.last_error.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn backend_addrs(&self) -> Vec<(Arc<str>, SocketAddr)> {
        let inner = self.inner.lock();
        inner
            .backends
            .iter()
            .map(|(n, b)| (n.clone(), b.addr))
            .collect()
    }

    /// Periodic upkeep: expire idle quizzes, idle client entries and spread quizzes no longer
    /// seen; refresh gauges.
    pub fn sweep(&self) {
        let clients = self.clients.sweep();
        self.metrics.client_table_entries.set(clients as i64);
        let spread = self.book.lock().sweep(Instant::now());
        self.metrics.spread_quizzes.set(spread as i64);
        let ttl = self.config().quiz_idle_ttl;
        let mut inner = self.inner.lock();
        let now = Instant::now();
        for p in inner.pools.values_mut() {
            let mut expired = Vec::new();
            p.activity.retain(|q, a| {
                let keep =
                    a.tunnels > 0 || a.last_seen.is_some_and(|t| now.duration_since(t) < ttl);
                if !keep {
                    expired.push(q.clone());
                }
                keep
            });
            for q in expired {
                p.placement.release(&q);
            }
        }
        self.node_rate.retain(|n| inner.backends.contains_key(n));
        self.tunnels.forget_vanishes(now);
        for (n, b) in &inner.backends {
            let load = inner
                .pools
                .get(&b.pool)
                .map(|p| p.placement.load(n))
                .unwrap_or(0);
            self.metrics
                .quizzes_active
                .with_label_values(&[n])
                .set(load as i64);
        }
    }

    /// A `v3` token of `quiz` said it is spread over `k` nodes: remember it for the admin view.
    /// A new quiz is not recorded when the book is full of live ones (counted as
    /// `edge_lb_errors_total{kind="spread_book_full"}`); routing does not depend on it.
    pub fn spread_seen(&self, quiz: &str, k: usize) {
        if !self.book.lock().seen(quiz, k, Instant::now()) {
            self.metrics.error("spread_book_full");
        }
    }

    /// Test/operations helper: is every backend of every pool verified up and eligible?
    pub fn all_eligible(&self) -> bool {
        self.inner
            .lock()
            .backends
            .values()
            .all(|b| b.eligible && b.up == Some(true) && !b.draining)
    }
}
