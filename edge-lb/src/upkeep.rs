//! The background service of an instance: active health checks and the idle-quiz sweep
//! ([`crate::health`]), discovery ([`crate::discovery`]), the certificate refresh, the SIGHUP
//! reload, and at a graceful stop the paced closing of every tunnel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::EdgeConfig;
use crate::tls::CertStore;

/// Background work: health checks, sweep, discovery, certificate refresh, SIGHUP reload.
pub(crate) struct Upkeep {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) certs: Option<Arc<CertStore>>,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) handle_sighup: bool,
    /// pingora's `grace_period_seconds`: how long the process lives on after it stops
    /// accepting; its tunnels are closed within it.
    pub(crate) grace: Duration,
}

/// Grow the kernel's descriptor table at start to what the connection limit needs: two
/// sockets per proxied connection, and room for the pool to the nodes, the listeners and the
/// admin side. Left to grow under load, from its first 64 slots, each doubling stops every
/// thread for an RCU grace period (six stalls of 9–15 ms here on the way to 5 000 tunnels,
/// which held the setups/s at 0.82× HAProxy's; the `descriptors` crate). Here rather than in
/// `main` because `-d` forks, and a forked child's table starts from its open files again.
/// A failure costs only those stalls, so it is logged, not fatal.
fn reserve_descriptors(config: &EdgeConfig) {
    let wanted = 2 * config.limits.max_connections as u64 + 1024;
    if let Err(e) = descriptors::reserve_table(wanted) {
        tracing::warn!("descriptor table not grown up front ({wanted} wanted): {e}");
    }
}

#[async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        reserve_descriptors(&self.cluster.config());
        let stop = CancellationToken::new();
        let health = tokio::spawn(crate::health::run(self.cluster.clone(), stop.clone()));
        let discovery = tokio::spawn(crate::discovery::run(self.cluster.clone(), stop.clone()));
        if let Some(store) = self.certs.clone() {
            let every = self
                .cluster
                .config()
                .tls
                .as_ref()
                .map(|t| t.reload_check_interval)
                .unwrap_or(Duration::from_secs(5));
            tokio::spawn(refresh_certs(store, every, stop.clone()));
        }
        if let (true, Some(path)) = (self.handle_sighup, self.config_path.clone()) {
            tokio::spawn(reload_on_sighup(self.cluster.clone(), path, stop.clone()));
        }
        let _ = shutdown.changed().await;
        // Listeners stopped accepting (SIGTERM, or SIGQUIT after the sockets went to the new
        // process). Close the tunnels within the first 80 % of the grace period, each with a
        // 1012, rather than letting them all end in one TCP close when the runtime stops.
        let n = self
            .cluster
            .close_all_tunnels_within(self.grace.mul_f64(0.8));
        tracing::info!(tunnels = n, grace = ?self.grace, "graceful stop: closing tunnels (1012)");
        stop.cancel();
        let _ = health.await;
        let _ = discovery.await;
    }
}

/// Re-read the certificate files every `every` (`tls.reload_check_interval`) until `stop`.
async fn refresh_certs(store: Arc<CertStore>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match store.refresh() {
            Ok(true) => tracing::info!("tls certificate reloaded"),
            Ok(false) => {}
            Err(e) => tracing::warn!("tls certificate not reloaded: {e}"),
        }
    }
}

/// Reload the configuration file at `path` on every SIGHUP until `stop`.
async fn reload_on_sighup(cluster: Arc<Cluster>, path: PathBuf, stop: CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup.recv() => {
                match crate::admin::reload(&cluster, &path) {
                    Ok(removed) => tracing::info!(?removed, "configuration reloaded (SIGHUP)"),
                    Err(e) => tracing::error!("reload failed, keeping the old configuration: {e}"),
                }
            }
        }
    }
}
