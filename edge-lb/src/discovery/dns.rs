//! DNS SRV resolution of a pool's backends with hickory-resolver: one SRV query for the
//! service, then the address of every target (from the answer's additional section when the
//! server sent it, as CoreDNS does for headless Services, else one A/AAAA query per target).
//!
//! Kubernetes publishes, for a headless Service `core-headless` whose StatefulSet names it as
//! `serviceName`, one SRV record per pod and named port:
//! `_http._tcp.core-headless.quiz.svc.cluster.local. SRV 0 50 8080 core-0.core-headless.quiz.svc.cluster.local.`
//! The node name is the target's first label (`core-0`, the pod name, which is also core's
//! `QUIZ_NODE_NAME`), so the ring key survives a pod's new IP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};

use crate::config::{valid_backend_name, DnsDiscoveryConfig};

/// One SRV target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The node name: the target's first label.
    pub name: String,
    pub port: u16,
    /// None when the target's address could not be resolved this time.
    pub addr: Option<IpAddr>,
}

/// Why a resolution gave no backend set. Both keep the last known set: only the kind (and
/// the metric's `outcome`) differ.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// NXDOMAIN or an answer without SRV records: the service (or every endpoint of it) is
    /// gone as far as DNS says, which is also what a DNS server restarting or a Service being
    /// recreated looks like for a moment.
    #[error("no SRV records for {name}: {detail}")]
    Empty { name: String, detail: String },
    /// Timeout, SERVFAIL, refused, unreachable server, bad resolver configuration.
    #[error("resolving {name} failed: {detail}")]
    Error { name: String, detail: String },
}

impl Failure {
    pub fn outcome(&self) -> &'static str {
        match self {
            Failure::Empty { .. } => "empty",
            Failure::Error { .. } => "error",
        }
    }
}

/// A resolver for these settings: `nameserver` when set, else /etc/resolv.conf (servers,
/// search list, ndots). Built per round, so resolv.conf changes are picked up and nothing is
/// answered from a cache: every round sees what DNS says now.
fn resolver(cfg: &DnsDiscoveryConfig) -> Result<TokioResolver, NetError> {
    let mut builder = match cfg.nameserver {
        Some(ns) => {
            let mut server = NameServerConfig::udp_and_tcp(ns.ip());
            for c in &mut server.connections {
                c.port = ns.port();
            }
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()?,
    };
    let o = builder.options_mut();
    // Two tries within the round's budget (the caller bounds the whole round by `timeout`).
    o.timeout = (cfg.timeout / 2).max(std::time::Duration::from_millis(50));
    o.attempts = 2;
    o.cache_size = 0;
    builder.build()
}

/// The node name of an SRV target: its first label, if it is a valid backend name.
pub fn node_name(target: &Name) -> Option<String> {
    let text = target.to_ascii();
    let first = text
        .trim_end_matches('.')
        .split('.')
        .next()?
        .to_ascii_lowercase();
    valid_backend_name(&first).then_some(first)
}

/// Resolve the SRV name and the targets' addresses. Targets with an unusable name (the root
/// `.`, or a first label that is not a valid node name, e.g. when the pods have no hostname
/// in the Service's domain) are skipped with a warning.
pub async fn resolve(cfg: &DnsDiscoveryConfig) -> Result<Vec<Target>, Failure> {
    let fail = |e: NetError| {
        let detail = e.to_string();
        if e.is_no_records_found() || e.is_nx_domain() {
            Failure::Empty {
                name: cfg.name.clone(),
                detail,
            }
        } else {
            Failure::Error {
                name: cfg.name.clone(),
                detail,
            }
        }
    };
    let r = resolver(cfg).map_err(fail)?;
    let lookup = r.srv_lookup(cfg.name.as_str()).await.map_err(fail)?;
    // Addresses the server volunteered in the additional section.
    let mut extra: HashMap<Name, IpAddr> = HashMap::new();
    for rec in lookup.additionals() {
        let ip = match &rec.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        // The smallest address of a name, so every edge-lb picks the same one.
        extra
            .entry(rec.name.to_lowercase())
            .and_modify(|cur| *cur = (*cur).min(ip))
            .or_insert(ip);
    }
    let mut srvs = Vec::new();
    for rec in lookup.answers() {
        let RData::SRV(srv) = &rec.data else { continue };
        if srv.target.is_root() {
            continue;
        }
        match node_name(&srv.target) {
            Some(name) => srvs.push((name, srv.port, srv.target.clone())),
            None => tracing::warn!(
                service = %cfg.name,
                target = %srv.target,
                "SRV target's first label is not a valid node name; skipped"
            ),
        }
    }
    if srvs.is_empty() {
        return Err(Failure::Empty {
            name: cfg.name.clone(),
            detail: "no usable SRV target".into(),
        });
    }
    let lookups = srvs.into_iter().map(|(name, port, target)| {
        let r = &r;
        let known = extra.get(&target.to_lowercase()).copied();
        async move {
            let addr = match known {
                Some(ip) => Some(ip),
                None => {
                    let mut fqdn = target.clone();
                    fqdn.set_fqdn(true);
                    match r.lookup_ip(fqdn).await {
                        Ok(ips) => ips.iter().min(),
                        Err(e) => {
                            tracing::warn!(%target, "address of SRV target not resolved: {e}");
                            None
                        }
                    }
                }
            };
            Target { name, port, addr }
        }
    });
    Ok(futures::future::join_all(lookups).await)
}

/// `ip:port` of a target, with the configured port override.
pub fn socket_addr(ip: IpAddr, srv_port: u16, cfg: &DnsDiscoveryConfig) -> SocketAddr {
    SocketAddr::new(ip, cfg.port.unwrap_or(srv_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_is_the_first_label() {
        let n = |s: &str| node_name(&Name::from_ascii(s).unwrap());
        assert_eq!(
            n("core-0.core-headless.quiz.svc.cluster.local.").as_deref(),
            Some("core-0")
        );
        assert_eq!(n("CORE-1.x.").as_deref(), Some("core-1"));
        assert_eq!(n("core-2").as_deref(), Some("core-2"));
        // A label that is not a node name is refused, not mangled.
        assert!(n("*.x.").is_none());
        assert!(n("core_0\\.x.").is_none());
    }
}
