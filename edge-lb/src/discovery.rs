//! Backend discovery: pools with `discovery` get their backends from DNS at run time instead
//! of from the file, so scaling core (a StatefulSet behind a headless Service) needs no
//! configuration edit.
//!
//! Every `interval` per pool, [`dns::resolve`] asks for the SRV records; the answer is merged
//! with what is known and handed to [`Cluster::set_discovered`], the same path a reload takes,
//! so health checks, the ring (keyed by node name), hold-down, drain, metrics and the admin
//! API treat discovered backends like static ones.
//!
//! Rules (docs/edge-lb.md, "Discovery"):
//! - a resolution that fails (timeout, SERVFAIL, refused, no server) or finds nothing
//!   (NXDOMAIN, no SRV records) changes nothing: the last known set stays. An empty answer is
//!   never applied, because a ring emptied by one bad answer would drop every tunnel, while
//!   backends that really are gone are taken out of routing by the health checks anyway;
//! - a backend missing from successful answers for `remove_after` is removed (its tunnels
//!   closed, its quizzes placed again), as by a reload;
//! - a backend whose address changed keeps its name, so its ring position and quizzes;
//! - a target whose address lookup failed keeps its last address (or waits, if new);
//! - backends of the first successful answer are eligible at once (like static backends at
//!   start); backends that appear later wait for their health checks.

pub mod dns;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, Discovered};
use crate::config::DnsDiscoveryConfig;

/// What discovery remembers about one backend of a pool.
struct Known {
    addr: SocketAddr,
    last_seen: Instant,
}

#[derive(Default)]
struct PoolState {
    settings: Option<DnsDiscoveryConfig>,
    next_due: Option<Instant>,
    known: HashMap<String, Known>,
    applied: bool,
}

/// How often the loop re-reads the configuration when no round is due sooner, so a reload
/// that adds a discovered pool or changes its settings is acted on within this time.
const CONFIG_POLL: Duration = Duration::from_secs(1);

/// Run discovery for every pool that has it until `stop` is cancelled. Idle (one
/// configuration read per second) when no pool has discovery.
pub async fn run(cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut state: HashMap<String, PoolState> = HashMap::new();
    loop {
        let base = cluster.base_config();
        let pools: Vec<(String, DnsDiscoveryConfig)> = base
            .discovered_pools()
            .map(|(p, d)| (p.to_string(), d.clone()))
            .collect();
        state.retain(|p, _| pools.iter().any(|(q, _)| q == p));
        let mut next = Instant::now() + CONFIG_POLL;
        for (pool, dns) in pools {
            let st = state.entry(pool.clone()).or_default();
            if st.settings.as_ref() != Some(&dns) {
                // New pool or changed settings (reload): resolve now.
                st.settings = Some(dns.clone());
                st.next_due = None;
            }
            if st.next_due.is_none_or(|t| t <= Instant::now()) {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = round(&cluster, &pool, &dns, st) => {}
                }
                st.next_due = Some(Instant::now() + dns.interval);
            }
            if let Some(t) = st.next_due {
                next = next.min(t);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// One resolution of one pool, applied if it succeeded.
async fn round(cluster: &Arc<Cluster>, pool: &str, dns: &DnsDiscoveryConfig, st: &mut PoolState) {
    let m = &cluster.metrics;
    let outcome = |o: &str| {
        m.discovery_resolutions.with_label_values(&[pool, o]).inc();
    };
    let targets = match tokio::time::timeout(dns.timeout, dns::resolve(dns)).await {
        Err(_) => {
            outcome("error");
            tracing::warn!(
                pool,
                name = %dns.name,
                "discovery timed out after {:?}; keeping the last known backends",
                dns.timeout
            );
            return;
        }
        Ok(Err(f)) => {
            outcome(f.outcome());
            tracing::warn!(pool, "discovery: {f}; keeping the last known backends");
            return;
        }
        Ok(Ok(t)) => t,
    };
    let now = Instant::now();
    let mut seen = 0;
    for t in targets {
        let addr = match (t.addr, st.known.get(&t.name)) {
            (Some(ip), _) => dns::socket_addr(ip, t.port, dns),
            // Address lookup failed: keep the node where it was.
            (None, Some(k)) => k.addr,
            (None, None) => continue,
        };
        st.known.insert(
            t.name,
            Known {
                addr,
                last_seen: now,
            },
        );
        seen += 1;
    }
    if seen == 0 {
        outcome("error");
        tracing::warn!(
            pool,
            name = %dns.name,
            "discovery: no SRV target has an address; keeping the last known backends"
        );
        return;
    }
    st.known
        .retain(|_, k| k.last_seen == now || now.duration_since(k.last_seen) < dns.remove_after);
    outcome("ok");
    let found: Vec<Discovered> = st
        .known
        .iter()
        .map(|(name, k)| Discovered {
            name: name.clone(),
            addr: k.addr,
        })
        .collect();
    let Some(diff) = cluster.set_discovered(pool, found, !st.applied) else {
        return;
    };
    st.applied = true;
    m.discovery_backends
        .with_label_values(&[pool])
        .set(diff.in_use as i64);
    for (change, names) in [
        ("added", &diff.added),
        ("removed", &diff.removed),
        ("readdressed", &diff.readdressed),
    ] {
        if !names.is_empty() {
            m.discovery_changes
                .with_label_values(&[pool, change])
                .inc_by(names.len() as u64);
        }
    }
    if !diff.is_empty() {
        tracing::info!(
            pool,
            added = ?diff.added,
            removed = ?diff.removed,
            readdressed = ?diff.readdressed,
            "discovered backends changed"
        );
    }
}
