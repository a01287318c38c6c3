//! The front door and the HTTP proxy.
//!
//! [`EdgeApp`] is the pingora `ServerApp` behind every listener. Per request it reads the head
//! (bounded: `limits.max_header_bytes`, `limits.header_read_timeout`), rejects bad input with
//! a contract-shaped 4xx at once, sends WebSocket upgrades to [`crate::tunnel`], and hands
//! plain HTTP — with the bytes it read put back ([`Rewound`]) — to pingora's `HttpProxy`
//! running [`Router`], the `ProxyHttp` that picks the upstream by quiz id.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::{FailToProxy, HttpProxy, ProxyHttp, Session};

use crate::access::{Kind, Record};
use crate::cluster::Cluster;
use crate::head::{quiz_path, read_head, Head, QuizPath, Rewound, CLIENT_ADDRESS_HEADERS};
use crate::limits::ClientGuard;
use crate::refusal::{error_body, refuse, Refusal};

/// Per-request context of the HTTP proxy.
#[derive(Default)]
pub struct Ctx {
    backend: Option<Arc<str>>,
    tries: u32,
    no_backend: bool,
    /// The whole-request deadline (`limits.request_timeout`), set by `request_filter`.
    deadline: Option<Instant>,
    /// For the access record: when the request began, the node's address, the quiz (moved
    /// here from routing, no copy), and for an answer edge-lb wrote itself how it ended and
    /// its `edge_lb_errors_total` kind.
    started: Option<Instant>,
    node_addr: Option<SocketAddr>,
    quiz: Option<String>,
    end: &'static str,
    reason: &'static str,
}

/// pingora's own per-read downstream timeout, restored once the request body is in.
const PINGORA_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// `ProxyHttp` for plain HTTP: sticky by quiz id through the bounded-load ring, any eligible
/// node for quiz-less requests.
pub struct Router {
    pub cluster: Arc<Cluster>,
}

#[async_trait]
impl ProxyHttp for Router {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Some(Instant::now()),
            ..Ctx::default()
        }
    }

    /// The whole-request deadline: [`EdgeApp`] set the session's read timeout to what is
    /// left of `limits.request_timeout` after the head; it becomes this request's deadline.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let left = session
            .get_read_timeout()
            .unwrap_or(self.cluster.config().limits.request_timeout);
        ctx.deadline = Some(Instant::now() + left);
        Ok(false)
    }

    /// Each body read may wait only for what is left of the deadline, so a client trickling
    /// its body (slowloris) is cut at the deadline, not 60 s after its last byte.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if end_of_stream {
            session.set_read_timeout(Some(PINGORA_READ_TIMEOUT));
            return Ok(());
        }
        let Some(deadline) = ctx.deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "request body not received in time",
            )
            .into_down());
        }
        session.set_read_timeout(Some(left));
        Ok(())
    }

    /// The client address core sees: `X-Forwarded-For` is exactly the TCP peer; whatever the
    /// client sent in `X-Forwarded-For`, `Forwarded` or `X-Real-IP` is dropped.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora_http::RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        for h in CLIENT_ADDRESS_HEADERS {
            upstream_request.remove_header(*h);
        }
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet().map(|i| i.ip()))
        {
            upstream_request.insert_header("x-forwarded-for", ip.to_string())?;
        }
        Ok(())
    }

    /// A 401 or 403 counts against the client's address (`limits.per_client`, [`crate::auth`]).
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut pingora_http::ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet().map(|i| i.ip()));
        crate::auth::http_answered(&self.cluster, client, upstream_response);
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let cfg = self.cluster.config();
        let pool = &cfg.routes.http;
        let target = match quiz_path(session.req_header().uri.path()) {
            QuizPath::Quiz { id, .. } => {
                let t = self.cluster.route_quiz(pool, &id);
                ctx.quiz = Some(id);
                t
            }
            _ => self
                .cluster
                .route_any(pool, ctx.backend.as_deref())
                .or_else(|| self.cluster.route_any(pool, None)),
        };
        let Some(t) = target else {
            ctx.no_backend = true;
            self.cluster.metrics.error(Refusal::NoHttpBackend.kind());
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no healthy backend",
            ));
        };
        if let Some(prev) = ctx.backend.replace(t.backend.clone()) {
            self.cluster
                .metrics
                .requests_active
                .with_label_values(&[&prev])
                .dec();
        }
        self.cluster
            .metrics
            .requests_active
            .with_label_values(&[&t.backend])
            .inc();
        ctx.node_addr = Some(t.addr);
        let mut peer = HttpPeer::new(t.addr, false, String::new());
        peer.options.connection_timeout = Some(cfg.tunnel.connect_timeout);
        peer.options.read_timeout = Some(cfg.http.upstream_read_timeout);
        peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
        // Used by a new connection only: pooled ones are reused whatever their source.
        peer.options.bind_to = self
            .cluster
            .source_addresses
            .pick_bind_to(&cfg.source_addresses, t.addr);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.cluster.metrics.error("connect");
        if e.etype() == &ErrorType::ConnectRefused {
            if let Some(b) = ctx.backend.clone() {
                self.cluster.connect_refused(&b);
            }
        }
        let cfg = self.cluster.config();
        if ctx.tries < cfg.http.retries {
            ctx.tries += 1;
            self.cluster
                .metrics
                .retries
                .with_label_values(&[&cfg.routes.http])
                .inc();
            e.set_retry(true);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (code, kind, msg) = if ctx.no_backend {
            let r = Refusal::NoHttpBackend;
            (r.status(), r.code(), r.message())
        } else {
            let (code, kind, msg) = match e.etype() {
                ErrorType::ReadTimedout
                    if e.esource() == &pingora_core::ErrorSource::Downstream =>
                {
                    (408, "invalid", "request not received in time")
                }
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectError => {
                    (503, "unavailable", "backend unreachable, retry shortly")
                }
                ErrorType::ReadTimedout => (504, "unavailable", "backend timed out"),
                _ => match e.esource() {
                    pingora_core::ErrorSource::Downstream => (400, "invalid", "malformed request"),
                    _ => (502, "unavailable", "backend error"),
                },
            };
            (code, kind, msg.into())
        };
        if !matches!(
            e.etype(),
            ErrorType::WriteError | ErrorType::ConnectionClosed
        ) || e.esource() != &pingora_core::ErrorSource::Downstream
        {
            let body = error_body(kind, &msg);
            let mut resp =
                pingora_http::ResponseHeader::build(code, Some(4)).expect("static status");
            let _ = resp.insert_header("content-type", "application/json");
            let _ = resp.insert_header("content-length", body.len().to_string());
            if code == 503 {
                let _ = resp.insert_header("retry-after", "1");
            }
            let _ = session.write_response_header(Box::new(resp), false).await;
            let _ = session
                .write_response_body(Some(bytes::Bytes::from(body)), true)
                .await;
        }
        let kind = match code {
            408 => "request_timeout",
            503 => "unavailable",
            504 => "upstream_timeout",
            400 => "bad_request",
            _ => "upstream",
        };
        self.cluster.metrics.error(kind);
        // edge-lb's own answers (no node, deadline, node unreachable) are refusals; a node
        // that failed mid-way is an error.
        ctx.end = if matches!(code, 408 | 503) {
            "refused"
        } else {
            "error"
        };
        ctx.reason = if ctx.no_backend {
            Refusal::NoHttpBackend.kind()
        } else {
            kind
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        // The sampling decision comes first and is lock- and allocation-free: a request that
        // is sampled out costs only that (see `crate::access`).
        let error = status == 0 || status >= 400 || e.is_some();
        if self.cluster.access.sampled(error) {
            let req = session.req_header();
            let (end, reason) = match (ctx.end, e) {
                ("", None) => ("done", ""),
                ("", Some(e)) => (
                    "error",
                    match e.esource() {
                        pingora_core::ErrorSource::Downstream => "client_io",
                        _ => "upstream_io",
                    },
                ),
                (end, _) => (end, ctx.reason),
            };
            Record {
                kind: Kind::Http,
                client: session.client_addr().and_then(|a| a.as_inet().copied()),
                method: req.method.as_str(),
                path: req.uri.path(),
                quiz: ctx.quiz.as_deref(),
                node: ctx.backend.as_deref(),
                node_addr: ctx.node_addr,
                status,
                bytes_received: session.body_bytes_read() as u64,
                bytes_sent: session.body_bytes_sent() as u64,
                duration: ctx.started.map_or(Duration::ZERO, |t| t.elapsed()),
                end,
                reason,
            }
            .emit();
        }
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "none",
        };
        if let Some(b) = ctx.backend.take() {
            self.cluster
                .metrics
                .requests_active
                .with_label_values(&[&b])
                .dec();
            self.cluster
                .metrics
                .requests
                .with_label_values(&[&b, class])
                .inc();
        }
    }
}

/// The `ServerApp` behind every edge-lb listener.
pub struct EdgeApp {
    pub cluster: Arc<Cluster>,
    pub http: Arc<HttpProxy<Router>>,
}

/// One client connection counted against `limits.max_connections` (and, in its guard, against
/// its address's `limits.per_client`); a WebSocket tunnel takes it into its own task, so the
/// count lasts as long as the connection.
struct ConnCount(Arc<Cluster>, Option<ClientGuard>);

impl Drop for ConnCount {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.downstream_connections.dec();
    }
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let cluster = &self.cluster;
        let cfg = cluster.config();
        let n = cluster.connections.fetch_add(1, Ordering::Relaxed);
        cluster.metrics.downstream_connections.inc();
        let mut count = ConnCount(cluster.clone(), None);
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().copied()));
        let peer_ip = peer.map(|a| a.ip());
        let mut stream = Rewound::from_stream(stream);
        // When the current request (or, before one, the connection) began: the duration of
        // a refusal's access record.
        let mut since = Instant::now();
        if n >= cfg.limits.max_connections {
            let r = Refusal::ConnectionLimit;
            log_refusal(cluster, &r, peer, None, since);
            refuse(&mut stream, &cluster.metrics, r).await;
            return None;
        }
        if let Some(ip) = peer_ip {
            match cluster.clients.connect(ip, &cluster.metrics) {
                Ok(guard) => count.1 = guard,
                Err(r) => {
                    log_refusal(cluster, &r, peer, None, since);
                    refuse(&mut stream, &cluster.metrics, r).await;
                    return None;
                }
            }
        }
        // The request is usually in the socket already when the connection is accepted: read
        // it now instead of waiting a turn of the event loop for the socket's first readiness.
        if let Some(pre) = crate::speculative::recv_now(&stream.inner) {
            stream.set_pre(pre);
        }
        let mut first = true;
        loop {
            let idle = if first {
                cfg.limits.header_read_timeout
            } else {
                cfg.limits.keepalive_timeout
            };
            first = false;
            since = Instant::now();
            // The sub-futures below are boxed so that the connection task's own future stays
            // small: a future's size is that of its largest state, and pingora's HTTP proxy
            // future is large. Only the state in use is allocated; an idle tunnel pays for the
            // splice alone.
            let head = match Box::pin(read_head(
                &mut stream,
                cfg.limits.max_header_bytes,
                idle,
                cfg.limits
                    .header_read_timeout
                    .min(cfg.limits.request_timeout),
            ))
            .await
            {
                Ok(h) => h,
                Err(e) => {
                    if let Some(r) = Refusal::of_head(e) {
                        log_refusal(cluster, &r, peer, None, since);
                        refuse(&mut stream, &cluster.metrics, r).await;
                    }
                    return None;
                }
            };
            if let Some(guard) = &count.1 {
                if let Err(r) = cluster.clients.request(guard) {
                    log_refusal(cluster, &r, peer, Some(&head), since);
                    refuse(&mut stream, &cluster.metrics, r).await;
                    return None;
                }
            }
            match tunnel_for(&head) {
                Err(r) => {
                    log_refusal(cluster, &r, peer, Some(&head), since);
                    refuse(&mut stream, &cluster.metrics, r).await;
                    return None;
                }
                Ok(Some(quiz)) => {
                    Box::pin(crate::tunnel::serve_upgrade(
                        cluster, stream, head, &quiz, peer, count,
                    ))
                    .await;
                    return None;
                }
                Ok(None) => {}
            }
            // Plain HTTP: give pingora the bytes we read and let it proxy the request, with what
            // is left of the whole-request deadline as its read timeout (see `Router`).
            let left = cfg
                .limits
                .request_timeout
                .saturating_sub(head.started.elapsed())
                .max(Duration::from_millis(1));
            stream.set_pre(head.buf);
            let mut session = ServerSession::new_http1(Box::new(stream));
            session.set_read_timeout(Some(left));
            if *shutdown.borrow() {
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(cfg.limits.keepalive_timeout.as_secs()));
            }
            let reused = Box::pin(self.http.process_new_http(session, shutdown)).await?;
            let (s, _settings) = reused.consume();
            stream = Rewound::from_stream(s);
        }
    }

    async fn cleanup(&self) {
        self.http.http_cleanup().await;
    }
}

/// Record a refusal edge-lb answers at the front door (always written when the access log
/// is on: refusals are never sampled out). `head`: the request, once read; `since`: when it
/// (or the connection) began.
fn log_refusal(
    cluster: &Cluster,
    r: &Refusal,
    client: Option<SocketAddr>,
    head: Option<&Head>,
    since: Instant,
) {
    if !cluster.access.sampled(true) {
        return;
    }
    let quiz = head.and_then(|h| match quiz_path(&h.path) {
        QuizPath::Quiz { id, .. } => Some(id),
        _ => None,
    });
    let kind = match head {
        None if matches!(
            r,
            Refusal::ConnectionLimit
                | Refusal::ClientConnections
                | Refusal::ClientConnectionRate(_)
        ) =>
        {
            Kind::Conn
        }
        Some(h) if h.upgrade_websocket => Kind::Ws,
        _ => Kind::Http,
    };
    Record {
        kind,
        client,
        method: head.map_or("", |h| h.method.as_str()),
        path: head.map_or("", |h| h.path.as_str()),
        quiz: quiz.as_deref(),
        node: None,
        node_addr: None,
        status: r.status(),
        bytes_received: 0,
        bytes_sent: 0,
        duration: since.elapsed(),
        end: "refused",
        reason: r.kind(),
    }
    .emit();
}

/// Where a request head goes: the quiz whose tunnel it opens (a WebSocket upgrade under
/// `/v1/quizzes/{id}/`), None for plain HTTP, or the refusal of a bad route.
fn tunnel_for(head: &Head) -> Result<Option<String>, Refusal> {
    if operator_only(&head.path) {
        return Err(Refusal::NotPublic);
    }
    match (quiz_path(&head.path), head.upgrade_websocket) {
        (QuizPath::Invalid(why), _) => Err(Refusal::BadQuizId(why)),
        (QuizPath::Quiz { ws: true, .. }, false) => Err(Refusal::UpgradeRequired),
        (QuizPath::Quiz { .. }, true) if head.method != "GET" => Err(Refusal::UpgradeNotGet),
        (QuizPath::Quiz { id, .. }, true) => Ok(Some(id)),
        (QuizPath::None, true) => Err(Refusal::UpgradeOutsideQuiz),
        _ => Ok(None),
    }
}

/// A node's operator endpoints: `/metrics` (every counter of the node) and `/readyz` (its
/// stores' error text). edge-lb checks nodes itself on their own address; through the public
/// listener these are not routed. Matched the way core matches routes (slashes trimmed), in
/// origin or absolute form.
fn operator_only(target: &str) -> bool {
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    matches!(path.trim_matches('/'), "metrics" | "readyz")
}

#[cfg(test)]
mod tests {
    use super::operator_only;

    #[test]
    fn operator_paths_are_recognised_in_every_spelling() {
        for p in [
            "/metrics",
            "/readyz",
            "/readyz/",
            "//metrics?x=1",
            "http://core:8080/metrics",
        ] {
            assert!(operator_only(p), "{p}");
        }
        for p in ["/healthz", "/v1/quizzes/metrics", "/metricsx", "/"] {
            assert!(!operator_only(p), "{p}");
        }
    }
}
