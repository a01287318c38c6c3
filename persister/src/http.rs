//! The operator endpoint: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive), `/readyz` (MongoDB and Kafka are reachable; 503
//! while the pipeline is retrying an outage).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

fn respond(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if metrics.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// A client has this long to send a request head; a slow or silent one is
/// disconnected instead of holding a connection (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection may stay open, whatever it does.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed as soon as they are accepted.
/// Scrapers and probes need a handful.
pub const MAX_CONNECTIONS: usize = 64;

/// Binds `addr` and serves until `shutdown`. Returns the bound address
/// (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else { continue };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let response = respond(&metrics, req.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
                drop(slot);
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_that_never_sends_its_head_is_disconnected() {
        let shutdown = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0".parse().expect("addr"),
            Metrics::new(),
            shutdown.clone(),
        )
        .await
        .expect("serve");
        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // Half a head, then nothing: the server must give up on it.
        silent
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let closed = tokio::time::timeout(HEADER_READ_TIMEOUT * 3, async {
            loop {
                match silent.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent client was not disconnected");
        // An ordinary request still gets its answer.
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.expect("read");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let shutdown = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0".parse().expect("addr"),
            Metrics::new(),
            shutdown.clone(),
        )
        .await
        .expect("serve");
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"GET").await.expect("write");
            held.push(c);
        }
        // Let the server accept all of them before the one too many.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
            .await
            .expect("the extra connection is closed promptly");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        shutdown.cancel();
    }
}
