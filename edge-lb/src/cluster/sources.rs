//! Where the backend set comes from, and installing it: the configuration as loaded (start,
//! `/admin/reload`, SIGHUP) merged with what discovery found, rebuilt into the routing state
//! by one path (`install`) whichever of the two changed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use super::tunnels::CloseReason;
use super::{Backend, Cluster, Pool};
use crate::config::{BackendConfig, EdgeConfig};
use crate::ring::Placement;

/// Where the backend set comes from: the configuration as loaded (file or caller), in which
/// discovered pools list no backends, and what discovery found for those pools. The routing
/// state is always rebuilt from both, so a reload keeps the discovered backends and a
/// discovery round keeps the reloaded settings.
pub(super) struct Sources {
    pub(super) base: EdgeConfig,
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

    /// What changed from `prev` to `found` (sorted and deduplicated by name); `in_use` is
    /// left for the caller.
    fn between(prev: &[Discovered], found: &[Discovered]) -> DiscoveryDiff {
        let prev: HashMap<&str, SocketAddr> =
            prev.iter().map(|d| (d.name.as_str(), d.addr)).collect();
        let mut diff = DiscoveryDiff::default();
        for d in found {
            match prev.get(d.name.as_str()) {
                None => diff.added.push(d.name.clone()),
                Some(a) if *a != d.addr => diff.readdressed.push(d.name.clone()),
                Some(_) => {}
            }
        }
        let now: HashSet<&str> = found.iter().map(|d| d.name.as_str()).collect();
        diff.removed = prev
            .keys()
            .filter(|n| !now.contains(*n))
            .map(|n| n.to_string())
            .collect();
        diff.removed.sort();
        diff
    }
}

impl Sources {
    pub(super) fn new(base: EdgeConfig) -> Sources {
        Sources {
            base,
            discovered: HashMap::new(),
        }
    }

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

impl Cluster {
    /// Install a (new) configuration (start, reload). Backends keep their health state by
    /// name; removed backends have their tunnels closed; established tunnels elsewhere are
    /// untouched. Discovered backends of pools that still have discovery are kept.
    /// Returns the backends that were removed.
    pub fn apply_config(self: &Arc<Self>, config: EdgeConfig) -> Vec<Arc<str>> {
        self.access.set(&config.access_log);
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
        let prev = src.discovered.get(pool).map_or(&[][..], |v| v);
        let mut diff = DiscoveryDiff::between(prev, &found);
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
        let removed: Vec<Arc<str>>;
        {
            let mut inner = self.inner.lock();
            let backends = carry_backends(&mut inner.backends, &config, fresh);
            // What is left of the old set was not carried over: removed.
            removed = inner.backends.keys().cloned().collect();
            inner.backends = backends;
            inner.pools = carry_pools(&mut inner.pools, &config);
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
}

/// The backends of `config`, each taken out of `old` by name when it was there (keeping its
/// health state) or new.
fn carry_backends(
    old: &mut HashMap<Arc<str>, Backend>,
    config: &EdgeConfig,
    fresh: &HashSet<String>,
) -> HashMap<Arc<str>, Backend> {
    let mut backends = HashMap::new();
    for pool in &config.pools {
        let pname: Arc<str> = pool.name.as_str().into();
        let discovered = pool.discovery.is_some();
        for b in &pool.backends {
            let name: Arc<str> = b.name.as_str().into();
            let be = match old.remove(&name) {
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
                None => Backend::new(pname.clone(), b, fresh.contains(b.name.as_str())),
            };
            backends.insert(name, be);
        }
    }
    backends
}

/// The pools of `config`, each taken out of `old` by name (its placement reconfigured, its
/// quizzes kept) or new.
fn carry_pools(old: &mut HashMap<Arc<str>, Pool>, config: &EdgeConfig) -> HashMap<Arc<str>, Pool> {
    let mut pools = HashMap::new();
    for pool in &config.pools {
        let pname: Arc<str> = pool.name.as_str().into();
        let rc = config.ring_config(pool);
        let p = match old.remove(&pname) {
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
    pools
}

impl Backend {
    fn new(pool: Arc<str>, b: &BackendConfig, unverified: bool) -> Backend {
        Backend {
            pool,
            addr: b.addr,
            weight: b.weight,
            draining: b.drain,
            up: None,
            consecutive_ok: 0,
            consecutive_fail: 0,
            up_since: None,
            was_lost: false,
            unverified,
            // Optimistic until the first verdict (as HAProxy's servers start UP): a restarted
            // or upgraded edge-lb serves at once instead of answering 503 until
            // `success_threshold` checks have passed. Not so for a node discovered later
            // (scale-up): it may well be still starting, so it waits for its checks.
            eligible: !unverified,
            last_error: None,
            last_outcome: None,
            last_ready: None,
            watched_since: std::time::Instant::now(),
        }
    }
}
