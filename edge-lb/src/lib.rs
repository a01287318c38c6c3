//! edge-lb: the quiz platform's edge load balancer, on pingora.
//!
//! Map of the crate (a request flows top to bottom):
//!
//! - [`proxy`]: `EdgeApp`, the pingora `ServerApp` behind every listener. Reads the request
//!   head ([`head`]), rejects bad input with contract-shaped 4xx/503, sends WebSocket upgrades
//!   to [`tunnel`] and plain HTTP to pingora's `HttpProxy` running `Router` (`ProxyHttp`).
//! - [`tunnel`]: WebSocket upgrades and the long-lived byte splice (idle timeout, close
//!   propagation, cancellation; the workarounds for pingora issues #946 and #571).
//! - [`cluster`]: shared state: backends, health verdicts, drain, one placement per pool,
//!   quiz activity, the per-backend tunnel registry. Every routing decision goes through it.
//! - [`ring`]: pure consistent hashing with bounded loads per quiz, keyed by node name.
//! - [`discovery`]: pools whose backends come from DNS SRV records (a Kubernetes headless
//!   Service), resolved periodically and fed to `Cluster::set_discovered`, the reload path.
//! - [`health`]: active checks (pingora-load-balancing `HttpHealthCheck` on `/readyz`) feeding
//!   `Cluster::report_health`, plus the idle-quiz sweep.
//! - [`admin`]: admin API (route explanation, backends, drain, reload) and `/metrics`.
//! - [`config`]: the typed `edge_lb:` section of the pingora YAML file; [`metrics`]: Prometheus;
//!   [`tls`]: certificate store reloaded without restart.
//!
//! [`build`] assembles a pingora `Server` from configuration; [`start`] runs one on a thread
//! (tests, benchmarks); `main.rs` calls [`build`] and `run_forever`.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod head;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod ring;
pub mod speculative;
pub mod testing;
pub mod tls;
pub mod tunnel;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{ListenerConfig, TcpSocketOptions};
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use tokio_util::sync::CancellationToken;

pub use cluster::Cluster;
pub use config::EdgeConfig;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("pingora configuration: {0}")]
    Pingora(String),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Background work: health checks, sweep, discovery, certificate refresh, SIGHUP reload.
struct Upkeep {
    cluster: Arc<Cluster>,
    certs: Option<Arc<tls::CertStore>>,
    config_path: Option<PathBuf>,
    handle_sighup: bool,
    /// pingora's `grace_period_seconds`: how long the process lives on after it stops
    /// accepting; its tunnels are closed within it.
    grace: std::time::Duration,
}

#[async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let stop = CancellationToken::new();
        let health = tokio::spawn(health::run(self.cluster.clone(), stop.clone()));
        let discovery = tokio::spawn(discovery::run(self.cluster.clone(), stop.clone()));
        if let Some(store) = self.certs.clone() {
            let every = self
                .cluster
                .config()
                .tls
                .as_ref()
                .map(|t| t.reload_check_interval)
                .unwrap_or(std::time::Duration::from_secs(5));
            let stop = stop.clone();
            tokio::spawn(async move {
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
            });
        }
        if let (true, Some(path)) = (self.handle_sighup, self.config_path.clone()) {
            let cluster = self.cluster.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(mut hup) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = hup.recv() => {
                            match admin::reload(&cluster, &path) {
                                Ok(removed) => tracing::info!(?removed, "configuration reloaded (SIGHUP)"),
                                Err(e) => tracing::error!("reload failed, keeping the old configuration: {e}"),
                            }
                        }
                    }
                }
            });
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

/// How to build an instance.
pub struct BuildOptions {
    pub server_conf: ServerConf,
    pub edge: EdgeConfig,
    /// The file `/admin/reload` and SIGHUP re-read.
    pub config_path: Option<PathBuf>,
    /// pingora command-line options (`-u` upgrade, `-d` daemon, `-t` test).
    pub opt: Option<Opt>,
    /// Install the SIGHUP handler (the binary does; in-process tests do not).
    pub handle_sighup: bool,
}

/// Assemble the pingora server: proxy listeners (plain and TLS, SO_REUSEPORT), the admin
/// service, and the upkeep background service.
pub fn build(o: BuildOptions) -> Result<(Server, Arc<Cluster>), BuildError> {
    let edge = o.edge;
    let conf = Arc::new(
        ServerConf::from_yaml(&o.server_conf.to_yaml())
            .map_err(|e| BuildError::Pingora(e.to_string()))?,
    );
    let cluster = Cluster::new(edge.clone());
    let http = Arc::new(pingora_proxy::http_proxy(
        &conf,
        proxy::Router {
            cluster: cluster.clone(),
        },
    ));
    let app = proxy::EdgeApp {
        cluster: cluster.clone(),
        http,
    };
    let mut svc = Service::new("edge-lb".to_string(), app);
    let sock = || {
        let mut s = TcpSocketOptions::default();
        s.so_reuseport = Some(edge.reuse_port);
        s
    };
    // Unbuffered L4: edge-lb reads heads itself and the tunnel writes straight through, so a
    // per-connection 64 KiB read buffer (pingora's default) would only cost memory.
    for l in &edge.listen {
        svc.add_listener(
            ListenerConfig::tcp(l.clone())
                .tcp_socket_options(sock())
                .l4_buffer(L4BufferSettings::unbuffered()),
        );
    }
    let mut certs = None;
    if let Some(t) = &edge.tls {
        let store = tls::CertStore::open(&t.cert, &t.key)?;
        for l in &t.listen {
            let settings = TlsSettings::with_callbacks(Box::new(tls::ReloadingCert(store.clone())))
                .map_err(|e| BuildError::Pingora(e.to_string()))?;
            svc.add_listener(
                ListenerConfig::tcp(l.clone())
                    .tcp_socket_options(sock())
                    .tls(settings),
            );
        }
        certs = Some(store);
    }
    let mut admin_svc = Service::new(
        "edge-lb-admin".to_string(),
        admin::AdminApp {
            cluster: cluster.clone(),
            config_path: o.config_path.clone(),
        },
    );
    admin_svc.add_tcp(&edge.admin_listen);
    admin_svc.threads = Some(1);
    let mut upkeep = background_service(
        "edge-lb-upkeep",
        Upkeep {
            cluster: cluster.clone(),
            certs,
            config_path: o.config_path,
            handle_sighup: o.handle_sighup,
            grace: std::time::Duration::from_secs(
                o.server_conf.grace_period_seconds.unwrap_or(300),
            ),
        },
    );
    upkeep.threads = Some(1);
    let mut server = Server::new_with_opt_and_conf(o.opt, o.server_conf);
    server.bootstrap();
    server.add_service(svc);
    server.add_service(admin_svc);
    server.add_service(upkeep);
    Ok((server, cluster))
}

/// Load the pingora `ServerConf` and the `edge_lb:` section from one YAML text.
pub fn parse_config(text: &str) -> Result<(ServerConf, EdgeConfig), BuildError> {
    let edge = EdgeConfig::from_yaml(text)?;
    let sc = ServerConf::from_yaml(text).map_err(|e| BuildError::Pingora(e.to_string()))?;
    Ok((sc, edge))
}

struct StopSignal(tokio::sync::watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|v| *v).await;
        ShutdownSignal::FastShutdown
    }
}

/// An edge-lb running on its own thread; stopped on drop.
pub struct Running {
    pub cluster: Arc<Cluster>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start an instance on a dedicated thread (tests, benchmarks). Listeners are bound
/// asynchronously: callers wait until the port accepts (see `tests/common`).
pub fn start(
    server_conf: ServerConf,
    edge: EdgeConfig,
    config_path: Option<PathBuf>,
) -> Result<Running, BuildError> {
    let (server, cluster) = build(BuildOptions {
        server_conf,
        edge,
        config_path,
        opt: None,
        handle_sighup: false,
    })?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("edge-lb".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(StopSignal(rx)),
            })
        })
        .map_err(|e| BuildError::Pingora(e.to_string()))?;
    Ok(Running {
        cluster,
        stop: tx,
        thread: Some(thread),
    })
}
