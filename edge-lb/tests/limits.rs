//! Edge safety: the per-client limits (open connections, new connections/s, requests/s), the
//! whole-request deadline (slowloris), the client address core sees, the per-node new-tunnel
//! rate, what is not routed (a refused upgrade's connection, a node's operator endpoints), and
//! the admin API's token. Real backends (`edge_lb_testing::Backend`) and a real edge-lb on
//! loopback; every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use edge_lb_testing::{http_get, http_request, ws_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limits(per_client: &str) -> Opts {
    Opts {
        limits: format!("{{per_client: {{{per_client}}}}}"),
        ..Opts::default()
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A refusal in the contract's shape: status, `Retry-After` (seconds), error code.
fn assert_refusal(status: u16, head: &str, body: &str, want: u16, code: &str) -> u32 {
    assert_eq!(status, want, "{head}\r\n\r\n{body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], code, "{body}");
    assert!(v["error"]["message"].is_string(), "{body}");
    header(head, "retry-after")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {head}"))
}

async fn metric(admin: SocketAddr, line_start: &str) -> f64 {
    let (_, _, body) = http_get(admin, "/metrics").await.unwrap();
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Retry `f` until it gives a success, every 100 ms, for at most `limit`.
async fn admitted_within<F, Fut>(limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < limit,
            "not admitted again within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_per_client_are_capped_and_freed_on_close() {
    let bs = backends(1).await;
    let e = edge(
        &bs,
        limits("max_connections: 3, connections_per_sec: 0, requests_per_sec: 0"),
    )
    .await;
    let mut held = tunnels(e.addr, "cap", 3).await;
    let Err(err) = ws_connect(e.addr, "/v1/quizzes/cap9/ws").await else {
        panic!("a fourth connection from one address was admitted");
    };
    assert!(err.starts_with("status 429"), "{err}");
    let (head, body) = err.split_once("\r\n\r\n").unwrap();
    assert_refusal(429, head, body, 429, "rate_limited");
    assert_eq!(
        metric(e.admin, "edge_lb_errors_total{kind=\"client_connections\"}").await,
        1.0
    );
    // One closes: room for one more.
    let (_, _, mut c) = held.pop().unwrap();
    c.close().await.unwrap();
    drop(c);
    let start = Instant::now();
    let _again = loop {
        if let Ok(c) = ws_connect(e.addr, "/v1/quizzes/cap9/ws").await {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not admitted again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_client_are_rate_limited() {
    let bs = backends(1).await;
    let e = edge(
        &bs,
        limits(
            "max_connections: 0, connections_per_sec: 2, connections_burst: 3, requests_per_sec: 0",
        ),
    )
    .await;
    // `edge` probed the listener with connections of its own: let the bucket refill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..3 {
        assert_eq!(http_get(e.addr, "/v1/quizzes/r").await.unwrap().0, 200);
    }
    let (status, head, body) = http_get(e.addr, "/v1/quizzes/r").await.unwrap();
    let wait = assert_refusal(status, &head, &body, 429, "rate_limited");
    assert_eq!(wait, 1, "{head}");
    assert_eq!(
        metric(
            e.admin,
            "edge_lb_errors_total{kind=\"client_connection_rate\"}"
        )
        .await,
        1.0
    );
    // 2 per second: a token is back within half a second.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(http_get(e.addr, "/v1/quizzes/r").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_client_are_rate_limited_on_one_kept_alive_connection() {
    let bs = backends(1).await;
    let e = edge(
        &bs,
        limits(
            "max_connections: 0, connections_per_sec: 0, requests_per_sec: 2, requests_burst: 3",
        ),
    )
    .await;
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    for _ in 0..3 {
        let (status, _, _) = keepalive_get(&mut s, "/v1/quizzes/k").await;
        assert_eq!(status, 200);
    }
    // The fourth request is over the burst: 429, and the connection is closed.
    let (status, head, body) = keepalive_get(&mut s, "/v1/quizzes/k").await;
    assert_refusal(status, &head, &body, 429, "rate_limited");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        metric(
            e.admin,
            "edge_lb_errors_total{kind=\"client_request_rate\"}"
        )
        .await,
        1.0
    );
    admitted_within(Duration::from_secs(3), || async {
        http_get(e.addr, "/v1/quizzes/k").await.unwrap().0 == 200
    })
    .await;
}

/// One request on a kept-alive connection; (status, head, body) read by `content-length`.
async fn keepalive_get(s: &mut TcpStream, path: &str) -> (u16, String, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let len: usize = header(&head, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned();
                    let status = head
                        .split(' ')
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    return (status, head, body);
                }
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .unwrap()
}

/// Send `head` one byte per second; how long until edge-lb closes, and what it said.
async fn trickle(
    addr: SocketAddr,
    prefix: &str,
    slow: &str,
    limit: Duration,
) -> (Duration, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(prefix.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut bytes = slow.bytes();
    loop {
        assert!(
            start.elapsed() < limit,
            "still open after {limit:?}: {}",
            String::from_utf8_lossy(&got)
        );
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (start.elapsed(), String::from_utf8_lossy(&got).into())
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {
                if let Some(b) = bytes.next() {
                    let _ = s.write_all(&[b]).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_head_is_closed_at_the_request_deadline() {
    let bs = backends(1).await;
    let o = Opts {
        extra: String::new(),
        limits: "{request_timeout: 2s, header_read_timeout: 10s, per_client: {max_connections: 0, connections_per_sec: 0, requests_per_sec: 0}}".into(),
        ..Default::default()
    };
    let e = edge(&bs, o).await;
    let (took, said) = trickle(
        e.addr,
        "G",
        "ET /v1/quizzes/slow HTTP/1.1\r\nHost: t\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        Duration::from_secs(6),
    )
    .await;
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_body_is_closed_at_the_request_deadline() {
    let bs = backends(1).await;
    let o = Opts {
        limits: "{request_timeout: 2s, per_client: {max_connections: 0, connections_per_sec: 0, requests_per_sec: 0}}".into(),
        ..Default::default()
    };
    let e = edge(&bs, o).await;
    let (took, said) = trickle(
        e.addr,
        "POST /v1/quizzes/slow/players HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\n\r\n{",
        "\"name\": \"slow but steady, one byte a s\"}",
        Duration::from_secs(6),
    )
    .await;
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 408"),
        "{said}"
    );
    assert!(metric(e.admin, "edge_lb_errors_total{kind=\"request_timeout\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_client_address_never_reaches_the_node() {
    let bs = backends(1).await;
    let e = edge(&bs, Opts::default()).await;
    let (status, _, body) = http_request(
        e.addr,
        "GET /v1/quizzes/x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nx-forwarded-for: 7.7.7.7\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["xff"], "127.0.0.1", "{body}");
    // The upgrade path: the node's 101 says what it received.
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(b"GET /v1/quizzes/x/ws HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nforwarded: for=6.6.6.6\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        header(&head, "x-seen-forwarded-for"),
        Some("127.0.0.1"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_carries_no_further_request_to_the_node() {
    let bs = backends(1).await;
    let e = edge(&bs, Opts::default()).await;
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(b"GET /v1/quizzes/x/ws?refuse=1 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("refused\"}}") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 403"));
    // The node kept its side alive (as core does); a second request on the same connection
    // must not reach it.
    let _ = s
        .write_all(b"GET /v1/quizzes/x/smuggled HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("smuggled"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_operator_endpoints_are_not_routed() {
    let bs = backends(1).await;
    let e = edge(&bs, Opts::default()).await;
    for path in ["/metrics", "/readyz", "//readyz/", "/metrics?x=1"] {
        let (status, head, body) = http_get(e.addr, path).await.unwrap();
        assert_eq!(status, 404, "{path}: {head}\r\n\r\n{body}");
        assert!(!body.contains("core-0"), "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "not_found", "{body}");
    }
    // Liveness stays public; edge-lb's own checks still reach the node directly.
    assert_eq!(http_get(e.addr, "/healthz").await.unwrap().0, 200);
    assert!(e.cluster().all_eligible());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tunnels_per_node_are_paced_with_a_jittered_retry_after() {
    let bs = backends(1).await;
    let e = edge(
        &bs,
        Opts {
            node_rate: (2, 2),
            ..Opts::default()
        },
    )
    .await;
    let _held = tunnels(e.addr, "storm", 2).await;
    let Err(err) = ws_connect(e.addr, "/v1/quizzes/storm2/ws").await else {
        panic!("a third tunnel within the node's burst of 2 was admitted");
    };
    assert!(err.starts_with("status 503"), "{err}");
    let (head, body) = err.split_once("\r\n\r\n").unwrap();
    let wait = assert_refusal(503, head, body, 503, "unavailable");
    assert!((1..=3).contains(&wait), "{head}");
    assert_eq!(
        metric(e.admin, "edge_lb_errors_total{kind=\"node_tunnel_rate\"}").await,
        1.0
    );
    assert_eq!(
        metric(e.admin, "edge_lb_upgrades_total{outcome=\"node_rate\"}").await,
        1.0
    );
    admitted_within(Duration::from_secs(3), || async {
        ws_connect(e.addr, "/v1/quizzes/storm2/ws").await.is_ok()
    })
    .await;
    // HTTP is not paced by it.
    assert_eq!(http_get(e.addr, "/v1/quizzes/storm2").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_requires_its_token() {
    let bs = backends(1).await;
    let e = edge(
        &bs,
        Opts {
            extra: "  admin_token: s3cret-token\n".into(),
            ..Opts::default()
        },
    )
    .await;
    let req = |auth: &str| {
        format!(
            "POST /admin/backends/core-0/drain HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Bearer s3cret-toke\r\n",
        "Authorization: s3cret-token\r\n",
    ] {
        let (status, head, body) = http_request(e.admin, &req(auth)).await.unwrap();
        assert_eq!(status, 401, "{auth}: {head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
    }
    assert!(!e.cluster().backends()[0].draining);
    let (status, _, body) = http_request(e.admin, &req("Authorization: Bearer s3cret-token\r\n"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(e.cluster().backends()[0].draining);
    // Probes and Prometheus need no token.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(http_get(e.admin, path).await.unwrap().0, 200, "{path}");
    }
}

/// One raw request from the local address `src` (a loopback address of the test's choosing:
/// the per-client table keys on it); everything edge-lb sent until it closed: (status, head,
/// the bytes behind the head).
async fn exchange_from(src: &str, edge: SocketAddr, raw: &str) -> (u16, String, Vec<u8>) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(edge).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            // A close frame after the head: answer it, as a client does; edge-lb then ends
            // the tunnel.
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                if got.get(end + 4) == Some(&0x88) {
                    let _ = s.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("edge-lb ends the exchange within 10 s");
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {}", String::from_utf8_lossy(&got)));
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, got[end + 4..].to_vec())
}

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
}

/// `auth_failures_per_sec`: the backends' refusals of a client's tokens (a 101 core marks
/// `x-quiz-auth: refused` before its close 4001, a 401 or 403) drain that address's bucket;
/// once it is empty the address's upgrades and requests get 429 `rate_limited` with a jittered
/// `Retry-After` and no backend hears of them, until a failure's worth has refilled. Another
/// address is not affected, and the marker never reaches a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_whose_tokens_keep_failing_is_refused_at_the_edge() {
    let bs = backends(1).await;
    let e = edge(
        &bs,
        limits(
            "max_connections: 0, connections_per_sec: 0, requests_per_sec: 0, \
             auth_failures_per_sec: 1, auth_failures_burst: 3",
        ),
    )
    .await;
    let (attacker, neighbour) = ("127.0.0.1", "127.0.0.2");
    // Three failures: two refused tokens on upgrades, one 401.
    for _ in 0..2 {
        let (status, head, rest) = exchange_from(
            attacker,
            e.addr,
            &upgrade_request("/v1/quizzes/q/ws?forged"),
        )
        .await;
        assert_eq!(status, 101, "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("x-quiz-auth"),
            "the marker reached the client: {head}"
        );
        assert_eq!(
            rest.get(..4),
            Some(&[0x88, 11, 0x0f, 0xa1][..]),
            "the close 4001 is passed on: {rest:?}"
        );
    }
    let (status, head, _) =
        exchange_from(attacker, e.addr, &get_request("/v1/quizzes/q/unauthorized")).await;
    assert_eq!(status, 401, "{head}");
    // The bucket is empty: refused before any backend, upgrade and plain request alike.
    let served = bs[0].ws_total.load(std::sync::atomic::Ordering::SeqCst);
    let (status, head, body) =
        exchange_from(attacker, e.addr, &upgrade_request("/v1/quizzes/q/ws")).await;
    let wait = assert_refusal(
        status,
        &head,
        &String::from_utf8_lossy(&body),
        429,
        "rate_limited",
    );
    assert!((1..=2).contains(&wait), "{head}");
    let (status, head, body) = exchange_from(attacker, e.addr, &get_request("/v1/quizzes/q")).await;
    assert_refusal(
        status,
        &head,
        &String::from_utf8_lossy(&body),
        429,
        "rate_limited",
    );
    assert_eq!(
        bs[0].ws_total.load(std::sync::atomic::Ordering::SeqCst),
        served,
        "a refused upgrade reached the backend"
    );
    // The neighbour: a refused token of its own is one failure, not a refusal.
    let (status, head, _) = exchange_from(
        neighbour,
        e.addr,
        &upgrade_request("/v1/quizzes/q/ws?forged"),
    )
    .await;
    assert_eq!(status, 101, "{head}");
    let (status, head, _) = exchange_from(neighbour, e.addr, &get_request("/v1/quizzes/q")).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        metric(
            e.admin,
            "edge_lb_errors_total{kind=\"client_auth_failures\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(e.admin, "edge_lb_auth_failures_total{via=\"upgrade\"}").await,
        3.0
    );
    assert_eq!(
        metric(e.admin, "edge_lb_auth_failures_total{via=\"http\"}").await,
        1.0
    );
    // One failure's worth back (1 a second): the attacker's address is served again.
    admitted_within(Duration::from_secs(4), || async {
        exchange_from(attacker, e.addr, &get_request("/v1/quizzes/q"))
            .await
            .0
            == 200
    })
    .await;
}
