//! Active health checks: pingora-load-balancing's `HttpHealthCheck` probes `GET /readyz` on
//! every backend each `health.interval`; [`Cluster::report_health`] applies the consecutive
//! thresholds and the hold-down. The same loop runs the periodic sweep of idle quizzes.

use std::sync::Arc;
use std::time::Duration;

use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::Backend;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;

fn build_check(path: &str, timeout: Duration) -> HttpHealthCheck {
    let mut hc = HttpHealthCheck::new("edge-lb", false);
    // Thresholds are applied by Cluster, so every single verdict is reported as is.
    hc.consecutive_success = 1;
    hc.consecutive_failure = 1;
    hc.reuse_connection = false;
    hc.peer_template.options.connection_timeout = Some(timeout);
    hc.peer_template.options.total_connection_timeout = Some(timeout);
    hc.peer_template.options.read_timeout = Some(timeout);
    hc.peer_template.options.write_timeout = Some(timeout);
    if let Ok(mut req) = RequestHeader::build("GET", path.as_bytes(), None) {
        let _ = req.append_header("Host", "edge-lb");
        let _ = req.append_header("User-Agent", "edge-lb-health");
        hc.req = req;
    }
    hc
}

/// Probe one backend once.
pub async fn probe(
    check: &HttpHealthCheck,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let backend = Backend::new(&addr.to_string()).map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, check.check(&backend)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timeout after {timeout:?}")),
    }
}

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
        for (name, res) in futures::future::join_all(probes).await {
            match res {
                Ok(()) => cluster.report_health(&name, true, None),
                Err(e) => cluster.report_health(&name, false, Some(e)),
            }
        }
        cluster.sweep();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(cfg.health.interval) => {}
        }
    }
}
