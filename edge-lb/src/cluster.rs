//! The shared state of one edge-lb instance: backends with their health and drain state, one
//! [`Placement`] per pool, quiz activity, and the registry of open tunnels per backend (so the
//! tunnels of a lost or drained node can be closed: pingora issue #571).
//!
//! One `parking_lot::Mutex` guards the routing state; it is never held across an `.await`
//! (every method here is synchronous), and a routing decision holds it for a ring walk only.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{BackendConfig, EdgeConfig};
use crate::metrics::Metrics;
use crate::ring::{Decision, Placement};

/// Why edge-lb closed a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    NodeLost,
    Drain,
    Rebalance,
    Removed,
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::NodeLost => "node_lost",
            CloseReason::Drain => "drain",
            CloseReason::Rebalance => "rebalance",
            CloseReason::Removed => "removed",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

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
}

impl Backend {
    /// Failing its checks (`failure_threshold` in a row) but not marked down: the verdict was
    /// deferred by `health.panic_threshold`.
    fn deferred(&self, failure_threshold: u32) -> bool {
        self.up != Some(false) && self.consecutive_fail >= failure_threshold
    }
}

#[derive(Debug, Default)]
struct Activity {
    tunnels: usize,
    last_seen: Option<Instant>,
}

struct Pool {
    placement: Placement,
    activity: HashMap<String, Activity>,
}

struct Inner {
    backends: HashMap<Arc<str>, Backend>,
    pools: HashMap<Arc<str>, Pool>,
}

/// Where the backend set comes from: the configuration as loaded (file or caller), in which
/// discovered pools list no backends, and what discovery found for those pools. The routing
/// state is always rebuilt from both, so a reload keeps the discovered backends and a
/// discovery round keeps the reloaded settings.
struct Sources {
    base: EdgeConfig,
    discovered: HashMap<String, Vec<Discovered>>,
}

/// A backend found by discovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    pub name: String,
    pub addr: SocketAddr,
}

/// What one discovery update changed in a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same name, new address: keeps its ring position, health state and quizzes.
    pub readdressed: Vec<String>,
    /// Discovered backends of the pool in use after the update.
    pub in_use: usize,
}

impl DiscoveryDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.readdressed.is_empty()
    }
}

impl Sources {
    /// The configuration the routing state is built from: `base` with every discovered pool's
    /// backends filled in. A discovered name already used by a static backend or by an
    /// earlier pool is skipped (names are the ring keys and must be unique).
    fn effective(&self) -> (EdgeConfig, HashMap<String, usize>) {
        let mut cfg = self.base.clone();
        let mut taken: HashSet<String> = cfg
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| b.name.clone()))
            .collect();
        let mut in_use = HashMap::new();
        for pool in &mut cfg.pools {
            let Some(d) = &pool.discovery else { continue };
            let weight = d.dns.weight;
            let found = self.discovered.get(&pool.name).map_or(&[][..], |v| v);
            for b in found {
                if !taken.insert(b.name.clone()) {
                    tracing::warn!(
                        pool = %pool.name,
                        backend = %b.name,
                        "discovered backend name already in use by another backend; skipped"
                    );
                    continue;
                }
                pool.backends.push(BackendConfig {
                    name: b.name.clone(),
                    addr: b.addr,
                    weight,
                    drain: false,
                });
            }
            in_use.insert(pool.name.clone(), pool.backends.len());
        }
        (cfg, in_use)
    }
}

struct TunnelEntry {
    quiz: String,
    token: CancellationToken,
}

/// A routed target.
#[derive(Clone, Debug)]
pub struct Target {
    pub backend: Arc<str>,
    pub addr: SocketAddr,
    pub decision: Option<Decision>,
}

pub struct Cluster {
    /// The effective configuration (discovered backends filled in).
    config: RwLock<Arc<EdgeConfig>>,
    /// Serialises updates (reload, discovery) and remembers both sources of backends.
    sources: Mutex<Sources>,
    inner: Mutex<Inner>,
    tunnels: Mutex<HashMap<Arc<str>, HashMap<u64, TunnelEntry>>>,
    next_tunnel: AtomicU64,
    rr: AtomicUsize,
    pub metrics: Metrics,
    pub connections: AtomicUsize,
}

/// Deregisters a tunnel when dropped.
pub struct TunnelGuard {
    cluster: Arc<Cluster>,
    backend: Arc<str>,
    pool: Arc<str>,
    quiz: String,
    id: u64,
    pub token: CancellationToken,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if let Some(m) = self.cluster.tunnels.lock().get_mut(&self.backend) {
            m.remove(&self.id);
        }
        self.cluster
            .metrics
            .tunnels_active
            .with_label_values(&[&self.backend])
            .dec();
        let mut inner = self.cluster.inner.lock();
        if let Some(p) = inner.pools.get_mut(&self.pool) {
            let a = p.activity.entry(self.quiz.clone()).or_default();
            a.tunnels = a.tunnels.saturating_sub(1);
            a.last_seen = Some(Instant::now());
        }
    }
}

impl Cluster {
    pub fn new(config: EdgeConfig) -> Arc<Cluster> {
        let c = Arc::new(Cluster {
            config: RwLock::new(Arc::new(config.clone())),
            sources: Mutex::new(Sources {
                base: config.clone(),
                discovered: HashMap::new(),
            }),
            inner: Mutex::new(Inner {
                backends: HashMap::new(),
                pools: HashMap::new(),
            }),
            tunnels: Mutex::new(HashMap::new()),
            next_tunnel: AtomicU64::new(1),
            rr: AtomicUsize::new(0),
            metrics: Metrics::new(),
            connections: AtomicUsize::new(0),
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

    /// Install a (new) configuration (start, reload). Backends keep their health state by
    /// name; removed backends have their tunnels closed; established tunnels elsewhere are
    /// untouched. Discovered backends of pools that still have discovery are kept.
    /// Returns the backends that were removed.
    pub fn apply_config(self: &Arc<Self>, config: EdgeConfig) -> Vec<Arc<str>> {
        let mut src = self.sources.lock();
        src.base = config;
        let keep: HashSet<String> = src
            .base
            .discovered_pools()
            .map(|(p, _)| p.to_string())
            .collect();
        src.discovered.retain(|p, _| keep.contains(p));
        let (effective, _) = src.effective();
        self.install(effective, &HashSet::new())
    }

    /// Replace the discovered backends of `pool` (discovery's only way in: the same path as
    /// a reload, so health checks, the ring, hold-down, drain, metrics and the admin API treat
    /// them like static backends). A backend missing from `found` is removed (its tunnels
    /// closed, its quizzes placed again); one whose address changed keeps everything but the
    /// address. `verified_start` marks new backends eligible at once, as static backends are
    /// at start; otherwise a new backend waits for `health.success_threshold` passing checks.
    /// Returns None when `pool` has no discovery (any more).
    pub fn set_discovered(
        self: &Arc<Self>,
        pool: &str,
        mut found: Vec<Discovered>,
        verified_start: bool,
    ) -> Option<DiscoveryDiff> {
        let mut src = self.sources.lock();
        if !src.base.discovered_pools().any(|(p, _)| p == pool) {
            return None;
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found.dedup_by(|a, b| a.name == b.name);
        let prev: HashMap<String, SocketAddr> = src
            .discovered
            .get(pool)
            .map(|v| v.iter().map(|d| (d.name.clone(), d.addr)).collect())
            .unwrap_or_default();
        let mut diff = DiscoveryDiff::default();
        for d in &found {
            match prev.get(&d.name) {
                None => diff.added.push(d.name.clone()),
                Some(a) if *a != d.addr => diff.readdressed.push(d.name.clone()),
                Some(_) => {}
            }
        }
        let now: HashSet<&str> = found.iter().map(|d| d.name.as_str()).collect();
        diff.removed = prev
            .keys()
            .filter(|n| !now.contains(n.as_str()))
            .cloned()
            .collect();
        diff.removed.sort();
        let first = !src.discovered.contains_key(pool);
        src.discovered.insert(pool.to_string(), found);
        let (effective, in_use) = src.effective();
        diff.in_use = in_use.get(pool).copied().unwrap_or(0);
        if diff.is_empty() && !first {
            return Some(diff);
        }
        let fresh: HashSet<String> = if verified_start {
            HashSet::new()
        } else {
            diff.added.iter().cloned().collect()
        };
        self.install(effective, &fresh);
        Some(diff)
    }

    /// Build the routing state for `config`. `fresh` names new backends that start
    /// unverified (not eligible until they pass health checks).
    fn install(self: &Arc<Self>, config: EdgeConfig, fresh: &HashSet<String>) -> Vec<Arc<str>> {
        let removed;
        {
            let mut inner = self.inner.lock();
            let mut backends = HashMap::new();
            for pool in &config.pools {
                let pname: Arc<str> = pool.name.as_str().into();
                let discovered = pool.discovery.is_some();
                for b in &pool.backends {
                    let name: Arc<str> = b.name.as_str().into();
                    let prev = inner.backends.remove(&name);
                    let unverified = fresh.contains(b.name.as_str());
                    let be = match prev {
                        Some(mut p) => {
                            p.pool = pname.clone();
                            p.addr = b.addr;
                            p.weight = b.weight;
                            // A discovered backend has no drain flag in a file: keep the
                            // admin API's drain across discovery updates and reloads.
                            if !discovered {
                                p.draining = b.drain;
                            }
                            p
                        }
                        None => Backend {
                            pool: pname.clone(),
                            addr: b.addr,
                            weight: b.weight,
                            draining: b.drain,
                            up: None,
                            consecutive_ok: 0,
                            consecutive_fail: 0,
                            up_since: None,
                            was_lost: false,
                            unverified,
                            // Optimistic until the first verdict (as HAProxy's servers start
                            // UP): a restarted or upgraded edge-lb serves at once instead of
                            // answering 503 until `success_threshold` checks have passed.
                            // Not so for a node discovered later (scale-up): it may well be
                            // still starting, so it waits for its checks.
                            eligible: !unverified,
                            last_error: None,
                        },
                    };
                    backends.insert(name, be);
                }
            }
            removed = inner.backends.keys().cloned().collect::<Vec<_>>();
            inner.backends = backends;
            let mut pools = HashMap::new();
            for pool in &config.pools {
                let pname: Arc<str> = pool.name.as_str().into();
                let rc = config.ring_config(pool);
                let p = match inner.pools.remove(&pname) {
                    Some(mut p) => {
                        p.placement.reconfigure(&rc);
                        p
                    }
                    None => Pool {
                        placement: Placement::new(&rc),
                        activity: HashMap::new(),
                    },
                };
                pools.insert(pname, p);
            }
            inner.pools = pools;
            let names: Vec<Arc<str>> = inner.backends.keys().cloned().collect();
            for n in names {
                Self::refresh_eligibility(&mut inner, &n);
            }
            *self.config.write() = Arc::new(config);
        }
        for r in &removed {
            self.close_tunnels_of(r.clone(), CloseReason::Removed, true);
        }
        removed
    }

    fn refresh_eligibility(inner: &mut Inner, name: &Arc<str>) {
        let Some(b) = inner.backends.get_mut(name) else {
            return;
        };
        let eligible = b.eligible && b.up != Some(false) && !b.draining;
        b.eligible = eligible;
        let pool = b.pool.clone();
        if let Some(p) = inner.pools.get_mut(&pool) {
            p.placement.set_eligible(name, eligible);
        }
    }

    /// Route a quiz-scoped request in `pool`, marking the quiz active.
    pub fn route_quiz(&self, pool: &str, quiz: &str) -> Option<Target> {
        let mut inner = self.inner.lock();
        let p = inner.pools.get_mut(pool)?;
        let d = p.placement.route(quiz);
        let Some(d) = d else {
            drop(inner);
            self.metrics
                .routing
                .with_label_values(&[pool, "none"])
                .inc();
            return None;
        };
        p.activity.entry(quiz.to_string()).or_default().last_seen = Some(Instant::now());
        let reason = match d.reason {
            crate::ring::Reason::Sticky => "sticky",
            crate::ring::Reason::Primary => "primary",
            crate::ring::Reason::Overflow { .. } => "overflow",
        };
        let addr = inner.backends.get(&d.node)?.addr;
        drop(inner);
        self.metrics
            .routing
            .with_label_values(&[pool, reason])
            .inc();
        Some(Target {
            backend: d.node.clone(),
            addr,
            decision: Some(d),
        })
    }

    /// Any eligible backend of `pool` (round robin), skipping `avoid`.
    pub fn route_any(&self, pool: &str, avoid: Option<&str>) -> Option<Target> {
        let inner = self.inner.lock();
        let mut cands: Vec<(&Arc<str>, &Backend)> = inner
            .backends
            .iter()
            .filter(|(n, b)| b.pool.as_ref() == pool && b.eligible && Some(n.as_ref()) != avoid)
            .collect();
        if cands.is_empty() {
            self.metrics
                .routing
                .with_label_values(&[pool, "none"])
                .inc();
            return None;
        }
        cands.sort_by(|a, b| a.0.cmp(b.0));
        let i = self.rr.fetch_add(1, Ordering::Relaxed) % cands.len();
        let (n, b) = cands[i];
        self.metrics.routing.with_label_values(&[pool, "any"]).inc();
        Some(Target {
            backend: n.clone(),
            addr: b.addr,
            decision: None,
        })
    }

    /// What would `route_quiz` answer, without side effects; plus the ring walk.
    pub fn explain(&self, quiz: &str) -> serde_json::Value {
        let cfg = self.config();
        let inner = self.inner.lock();
        let mut out = serde_json::Map::new();
        out.insert("quiz_id".into(), quiz.into());
        for (route, pool) in [
            ("websocket", &cfg.routes.websocket),
            ("http", &cfg.routes.http),
        ] {
            let Some(p) = inner.pools.get(pool.as_str()) else {
                continue;
            };
            let walk: Vec<String> = p
                .placement
                .ring()
                .walk(quiz)
                .into_iter()
                .map(|i| p.placement.ring().nodes()[i].name.to_string())
                .collect();
            let d = p.placement.peek(quiz);
            out.insert(
                route.into(),
                serde_json::json!({
                    "pool": pool,
                    "active": p.placement.owner(quiz).is_some(),
                    "backend": d.as_ref().map(|d| d.node.to_string()),
                    "decision": d,
                    "ring_walk": walk,
                    "balance_factor": p.placement.balance_factor(),
                    "active_quizzes_in_pool": p.placement.active_quizzes(),
                }),
            );
        }
        serde_json::Value::Object(out)
    }

    pub fn backends(&self) -> Vec<BackendView> {
        let tunnels: HashMap<Arc<str>, usize> = self
            .tunnels
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect();
        let failure_threshold = self.config().health.failure_threshold;
        let inner = self.inner.lock();
        let mut v: Vec<BackendView> = inner
            .backends
            .iter()
            .map(|(n, b)| BackendView {
                name: n.to_string(),
                pool: b.pool.to_string(),
                addr: b.addr,
                weight: b.weight,
                health: match b.up {
                    // Failing its checks, but the verdict is deferred (panic threshold).
                    _ if b.deferred(failure_threshold) => "failing",
                    None => "unknown",
                    Some(true) => "up",
                    Some(false) => "down",
                },
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

    /// Register an open tunnel; the guard deregisters it.
    pub fn register_tunnel(
        self: &Arc<Self>,
        pool: &str,
        backend: Arc<str>,
        quiz: &str,
    ) -> TunnelGuard {
        let id = self.next_tunnel.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.tunnels
            .lock()
            .entry(backend.clone())
            .or_default()
            .insert(
                id,
                TunnelEntry {
                    quiz: quiz.to_string(),
                    token: token.clone(),
                },
            );
        self.metrics
            .tunnels_active
            .with_label_values(&[&backend])
            .inc();
        {
            let mut inner = self.inner.lock();
            if let Some(p) = inner.pools.get_mut(pool) {
                let a = p.activity.entry(quiz.to_string()).or_default();
                a.tunnels += 1;
                a.last_seen = Some(Instant::now());
            }
        }
        TunnelGuard {
            cluster: self.clone(),
            backend,
            pool: pool.into(),
            quiz: quiz.to_string(),
            id,
            token,
        }
    }

    pub fn tunnel_count(&self, backend: &str) -> usize {
        self.tunnels.lock().get(backend).map_or(0, |m| m.len())
    }

    /// Close the tunnels of `backend` (optionally only those of `quizzes`): at once when
    /// `immediate`, else gradually at `drain.close_rate_per_sec`, grouped by quiz so a quiz
    /// moves together.
    fn close_tunnels(
        self: &Arc<Self>,
        backend: Arc<str>,
        quizzes: Option<Vec<String>>,
        reason: CloseReason,
        immediate: bool,
    ) {
        let victims: Vec<(String, CancellationToken)> = {
            let t = self.tunnels.lock();
            t.get(&backend)
                .map(|m| {
                    m.values()
                        .filter(|e| quizzes.as_ref().is_none_or(|q| q.contains(&e.quiz)))
                        .map(|e| (e.quiz.clone(), e.token.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let period = if immediate {
            Duration::ZERO
        } else {
            self.drain_period()
        };
        self.cancel_in_order(victims, reason, period);
    }

    /// One tunnel close per this period at `drain.close_rate_per_sec`.
    fn drain_period(&self) -> Duration {
        let rate = self.config().drain.close_rate_per_sec.max(1);
        Duration::from_secs_f64(1.0 / f64::from(rate))
    }

    /// Cancel `victims` sorted by quiz (a quiz's tunnels close together), one per `period` on
    /// the current runtime, or all at once (here) when it is zero or there is no runtime; each
    /// counted under `reason`.
    fn cancel_in_order(
        &self,
        mut victims: Vec<(String, CancellationToken)>,
        reason: CloseReason,
        period: Duration,
    ) {
        if victims.is_empty() {
            return;
        }
        victims.sort_by(|a, b| a.0.cmp(&b.0));
        let counter = self
            .metrics
            .tunnels_closed
            .with_label_values(&[reason.as_str()]);
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(h) if !period.is_zero() => h,
            _ => {
                for (_, t) in victims {
                    t.cancel();
                    counter.inc();
                }
                return;
            }
        };
        handle.spawn(async move {
            let mut tick = tokio::time::interval(period);
            for (_, t) in victims {
                tick.tick().await;
                if !t.is_cancelled() {
                    t.cancel();
                    counter.inc();
                }
            }
        });
    }

    /// Graceful stop (SIGTERM, or SIGQUIT once the listening sockets went to the new process):
    /// close every tunnel (1012), spread evenly over `within` and never slower than
    /// `drain.close_rate_per_sec`, grouped by quiz, so clients reconnect — to the new process or
    /// another replica — in a trickle instead of all at once when this process exits. Returns
    /// how many were scheduled.
    pub fn close_all_tunnels_within(self: &Arc<Self>, within: Duration) -> usize {
        let victims: Vec<(String, CancellationToken)> = self
            .tunnels
            .lock()
            .values()
            .flat_map(|m| m.values().map(|e| (e.quiz.clone(), e.token.clone())))
            .collect();
        let n = victims.len();
        if n > 0 {
            let period = (within / n as u32).min(self.drain_period());
            self.cancel_in_order(victims, CloseReason::Shutdown, period);
        }
        n
    }

    pub fn close_tunnels_of(
        self: &Arc<Self>,
        backend: Arc<str>,
        reason: CloseReason,
        immediate: bool,
    ) {
        self.close_tunnels(backend, None, reason, immediate);
    }

    /// Record one health-check verdict; applies thresholds and hold-down, and acts on
    /// transitions (close the tunnels of a lost node at once, rebalance toward a returned one).
    pub fn report_health(self: &Arc<Self>, name: &str, ok: bool, err: Option<String>) {
        let cfg = self.config();
        let h = &cfg.health;
        let mut lost = false;
        let mut became_eligible = None;
        {
            let mut inner = self.inner.lock();
            let Some((key, b)) = inner.backends.get_key_value(name) else {
                return;
            };
            let key = key.clone();
            let _ = b;
            let b = inner.backends.get_mut(&key).expect("present");
            if ok {
                b.consecutive_ok += 1;
                b.consecutive_fail = 0;
                b.last_error = None;
                if b.up != Some(true) && b.consecutive_ok >= h.success_threshold {
                    b.up = Some(true);
                    b.unverified = false;
                    b.up_since = Some(Instant::now());
                    self.metrics
                        .health_transitions
                        .with_label_values(&[name, "up"])
                        .inc();
                }
                if b.up == Some(true) && !b.eligible {
                    let held =
                        !b.was_lost || b.up_since.is_some_and(|t| t.elapsed() >= h.hold_down);
                    if held {
                        b.eligible = true;
                        if !b.draining {
                            self.metrics
                                .health_transitions
                                .with_label_values(&[name, "eligible"])
                                .inc();
                            if b.was_lost {
                                became_eligible = Some(b.pool.clone());
                            }
                        }
                    }
                }
            } else {
                b.consecutive_fail += 1;
                b.consecutive_ok = 0;
                b.last_error = err;
                if b.up != Some(false) && b.consecutive_fail >= h.failure_threshold {
                    let pool = b.pool.clone();
                    if Self::panics(&inner, &pool, &key, h.panic_threshold) {
                        // Deferred: this verdict would leave too little of the pool up. The
                        // node keeps its quizzes and tunnels; its next failing verdict is
                        // weighed again, and acted on once enough of the pool is back up.
                        self.set_panic(&inner, &pool, h.failure_threshold);
                        return;
                    }
                    let b = inner.backends.get_mut(&key).expect("present");
                    lost = true;
                    b.up = Some(false);
                    // An unverified node never had quizzes: no hold-down once it is ready.
                    b.was_lost = !b.unverified;
                    b.eligible = false;
                    b.up_since = None;
                    self.metrics
                        .health_transitions
                        .with_label_values(&[name, "down"])
                        .inc();
                }
            }
            Self::refresh_eligibility(&mut inner, &key);
            if let Some(pool) = &became_eligible {
                self.rebalance_locked(&mut inner, pool, &key);
            }
            if let Some(b) = inner.backends.get(&key) {
                let pool = b.pool.clone();
                self.set_panic(&inner, &pool, h.failure_threshold);
            }
        }
        if lost {
            tracing::warn!(backend = name, "backend lost: closing its tunnels");
            self.close_tunnels_of(name.into(), CloseReason::NodeLost, true);
        }
    }

    /// Would marking `node` down leave fewer than `threshold` of `pool`'s backends up? Counted
    /// over the backends that take part in routing decisions: not draining, and verified (a
    /// node discovered but never seen up has no quizzes to protect).
    fn panics(inner: &Inner, pool: &str, node: &str, threshold: f64) -> bool {
        if threshold <= 0.0 {
            return false;
        }
        let (mut total, mut up_after) = (0usize, 0usize);
        for (n, b) in &inner.backends {
            if b.pool.as_ref() != pool || b.draining || b.unverified {
                continue;
            }
            total += 1;
            if n.as_ref() != node && b.up != Some(false) {
                up_after += 1;
            }
        }
        total > 0 && (up_after as f64) < threshold * total as f64
    }

    /// Publish whether `pool` is in panic: some backend failing its checks but not marked down.
    fn set_panic(&self, inner: &Inner, pool: &str, failure_threshold: u32) {
        let panic = inner
            .backends
            .values()
            .any(|b| b.pool.as_ref() == pool && !b.draining && b.deferred(failure_threshold));
        let gauge = self.metrics.pool_panic.with_label_values(&[pool]);
        if panic && gauge.get() == 0 {
            tracing::warn!(
                pool,
                "health panic: most of the pool fails its checks at once; \
                 keeping its nodes and tunnels until enough of it is up again"
            );
        }
        gauge.set(i64::from(panic));
    }

    /// Move back to `node` the quizzes it would now be given, closing their tunnels on
    /// the interim owners gradually.
    fn rebalance_locked(self: &Arc<Self>, inner: &mut Inner, pool: &Arc<str>, node: &Arc<str>) {
        let Some(p) = inner.pools.get_mut(pool) else {
            return;
        };
        let moved = p.placement.rebalance_toward(node);
        if moved.is_empty() {
            return;
        }
        tracing::info!(backend = %node, moved = moved.len(), "quizzes return to their node");
        let mut by_owner: HashMap<Arc<str>, Vec<String>> = HashMap::new();
        for (q, from) in moved {
            by_owner.entry(from).or_default().push(q);
        }
        let me = self.clone();
        // Closing takes the tunnel lock, never the routing lock; run it off this stack.
        for (from, qs) in by_owner {
            me.close_tunnels(from, Some(qs), CloseReason::Rebalance, false);
        }
    }

    /// Admin drain/undrain. Draining: no new quizzes, tunnels closed gradually.
    pub fn set_drain(self: &Arc<Self>, name: &str, drain: bool) -> bool {
        {
            let mut inner = self.inner.lock();
            let Some((key, _)) = inner.backends.get_key_value(name) else {
                return false;
            };
            let key = key.clone();
            let b = inner.backends.get_mut(&key).expect("present");
            let was = b.draining;
            b.draining = drain;
            if !drain && was && b.up != Some(false) {
                // Undrain counts as a return: give the node its quizzes back.
                b.eligible = true;
                let pool = b.pool.clone();
                Self::refresh_eligibility(&mut inner, &key);
                self.rebalance_locked(&mut inner, &pool, &key);
                return true;
            }
            Self::refresh_eligibility(&mut inner, &key);
        }
        if drain {
            self.close_tunnels_of(name.into(), CloseReason::Drain, false);
        }
        true
    }

    /// Periodic upkeep: expire idle quizzes, refresh gauges.
    pub fn sweep(&self) {
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

    /// Test/operations helper: is every backend of every pool verified up and eligible?
    pub fn all_eligible(&self) -> bool {
        self.inner
            .lock()
            .backends
            .values()
            .all(|b| b.eligible && b.up == Some(true) && !b.draining)
    }
}
