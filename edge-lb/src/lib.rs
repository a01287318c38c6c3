//! edge-lb: the quiz platform's edge load balancer, on pingora.
//!
//! Map of the crate (a request flows top to bottom):
//!
//! - [`proxy`]: `EdgeApp`, the pingora `ServerApp` behind every listener. Reads the request
//!   head ([`head`]), sends WebSocket upgrades to [`tunnel`] and plain HTTP to pingora's
//!   `HttpProxy` running `Router` (`ProxyHttp`).
//! - [`limits`]: admission per client address (open connections, new connections/s,
//!   requests/s; a bounded table) and per backend (new tunnels/s), checked by [`proxy`] and
//!   [`tunnel`].
//! - [`auth`]: authentication failures in the backends' answers (401/403, a 101 core marks
//!   as a refused token), fed to [`limits`] by [`proxy`] and [`tunnel`].
//! - [`refusal`]: every answer given before a backend answered (connection limit, per-client
//!   limits, bad head, bad route, no node, node unreachable): one `Refusal` per cause, one
//!   `refuse` that sends it.
//! - [`tunnel`]: WebSocket upgrades and the long-lived byte splice (idle timeout, close
//!   propagation, cancellation; the workarounds for pingora issues #946 and #571).
//! - [`cluster`]: shared state: backends, one placement per pool, quiz activity. Every routing
//!   decision goes through it; inside, one module per concern: where backends come from
//!   (configuration merged with discovery), routing, health verdicts and drain, and the
//!   per-backend registry of open tunnels with their paced closing.
//! - [`ring`]: pure consistent hashing with bounded loads per quiz, keyed by node name.
//! - [`spread`]: a quiz over several nodes: the spread a WebSocket's token names, the
//!   rendezvous choice of a player's node among the spread, and the bounded record of spreads
//!   seen (the admin view). [`tunnel`] reads the token; [`cluster`] routes with it.
//! - [`upkeep`]: the background service: runs [`health`] (active checks on `/readyz`, each
//!   one [`probe`] classified into an outcome, feeding `Cluster::report_health`, plus the
//!   idle-quiz sweep) and [`discovery`] (DNS SRV pools fed to
//!   `Cluster::set_discovered`, the reload path), refreshes certificates, reloads on SIGHUP,
//!   and closes the tunnels at a graceful stop.
//! - [`admin`]: admin API (route explanation, backends, drain, reload) and `/metrics`.
//! - [`access`]: the sampled access log (one record per request, per tunnel at its end, per
//!   refusal), written by [`proxy`] and [`tunnel`] through the logger [`logs`] installs.
//! - [`config`]: the typed `edge_lb:` section of the pingora YAML file; [`metrics`]: Prometheus;
//!   [`tls`]: certificate store reloaded without restart; [`speculative`]: the first read and
//!   the backend connect done before waiting for readiness; [`upstream_bind`]: the source
//!   addresses connections to backends leave from; [`cancel`]: a tunnel's cancellation handle
//!   (set by [`cluster`], noticed by [`tunnel`]).
//!
//! [`build`] assembles a pingora `Server` from configuration; [`start`] runs one on a thread
//! (tests, benchmarks); `main.rs` calls [`build`] and `run_forever`. Test support (a real echo
//! backend, a WebSocket client) is the dev-only crate `edge-lb-testing` (`edge-lb/testing`);
//! the load tool of the benchmark against HAProxy is `edge-lb-bench` (`edge-lb/bench`).

pub mod access;
pub mod admin;
pub mod auth;
pub mod cancel;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod head;
pub mod health;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod refusal;
pub mod ring;
pub mod speculative;
pub mod spread;
pub mod tls;
pub mod tunnel;
mod upkeep;
pub mod upstream_bind;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{ListenerConfig, TcpSocketOptions};
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

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
    let edge = o.edge.read_admin_token()?.check_source_addresses()?;
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
        upkeep::Upkeep {
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
