//! Active health checks: every `health.interval` each backend is probed once
//! ([`crate::probe`]) and each outcome handed to [`Cluster::report_health`], which applies
//! the consecutive thresholds, the slowness bound and the hold-down. The same loop runs the
//! periodic sweep of idle quizzes.

use std::sync::Arc;
use std::time::Duration;

use pingora_load_balancing::health_check::HttpHealthCheck;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::probe::{build_check, probe};

/// Run health checks and the sweep until `stop` is cancelled.
pub async fn run(cluster: Arc<Cluster>, stop: CancellationToken) {
    // Built once and again only when its settings change: `HttpHealthCheck::new` creates a
    // connector that parses the system CA bundle (~20 ms of CPU), which every interval would
    // take from the proxy's cores.
    let mut built: Option<(String, Duration, HttpHealthCheck)> = None;
    loop {
        let cfg = cluster.config();
        if built
            .as_ref()
            .is_none_or(|(p, t, _)| *p != cfg.health.path || *t != cfg.health.timeout)
        {
            built = Some((
                cfg.health.path.clone(),
                cfg.health.timeout,
                build_check(&cfg.health.path, cfg.health.timeout),
            ));
        }
        let Some((_, _, check)) = built.as_ref() else {
            return;
        };
        let targets = cluster.backend_addrs();
        let probes = targets.iter().map(|(name, addr)| {
            let timeout = cfg.health.timeout;
            async move { (name.clone(), probe(check, *addr, timeout).await) }
        });
        for (name, p) in futures::future::join_all(probes).await {
            cluster.report_health(&name, p.outcome, p.error);
        }
        cluster.sweep();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(cfg.health.interval) => {}
        }
    }
}
