//! Admission limits at the edge: per client address and per backend node.
//!
//! - [`ClientTable`]: one entry per client address (IPv4 address, or IPv6 /`ipv6_prefix`,
//!   default /64: one subscriber's whole prefix), enforcing `limits.per_client` — concurrent
//!   connections, new connections per second, requests per second (HAProxy's stick-table
//!   `conn_cur`/`conn_rate`/`http_req_rate`, Envoy's local rate limit), and authentication
//!   failures per second (HAProxy's `sc_http_err_rate` deny, narrowed to 401/403 and the 101s
//!   core marks as a refused token: [`crate::auth`]). Bounded: sharded maps
//!   with a cap on entries (`max_clients`); an entry with no open connection expires after
//!   `idle_ttl` (swept by upkeep, and in a full shard before inserting). When a shard is still
//!   full of live clients, a new address is admitted untracked and counted
//!   (`edge_lb_errors_total{kind="client_table_full"}`): the table never grows past its cap and
//!   never refuses a client for lack of room.
//! - [`NodeRate`]: a token bucket per backend for new WebSocket tunnels
//!   (`tunnel.new_per_node_per_sec`), so a reconnect storm after a node loss cannot re-overload
//!   the node its quizzes land on; past it the upgrade is answered 503 with a jittered
//!   `Retry-After`.
//!
//! Every check is a shard lock held for a hash lookup and a few float operations, never across
//! an `.await`.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{PerClientConfig, TunnelConfig};
use crate::metrics::Metrics;
use crate::refusal::Refusal;

const SHARDS: usize = 32;

/// A refill rate and a burst; `None` where the limit is off (rate 0).
#[derive(Clone, Copy, Debug)]
struct Rate {
    per_sec: f64,
    burst: f64,
}

impl Rate {
    fn new(per_sec: u32, burst: u32) -> Option<Rate> {
        (per_sec > 0).then(|| Rate {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
        })
    }
}

/// One token bucket's state.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(rate: Option<Rate>, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.map_or(0.0, |r| r.burst),
            last: now,
        }
    }

    /// Refill up to `now` and take a token; `Err(seconds until one is back)` when empty.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), u32> {
        self.check(rate, now)?;
        self.tokens -= 1.0;
        Ok(())
    }

    /// Refill up to `now`; `Err(seconds until a token is back)` when empty, taking nothing.
    fn check(&mut self, rate: Rate, now: Instant) -> Result<(), u32> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate.per_sec).min(rate.burst);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / rate.per_sec).ceil().max(1.0) as u32)
        }
    }

    /// Refill up to `now` and take a token whatever is left (never below empty): for events
    /// that already happened, whose cost is paid by what [`Bucket::check`] refuses next.
    fn spend(&mut self, rate: Rate, now: Instant) {
        let _ = self.check(rate, now);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

/// The table key: an IPv4 address, or an IPv6 address masked to its prefix.
fn key_of(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6);
                let mask = match v6_prefix {
                    0 => 0,
                    p if p >= 128 => u128::MAX,
                    p => u128::MAX << (128 - u32::from(p)),
                };
                IpAddr::V6((bits & mask).into())
            }
        },
    }
}

#[derive(Debug)]
struct Entry {
    conns: u32,
    conn_rate: Bucket,
    req_rate: Bucket,
    /// Authentication failures (drained by [`ClientTable::auth_failure`], checked per request).
    auth: Bucket,
    /// Last connection or request: an entry with no connection expires `idle_ttl` after it.
    last: Instant,
}

/// Per-client-address limits (see the module doc).
pub struct ClientTable {
    cfg: PerClientConfig,
    conn_rate: Option<Rate>,
    req_rate: Option<Rate>,
    auth_rate: Option<Rate>,
    per_shard: usize,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<IpAddr, Entry>>]>,
}

/// A client connection counted in its entry's `conns`; released on drop.
pub struct ClientGuard {
    table: Arc<ClientTable>,
    key: IpAddr,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut shard = self.table.shard(self.key).lock();
        if let Some(e) = shard.get_mut(&self.key) {
            e.conns = e.conns.saturating_sub(1);
            e.last = Instant::now();
        }
    }
}

impl ClientTable {
    pub fn new(cfg: &PerClientConfig) -> Arc<ClientTable> {
        Arc::new(ClientTable {
            conn_rate: Rate::new(cfg.connections_per_sec, cfg.connections_burst),
            req_rate: Rate::new(cfg.requests_per_sec, cfg.requests_burst),
            auth_rate: Rate::new(cfg.auth_failures_per_sec, cfg.auth_failures_burst),
            per_shard: cfg.max_clients.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            cfg: cfg.clone(),
        })
    }

    fn shard(&self, key: IpAddr) -> &Mutex<HashMap<IpAddr, Entry>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Admit a new connection from `ip`: within `max_connections` open at once and
    /// `connections_per_sec`. `Ok(None)` when the address is not tracked (the table is full).
    pub fn connect(
        self: &Arc<Self>,
        ip: IpAddr,
        metrics: &Metrics,
    ) -> Result<Option<ClientGuard>, Refusal> {
        let key = key_of(ip, self.cfg.ipv6_prefix);
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        if !shard.contains_key(&key) && shard.len() >= self.per_shard {
            let ttl = self.cfg.idle_ttl;
            shard.retain(|_, e| e.conns > 0 || now.saturating_duration_since(e.last) < ttl);
            if shard.len() >= self.per_shard {
                metrics.error("client_table_full");
                return Ok(None);
            }
        }
        let e = shard.entry(key).or_insert_with(|| Entry {
            conns: 0,
            conn_rate: Bucket::full(self.conn_rate, now),
            req_rate: Bucket::full(self.req_rate, now),
            auth: Bucket::full(self.auth_rate, now),
            last: now,
        });
        e.last = now;
        if self.cfg.max_connections > 0 && e.conns >= self.cfg.max_connections {
            return Err(Refusal::ClientConnections);
        }
        if let Some(r) = self.conn_rate {
            e.conn_rate
                .take(r, now)
                .map_err(Refusal::ClientConnectionRate)?;
        }
        e.conns += 1;
        Ok(Some(ClientGuard {
            table: self.clone(),
            key,
        }))
    }

    /// Admit one request (plain HTTP or an upgrade) from the client holding `guard`: refused
    /// while its authentication failures are past `auth_failures_per_sec` (a jittered
    /// `Retry-After`: a refused crowd behind one NAT must not come back together), else
    /// within `requests_per_sec`.
    pub fn request(&self, guard: &ClientGuard) -> Result<(), Refusal> {
        if self.req_rate.is_none() && self.auth_rate.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let mut shard = self.shard(guard.key).lock();
        let Some(e) = shard.get_mut(&guard.key) else {
            return Ok(());
        };
        e.last = now;
        if let Some(r) = self.auth_rate {
            e.auth
                .check(r, now)
                .map_err(|secs| Refusal::ClientAuthFailures(secs + jitter_below(secs + 1)))?;
        }
        match self.req_rate {
            Some(r) => e.req_rate.take(r, now).map_err(Refusal::ClientRequestRate),
            None => Ok(()),
        }
    }

    /// A backend answered a request of `ip` with an authentication failure (a 401 or 403, or
    /// a 101 marked refused: [`crate::auth`]). Untracked addresses (a full table) are not
    /// counted, as they are not limited.
    pub fn auth_failure(&self, ip: IpAddr) {
        let Some(r) = self.auth_rate else {
            return;
        };
        let key = key_of(ip, self.cfg.ipv6_prefix);
        let now = Instant::now();
        if let Some(e) = self.shard(key).lock().get_mut(&key) {
            e.auth.spend(r, now);
        }
    }

    /// Drop the entries of clients gone for `idle_ttl`; returns the entries left.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let ttl = self.cfg.idle_ttl;
        self.shards
            .iter()
            .map(|s| {
                let mut s = s.lock();
                s.retain(|_, e| e.conns > 0 || now.saturating_duration_since(e.last) < ttl);
                s.len()
            })
            .sum()
    }
}

/// A token bucket per backend for new tunnels (`tunnel.new_per_node_per_sec`).
pub struct NodeRate {
    rate: Option<Rate>,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

impl NodeRate {
    pub fn new(cfg: &TunnelConfig) -> NodeRate {
        NodeRate {
            rate: Rate::new(cfg.new_per_node_per_sec, cfg.new_per_node_burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take a token for a new tunnel to `backend`; the refusal carries a `Retry-After`
    /// jittered over 1..=2× the refill time, so refused clients do not come back together.
    pub fn admit(&self, backend: &Arc<str>) -> Result<(), Refusal> {
        let Some(r) = self.rate else {
            return Ok(());
        };
        let now = Instant::now();
        let mut b = self.buckets.lock();
        let bucket = b
            .entry(backend.clone())
            .or_insert_with(|| Bucket::full(Some(r), now));
        bucket.take(r, now).map_err(|secs| {
            let jitter = jitter_below(secs + 1);
            Refusal::NodeTunnelRate(secs + jitter)
        })
    }

    /// New tunnels per second one node is given (`None`: no limit).
    pub fn per_sec(&self) -> Option<f64> {
        self.rate.map(|r| r.per_sec)
    }

    /// Forget backends no longer configured.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.buckets.lock().retain(|k, _| keep(k));
    }
}

/// A cheap pseudo-random number in `0..n` (jitter only: no need for a real generator).
fn jitter_below(n: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .subsec_nanos();
    let h = RandomState::new().hash_one(nanos);
    (h % u64::from(n.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_keyed_by_prefix_and_mapped_v4_by_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key_of(a, 64), key_of(b, 64));
        assert_ne!(key_of(a, 64), key_of(c, 64));
        assert_ne!(key_of(a, 128), key_of(b, 128));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(key_of(m, 64), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn bucket_refuses_past_burst_with_the_wait() {
        let r = Rate::new(2, 3).unwrap();
        let t0 = Instant::now();
        let mut b = Bucket::full(Some(r), t0);
        for _ in 0..3 {
            assert!(b.take(r, t0).is_ok());
        }
        assert_eq!(b.take(r, t0), Err(1));
        assert!(b.take(r, t0 + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn failures_drain_the_bucket_and_refusal_lasts_until_one_refilled() {
        let r = Rate::new(2, 3).unwrap();
        let t0 = Instant::now();
        let mut b = Bucket::full(Some(r), t0);
        for _ in 0..3 {
            assert!(b.check(r, t0).is_ok());
            b.spend(r, t0);
        }
        assert_eq!(b.check(r, t0), Err(1));
        // More failures (in flight when the bucket ran dry) do not dig deeper than empty.
        b.spend(r, t0);
        assert!(b.check(r, t0 + Duration::from_millis(400)).is_err());
        assert!(b.check(r, t0 + Duration::from_millis(600)).is_ok());
    }

    #[test]
    fn auth_failures_refuse_only_their_address() {
        let cfg = PerClientConfig {
            requests_per_sec: 0,
            auth_failures_per_sec: 1,
            auth_failures_burst: 2,
            ..PerClientConfig::default()
        };
        let t = ClientTable::new(&cfg);
        let m = Metrics::new();
        let bad: IpAddr = "10.0.0.1".parse().unwrap();
        let good: IpAddr = "10.0.0.2".parse().unwrap();
        let gb = t.connect(bad, &m).unwrap().unwrap();
        let gg = t.connect(good, &m).unwrap().unwrap();
        t.auth_failure(bad);
        assert!(t.request(&gb).is_ok());
        t.auth_failure(bad);
        match t.request(&gb) {
            Err(Refusal::ClientAuthFailures(s)) => assert!((1..=2).contains(&s), "{s}"),
            other => panic!("{other:?}"),
        }
        assert!(t.request(&gg).is_ok());
    }

    #[test]
    fn table_is_bounded() {
        let cfg = PerClientConfig {
            max_clients: SHARDS,
            ..PerClientConfig::default()
        };
        let t = ClientTable::new(&cfg);
        let m = Metrics::new();
        let mut guards = Vec::new();
        for i in 0..1000u32 {
            let ip = IpAddr::V4(i.to_be_bytes().into());
            if let Some(g) = t.connect(ip, &m).unwrap() {
                guards.push(g);
            }
        }
        assert!(guards.len() <= SHARDS, "{}", guards.len());
        assert!(t.shards.iter().all(|s| s.lock().len() <= 1));
    }
}
