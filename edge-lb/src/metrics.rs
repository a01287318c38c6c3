//! Prometheus metrics, one registry per edge-lb instance (so tests can run several in one
//! process). Names are listed in `docs/edge-lb.md`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Open WebSocket tunnels per backend.
    pub tunnels_active: IntGaugeVec,
    /// HTTP requests proxied, by backend and status class.
    pub requests: IntCounterVec,
    /// In-flight HTTP requests per backend.
    pub requests_active: IntGaugeVec,
    /// Upgrade attempts by outcome (ok, rejected, backend_error).
    pub upgrades: IntCounterVec,
    /// Routing decisions by pool and reason (sticky, primary, overflow, any, none).
    pub routing: IntCounterVec,
    pub retries: IntCounterVec,
    /// Health transitions by backend and new state (up, down, eligible, slow).
    pub health_transitions: IntCounterVec,
    /// Health checks by backend and outcome (ready, not_ready, gone, slow).
    pub health_checks: IntCounterVec,
    /// 1 while a backend's latest check timed out (busy: kept up, see
    /// `health.unresponsive_after`).
    pub backend_slow: IntGaugeVec,
    /// Errors and refusals by kind (bad_quiz_id, header_too_large, not_websocket, no_backend,
    /// connect, client_connections, client_connection_rate, client_request_rate,
    /// node_tunnel_rate, client_auth_failures, not_public, client_table_full, request_timeout, ...).
    pub errors: IntCounterVec,
    /// Authentication failures seen in backends' answers, by where (http, upgrade).
    pub auth_failures: IntCounterVec,
    /// Tunnels closed by edge-lb, by reason (node_lost, drain, rebalance, idle, shutdown).
    pub tunnels_closed: IntCounterVec,
    /// Active quizzes per backend (the bounded-load unit).
    pub quizzes_active: IntGaugeVec,
    /// 1 while a pool's failing verdicts are deferred by `health.panic_threshold`.
    pub pool_panic: IntGaugeVec,
    pub downstream_connections: IntGauge,
    /// Client addresses tracked by the per-client limits.
    pub client_table_entries: IntGauge,
    /// Player WebSockets routed over a quiz's spread, by pool and choice (home, fallback).
    pub spread_routes: IntCounterVec,
    /// Spread quizzes in the book (after each sweep).
    pub spread_quizzes: IntGauge,
    pub upgrade_seconds: HistogramVec,
    /// Discovery resolutions by pool and outcome (ok, empty, error).
    pub discovery_resolutions: IntCounterVec,
    /// Discovered backends in use per pool.
    pub discovery_backends: IntGaugeVec,
    /// Changes applied by discovery, by pool and change (added, removed, readdressed).
    pub discovery_changes: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gv = |n: &str, h: &str, l: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(n, h), l).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let cv = |n: &str, h: &str, l: &[&str]| {
            let c = IntCounterVec::new(Opts::new(n, h), l).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let tunnels_active = gv(
            "edge_lb_tunnels_active",
            "Open WebSocket tunnels per backend",
            &["backend"],
        );
        let requests = cv(
            "edge_lb_requests_total",
            "HTTP requests proxied per backend and status class",
            &["backend", "class"],
        );
        let requests_active = gv(
            "edge_lb_requests_active",
            "In-flight HTTP requests per backend",
            &["backend"],
        );
        let upgrades = cv(
            "edge_lb_upgrades_total",
            "WebSocket upgrade attempts by outcome",
            &["outcome"],
        );
        let routing = cv(
            "edge_lb_routing_decisions_total",
            "Routing decisions by pool and reason",
            &["pool", "reason"],
        );
        let retries = cv(
            "edge_lb_retries_total",
            "Upstream retries by pool",
            &["pool"],
        );
        let health_transitions = cv(
            "edge_lb_health_transitions_total",
            "Backend health transitions",
            &["backend", "to"],
        );
        let health_checks = cv(
            "edge_lb_health_checks_total",
            "Backend health checks by outcome",
            &["backend", "outcome"],
        );
        let backend_slow = gv(
            "edge_lb_backend_slow",
            "1 while the backend's latest health check timed out (busy, kept up)",
            &["backend"],
        );
        let errors = cv("edge_lb_errors_total", "Errors by kind", &["kind"]);
        let auth_failures = cv(
            "edge_lb_auth_failures_total",
            "Backend answers refusing a client's token (401, 403, a 101 marked refused)",
            &["via"],
        );
        let tunnels_closed = cv(
            "edge_lb_tunnels_closed_total",
            "Tunnels closed by edge-lb by reason",
            &["reason"],
        );
        let quizzes_active = gv(
            "edge_lb_quizzes_active",
            "Active quizzes owned per backend",
            &["backend"],
        );
        let pool_panic = gv(
            "edge_lb_pool_panic",
            "1 while failing health verdicts in the pool are deferred (panic threshold)",
            &["pool"],
        );
        let downstream_connections =
            IntGauge::new("edge_lb_downstream_connections", "Open client connections")
                .expect("valid metric");
        registry
            .register(Box::new(downstream_connections.clone()))
            .expect("unique");
        let client_table_entries = IntGauge::new(
            "edge_lb_client_table_entries",
            "Client addresses tracked by the per-client limits",
        )
        .expect("valid metric");
        registry
            .register(Box::new(client_table_entries.clone()))
            .expect("unique");
        let spread_routes = cv(
            "edge_lb_spread_routes_total",
            "Player WebSockets routed over a quiz's spread, by pool and choice",
            &["pool", "choice"],
        );
        let spread_quizzes = IntGauge::new(
            "edge_lb_spread_quizzes",
            "Spread quizzes recorded for the admin view",
        )
        .expect("valid metric");
        registry
            .register(Box::new(spread_quizzes.clone()))
            .expect("unique");
        let upgrade_seconds = HistogramVec::new(
            HistogramOpts::new(
                "edge_lb_upgrade_seconds",
                "Time from request head to 101 forwarded",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0,
            ]),
            &["backend"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upgrade_seconds.clone()))
            .expect("unique");
        let discovery_resolutions = cv(
            "edge_lb_discovery_resolutions_total",
            "Backend discovery resolutions by pool and outcome",
            &["pool", "outcome"],
        );
        let discovery_backends = gv(
            "edge_lb_discovery_backends",
            "Discovered backends in use per pool",
            &["pool"],
        );
        let discovery_changes = cv(
            "edge_lb_discovery_changes_total",
            "Backend set changes applied by discovery",
            &["pool", "change"],
        );
        let build_info = gv(
            "edge_lb_build_info",
            "1, labelled with the version, git commit and rustc of this build",
            &["version", "commit", "rustc"],
        );
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("QUIZ_BUILD_COMMIT"),
                env!("QUIZ_BUILD_RUSTC"),
            ])
            .set(1);
        // The process's CPU, memory, open files against its limit, threads and start time
        // (`process_*`, read from /proc at each scrape; Linux only). Several edge-lb
        // processes share a port (SO_REUSEPORT): each reports its own.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique");
        Metrics {
            registry,
            discovery_resolutions,
            discovery_backends,
            discovery_changes,
            tunnels_active,
            requests,
            requests_active,
            upgrades,
            routing,
            retries,
            health_transitions,
            health_checks,
            backend_slow,
            errors,
            auth_failures,
            tunnels_closed,
            quizzes_active,
            pool_panic,
            downstream_connections,
            client_table_entries,
            spread_routes,
            spread_quizzes,
            upgrade_seconds,
        }
    }

    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
