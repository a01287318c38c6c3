//! One readiness probe of one node, and what its result means: pingora-load-balancing's
//! `HttpHealthCheck` sends `GET /readyz`, and the answer (or its absence) is classified into
//! an [`Outcome`]. Knows nothing of the cluster: [`crate::health`] runs the probes and hands
//! the outcomes to [`crate::cluster::Cluster::report_health`].
//!
//! Busy is not dead: a node that answers late is told apart from one that answers "not
//! ready" or does not exist any more, because acting on a late answer as on a death closes
//! every tunnel of a node that was merely starved of CPU, and the reconnect storm that
//! follows starves it further (docs/edge-lb.md, *Busy is not dead*).

use std::time::Duration;

use pingora_core::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::Backend;
use serde::Serialize;

/// What one probe learned about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered 2xx in time.
    Ready,
    /// Answered, but not 2xx (or not HTTP): the node says it cannot serve. A failure.
    NotReady,
    /// Refused, reset or closed before any answer: the process exited or its port is closed.
    /// A failure.
    Gone,
    /// Connected (or still connecting), but no complete answer within `health.timeout`:
    /// alive but busy. Not a failure; only `health.unresponsive_after` without a `Ready`
    /// makes the node lost.
    Slow,
}

impl Outcome {
    /// The label used in metrics and the admin view.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ready => "ready",
            Outcome::NotReady => "not_ready",
            Outcome::Gone => "gone",
            Outcome::Slow => "slow",
        }
    }

    /// Classify a failed check by pingora's error type.
    ///
    /// The timeouts are the busy cases. On loopback a stopped (SIGSTOPped, or starved)
    /// process still has its connections accepted by the kernel into the listen backlog, so
    /// the probe connects and then times out reading (`ReadTimedout`). A connect timeout is
    /// also taken as busy: a full accept queue drops SYNs, which looks the same from here as
    /// a host that vanished without a reset; the latter is then lost after
    /// `unresponsive_after` instead of `failure_threshold` checks (and discovery removes a
    /// deleted pod anyway).
    pub fn of_error(e: &Error) -> Outcome {
        match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout => Outcome::Slow,
            // The answer's status (our 2xx validator, or pingora's own non-200 check), or an
            // answer that is not valid HTTP: the node is there and says something else.
            ErrorType::HTTPStatus(_)
            | ErrorType::CustomCode(..)
            | ErrorType::InvalidHTTPHeader
            | ErrorType::H1Error
            | ErrorType::H2Error
            | ErrorType::InvalidH2
            | ErrorType::H2Downgrade => Outcome::NotReady,
            // Refused, no route, reset (ReadError/WriteError carry ECONNRESET or EPIPE),
            // closed before an answer; and anything else, which fails the check as it always
            // did.
            _ => Outcome::Gone,
        }
    }
}

/// One probe's result: the outcome, and what went wrong when it was not `Ready`.
#[derive(Clone, Debug)]
pub struct Probe {
    pub outcome: Outcome,
    pub error: Option<String>,
}

pub fn build_check(path: &str, timeout: Duration) -> HttpHealthCheck {
    let mut hc = HttpHealthCheck::new("edge-lb", false);
    // Thresholds are applied by Cluster, so every single verdict is reported as is.
    hc.consecutive_success = 1;
    hc.consecutive_failure = 1;
    hc.reuse_connection = false;
    hc.peer_template.options.connection_timeout = Some(timeout);
    hc.peer_template.options.total_connection_timeout = Some(timeout);
    hc.peer_template.options.read_timeout = Some(timeout);
    hc.peer_template.options.write_timeout = Some(timeout);
    // Any 2xx is ready (pingora's default accepts 200 only); the status in the error lets
    // the classification tell "answered, not ready" from the rest.
    hc.validator = Some(Box::new(|resp: &ResponseHeader| {
        if resp.status.is_success() {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::HTTPStatus(resp.status.as_u16()),
                "readiness answer not 2xx",
            )
        }
    }));
    if let Ok(mut req) = RequestHeader::build("GET", path.as_bytes(), None) {
        let _ = req.append_header("Host", "edge-lb");
        let _ = req.append_header("User-Agent", "edge-lb-health");
        hc.req = req;
    }
    hc
}

/// Probe one backend once. Never takes longer than `timeout` (plus scheduling).
pub async fn probe(
    check: &HttpHealthCheck,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Probe {
    let backend = match Backend::new(&addr.to_string()) {
        Ok(b) => b,
        Err(e) => {
            return Probe {
                outcome: Outcome::Gone,
                error: Some(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(timeout, check.check(&backend)).await {
        Ok(Ok(())) => Probe {
            outcome: Outcome::Ready,
            error: None,
        },
        Ok(Err(e)) => Probe {
            outcome: Outcome::of_error(&e),
            error: Some(e.to_string()),
        },
        // pingora's own timeouts cover each phase; this one bounds the whole probe, and
        // whichever fires first, the node did not answer in time.
        Err(_) => Probe {
            outcome: Outcome::Slow,
            error: Some(format!("no answer within {timeout:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    //! The classification against real sockets on loopback: what pingora's check returns for
    //! each way a node can answer or not.

    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(300);

    async fn probe_once(addr: SocketAddr) -> Probe {
        let check = build_check("/readyz", TIMEOUT);
        let t = std::time::Instant::now();
        let p = probe(&check, addr, TIMEOUT).await;
        assert!(t.elapsed() < TIMEOUT * 3, "probe took {:?}", t.elapsed());
        p
    }

    /// A server that answers every request with `status` (no answer at all when None: it
    /// reads the request, then holds the connection open).
    async fn serve(status: Option<&'static str>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    match status {
                        Some(st) => {
                            let r = format!("HTTP/1.1 {st}\r\ncontent-length: 0\r\n\r\n");
                            let _ = s.write_all(r.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(5)).await,
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn any_2xx_is_ready() {
        for st in ["200 OK", "204 No Content"] {
            let p = probe_once(serve(Some(st)).await).await;
            assert_eq!(p.outcome, Outcome::Ready, "{st}: {:?}", p.error);
        }
    }

    #[tokio::test]
    async fn an_answer_other_than_2xx_is_not_ready() {
        for st in ["503 Service Unavailable", "404 Not Found", "301 Moved"] {
            let p = probe_once(serve(Some(st)).await).await;
            assert_eq!(p.outcome, Outcome::NotReady, "{st}: {:?}", p.error);
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_gone() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is dropped: connecting is refused.
        let p = probe_once(addr).await;
        assert_eq!(p.outcome, Outcome::Gone, "{:?}", p.error);
    }

    #[tokio::test]
    async fn a_connection_closed_before_any_answer_is_gone() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        let p = probe_once(addr).await;
        assert_eq!(p.outcome, Outcome::Gone, "{:?}", p.error);
    }

    #[tokio::test]
    async fn connected_without_an_answer_in_time_is_slow() {
        let p = probe_once(serve(None).await).await;
        assert_eq!(p.outcome, Outcome::Slow, "{:?}", p.error);
    }

    /// A stopped process's listening socket: bound and listening, never accepted. The kernel
    /// completes the handshake into the backlog, so the probe connects and times out reading.
    #[tokio::test]
    async fn a_listener_that_never_accepts_is_slow() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let p = probe_once(addr).await;
        assert_eq!(p.outcome, Outcome::Slow, "{:?}", p.error);
        // Without the probe's own deadline, pingora itself says why: the connect succeeded
        // (the kernel's backlog) and the answer did not come.
        let check = build_check("/readyz", TIMEOUT);
        let backend = Backend::new(&addr.to_string()).unwrap();
        let e = check.check(&backend).await.unwrap_err();
        assert_eq!(e.etype(), &ErrorType::ReadTimedout, "{e}");
        drop(l);
    }

    #[test]
    fn error_types_map_to_outcomes() {
        use ErrorType::*;
        for (t, want) in [
            (ConnectRefused, Outcome::Gone),
            (ConnectNoRoute, Outcome::Gone),
            (ConnectionClosed, Outcome::Gone),
            (ReadError, Outcome::Gone),
            (WriteError, Outcome::Gone),
            (ConnectError, Outcome::Gone),
            (ConnectTimedout, Outcome::Slow),
            (ReadTimedout, Outcome::Slow),
            (WriteTimedout, Outcome::Slow),
            (HTTPStatus(503), Outcome::NotReady),
            (CustomCode("non 200 code", 500), Outcome::NotReady),
            (InvalidHTTPHeader, Outcome::NotReady),
        ] {
            assert_eq!(Outcome::of_error(&Error::new(t.clone())), want, "{t:?}");
        }
    }
}
