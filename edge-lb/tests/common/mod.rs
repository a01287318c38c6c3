//! Shared helpers: start real backends and a real edge-lb (pingora server on its own thread)
//! on loopback, wait for health, talk to the admin API.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edge_lb::Running;
use edge_lb_testing::{http_get, ws_connect, Backend, Client};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn backends(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            Backend::start(&format!("core-{i}"), "127.0.0.1:0")
                .await
                .unwrap(),
        );
    }
    v
}

pub struct Edge {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
}

impl Edge {
    pub fn cluster(&self) -> &edge_lb::Cluster {
        &self.running.as_ref().unwrap().cluster
    }
}

pub struct Opts {
    pub balance_factor: f64,
    pub hold_down_ms: u64,
    pub idle_timeout_ms: u64,
    pub close_rate: u32,
    pub panic_threshold: f64,
    /// `health.unresponsive_after`.
    pub unresponsive_after_ms: u64,
    pub listen: Vec<String>,
    /// The `limits:` value (flow YAML). The default turns the per-client limits off: the
    /// tests open thousands of connections from 127.0.0.1.
    pub limits: String,
    /// `tunnel.new_per_node_per_sec` and its burst (0: off).
    pub node_rate: (u32, u32),
    /// `health.interval` and `health.success_threshold`.
    pub health_interval_ms: u64,
    pub success_threshold: u32,
    pub extra: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            balance_factor: 1.25,
            hold_down_ms: 1000,
            idle_timeout_ms: 600_000,
            close_rate: 1000,
            panic_threshold: 0.0,
            unresponsive_after_ms: 30_000,
            health_interval_ms: 100,
            success_threshold: 2,
            listen: Vec::new(),
            limits:
                "{per_client: {max_connections: 0, connections_per_sec: 0, requests_per_sec: 0}}"
                    .into(),
            node_rate: (0, 0),
            extra: String::new(),
        }
    }
}

pub fn yaml(
    backends: &[(String, SocketAddr)],
    listen: &[String],
    admin: SocketAddr,
    o: &Opts,
) -> String {
    let mut b = String::new();
    for (name, addr) in backends {
        b.push_str(&format!("        - {{name: {name}, addr: \"{addr}\"}}\n"));
    }
    let listen = listen
        .iter()
        .map(|l| format!("\"{l}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "version: 1
threads: 1
grace_period_seconds: 0
graceful_shutdown_timeout_seconds: 1
edge_lb:
  listen: [{listen}]
  admin_listen: \"{admin}\"
  balance_factor: {bf}
  quiz_idle_ttl: 10m
  pools:
    - name: core
      backends:
{b}  health: {{interval: {hi}ms, timeout: 300ms, success_threshold: {st}, failure_threshold: 2, hold_down: {hd}ms, panic_threshold: {panic}, unresponsive_after: {ua}ms}}
  tunnel: {{idle_timeout: {idle}ms, connect_timeout: 1s, handshake_timeout: 2s, close_linger: 1s, new_per_node_per_sec: {nr}, new_per_node_burst: {nb}}}
  drain: {{close_rate_per_sec: {rate}}}
  limits: {limits}
{extra}",
        bf = o.balance_factor,
        hd = o.hold_down_ms,
        hi = o.health_interval_ms,
        st = o.success_threshold,
        panic = o.panic_threshold,
        ua = o.unresponsive_after_ms,
        idle = o.idle_timeout_ms,
        rate = o.close_rate,
        nr = o.node_rate.0,
        nb = o.node_rate.1,
        limits = o.limits,
        extra = o.extra,
    )
}

pub fn named(bs: &[Backend]) -> Vec<(String, SocketAddr)> {
    bs.iter().map(|b| (b.name.clone(), b.addr)).collect()
}

/// Start an edge-lb for `bs` and wait until every backend is eligible.
pub async fn edge(bs: &[Backend], o: Opts) -> Edge {
    edge_for(&named(bs), o).await
}

/// Start an edge-lb for backends given by name and address (e.g. served by another process)
/// and wait until every backend is eligible.
pub async fn edge_for(backends: &[(String, SocketAddr)], o: Opts) -> Edge {
    let port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut listen = o.listen.clone();
    if listen.is_empty() {
        listen.push(format!("127.0.0.1:{port}"));
    }
    let addr: SocketAddr = listen[0].parse().unwrap();
    let text = yaml(backends, &listen, admin, &o);
    let dir = std::env::temp_dir().join(format!(
        "edge-lb-test-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("edge.yaml");
    std::fs::write(&config_path, &text).unwrap();
    let (sc, ec) = edge_lb::parse_config(&text).unwrap();
    let running = edge_lb::start(sc, ec, Some(config_path.clone())).unwrap();
    let e = Edge {
        running: Some(running),
        addr,
        admin,
        config_path,
    };
    wait_until(Duration::from_secs(10), || e.cluster().all_eligible()).await;
    // Listener up?
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "edge-lb did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e
}

pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node that served an HTTP request for quiz `q` through the edge.
pub async fn http_node(addr: SocketAddr, q: &str) -> String {
    let (status, _h, body) = http_get(addr, &format!("/v1/quizzes/{q}")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["node"].as_str().unwrap().to_string()
}

pub async fn admin_json(admin: SocketAddr, method: &str, path: &str) -> serde_json::Value {
    let (status, _h, body) = edge_lb_testing::http_request(
        admin,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
    .unwrap();
    assert!(status == 200, "{method} {path}: {status} {body}");
    serde_json::from_str(&body).unwrap()
}

pub async fn admin_route(admin: SocketAddr, q: &str) -> String {
    let v = admin_json(admin, "GET", &format!("/admin/route/{q}")).await;
    v["websocket"]["backend"].as_str().unwrap_or("").to_string()
}

/// Open a WebSocket for quiz `q` through `addr`; returns the node that answered and the client.
pub async fn tunnel(addr: SocketAddr, q: &str) -> (String, Client) {
    let mut c = ws_connect(addr, &format!("/v1/quizzes/{q}/ws"))
        .await
        .unwrap();
    (c.node().await.unwrap(), c)
}

/// `n` tunnels for the quizzes `{prefix}0..`: (quiz, node, client) each.
pub async fn tunnels(addr: SocketAddr, prefix: &str, n: usize) -> Vec<(String, String, Client)> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let q = format!("{prefix}{i}");
        let (node, c) = tunnel(addr, &q).await;
        v.push((q, node, c));
    }
    v
}

/// Two edge-lb processes over the same backends, each on a port of its own and both on one
/// shared port (SO_REUSEPORT): `(a, b, a's own port, b's own port, the shared port)`.
pub async fn two_edges_sharing_a_port(
    bs: &[Backend],
) -> (Edge, Edge, SocketAddr, SocketAddr, SocketAddr) {
    let port = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
    let (shared, pa, pb) = (port(), port(), port());
    let on = |own: SocketAddr| Opts {
        listen: vec![own.to_string(), shared.to_string()],
        ..Opts::default()
    };
    let a = edge(bs, on(pa)).await;
    let b = edge(bs, on(pb)).await;
    (a, b, pa, pb, shared)
}
