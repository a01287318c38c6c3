//! The front door and the HTTP proxy.
//!
//! [`EdgeApp`] is the pingora `ServerApp` behind every listener. Per request it reads the head
//! (bounded: `limits.max_header_bytes`, `limits.header_read_timeout`), rejects bad input with
//! a contract-shaped 4xx at once, sends WebSocket upgrades to [`crate::tunnel`], and hands
//! plain HTTP — with the bytes it read put back ([`Rewound`]) — to pingora's `HttpProxy`
//! running [`Router`], the `ProxyHttp` that picks the upstream by quiz id.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::{FailToProxy, HttpProxy, ProxyHttp, Session};

use crate::cluster::Cluster;
use crate::head::{quiz_path, read_head, Head, QuizPath, Rewound};
use crate::refusal::{error_body, refuse, Refusal};

/// Per-request context of the HTTP proxy.
#[derive(Default)]
pub struct Ctx {
    backend: Option<Arc<str>>,
    tries: u32,
    no_backend: bool,
}

/// `ProxyHttp` for plain HTTP: sticky by quiz id through the bounded-load ring, any eligible
/// node for quiz-less requests.
pub struct Router {
    pub cluster: Arc<Cluster>,
}

#[async_trait]
impl ProxyHttp for Router {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let cfg = self.cluster.config();
        let pool = &cfg.routes.http;
        let target = match quiz_path(session.req_header().uri.path()) {
            QuizPath::Quiz { id, .. } => self.cluster.route_quiz(pool, &id),
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
        let mut peer = HttpPeer::new(t.addr, false, String::new());
        peer.options.connection_timeout = Some(cfg.tunnel.connect_timeout);
        peer.options.read_timeout = Some(cfg.http.upstream_read_timeout);
        peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
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
        self.cluster.metrics.error(match code {
            503 => "unavailable",
            504 => "upstream_timeout",
            400 => "bad_request",
            _ => "upstream",
        });
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
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

/// One client connection counted against `limits.max_connections`; a WebSocket tunnel takes it
/// into its own task, so the count lasts as long as the connection.
struct ConnCount(Arc<Cluster>);

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
        let count = ConnCount(cluster.clone());
        let peer_ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().map(|i| i.ip())));
        let mut stream = Rewound::from_stream(stream);
        if n >= cfg.limits.max_connections {
            refuse(&mut stream, &cluster.metrics, Refusal::ConnectionLimit).await;
            return None;
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
            // The sub-futures below are boxed so that the connection task's own future stays
            // small: a future's size is that of its largest state, and pingora's HTTP proxy
            // future is large. Only the state in use is allocated; an idle tunnel pays for the
            // splice alone.
            let head = match Box::pin(read_head(
                &mut stream,
                cfg.limits.max_header_bytes,
                idle,
                cfg.limits.header_read_timeout,
            ))
            .await
            {
                Ok(h) => h,
                Err(e) => {
                    if let Some(r) = Refusal::of_head(e) {
                        refuse(&mut stream, &cluster.metrics, r).await;
                    }
                    return None;
                }
            };
            match tunnel_for(&head) {
                Err(r) => {
                    refuse(&mut stream, &cluster.metrics, r).await;
                    return None;
                }
                Ok(Some(quiz)) => {
                    Box::pin(crate::tunnel::serve_upgrade(
                        cluster, stream, head, &quiz, peer_ip, count,
                    ))
                    .await;
                    return None;
                }
                Ok(None) => {}
            }
            // Plain HTTP: give pingora the bytes we read and let it proxy the request.
            stream.set_pre(head.buf);
            let mut session = ServerSession::new_http1(Box::new(stream));
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

/// Where a request head goes: the quiz whose tunnel it opens (a WebSocket upgrade under
/// `/v1/quizzes/{id}/`), None for plain HTTP, or the refusal of a bad route.
fn tunnel_for(head: &Head) -> Result<Option<String>, Refusal> {
    match (quiz_path(&head.path), head.upgrade_websocket) {
        (QuizPath::Invalid(why), _) => Err(Refusal::BadQuizId(why)),
        (QuizPath::Quiz { ws: true, .. }, false) => Err(Refusal::UpgradeRequired),
        (QuizPath::Quiz { .. }, true) if head.method != "GET" => Err(Refusal::UpgradeNotGet),
        (QuizPath::Quiz { id, .. }, true) => Ok(Some(id)),
        (QuizPath::None, true) => Err(Refusal::UpgradeOutsideQuiz),
        _ => Ok(None),
    }
}
