//! Every answer edge-lb gives a client before a backend answered: one [`Refusal`] per cause,
//! with its status, the contract's error code and message, and the metric it counts under,
//! and one way to send it, [`refuse`] (count, answer, close the connection).
//!
//! The front door refuses what it reads ([`crate::proxy`]: connection limit, the per-client
//! limits of [`crate::limits`], bad request head, bad route, a node's operator endpoint); the
//! tunnel refuses an upgrade no backend took ([`crate::tunnel`]: no node, the node's new-tunnel
//! rate, node unreachable, handshake failed). The HTTP proxy's one refusal before a backend
//! (no node for the request) is written by pingora's session in `Router::fail_to_proxy`, from
//! the same [`Refusal`] and [`error_body`].

use std::borrow::Cow;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::head::HeadError;
use crate::metrics::Metrics;

/// Why edge-lb answers a request itself instead of passing it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections` reached.
    ConnectionLimit,
    /// The request head is longer than `limits.max_header_bytes` (the limit).
    HeadTooLarge(usize),
    /// The request head does not parse (what is wrong with it).
    Malformed(String),
    /// The request head did not arrive within `limits.header_read_timeout`.
    HeadTimeout,
    /// A quiz-scoped path whose quiz id is malformed (what is wrong with it).
    BadQuizId(&'static str),
    /// `/v1/quizzes/{id}/ws` without a WebSocket upgrade.
    UpgradeRequired,
    /// A WebSocket upgrade with another method than GET.
    UpgradeNotGet,
    /// A WebSocket upgrade outside `/v1/quizzes/{id}/`.
    UpgradeOutsideQuiz,
    /// No eligible node for a quiz's WebSocket upgrade.
    NoBackend,
    /// No eligible node for a plain HTTP request.
    NoHttpBackend,
    /// The node picked for an upgrade did not take the connection in time.
    BackendUnreachable,
    /// The node picked for an upgrade did not answer it in time.
    HandshakeFailed,
    /// `limits.per_client.max_connections` open from this address.
    ClientConnections,
    /// `limits.per_client.connections_per_sec` exceeded (seconds until a token is back).
    ClientConnectionRate(u32),
    /// `limits.per_client.requests_per_sec` exceeded (seconds until a token is back).
    ClientRequestRate(u32),
    /// `limits.per_client.auth_failures_per_sec` exceeded: the address's tokens keep being
    /// refused by the backends (jittered `Retry-After`).
    ClientAuthFailures(u32),
    /// `tunnel.new_per_node_per_sec` exceeded for the quiz's node (jittered `Retry-After`).
    NodeTunnelRate(u32),
    /// A node's operator endpoint (`/metrics`, `/readyz`) asked from outside: not routed.
    NotPublic,
}

impl Refusal {
    /// The refusal for a request head that could not be read, or None when there is nobody
    /// left to answer (the client closed, or the socket failed).
    pub fn of_head(e: HeadError) -> Option<Refusal> {
        match e {
            HeadError::TooLarge(max) => Some(Refusal::HeadTooLarge(max)),
            HeadError::Malformed(m) => Some(Refusal::Malformed(m)),
            HeadError::Timeout => Some(Refusal::HeadTimeout),
            HeadError::Closed | HeadError::Io(_) => None,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Refusal::HeadTooLarge(_) => 431,
            Refusal::HeadTimeout => 408,
            Refusal::Malformed(_)
            | Refusal::BadQuizId(_)
            | Refusal::UpgradeRequired
            | Refusal::UpgradeNotGet
            | Refusal::UpgradeOutsideQuiz => 400,
            Refusal::HandshakeFailed => 502,
            Refusal::NotPublic => 404,
            Refusal::ClientConnections
            | Refusal::ClientConnectionRate(_)
            | Refusal::ClientRequestRate(_)
            | Refusal::ClientAuthFailures(_) => 429,
            Refusal::ConnectionLimit
            | Refusal::NodeTunnelRate(_)
            | Refusal::NoBackend
            | Refusal::NoHttpBackend
            | Refusal::BackendUnreachable => 503,
        }
    }

    /// The contract's error code (`{"error": {"code": …}}`).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::HeadTooLarge(_) => "too_large",
            Refusal::Malformed(_)
            | Refusal::HeadTimeout
            | Refusal::BadQuizId(_)
            | Refusal::UpgradeRequired
            | Refusal::UpgradeNotGet
            | Refusal::UpgradeOutsideQuiz => "invalid",
            Refusal::NotPublic => "not_found",
            Refusal::ClientConnections
            | Refusal::ClientConnectionRate(_)
            | Refusal::ClientRequestRate(_)
            | Refusal::ClientAuthFailures(_) => "rate_limited",
            Refusal::ConnectionLimit
            | Refusal::NodeTunnelRate(_)
            | Refusal::NoBackend
            | Refusal::NoHttpBackend
            | Refusal::BackendUnreachable
            | Refusal::HandshakeFailed => "unavailable",
        }
    }

    /// The `kind` label of `edge_lb_errors_total` it counts under.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HeadTooLarge(_) => "header_too_large",
            Refusal::Malformed(_) => "malformed",
            Refusal::HeadTimeout => "header_timeout",
            Refusal::BadQuizId(_) => "bad_quiz_id",
            Refusal::UpgradeRequired | Refusal::UpgradeNotGet | Refusal::UpgradeOutsideQuiz => {
                "not_websocket"
            }
            Refusal::NoBackend | Refusal::NoHttpBackend => "no_backend",
            Refusal::BackendUnreachable => "connect",
            Refusal::HandshakeFailed => "handshake",
            Refusal::ClientConnections => "client_connections",
            Refusal::ClientConnectionRate(_) => "client_connection_rate",
            Refusal::ClientRequestRate(_) => "client_request_rate",
            Refusal::ClientAuthFailures(_) => "client_auth_failures",
            Refusal::NodeTunnelRate(_) => "node_tunnel_rate",
            Refusal::NotPublic => "not_public",
        }
    }

    /// The `outcome` label of `edge_lb_upgrades_total`, for the refusals of an upgrade that
    /// was routed.
    fn upgrade_outcome(&self) -> Option<&'static str> {
        match self {
            Refusal::NoBackend => Some("no_backend"),
            Refusal::BackendUnreachable | Refusal::HandshakeFailed => Some("backend_error"),
            Refusal::NodeTunnelRate(_) => Some("node_rate"),
            _ => None,
        }
    }

    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Refusal::ConnectionLimit => "edge-lb at its connection limit".into(),
            Refusal::HeadTooLarge(max) => format!("request head exceeds {max} bytes").into(),
            Refusal::Malformed(m) => format!("malformed request: {m}").into(),
            Refusal::HeadTimeout => "request head not received in time".into(),
            Refusal::BadQuizId(why) => (*why).into(),
            Refusal::UpgradeRequired => {
                "this route needs a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)"
                    .into()
            }
            Refusal::UpgradeNotGet => "WebSocket upgrade must be a GET".into(),
            Refusal::UpgradeOutsideQuiz => {
                "WebSocket upgrades are only routed under /v1/quizzes/{quiz_id}/".into()
            }
            Refusal::NoBackend => "no healthy backend for this quiz".into(),
            Refusal::NoHttpBackend => "no healthy backend, retry shortly".into(),
            Refusal::BackendUnreachable => "backend unreachable, retry shortly".into(),
            Refusal::HandshakeFailed => "backend failed the upgrade".into(),
            Refusal::ClientConnections => "too many open connections from this address".into(),
            Refusal::ClientConnectionRate(_) => {
                "too many new connections from this address; retry after the given delay".into()
            }
            Refusal::ClientRequestRate(_) => {
                "too many requests from this address; retry after the given delay".into()
            }
            Refusal::ClientAuthFailures(_) => {
                "too many refused tokens from this address; retry after the given delay".into()
            }
            Refusal::NodeTunnelRate(_) => {
                "this quiz's node is taking too many new connections; retry after the given delay"
                    .into()
            }
            Refusal::NotPublic => "no such route".into(),
        }
    }

    /// `Retry-After` in seconds: a rate limit's wait (jittered for a node's tunnel rate), a
    /// second for the other `unavailable` and `rate_limited` answers.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Refusal::ClientConnectionRate(s)
            | Refusal::ClientRequestRate(s)
            | Refusal::ClientAuthFailures(s)
            | Refusal::NodeTunnelRate(s) => Some((*s).max(1)),
            _ => matches!(self.code(), "unavailable" | "rate_limited").then_some(1),
        }
    }

    /// The whole HTTP/1.1 response.
    pub fn response(&self) -> Vec<u8> {
        error_response(
            self.status(),
            self.code(),
            &self.message(),
            self.retry_after(),
        )
    }
}

/// Answer `refusal` on `client` and close it: counted under its error kind (and upgrade
/// outcome), then the response, a flush (TLS listeners buffer) and a shutdown.
pub async fn refuse<C: AsyncWrite + Unpin>(client: &mut C, metrics: &Metrics, refusal: Refusal) {
    metrics.error(refusal.kind());
    if let Some(outcome) = refusal.upgrade_outcome() {
        metrics.upgrades.with_label_values(&[outcome]).inc();
    }
    let _ = client.write_all(&refusal.response()).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}

/// The contract's error body: `{"error": {"code": …, "message": …}}`.
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}

/// A complete HTTP/1.1 error response in the contract's JSON shape; closes the connection.
fn error_response(status: u16, code: &str, message: &str, retry_after: Option<u32>) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let body = error_body(code, message);
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(s) = retry_after {
        out.push_str(&format!("retry-after: {s}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_answers_ask_for_a_retry() {
        for r in [
            Refusal::ConnectionLimit,
            Refusal::NoBackend,
            Refusal::BackendUnreachable,
            Refusal::HandshakeFailed,
        ] {
            let text = String::from_utf8(r.response()).unwrap();
            assert!(text.contains("retry-after: 1\r\n"), "{r:?}: {text}");
        }
        let text = String::from_utf8(Refusal::HeadTooLarge(16).response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(!text.contains("retry-after"), "{text}");
        assert!(text.ends_with(
            r#"{"error":{"code":"too_large","message":"request head exceeds 16 bytes"}}"#
        ));
    }

    #[test]
    fn limits_answer_429_or_503_with_their_wait() {
        let text = String::from_utf8(Refusal::ClientRequestRate(3).response()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{text}"
        );
        assert!(text.contains("retry-after: 3\r\n"), "{text}");
        assert!(text.contains(r#""code":"rate_limited""#), "{text}");
        let text = String::from_utf8(Refusal::ClientConnections.response()).unwrap();
        assert!(text.contains("retry-after: 1\r\n"), "{text}");
        let text = String::from_utf8(Refusal::NodeTunnelRate(2).response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("retry-after: 2\r\n"), "{text}");
        let text = String::from_utf8(Refusal::NotPublic.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
        assert!(!text.contains("retry-after"), "{text}");
    }
}
